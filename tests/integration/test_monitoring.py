"""Monitoring that acts, end to end on small generated data: a no-change period, a planted
persona-mix shift, a broken source and a rollback, with the real Evidently, MLflow and Prefect.

The mix shift goes the deployed way: the monitor emits the drift event, the trigger of the
`retrain-personas-on-drift` deployment in flows/prefect.yaml (deployed to the test server as
`prefect deploy` would) starts a retrain flow run, and the test executes that run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from personaops.generate import generate
from personaops.workspace import Workspace

pytestmark = pytest.mark.integration
USERS, SEED = 800, 21


@pytest.fixture(scope="module")
def monitored(prefect_api, tmp_path_factory):
    """A workspace built on period 0, then monitored on later periods in order."""
    from flows.build_personas import build_personas

    data = tmp_path_factory.mktemp("periods")
    generate(USERS, SEED, data)
    generate(USERS, SEED, data, period=1)
    generate(USERS, SEED, data, period=2, drift="broken")
    generate(USERS, SEED, data, period=3, drift="mix")
    home = tmp_path_factory.mktemp("monitor-ws")
    build_personas(sources=str(data / "sources.yaml"), home=str(home))
    return home, data


PREFECT_YAML = Path(__file__).resolve().parents[2] / "flows" / "prefect.yaml"


def _deployment_spec(name: str) -> dict:
    import yaml
    from prefect.utilities.templating import apply_values

    spec = yaml.safe_load(PREFECT_YAML.read_text())
    deployment = next(d for d in spec["deployments"] if d["name"] == name)
    return apply_values(deployment, dict(os.environ), remove_notset=False)  # as `prefect deploy` does


@pytest.fixture(scope="module")
def retrain_deployment(prefect_api, monitored):
    """The retrain deployment and its drift trigger from flows/prefect.yaml, on the test server."""
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    from flows.monitor_personas import retrain_personas

    spec = _deployment_spec("retrain-personas-on-drift")
    triggers = [TypeAdapter(DeploymentTriggerTypes).validate_python(t) for t in spec["triggers"]]
    deployment = retrain_personas.to_deployment(name=spec["name"], parameters={"home": str(monitored[0])}, triggers=triggers)
    return deployment.apply()


def _monitor(home: Path, sources: Path, **params) -> dict:
    from flows.monitor_personas import monitor_personas

    return monitor_personas(sources=str(sources), home=str(home), **params)


def _events(name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    with get_client(sync_client=True) as client:
        return client.read_events(filter=EventFilter(event=EventNameFilter(name=[name])), limit=50).events


def _wait(condition, seconds: float = 90.0):
    """Poll `condition()` until it returns something truthy (the event pipeline is asynchronous)."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def _versions(home: Path) -> dict[int, list[str]]:
    from models import registry

    return {v.version: v.aliases for v in registry.versions(Workspace(home), "persona-model")}


def test_a_period_without_change_raises_no_alarm(monitored):
    home, data = monitored
    summary = _monitor(home, data / "sources_p1.yaml")
    assert summary["action"] == "none", summary["fired"]
    assert summary["results"]["persona_mix"]["total_variation"] < 0.08
    bias = summary["results"]["bias"]
    assert set(bias["by_attribute"]) == {"age_band", "gender"} and 0.0 <= bias["max_label_gap"] <= 1.0
    assert "churned" in bias["label_gaps"]["by_label"]
    assert Path(summary["reports"]["html"]).is_file() and Path(summary["reports"]["monitoring"]).is_file()
    decisions = (Path(home) / "monitoring" / "decisions.jsonl").read_text().splitlines()
    assert json.loads(decisions[-1])["action"] == "none"
    assert summary["event"]["name"] == "personaops.monitor.none"
    assert summary["results"]["features"]["reference_built_now"] is False  # the build's monitor pass cached it


def test_the_reference_embedding_sample_is_drawn_once_per_version_and_matches_a_full_draw(monitored, tmp_path):
    """A pass reads the champion's reference frame without its embeddings: the reference side of
    the text check is cached per version, and it and the current side are exactly the vectors
    `embedding_drift` draws when given every stacked vector (the pass before the cache); an
    erasure that rewrites the reference frame makes the next pass draw again."""
    import shutil

    import numpy as np

    from models import registry
    from monitoring.monitor import _load_reference_embeddings, _vectors, current_embeddings, reference_folder
    from personaops.config import load_config

    home, _ = monitored
    cfg = load_config()
    sample, seed = cfg.monitoring.embedding_sample, cfg.model.seed
    folder = reference_folder(Workspace(home), registry.alias_version(Workspace(home), "persona-model", "champion"))
    cached = _load_reference_embeddings(folder, sample, seed)
    assert cached is not None, "the build's monitor pass cached no reference embedding sample"
    reference = pd.read_parquet(folder / "training_frame.parquet")
    every = _vectors(reference["text_embedding"])
    assert cached[1] == len(every) >= 20
    rng = np.random.default_rng(seed)  # checks.embedding_drift's draw on every stacked vector
    assert np.array_equal(cached[0], every[rng.choice(len(every), size=min(sample, len(every)), replace=False)])
    current = reference["text_embedding"].iloc[::-1].reset_index(drop=True)  # another frame, same kind of column
    drawn, texts = current_embeddings(current, cached[1], sample, seed)
    stacked = _vectors(current)
    assert texts == len(stacked) and np.array_equal(drawn, stacked[rng.choice(len(stacked), size=min(sample, len(stacked)), replace=False)])

    copy = tmp_path / "reference"
    shutil.copytree(folder, copy)
    reference.iloc[1:].to_parquet(copy / "training_frame.parquet")  # as an erasure rewrites it
    assert _load_reference_embeddings(copy, sample, seed) is None


