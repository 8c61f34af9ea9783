"""Feature views of the entity `person`.

Input views have no declared schema: Feast infers their fields from the tables at apply time,
because event-type shares and CRM attributes depend on the sources a team brings. The serving
contract (`persona_assignment`) and the embedding view are declared field by field.
"""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Float32, Float64, Int64, String

from data_sources import (
    behaviour_source,
    campaign_source,
    labels_source,
    persona_assignment_source,
    persona_traits_source,
    profile_source,
    support_source,
    survey_source,
    text_embedding_source,
)
from entities import person

TTL = timedelta(days=365)

person_behaviour = FeatureView(name="person_behaviour", entities=[person], ttl=TTL, source=behaviour_source, online=True,
                               description="Activity and event-type mix (shares 0-1) per person.")
person_support = FeatureView(name="person_support", entities=[person], ttl=TTL, source=support_source, online=True,
                             description="Ticket count, recency (days) and length (characters) per person.")
person_survey = FeatureView(name="person_survey", entities=[person], ttl=TTL, source=survey_source, online=True,
                            description="Survey answers and score (0-10) per person.")
person_campaign = FeatureView(name="person_campaign", entities=[person], ttl=TTL, source=campaign_source, online=False,
                              description="Campaign exposures, conversions and rate per person (outcomes, not model inputs).")
person_profile = FeatureView(name="person_profile", entities=[person], ttl=TTL, source=profile_source, online=False,
                             description="CRM attributes and tenure (days) per person.")
person_labels = FeatureView(name="person_labels", entities=[person], ttl=TTL, source=labels_source, online=False,
                            description="Outcome labels (0/1) per person; for KPIs and audits, never model inputs.")
person_text_embedding = FeatureView(
    name="person_text_embedding",
    entities=[person],
    ttl=TTL,
    source=text_embedding_source,
    online=False,
    schema=[Field(name="text_embedding", dtype=Array(Float32)), Field(name="n_texts", dtype=Int64)],
    description="Mean all-MiniLM-L6-v2 embedding (384-d, unit norm) of a person's tickets and survey answers.",
)
persona_assignment = FeatureView(
    name="persona_assignment",
    entities=[person],
    ttl=TTL,
    source=persona_assignment_source,
    online=True,
    schema=[
        Field(name="persona_id", dtype=Int64),
        Field(name="persona_name", dtype=String),
        Field(name="confidence", dtype=Float64),
        Field(name="model_version", dtype=Int64),
    ],
    description="The champion persona model's assignment of each person (confidence 0-1).",
)  # fmt: skip

# Denormalised per person (not keyed by persona) so one entity row reads assignment + traits in
# one online lookup; `profile_model_version` says which model's profile the traits describe.
persona_traits = FeatureView(
    name="persona_traits",
    entities=[person],
    ttl=TTL,
    source=persona_traits_source,
    online=True,
    schema=[
        Field(name="profile_model_version", dtype=Int64),
        Field(name="persona_description", dtype=String),
        Field(name="persona_size", dtype=Int64),
        Field(name="persona_share", dtype=Float64),
        Field(name="persona_top_traits", dtype=String),
        Field(name="persona_top_terms", dtype=String),
        Field(name="persona_churn_rate", dtype=Float64),
        Field(name="persona_conversion_rate", dtype=Float64),
        Field(name="persona_engagement_events", dtype=Float64),
    ],
    description="Profile of each person's assigned persona: description, size (persons), share (0-1), top traits and terms ('; '-separated), churn and conversion rates (0-1), engagement (product events per person).",
)  # fmt: skip

# --- the persona graph and amber flags (personaops/graph.py, models/churn.py) -------------------
from data_sources import person_flags_source, person_graph_source  # noqa: E402

person_graph = FeatureView(
    name="person_graph",
    entities=[person],
    ttl=TTL,
    source=person_graph_source,
    online=True,
    schema=[
        Field(name="intent_centrality", dtype=Float64),
        Field(name="n_sequence_patterns", dtype=Int64),
        Field(name="n_signals", dtype=Int64),
        Field(name="neighbourhood_churn_rate", dtype=Float64),
        Field(name="top_intent", dtype=String),
        Field(name="n_intent_texts", dtype=Int64),
    ],
    description="Graph features per person: intent centrality (0-1), 3-step sequence patterns shown, graph signals shown, churn rate of people sharing the person's signals (0-1, leave-one-out), top intent, texts with an intent.",
)  # fmt: skip
person_flags = FeatureView(
    name="person_flags",
    entities=[person],
    ttl=TTL,
    source=person_flags_source,
    online=True,
    schema=[
        Field(name="churn_probability", dtype=Float64),
        Field(name="risk_flag", dtype=String),
        Field(name="engagement_trend", dtype=Float64),
        Field(name="engagement_flag", dtype=String),
        Field(name="reasons", dtype=String),
    ],
    description="Amber flags: calibrated churn probability (0-1) and risk flag ('amber'/'none'), engagement trend (recent/baseline activity ratio) and flag, reasons ('; '-separated top signals).",
)  # fmt: skip

# --- the opportunity amber flag (models/propensity.py); its own view so persona_flags_v1 keeps its fields
from data_sources import person_opportunity_source  # noqa: E402

person_opportunity = FeatureView(
    name="person_opportunity",
    entities=[person],
    ttl=TTL,
    source=person_opportunity_source,
    online=True,
    schema=[
        Field(name="opportunity_probability", dtype=Float64),
        Field(name="opportunity_flag", dtype=String),
        Field(name="opportunity_reasons", dtype=String),
    ],
    description="Opportunity amber flag: calibrated probability (0-1) of converting on the expansion offer (insights.opportunity_campaign) if offered, flag ('amber'/'none'), reasons ('; '-separated converting traits the person shows).",
)  # fmt: skip
