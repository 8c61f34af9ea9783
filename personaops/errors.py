"""Domain errors. Each message is one sentence: what was wrong, where, and what to do.

The CLI catches `PersonaOpsError`, prints its message on stderr and exits 1 — users never see a
traceback for their own mistakes.
"""


class PersonaOpsError(Exception):
    """Root of every error a user can cause and fix."""


class ConfigError(PersonaOpsError):
    """personas.yaml (or an environment override) is invalid."""


class SourceError(PersonaOpsError):
    """A source in sources.yaml is missing, unreadable or mis-mapped."""


class NotFoundError(PersonaOpsError):
    """A person, model version or artefact the user asked for does not exist."""


class PipelineStateError(PersonaOpsError):
    """A stage needs the output of an earlier stage that has not run in this workspace."""


class PromotionBlockedError(PersonaOpsError):
    """A model version failed the promotion gate and was not forced."""
