"""Offline sources: the per-person feature tables the `features` and `publish` stages write.

Feast imports this file on `feast apply`; the workspace comes from $PERSONAS_HOME, exactly as in
feature_store.yaml (default ./.personas). Reading an environment variable is the only work done.
"""

import os

from feast import FileSource

FEATURES_DIR = os.path.join(os.path.abspath(os.environ.get("PERSONAS_HOME", ".personas")), "features")


def _table(name: str, description: str) -> FileSource:
    if os.environ.get("PERSONAS_FEAST_OFFLINE_STORE") == "spark":
        # compute.engine: spark: Feast's Spark offline store reads the same Parquet tables (docs/scaling.md).
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(
            name=f"{name}_source",
            path=os.path.join(FEATURES_DIR, f"{name}.parquet"),
            file_format="parquet",
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
            description=description,
        )
    return FileSource(
        name=f"{name}_source",
        path=os.path.join(FEATURES_DIR, f"{name}.parquet"),
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
        description=description,
    )


behaviour_source = _table("person_behaviour", "Product telemetry aggregates per person.")
support_source = _table("person_support", "Support ticket aggregates per person.")
survey_source = _table("person_survey", "Survey participation and scores per person.")
campaign_source = _table("person_campaign", "Campaign exposures and conversions per person.")
profile_source = _table("person_profile", "CRM attributes per person.")
labels_source = _table("person_labels", "Outcome labels per person (churned, converted).")
text_embedding_source = _table("person_text_embedding", "Mean sentence embedding of a person's texts.")
persona_assignment_source = _table("persona_assignment", "Persona assignments published for the champion model.")
persona_traits_source = _table("persona_traits", "Profile traits of each person's assigned persona, published with the assignments.")
person_graph_source = _table("person_graph", "Per-person features of the persona graph (intents, sequences, neighbourhood).")
person_flags_source = _table("person_flags", "Amber flags per person: churn risk and engagement, with reasons.")
person_opportunity_source = _table("person_opportunity", "Opportunity amber flag per person: expansion propensity, with reasons.")
