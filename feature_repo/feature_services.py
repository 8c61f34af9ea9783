"""Feature services: what downstream consumers read, versioned by name.

A published service name never changes meaning: a new field set gets a new name (`persona_v2`),
and the old one keeps serving until its consumers have moved (docs/serving.md).
"""

from feast import FeatureService

from feature_views import (
    person_behaviour,
    person_profile,
    person_support,
    person_survey,
    person_text_embedding,
    persona_assignment,
    persona_traits,
)

# What a downstream model or service reads to know a person's persona.
persona_v1 = FeatureService(
    name="persona_v1",
    features=[persona_assignment],
    description="Persona assignment of the champion model: persona_id, persona_name, confidence, model_version.",
)

# persona_v1 plus the assigned persona's profile: who the persona is and how it behaves.
persona_v2 = FeatureService(
    name="persona_v2",
    features=[persona_assignment, persona_traits],
    description="persona_v1 plus the assigned persona's profile traits: description, size, share, top traits and terms, churn and conversion rates, engagement.",
)

# The persona model's inputs; its name is recorded on every MLflow training run.
persona_model_inputs_v1 = FeatureService(
    name="persona_model_inputs_v1",
    features=[person_behaviour, person_support, person_survey, person_profile, person_text_embedding],
    description="Inputs of the persona model: behaviour, support, survey, CRM profile and text-embedding features.",
)

# The downstream churn model's inputs (models/downstream.py): online behaviour, support and
# survey features plus the persona; the same service serves training (historical) and prediction (online).
churn_model_inputs_v1 = FeatureService(
    name="churn_model_inputs_v1",
    features=[person_behaviour, person_support, person_survey, persona_assignment[["persona_id", "confidence"]]],
    description="Inputs of the example churn model: behaviour, support and survey features and the person's persona (id, confidence).",
)

# Amber flags with the graph features that explain them (docs/insights.md).
from feature_views import person_flags, person_graph  # noqa: E402

persona_flags_v1 = FeatureService(
    name="persona_flags_v1",
    features=[person_flags, person_graph],
    description="Amber flags (churn probability, risk and engagement flags, reasons) and graph features per person.",
)

# persona_flags_v1 plus the opportunity flag (a new field set, so a new name).
from feature_views import person_opportunity  # noqa: E402

persona_flags_v2 = FeatureService(
    name="persona_flags_v2",
    features=[person_flags, person_opportunity, person_graph],
    description="persona_flags_v1 plus the opportunity flag: expansion propensity (0-1), opportunity flag and its reasons.",
)
