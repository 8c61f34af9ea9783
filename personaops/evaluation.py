"""Agreement of published personas with planted truth (generated data only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from personaops.workspace import Workspace


def persona_agreement(ws: Workspace, truth_dir: Path, model_version: int | None = None) -> float:
    """Adjusted Rand index between published persona_id and true persona, over every non-event
    source record (CRM, tickets, surveys, campaigns) of the truth files."""
    from sklearn.metrics import adjusted_rand_score

    truth = pd.read_parquet(Path(truth_dir) / "records.parquet").merge(pd.read_parquet(Path(truth_dir) / "persons.parquet"), on="true_person")
    truth = truth[truth["source"] != "events"]
    mapping = pd.read_parquet(ws.identity / "record_person.parquet", columns=["source", "source_key", "person_id"])
    published = pd.read_parquet(ws.feature_table("persona_assignment"))
    if model_version is None:
        model_version = int(published["model_version"].max())
    published = published[published["model_version"] == model_version]
    joined = truth.merge(mapping, on=["source", "source_key"]).merge(published[["person_id", "persona_id"]], on="person_id")
    return float(adjusted_rand_score(joined["true_persona"], joined["persona_id"]))
