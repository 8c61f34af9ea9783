"""PersonaOps: data-backed user personas, traceable to source rows."""

__version__ = "0.1.0"
