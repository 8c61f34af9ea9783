"""Crash and resume: `personas run` SIGKILLed at every stage, then re-run, ends where an
uninterrupted run ends — and a second run on a busy workspace waits or refuses.

The kill is deterministic: `PERSONAS_FAULT_KILL_AT=<stage>` makes the CLI process SIGKILL itself
at that stage's start (`personaops.workspace.fault_point`). One workspace goes through a chain of
killed runs, each getting one stage further than the last (ingest, resolve, features, quality,
train, train.registered — after the model version is registered, before any alias moves —,
publish, monitor), then one clean run; a second workspace has one uninterrupted run on the same
data. After every kill: no run manifest was committed, no version without a finished training is
champion, and the online store serves one whole model version (or nothing before the first
publish). At the end both workspaces hold the same records, persons and personas.

Every CLI run talks to the session's Prefect test server (PREFECT_API_URL) instead of starting
its own ephemeral server.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from personaops.generate import generate
from tests.badinput import corrupt_source_set

pytestmark = pytest.mark.integration

USERS = 150
PERSONAS = str(Path(sys.executable).with_name("personas"))
# "train.registered" kills inside the train stage (after the version is registered, before its
# aliases move): it covers a kill at the train stage and leaves an orphan version behind.
KILL_POINTS = ["ingest", "resolve", "features", "quality", "train.registered", "publish", "monitor"]
MODEL = "persona-model"


@pytest.fixture(scope="module")
def env(prefect_api) -> dict:
    from prefect.settings import PREFECT_API_URL

    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "PERSONAS_"))}
    base.update(FEAST_USAGE="False", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                PREFECT_API_URL=str(PREFECT_API_URL.value()), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")  # fmt: skip
    return base


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("crash-data")
    generate(USERS, 5, out)
    # bad rows in every CSV source (the CLI-level bad-input run): the clean run must quarantine
    # them with reasons, and the resumed run exactly as the clean one
    added = corrupt_source_set(out)
    assert {"crm", "tickets", "campaigns"} <= set(added), added
    (out / "added.json").write_text(json.dumps(added))
    return out


def personas(home: Path, env: dict, *args: str, kill_at: str | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    run_env = {**env, "PERSONAS_HOME": str(home)}
    if kill_at:
        run_env["PERSONAS_FAULT_KILL_AT"] = kill_at
    return subprocess.run([PERSONAS, *args], env=run_env, capture_output=True, text=True, timeout=timeout)


def online_versions(home: Path) -> dict[str, int]:
    """person_id -> model_version of every row in the online assignment table ({} if none)."""
    from feast.protos.feast.types.Value_pb2 import Value

    db = home / "feast" / "online_store.db"
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE '%persona_assignment'")]
        if not tables:
            return {}
        rows = conn.execute(f'SELECT entity_key, value FROM "{tables[0]}" WHERE feature_name = ?', ("model_version",)).fetchall()
    out = {}
    for key, value in rows:
        person = key.split(b"person_id", 1)[1][8:].decode()  # value type and length, then the id
        out[person] = Value.FromString(value).int64_val
    return out


def registry_state(home: Path, env: dict | None = None) -> list[dict]:
    """Every registered version of the persona model with its aliases and tags, read straight
    from the workspace's MLflow SQLite store (MLflow's own client would cost an import per call)."""
    db = home / "mlflow" / "mlflow.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "model_versions" not in tables:
            return []
        versions = [r[0] for r in conn.execute("SELECT version FROM model_versions WHERE name = ? ORDER BY version", (MODEL,))]
        aliases = conn.execute("SELECT version, alias FROM registered_model_aliases WHERE name = ?", (MODEL,)).fetchall()
        tags = conn.execute("SELECT version, key, value FROM model_version_tags WHERE name = ?", (MODEL,)).fetchall()
    return [
        {"version": v, "aliases": sorted(a for ver, a in aliases if ver == v), "tags": {k: val for ver, k, val in tags if ver == v}}
        for v in versions
    ]


def published(home: Path) -> pd.DataFrame:
    """(source, source_key) -> person_id, persona_id of the last run's published model version."""
    record = json.loads(sorted((home / "runs").glob("*.json"))[-1].read_text())
    version = record["publish"]["model_version"]
    table = pd.read_parquet(home / "features" / "persona_assignment.parquet")
    current = table[table["model_version"] == version]
    assert current["person_id"].is_unique, "a person published twice for one model version"
    records = pd.read_parquet(home / "identity" / "record_person.parquet", columns=["source", "source_key", "person_id"])
    assert not records.duplicated(["source", "source_key"]).any(), "a source record mapped twice"
    return records.merge(current[["person_id", "persona_id"]], on="person_id", how="left").sort_values(["source", "source_key"]).reset_index(drop=True)


def lake_rows(home: Path) -> dict[str, int]:
    return {p.name: sum(len(pd.read_parquet(f)) for f in p.glob("batch=*/part-0.parquet")) for p in sorted((home / "lake").iterdir()) if p.is_dir()}


