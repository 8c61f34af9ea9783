"""Feature services: what downstream consumers read, versioned by name."""

from feast import FeatureService

from feature_views import person_behaviour, person_profile, person_support, person_survey, person_text_embedding, persona_assignment

# What a downstream model or service reads to know a person's persona.
persona_v1 = FeatureService(
    name="persona_v1",
    features=[persona_assignment],
    description="Persona assignment of the champion model: persona_id, persona_name, confidence, model_version.",
)

# The persona model's inputs; its name is recorded on every MLflow training run.
persona_model_inputs_v1 = FeatureService(
    name="persona_model_inputs_v1",
    features=[person_behaviour, person_support, person_survey, person_profile, person_text_embedding],
    description="Inputs of the persona model: behaviour, support, survey, CRM profile and text-embedding features.",
)
