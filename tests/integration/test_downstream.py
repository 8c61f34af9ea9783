"""The downstream churn model: trained from a Feast point-in-time join that includes persona
features, compared with and without them in MLflow, predicting from features read online."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from personaops.config import load_config
from personaops.workspace import Workspace

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(pipeline):
    from models.downstream import train

    home, _ = pipeline
    cfg = load_config(environ={})
    cfg.home = Path(home)
    ws = Workspace(home)
    return cfg, ws, train(ws, cfg)


def test_training_joins_persona_features_point_in_time_and_logs_both_metrics(trained):
    from models import registry
    from models.downstream import FEATURE_SERVICE, REGISTERED_NAME, label_entities, training_frame
    from personaops.feature_store import feature_store

    cfg, ws, result = trained
    labels = label_entities(ws)
    assert result.persons == len(labels) and 0 < result.churn_rate < 1
    frame = training_frame(feature_store(ws, cfg), labels)
    assert {"persona_id", "confidence", "n_events"} <= set(frame.columns)
    assert frame["persona_id"].notna().mean() > 0.95  # the join found the published personas
    # Point in time: a label observed before the personas were published joins no persona.
    early = labels.head(20).assign(event_timestamp=labels["event_timestamp"].min() - pd.Timedelta(days=1))
    assert training_frame(feature_store(ws, cfg), early)["persona_id"].isna().all()

    run = registry.client(ws).get_run(result.run_id)
    for name in ("roc_auc_with_persona", "roc_auc_without_persona", "log_loss_with_persona", "log_loss_without_persona"):
        assert run.data.metrics[name] == pytest.approx(result.metrics[name], abs=1e-4)
    assert 0.5 < result.metrics["roc_auc_with_persona"] <= 1 and 0.5 < result.metrics["roc_auc_without_persona"] <= 1
    assert run.data.params["feature_service"] == FEATURE_SERVICE
    assert registry.alias_version(ws, REGISTERED_NAME, "champion") == result.version


def test_prediction_reads_features_online(trained, pipeline):
    from models.downstream import predict

    cfg, ws, _ = trained
    published = pd.read_parquet(ws.feature_table("persona_assignment"))
    people = published["person_id"].drop_duplicates().tail(5).tolist()
    got = predict(ws, cfg, people + ["nobody-0000"])
    assert got["person_id"].tolist() == people + ["nobody-0000"]
    assert got["churn_probability"].iloc[:5].between(0, 1).all()
    assert math.isnan(got["churn_probability"].iloc[5])  # nothing online: no guess
    assert got["persona_id"].iloc[:5].notna().all()


def test_cli_train_and_predict(trained, pipeline, monkeypatch):
    from typer.testing import CliRunner

    from personaops.cli import app

    _, ws, _ = trained
    monkeypatch.setenv("PERSONAS_HOME", str(ws.root))
    person = pd.read_parquet(ws.feature_table("persona_assignment"))["person_id"].iloc[0]
    done = CliRunner().invoke(app, ["downstream", "predict", person, "--json"])
    assert done.exit_code == 0, done.output
    rows = json.loads(done.stdout)
    assert rows[0]["person_id"] == person and 0 <= rows[0]["churn_probability"] <= 1