def test_killed_at_every_stage_then_resumed_equals_an_uninterrupted_run(tmp_path, data, env):
    sources = str(data / "sources.yaml")
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    started = time.perf_counter()
    done = personas(clean, env, "run", "--sources", sources)
    assert done.returncode == 0, done.stderr[-3000:]
    clean_seconds = time.perf_counter() - started
    assert "Traceback" not in done.stderr
    # the bad rows: rows in = accepted + quarantined per source, each planted bad row quarantined
    record = json.loads(sorted((clean / "runs").glob("*.json"))[-1].read_text())
    added = json.loads((data / "added.json").read_text())
    for source in record["ingest"]:
        assert source["rows_in"] == source["accepted"] + source["quarantined"], source
        if source["source"] in added:
            assert source["quarantined"] >= added[source["source"]] - 1, source  # all but the injection row
    reasons = pd.concat([pd.read_parquet(p) for p in (clean / "lake" / "_quarantine").glob("*/batch=*/part-0.parquet")])["reason"]
    for expected in ("is not a date-time", "in the future", "no identifier", "not valid UTF-8", "too long", "malformed line", "duplicate"):
        assert reasons.str.contains(expected, regex=False).any(), expected

    ever_published = False
    for point in KILL_POINTS:
        runs_before = len(list((crashed / "runs").glob("*.json"))) if (crashed / "runs").is_dir() else 0
        done = personas(crashed, env, "run", "--sources", sources, kill_at=point)
        assert done.returncode == -signal.SIGKILL, (point, done.returncode, done.stderr[-3000:])
        assert "Traceback" not in done.stderr
        # the manifest is committed last: a killed run leaves none
        assert len(list((crashed / "runs").glob("*.json"))) == runs_before, point
        # no version whose training did not finish is champion (or challenger)
        for v in registry_state(crashed, env):
            if v["tags"].get("personas.train_complete") != "true":
                assert not v["aliases"], (point, v)
        # the online store serves one whole version, or nothing before the first publish
        online = online_versions(crashed)
        if ever_published or online:
            assert online, f"online store emptied by a kill at {point}"
            assert len(set(online.values())) == 1, f"mixed model versions online after a kill at {point}: {set(online.values())}"
            ever_published = True
        if point == "train.registered":
            orphan = registry_state(crashed, env)
            assert [v["aliases"] for v in orphan] == [[]], orphan  # registered, never promoted

    done = personas(crashed, env, "run", "--sources", sources)
    assert done.returncode == 0, done.stderr[-3000:]

    # the same records, persons and personas as the uninterrupted run; nothing duplicated
    assert lake_rows(crashed) == lake_rows(clean)
    a, b = published(clean), published(crashed)
    assert len(a) == len(b) and a["persona_id"].notna().all()
    pd.testing.assert_frame_equal(a, b)
    online = online_versions(crashed)
    assert set(online) == set(b["person_id"]) and len(set(online.values())) == 1
    # the orphan (v1, killed after registration) never held an alias; v2 finished and serves
    versions = registry_state(crashed, env)
    assert versions[0]["aliases"] == [] and "personas.train_complete" not in versions[0]["tags"]
    champion = [v for v in versions if "champion" in v["aliases"]]
    assert len(champion) == 1 and champion[0]["tags"].get("personas.train_complete") == "true"
    moves = [json.loads(line) for line in (crashed / "audit.jsonl").read_text().splitlines() if line.strip()]
    assert not [m for m in moves if m.get("event") == "model_alias_moved" and m.get("model") == MODEL and m.get("version") == versions[0]["version"]]
    print(f"\nclean run {clean_seconds:.1f} s; crash chain + resume {time.perf_counter() - started - clean_seconds:.1f} s; load {os.getloadavg()[0]:.2f}")


HOLDER = """
import sys, time
from pathlib import Path
from personaops.workspace import Workspace
with Workspace(Path(sys.argv[1])).lock("test holder"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_run_on_a_busy_workspace_waits_or_refuses_and_a_killed_holder_is_taken_over(tmp_path, data, env):
    home = tmp_path / "ws"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(home)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = personas(home, env, "run", "--sources", str(data / "sources.yaml"))
        assert refused.returncode == 1
        message = refused.stderr.strip()
        assert "Traceback" not in message and len(message.splitlines()) <= 3, message
        assert f"pid {holder.pid}" in message and "PERSONAS_LOCK_TIMEOUT" in message, message
        assert not (home / "lake").exists() and not (home / "runs").exists()  # nothing written

        from personaops.errors import PersonaOpsError
        from personaops.workspace import Workspace

        started = time.perf_counter()
        with pytest.raises(PersonaOpsError, match="is in use by"):
            with Workspace(home).lock("waiter", timeout=1.0):
                pass
        assert time.perf_counter() - started >= 0.9  # it waited for the timeout before refusing
    finally:
        holder.send_signal(signal.SIGKILL)  # the holder dies without releasing: a stale lock file
        holder.wait(timeout=30)
    assert json.loads((home / ".lock").read_text())["pid"] == holder.pid
    with Workspace(home).lock("after a crash", timeout=0) as lock:  # the kernel dropped the flock
        assert lock.took_over["pid"] == holder.pid
        with Workspace(home).lock("re-entrant", timeout=0):  # the flow inside the CLI takes it again
            pass
    entries = [json.loads(line) for line in (home / "audit.jsonl").read_text().splitlines() if line.strip()]
    assert any(e["event"] == "workspace_lock_taken_over" and e["stale_pid"] == holder.pid for e in entries)
    assert json.loads((home / ".lock").read_text()).get("released")


def test_a_source_missing_a_mapped_column_is_one_sentence_before_anything_runs(tmp_path, data, env):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "crm.csv").write_text("customer_id,email\nC1,a@example.com\n")
    (bad / "sources.yaml").write_text(
        "sources:\n  - {name: crm, kind: crm, path: crm.csv, key: customer_id, identifiers: {customer_id: customer_id, email: email, phone: phone}}\n"
    )
    started = time.perf_counter()
    done = personas(tmp_path / "ws", env, "run", "--sources", str(bad / "sources.yaml"))
    assert done.returncode == 1
    message = done.stderr.strip()
    assert "Traceback" not in message and len(message.splitlines()) <= 3, message
    assert "column 'phone' of the mapping is not in" in message and "crm.csv" in message, message
    assert not (tmp_path / "ws" / "lake").exists()  # refused before any stage ran
    print(f"\nrefused in {time.perf_counter() - started:.1f} s")
