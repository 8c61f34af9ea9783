"""A real public CRM-style table alone (German credit: 1,000 bank customers, numeric and
categorical attributes, a label, sensitive attributes) through the same pipeline."""

from __future__ import annotations

import json

import pytest

from personaops.workspace import Workspace
from tests.realdata import SENSITIVE, write_german_credit

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def german(prefect_api, tmp_path_factory):
    from flows.build_personas import build_personas

    sources = write_german_credit(tmp_path_factory.mktemp("german"))
    home = tmp_path_factory.mktemp("german-ws")
    return home, build_personas(sources=str(sources), home=str(home))


def test_a_single_crm_table_yields_personas_with_materially_different_label_rates(german):
    from models import registry
    from models.train import load_profiles

    home, record = german
    ws = Workspace(home)
    assert record["ingest"][0]["rows_in"] == record["ingest"][0]["accepted"] == 1000
    version = registry.alias_version(ws, "persona-model", registry.CHAMPION)
    profiles = [p for p in load_profiles(ws, registry.version_run_id(ws, "persona-model", version)) if p["persona_id"] >= 0]
    assert len(profiles) >= 2
    rates = sorted((p["kpis"]["bad_credit_rate"] for p in profiles), key=lambda k: k["value"])
    low, high = rates[0], rates[-1]
    # materially different: at least 10 points apart with non-overlapping 95% intervals
    assert high["value"] - low["value"] >= 0.10, rates
    assert low["ci95"][1] < high["ci95"][0], rates
    for p in profiles:
        assert f"Bad credit rate {p['kpis']['bad_credit_rate']['value']:.0%}" in p["description"]


def test_sensitive_attributes_are_never_model_inputs(german):
    import mlflow

    from models import registry

    home, record = german
    registry.client(Workspace(home))  # MLflow points at this workspace
    features = json.loads(open(mlflow.artifacts.download_artifacts(run_id=record["train"]["run_id"], artifact_path="features.json")).read())
    assert features, "the model has inputs"
    for column in features:
        assert column.split("__")[0] not in SENSITIVE, column
    assert "bad_credit" not in features  # labels are outcomes, not inputs


def test_a_bare_customer_table_without_labels_or_categories_runs(prefect_api, tmp_path):
    """Only ids and numbers: the label and profile views have nothing to hold and are left out."""
    import numpy as np
    import pandas as pd

    from flows.build_personas import build_personas
    from personaops.config import load_config
    from personaops.feature_store import feature_store

    rng = np.random.default_rng(3)
    groups = rng.integers(0, 3, size=600)
    frame = pd.DataFrame({"id": [f"K{i}" for i in range(600)], "email": [f"u{i}@example.com" for i in range(600)],
                          "spend": rng.normal(groups * 10, 1.0), "visits": rng.normal(groups * 5, 0.5)})  # fmt: skip
    frame.to_csv(tmp_path / "customers.csv", index=False)
    (tmp_path / "sources.yaml").write_text(
        "sources:\n- name: customers\n  kind: crm\n  path: customers.csv\n  key: id\n  identifiers: {email: email}\n  numeric: [spend, visits]\n"
    )
    home = tmp_path / "ws"
    record = build_personas(sources=str(tmp_path / "sources.yaml"), home=str(home))
    assert record["publish"]["rows"] == 600
    cfg = load_config()
    cfg.home = home
    views = {v.name for v in feature_store(Workspace(home), cfg).list_feature_views()}
    assert "person_labels" not in views and "persona_assignment" in views
