"""Lineage and replay on the session pipeline's workspace (docs/governance.md): `personas explain`
traces a served persona to the exact lake rows; `personas replay` reproduces the run's
assignments bit for bit; unknown persons and runs are one-sentence errors (CLI exit 1, API 404)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from personaops import lineage
from personaops.api import create_app
from personaops.config import load_config
from personaops.errors import NotFoundError
from personaops.workspace import Workspace

from tests.helpers import run_cli

pytestmark = pytest.mark.integration
ANALYST = {"Authorization": "Bearer analyst-tok"}


def _cfg(home):
    cfg = load_config(environ={})
    cfg.home = home
    return cfg


def _cli(monkeypatch, capsys, home, *args) -> tuple[int, str, str]:
    return run_cli(monkeypatch, capsys, *args, home=home)


@pytest.fixture(scope="module")
def served(pipeline):
    """(home, run record, a person whose persona this run published, the API client)."""
    home, record = pipeline
    ws = Workspace(home)
    published = pd.read_parquet(ws.runs / record["run_id"] / "assignments.parquet")
    person = str(published.sort_values("person_id")["person_id"].iloc[len(published) // 3])
    client = TestClient(create_app(_cfg(home), environ={"PERSONAS_API_TOKENS": "analyst-tok:analyst"}), raise_server_exceptions=False)
    return home, record, person, client


def test_the_run_record_carries_a_content_snapshot_id(served):
    home, record, _, _ = served
    snap = record["snapshot"]
    assert len(snap["id"]) == 32 and snap["replayable"]
    assert snap["inputs"]["batches"] == {s: sorted(ids) for s, ids in sorted(record["batches"].items())}
    assert snap["inputs"]["model_version"] == record["publish"]["model_version"]
    # the same inputs hash to the same id; any change of an input changes it
    again = lineage.freeze_run(Workspace(home), "probe", record["batches"], snap["kinds"], {"skipped": "probe", "model_version": snap["inputs"]["model_version"]})
    assert again["id"] == snap["id"] and not again["replayable"]
    other = lineage.freeze_run(Workspace(home), "probe", record["batches"], snap["kinds"], {"skipped": "probe", "model_version": 999})
    assert other["id"] != snap["id"]


def test_explain_traces_a_served_persona_to_the_exact_lake_rows(served):
    home, record, person, client = served
    ws = Workspace(home)
    got = client.get(f"/persons/{person}/explain", headers=ANALYST)
    assert got.status_code == 200, got.text
    doc = got.json()
    assert doc["persona"]["person_id"] == person and doc["model_version"] == doc["persona"]["model_version"]
    assert doc["mlflow_run_id"] == doc["run_id"] and doc["mlflow_run_id"]
    if doc["model_version"] == record["publish"]["model_version"]:
        assert doc["pipeline_run_id"] == record["run_id"] and doc["snapshot_id"] == record["snapshot"]["id"]
    assert doc["traits"] is not None and doc["traits"]["profile_model_version"] == doc["model_version"]
    # the model-input feature values are the person's rows in the feature tables
    behaviour = pd.read_parquet(ws.feature_table("person_behaviour")).set_index("person_id")
    if person in behaviour.index:
        assert doc["features"]["person_behaviour"]["values"]["n_events"] == behaviour.loc[person, "n_events"]
    # every source row exists in the lake with the same row hash and maps to this person
    rows = doc["source_rows"]
    assert rows and all(r["in_lake"] for r in rows)
    mapping = pd.read_parquet(ws.identity / "record_person.parquet").set_index(["source", "source_key"])["person_id"]
    for r in rows:
        lake = pd.read_parquet(ws.lake / r["source"] / f"batch={r['batch_id']}" / "part-0.parquet", columns=["source_key", "_row_number", "_row_hash"])
        hit = lake[lake["_row_number"] == r["row_number"]]
        assert len(hit) == 1 and hit["_row_hash"].iloc[0] == r["row_hash"] and hit["source_key"].iloc[0] == r["source_key"]
        assert mapping[(r["source"], r["source_key"])] == person
    # the identity evidence touches only this person's records; raw keys are digests
    ids = {f"{r['source']}:{r['source_key']}" for r in rows}
    assert all(e["record_l"] in ids or e["record_r"] in ids for e in doc["identity"]["edges"])
    assert all("key" not in e for e in doc["identity"]["edges"])
    if len(rows) > 1:
        assert doc["identity"]["edges"]
    # the behaviour view names the events rows it was computed from
    if person in behaviour.index:
        fed = doc["features"]["person_behaviour"]["source_rows"]
        assert fed and {rows[i]["source"] for i in fed} == {s for s, k in record["snapshot"]["kinds"].items() if k == "events"} & {r["source"] for r in rows}


def test_a_changed_lake_row_is_reported_not_in_lake(served):
    home, _, person, _ = served
    ws = Workspace(home)
    rows = pd.read_parquet(ws.identity / "record_person.parquet", filters=[("person_id", "==", person)]).head(2).copy()
    assert lineage._verify_rows(ws, rows) == [True] * len(rows)
    rows["_row_hash"] = "0" * 16
    assert lineage._verify_rows(ws, rows) == [False] * len(rows)


def test_replay_reproduces_the_run_s_assignments_bit_for_bit(served, monkeypatch, capsys):
    home, record, _, _ = served
    result = lineage.replay(_cfg(home), Workspace(home), record["run_id"])
    assert result["reproduced"] and result["persons"] == result["identical"] > 0
    published = pd.read_parquet(Workspace(home).runs / record["run_id"] / "assignments.parquet")
    assert result["persons"] == len(published) and result["snapshot_id"] == record["snapshot"]["id"]
    code, out, _ = _cli(monkeypatch, capsys, home, "replay", record["run_id"], "--json")
    assert code == 0 and json.loads(out)["reproduced"] is True


def test_replay_exits_1_when_the_stored_assignments_were_changed(served, monkeypatch, capsys, tmp_path):
    home, record, _, _ = served
    ws = Workspace(home)
    path = ws.runs / record["run_id"] / "assignments.parquet"
    original = path.read_bytes()
    try:
        published = pd.read_parquet(path)
        published.loc[0, "confidence"] = float(published.loc[0, "confidence"]) + 1e-12  # one ulp-ish change
        published.to_parquet(path, index=False)
        code, _, err = _cli(monkeypatch, capsys, home, "replay", record["run_id"])
        assert code == 1 and "changed after the run" in err and "Traceback" not in err
    finally:
        path.write_bytes(original)


def test_unknown_person_and_run_are_one_sentence_errors(served, monkeypatch, capsys):
    home, _, _, client = served
    got = client.get("/persons/Pnobody000000/explain", headers=ANALYST)
    assert got.status_code == 404 and "no persona" in got.json()["detail"]
    code, out, err = _cli(monkeypatch, capsys, home, "explain", "Pnobody000000")
    assert code == 1 and err.startswith("error: Person 'Pnobody000000' has no persona") and "Traceback" not in err
    code, _, err = _cli(monkeypatch, capsys, home, "replay", "19990101T000000Z-000000")
    assert code == 1 and "has no run record" in err
    with pytest.raises(NotFoundError):
        lineage.explain(_cfg(home), Workspace(home), "Pnobody000000")


def test_compare_is_bit_for_bit():
    published = pd.DataFrame({"person_id": ["a", "b", "c"], "persona_id": [0, 1, 2], "confidence": [0.5, 0.25, float("nan")]})
    assert lineage.compare(published, published.copy())["reproduced"]
    nudged = published.copy()
    nudged.loc[1, "confidence"] = np.nextafter(0.25, 1.0)  # one ulp
    got = lineage.compare(published, nudged)
    assert not got["reproduced"] and got["confidence_differences"] == 1 and got["differing_persons"] == ["b"]
    moved = published.copy()
    moved.loc[2, "persona_id"] = 0
    assert lineage.compare(published, moved)["persona_differences"] == 1
    assert not lineage.compare(published, published.iloc[:2])["reproduced"]
