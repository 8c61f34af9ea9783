"""The whole pipeline on real components: what issue #2 says it must show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from personaops.config import load_config
from personaops.evaluation import persona_agreement
from personaops.workspace import Workspace
from tests.helpers import CORRUPT_REASONS

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
STAGES = ["ingest", "resolve", "features", "quality", "train", "publish", "intents", "graph", "flags", "monitor"]


def _fresh_python(code: str, env: dict[str, str]) -> str:
    """Run `code` in a new interpreter from the repo root; return its stdout."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "PERSONAS_"))}
    full_env.update(env)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _published(home: Path) -> pd.DataFrame:
    return pd.read_parquet(Workspace(home).feature_table("persona_assignment"))


def test_counts_balance_and_corrupted_rows_are_quarantined_with_reasons(pipeline):
    home, record = pipeline
    for source in record["ingest"]:
        assert source["rows_in"] == source["accepted"] + source["quarantined"], source["source"]
    tickets = next(s for s in record["ingest"] if s["source"] == "tickets")
    assert tickets["quarantined"] == len(CORRUPT_REASONS)
    quarantine = pd.read_parquet(next((Workspace(home).quarantine / "tickets").glob("batch=*/part-0.parquet")))
    raw = " ".join(quarantine["raw"])
    for key, reason in CORRUPT_REASONS.items():
        hits = quarantine[quarantine["raw"].str.contains(key) | quarantine["reason"].str.contains(reason)]
        assert not hits.empty and key in raw, key
    assert quarantine["reason"].str.len().gt(0).all()


def test_prefect_api_lists_the_flow_run_with_one_completed_task_per_stage(pipeline):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    _, record = pipeline
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(record["flow_run_id"])
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
        flow = client.read_flow(flow_run.flow_id)
    assert flow.name == "build_personas"
    assert flow_run.state.is_completed()
    names = sorted(t.task_key.split("-")[0] for t in tasks)
    assert names == sorted(STAGES)
    assert all(t.state.is_completed() for t in tasks)


def test_stock_feast_sdk_in_a_fresh_process_serves_the_published_personas(pipeline):
    home, record = pipeline
    published = _published(home)
    sample = published.sample(25, random_state=1)
    code = (
        "import json; from feast import FeatureStore\n"
        "store = FeatureStore(repo_path='feature_repo')\n"
        f"ids = {sample['person_id'].tolist()!r}\n"
        "out = store.get_online_features(features=store.get_feature_service('persona_v1'), entity_rows=[{'person_id': i} for i in ids]).to_dict()\n"
        "print(json.dumps(out))\n"
    )
    served = json.loads(_fresh_python(code, {"PERSONAS_HOME": str(home), "FEAST_USAGE": "False"}).strip().splitlines()[-1])
    assert served["person_id"] == sample["person_id"].tolist()
    assert served["persona_id"] == sample["persona_id"].tolist()
    assert served["model_version"] == [record["publish"]["model_version"]] * len(sample)


def test_champion_loads_from_mlflow_in_a_fresh_process_and_predicts(pipeline):
    home, _ = pipeline
    code = (
        "import json, mlflow, pandas as pd\n"
        "from personaops import features as F\n"
        f"home = {str(home)!r}\n"
        "model = mlflow.pyfunc.load_model('models:/persona-model@champion')\n"
        "tables = F.read_tables(home + '/features')\n"
        "persons = pd.Index(sorted(pd.read_parquet(home + '/identity/record_person.parquet')['person_id'].unique()))\n"
        "frame, _ = F.model_frame(tables, persons)\n"
        "pred = model.predict(frame.head(200).reset_index(drop=True))\n"
        "print(json.dumps({'ids': list(frame.index[:200]), 'persona_id': pred['persona_id'].tolist(), 'cols': list(pred.columns)}))\n"
    )
    uri = f"sqlite:///{home}/mlflow/mlflow.db"
    out = json.loads(_fresh_python(code, {"MLFLOW_TRACKING_URI": uri}).strip().splitlines()[-1])
    assert out["cols"] == ["persona_id", "persona_name", "confidence"]
    published = _published(home).set_index("person_id").loc[out["ids"], "persona_id"].tolist()
    assert out["persona_id"] == published


def test_evidently_reports_exist_and_show_no_drift_against_the_training_data(pipeline):
    home, record = pipeline
    html, js = Path(record["monitor"]["html"]), Path(record["monitor"]["json"])
    assert html.is_file() and html.stat().st_size > 10_000 and js.is_file()
    assert html.parent.parent == Workspace(home).reports
    snapshot = json.loads(js.read_text())
    assert any("DriftedColumnsCount" in m["metric_name"] for m in snapshot["metrics"])
    # monitored right after training on the same data: nothing may have drifted
    assert record["monitor"]["drifted_share"] == 0.0


def test_personas_agree_with_the_planted_truth(pipeline, generated):
    home, record = pipeline
    ari = persona_agreement(Workspace(home), generated / "truth", record["publish"]["model_version"])
    assert ari >= 0.8, ari
    assert record["train"]["k"] == 5


def test_rerun_on_the_same_inputs_changes_and_duplicates_nothing(pipeline, generated):
    from flows.build_personas import build_personas
    from models import registry

    home, first = pipeline
    before = _published(home)
    lake_files = sorted(p.relative_to(home) for p in (Path(home) / "lake").rglob("*.parquet"))
    second = build_personas(sources=str(generated / "sources.yaml"), home=str(home))
    assert second["train"]["reused"] is True and second["train"]["version"] == first["train"]["version"]
    assert sorted(p.relative_to(home) for p in (Path(home) / "lake").rglob("*.parquet")) == lake_files
    ws = Workspace(home)
    assert [v.version for v in registry.versions(ws, load_config().model.registered_name)] == [first["train"]["version"]]
    after = _published(home)
    assert len(after) == len(before)
    pd.testing.assert_frame_equal(
        before.sort_values("person_id").reset_index(drop=True)[["person_id", "persona_id", "model_version"]],
        after.sort_values("person_id").reset_index(drop=True)[["person_id", "persona_id", "model_version"]],
    )


def test_retraining_on_unchanged_data_keeps_persona_ids_and_names(pipeline):
    """A retrain with another seed on the same features keeps every persona's id and name."""
    from flows.build_personas import _previous_model
    from models.embedder import TextEmbedder
    from models.train import train_persona_model
    from personaops import features as F

    home, record = pipeline
    cfg = load_config()
    cfg.home = Path(home)
    ws = Workspace(home)
    previous = _previous_model(ws, cfg)
    tables, frame, columns = F.current_model_frame(ws)
    texts = pd.read_parquet(ws.root / "texts" / "person_texts.parquet")
    vectors = TextEmbedder(cfg.embedding.model_path, ws.embedding_cache).encode(texts["text"].tolist())
    model_cfg = cfg.model.model_copy(update={"seed": cfg.model.seed + 17, "auto_promote": False})
    result = train_persona_model(ws, model_cfg, frame, columns, texts, vectors, F.outcome_frame(tables), {"personas.run_id": "retrain-test"}, {}, previous)
    again = result.assignments.set_index("person_id")["persona_id"]
    same = (again.reindex(previous.assignments.index) == previous.assignments).mean()
    assert same >= 0.98, same
    assert result.continuity["new"] == [] and result.continuity["vanished"] == []
    old_names = {p["persona_id"]: p["name"] for p in previous.profiles}
    assert {p["persona_id"]: p["name"] for p in result.profiles} == old_names
    assert result.metrics["agreement_with_previous"] >= 0.95
    assert result.aliases == ["challenger"]  # auto_promote off: the champion stays