def test_a_large_population_reuses_the_last_evidently_report_while_nothing_moves_and_decides_the_same(monitored, tmp_path, monkeypatch):
    """Above FULL_REPORT_ROWS rows (lowered here to 100 of the 800 people) the first pass against a
    version draws the Evidently reports and keeps the current side's profile; a later pass whose
    data moved less than the REUSE_* limits reuses that report (no new Evidently snapshot, a short
    drift.html linking to it) and still decides on its own checks: every result equals the drawing
    pass's, the embedding score is the report's value, and the pass without a report state (as before
    this change) gives the same results. Lowering a limit to 0 makes the pass draw again."""
    import shutil

    import monitoring.monitor as M
    from flows.build_personas import _config

    home, _ = monitored
    copy = tmp_path / "ws"
    shutil.copytree(home, copy)  # MLflow's store still points at `home`'s artifacts: read only here
    cfg, ws = _config(str(copy))
    monkeypatch.setattr(M, "FULL_REPORT_ROWS", 100)
    record = ws.latest_run_record()

    def run(run_id):
        results, decision = M.run_checks(cfg, ws, run_id, record["ingest"], ws.last_healthy_ingest())
        return json.loads(json.dumps(results, default=str)), decision

    def checks(results):  # what the policy reads: everything but the report bookkeeping
        out = {k: v for k, v in results.items() if k != "evidently"}
        out["features"] = {k: v for k, v in results["features"].items() if k not in ("evidently_report", "evidently_sample_drifted_share", "reference_built_now")}
        out["embeddings"] = {k: v for k, v in results["embeddings"].items() if k != "report_score"}
        return out

    first, decided = run("pass-1")
    assert decided.action == "none", decided.fired
    assert first["features"]["method"] == "reference profile" and first["features"]["evidently_report"] == {"drawn": True, "run_id": "pass-1"}
    assert first["embeddings"]["score"] == first["embeddings"]["report_score"]  # the score alone is Evidently's report value
    assert len(first["evidently"]["snapshots"]) == 2
    state = M.last_report_folder(ws, first["model_version"])
    assert json.loads((state / "report.json").read_text())["run_id"] == "pass-1"

    second, again = run("pass-2")
    reused = second["features"]["evidently_report"]
    assert reused["drawn"] is False and reused["from_run"] == "pass-1" and reused["moved_since"]["largest_column_move"] == 0.0
    assert second["evidently"]["snapshots"] == [] and second["evidently"]["reused_from"] == "pass-1"
    assert (again.action, again.fired) == (decided.action, decided.fired) and checks(second) == checks(first)
    page = (ws.reports / "pass-2" / "drift.html").read_text()
    assert "../pass-1/drift.html" in page and "pass-1" in json.loads((ws.reports / "pass-2" / "drift.json").read_text())["evidently_report"]["from_run"]

    monkeypatch.setattr(M, "REUSE_MOVE", 0.0)  # any move at all counts: draw again
    third, _ = run("pass-3")
    assert third["features"]["evidently_report"] == {"drawn": True, "run_id": "pass-3"} and len(third["evidently"]["snapshots"]) == 2
    assert checks(third) == checks(first)

    monkeypatch.setattr(M, "last_report_folder", lambda ws, version: None)  # no report state: the pass as it was before reuse
    before, _ = run("pass-4")
    assert "evidently_report" not in before["features"] and len(before["evidently"]["snapshots"]) == 2
    assert checks(before) == checks(first)


def test_a_broken_source_goes_to_review_and_trains_nothing(monitored):
    home, data = monitored
    before = _versions(home)
    summary = _monitor(home, data / "sources_p2.yaml")
    assert summary["action"] == "review"
    assert "broken_source" in {f["rule"] for f in summary["fired"]}
    assert _versions(home) == before  # no model was trained, let alone promoted, on broken data
    queue = [json.loads(line) for line in (Path(home) / "governance" / "review_queue.jsonl").read_text().splitlines()]
    assert queue[-1]["status"] == "open" and queue[-1]["run_id"] == summary["run_id"]


