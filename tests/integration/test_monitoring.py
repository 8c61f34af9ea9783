"""Monitoring that acts, end to end on small generated data: a no-change period, a planted
persona-mix shift, a broken source and a rollback, with the real Evidently, MLflow and Prefect."""

from __future__ import annotations

import json
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


def _monitor(home: Path, sources: Path) -> dict:
    from flows.monitor_personas import monitor_personas

    return monitor_personas(sources=str(sources), home=str(home))


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


def test_a_broken_source_goes_to_review_and_trains_nothing(monitored):
    home, data = monitored
    before = _versions(home)
    summary = _monitor(home, data / "sources_p2.yaml")
    assert summary["action"] == "review"
    assert "broken_source" in {f["rule"] for f in summary["fired"]}
    assert _versions(home) == before  # no model was trained, let alone promoted, on broken data
    queue = [json.loads(line) for line in (Path(home) / "governance" / "review_queue.jsonl").read_text().splitlines()]
    assert queue[-1]["status"] == "open" and queue[-1]["run_id"] == summary["run_id"]


def test_a_persona_mix_shift_retrains_and_only_the_gate_promotes(monitored):
    home, data = monitored
    champion_before = next(v for v, a in _versions(home).items() if "champion" in a)
    summary = _monitor(home, data / "sources_p3.yaml")
    assert summary["action"] == "retrain"
    assert "persona_mix_shift" in {f["rule"] for f in summary["fired"]}
    retrain = summary["outcome"]["retrain"]
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
