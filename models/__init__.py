"""Persona model code: text embedder, fusion, clustering, profiles, the MLflow pyfunc, training
and the registry lifecycle. Nothing here does work at import time."""