def test_evidently_workspace_holds_every_monitoring_run(monitored):
    from evidently.ui.workspace import Workspace as EvidentlyWorkspace

    home, _ = monitored
    runs = [json.loads(line)["run_id"] for line in (Path(home) / "monitoring" / "decisions.jsonl").read_text().splitlines()]
    assert len(runs) >= 3  # the build's own pass, period 1, period 2
    workspace = EvidentlyWorkspace(str(Path(home) / "evidently"))
    projects = [p for p in workspace.list_projects() if p.name == "PersonaOps persona-model"]
    assert len(projects) == 1  # created once, then reused
    snapshots = [workspace.get_run(projects[0].id, sid) for sid in workspace.list_runs(projects[0].id)]
    feature_runs = {s.metadata["run_id"] for s in snapshots if "feature_drift" in s.tags}
    assert set(runs) <= feature_runs
    assert len(snapshots) == 2 * len(runs)  # feature drift + text-embedding drift per pass
    assert all(s.metric_results for s in snapshots)  # loadable, with results


def test_a_persona_mix_shift_emits_the_drift_event_whose_trigger_retrains_through_the_gate(monitored, retrain_deployment):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.flow_engine import run_flow

    from flows.monitor_personas import retrain_personas
    from monitoring.events import DRIFT_EVENT

    home, data = monitored
    champion_before = next(v for v, a in _versions(home).items() if "champion" in a)
    versions_before = _versions(home)
    summary = _monitor(home, data / "sources_p3.yaml", retrain_via_event=True)
    assert summary["action"] == "retrain"
    assert "persona_mix_shift" in {f["rule"] for f in summary["fired"]}
    assert DRIFT_EVENT in summary["outcome"]["retrain"] and _versions(home) == versions_before  # left to the automation
    assert summary["event"]["name"] == DRIFT_EVENT

    # the event reached the Prefect API with the decision and the report
    events = _wait(lambda: [e for e in _events(DRIFT_EVENT) if e.payload.get("run_id") == summary["run_id"]])
    assert len(events) == 1, "the drift event never reached the Prefect API"
    event = events[0]
    assert event.resource.id == "personaops.model.persona-model"
    assert event.payload["action"] == "retrain" and event.payload["home"] == str(home)
    assert event.payload["report"] == summary["reports"]["monitoring"] and Path(event.payload["report"]).is_file()
    assert "persona_mix_shift" in {f["rule"] for f in event.payload["fired"]}
    assert f"prefect.flow-run.{summary['flow_run_id']}" in {r.id for r in event.related}

    # the deployment's trigger started a retrain run with parameters from the event; run it
    with get_client(sync_client=True) as client:
        flow_runs = _wait(lambda: client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[retrain_deployment]))))
        assert len(flow_runs) == 1, "the drift trigger started no retrain run"
        flow_run = flow_runs[0]
        assert flow_run.parameters == {"home": str(home), "monitoring_run": summary["run_id"], "report": summary["reports"]["monitoring"]}
        result = run_flow(retrain_personas, flow_run=flow_run, parameters=flow_run.parameters)
        assert client.read_flow_run(flow_run.id).state.is_completed()
    retrain = result["outcome"]["retrain"]
    versions = _versions(home)
    gate_passed = all(check["passed"] for check in retrain["gate"])
    assert versions[retrain["version"]] == (["champion"] if gate_passed else ["challenger"])
    champion_after = next(v for v, a in versions.items() if "champion" in a)
    assert champion_after == (retrain["version"] if gate_passed else champion_before)
    if gate_passed:
        published = pd.read_parquet(Workspace(home).feature_table("persona_assignment"))
        assert retrain["version"] in set(published["model_version"])


def test_rollback_restores_the_previous_champion_online(monitored):
    from flows.monitor_personas import act
    from models import registry
    from monitoring.policy import Decision
    from personaops.config import load_config
    from personaops.feature_store import read_persona

    home, _ = monitored
    ws = Workspace(home)
    cfg = load_config()
    cfg.home = Path(home)
    if registry.previous_champion(ws, "persona-model") is None:  # the gate kept v1: make v2 champion first
        registry.promote(ws, cfg.model, max(_versions(home)), "test set-up", force=True)
    current = registry.alias_version(ws, "persona-model", "champion")
    previous = registry.previous_champion(ws, "persona-model")
    record = ws.latest_run_record()
    outcome = act(cfg, ws, Decision(action="rollback", fired=[{"rule": "persona_collapse"}]), "test", record["features"]["as_of"], False)
    assert outcome["rollback"] == {"from": current, "to": previous}
    assert registry.alias_version(ws, "persona-model", "champion") == previous
    person = pd.read_parquet(ws.identity / "record_person.parquet")["person_id"].iloc[0]
    assert int(read_persona(ws, cfg, [person]).iloc[0]["model_version"]) == previous
