"""The `personas` CLI as a user runs it: fresh workspace, separate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.e2e
PERSONAS = str(Path(sys.executable).with_name("personas"))


def personas(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "PERSONAS_"))}
    env["PERSONAS_HOME"] = str(home)
    return subprocess.run([PERSONAS, *args], env=env, cwd=cwd or home.parent, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    home = tmp_path_factory.mktemp("cli") / "ws"
    done = personas(home, "demo", "--users", "400", "--seed", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    return home, done


def test_demo_prints_the_catalogue_and_agreement(demo):
    _, done = demo
    assert "Persona catalogue" in done.stdout
    assert "adjusted Rand index" in done.stdout
    assert "Traceback" not in done.stderr


def test_get_in_a_new_process_reads_the_online_store(demo):
    home, _ = demo
    published = pd.read_parquet(home / "features" / "persona_assignment.parquet")
    row = published.iloc[7]
    done = personas(home, "get", row["person_id"], "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["person_id"] == row["person_id"] and got["persona_id"] == int(row["persona_id"])
    assert got["persona_name"] == row["persona_name"] and got["model_version"] == int(row["model_version"])
    by_key = json.loads(personas(home, "get", "--source", "crm", "--key", "C000001", "--json").stdout)
    mapping = pd.read_parquet(home / "identity" / "record_person.parquet")
    assert by_key["person_id"] == mapping[(mapping.source == "crm") & (mapping.source_key == "C000001")]["person_id"].iloc[0]


def test_catalogue_and_assignments_follow_the_contract(demo, tmp_path):
    home, _ = demo
    catalogue = json.loads(personas(home, "personas", "--json").stdout)
    assert catalogue["model"] == "persona-model" and catalogue["version"] == 1
    assert sum(p["size"] for p in catalogue["personas"]) == pd.read_parquet(home / "identity" / "record_person.parquet")["person_id"].nunique()
    for p in catalogue["personas"]:
        assert p["name"] and p["description"] and p["traits"]
        if p["persona_id"] >= 0 and p["size"] > 1:
            assert {"churned_rate", "campaign_conversion_rate", "engagement_events"} <= set(p["kpis"])
            lo, hi = p["kpis"]["churned_rate"]["ci95"]
            assert lo <= p["kpis"]["churned_rate"]["value"] <= hi
    out = tmp_path / "a.parquet"
    assert personas(home, "assignments", "--out", str(out)).returncode == 0
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["source", "source_key", "person_id", "persona_id", "persona_name", "confidence", "model_version"]
    assert frame["persona_id"].notna().all()
    monitor = json.loads(personas(home, "monitor", "--json").stdout)
    assert Path(monitor["reports"]["html"]).is_file() and 0.0 <= monitor["results"]["features"]["drifted_share"] <= 1.0
    assert monitor["action"] == "none" and monitor["model_version"] == 1  # same data as training: nothing to do


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "--sources", "/nonexistent/sources.yaml"], "does not exist"),
        (["get", "PNOBODY"], "run `personas run`"),
        (["models", "promote", "7"], "no version 7"),
    ],
)
def test_user_errors_are_one_sentence_without_traceback(tmp_path, args, fragment):
    done = personas(tmp_path / "empty-ws", *args)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and fragment in done.stderr.replace("\n", " ")


def test_a_bad_mapping_fails_inside_the_flow_with_one_sentence(tmp_path):
    (tmp_path / "crm.csv").write_text("id,mail\n1,a@b.co\n")
    (tmp_path / "sources.yaml").write_text("sources:\n- name: crm\n  kind: crm\n  path: crm.csv\n  key: id\n  identifiers: {email: email}\n")
    done = personas(tmp_path / "ws", "run", "--sources", str(tmp_path / "sources.yaml"))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "column 'email' of the mapping is not in" in done.stderr.replace("\n", " ")


def test_a_new_period_trains_a_challenger_gated_and_promote_rollback_republish(demo, tmp_path):
    home, _ = demo
    data = tmp_path / "p1"
    assert personas(home, "generate", "--users", "400", "--seed", "3", "--period", "1", "--out", str(data)).returncode == 0
    done = personas(home, "run", "--sources", str(data / "sources_p1.yaml"))
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(sorted((home / "runs").glob("*.json"))[-1].read_text())
    gate_ok = all(check["passed"] for check in record["train"]["gate"])
    listed = {v["version"]: v["aliases"] for v in json.loads(personas(home, "models", "list", "--json").stdout)}
    assert set(listed) == {1, 2}
    assert listed[2] == (["champion"] if gate_ok else ["challenger"])  # a promoted version drops challenger
    assert ("champion" in listed[1]) == (not gate_ok)
    champion = 2 if gate_ok else 1
    person = pd.read_parquet(home / "identity" / "record_person.parquet").query("source == 'crm'")["person_id"].iloc[0]
    assert json.loads(personas(home, "get", person, "--json").stdout)["model_version"] == champion
    # unchanged people keep their persona ids across versions (continuity)
    continuity = record["train"]["continuity"]
    assert continuity["previous_version"] == 1 and len(continuity["matched"]) >= 3

    assert personas(home, "models", "rollback", "--to", "1", "--reason", "bad drift").returncode == 0
    assert json.loads(personas(home, "get", person, "--json").stdout)["model_version"] == 1
    blocked = personas(home, "models", "promote", "2", "--force")
    assert blocked.returncode == 1 and "--force needs a --reason" in blocked.stderr
    assert personas(home, "models", "promote", "2", "--force", "--reason", "better stability").returncode == 0
    assert json.loads(personas(home, "get", person, "--json").stdout)["model_version"] == 2
    shown = json.loads(personas(home, "models", "show", "2", "--json").stdout)
    assert "champion" in shown["aliases"] and shown["metrics"]["stability"] > 0
    history = json.loads(personas(home, "models", "history", "--json").stdout)
    champion_moves = [m for m in history if m["alias"] == "champion"]
    assert champion_moves[-2]["reason"] == "rollback: bad drift" and champion_moves[-2]["version"] == 1
    assert champion_moves[-1]["reason"].startswith("better stability") and champion_moves[-1]["previous"] == 1
    assert all({"at", "actor", "previous", "version", "reason"} <= set(m) for m in history)
