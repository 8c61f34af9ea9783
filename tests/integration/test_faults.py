"""Fault injection on real services of the production profile (issue #11): each test starts its
own Redis, PostgreSQL and MLflow server on free ports (tests/services.own_services), so killing
them never disturbs other tests.

- Redis is killed (SIGKILL) in the middle of a publish and restarted: the publish retries and
  completes; readers in other threads never see a person with fields of two model versions, and
  never an empty person once one is published; Redis down for good gives one line after bounded
  retries, and a later publish recovers.
- PostgreSQL (the Feast SQL registry and MLflow's backend) is down when `personas run` starts: one
  line naming PostgreSQL, where, and what to do, after bounded retries, no traceback; once it is
  back, the same command completes.
- The MLflow server is killed while the run trains (its MLflow run exists): the run ends with one
  line naming the MLflow server, no version is promoted by it; restarted, the next run completes
  and its champion is a completed version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from personaops.errors import PersonaOpsError
from personaops.feature_store import ASSIGNMENT_FEATURES, ASSIGNMENT_VIEW, feature_store
from personaops.retry import RetryPolicy, ServiceUnavailableError
from tests.helpers import assignment_rows, production_assignment_store
from tests.services import ROOT, own_services

pytestmark = [pytest.mark.integration, pytest.mark.faults]
AT = pd.Timestamp("2026-03-01T12:00:00Z")
PERSONS = 20_000


@pytest.fixture(scope="module")
def own():
    """This module's own Redis (append-only file on, password required), PostgreSQL, MLflow server
    and Prefect server (a running one: the ephemeral API's start-up is not under test here)."""
    with own_services("mlflow", "prefect") as services:
        yield services


@pytest.fixture
def prod(own, tmp_path, monkeypatch):
    """(cfg, ws, store) on the production profile, against the module's own services."""
    for name in ("PERSONAS_FEAST_REGISTRY_URL", "PERSONAS_FEAST_REDIS", "PERSONAS_REDIS_URL"):
        monkeypatch.setenv(name, own.env[name])
    monkeypatch.setenv("PERSONAS_PROFILE", "production")
    return production_assignment_store(tmp_path / "ws", _assignments(["p0"], 1, 0))


def _assignments(ids: list[str], version: int, seed: int) -> pd.DataFrame:
    return assignment_rows(ids, version, seed, AT, AT + pd.Timedelta(minutes=version))


class Readers:
    """Threads reading a sample of persons through the stock Feast SDK until stopped; every read
    row is checked against the version its model_version names."""

    def __init__(self, cfg, ws, ids: list[str], versions: dict[int, pd.DataFrame], threads: int = 2):
        self.cfg, self.ws, self.ids = cfg, ws, ids
        self.versions = {v: rows.set_index("person_id") for v, rows in versions.items()}
        self.stop = threading.Event()
        self.reads = self.unavailable = 0
        self.seen: set[int] = set()
        self.mixed: list = []
        self.empty: list = []
        self.threads = [threading.Thread(target=self.loop, args=(k,)) for k in range(threads)]

    def loop(self, k: int) -> None:
        store = feature_store(self.ws, self.cfg)
        features = [f"{ASSIGNMENT_VIEW}:{f}" for f in ASSIGNMENT_FEATURES]
        sample = self.ids[k::97][:200]  # spread over the whole publish order
        while not self.stop.is_set():
            try:
                got = store.get_online_features(features=features, entity_rows=[{"person_id": p} for p in sample]).to_df()
            except Exception:  # noqa: BLE001 - Redis down: the read fails, it does not lie
                self.unavailable += 1
                time.sleep(0.05)
                continue
            for row in got.itertuples(index=False):
                self.reads += 1
                if pd.isna(row.model_version):
                    self.empty.append(row.person_id)
                    continue
                expected = self.versions[int(row.model_version)].loc[row.person_id]
                self.seen.add(int(row.model_version))
                if row.persona_id != expected["persona_id"] or row.persona_name != expected["persona_name"] or not np.isclose(row.confidence, expected["confidence"]):
                    self.mixed.append(row)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def test_redis_killed_mid_publish_retries_and_readers_never_see_a_mix(prod, own, monkeypatch):
    cfg, ws, store = prod
    from personaops import online_publish

    ids = [f"rf-{i:05d}" for i in range(PERSONS)]
    v1, v2 = _assignments(ids, 1, 21), _assignments(ids, 2, 22)
    first = online_publish.online_publisher(store)
    first.replace(ASSIGNMENT_VIEW, v1)
    time.sleep(1.5)  # Redis fsyncs its append-only file every second: version 1 is on disk

    # The fault: SIGKILL Redis after 10 of the publish's batches have been sent, restart it 1 s later.
    sent, events = [0], {}
    original = online_publish._send_commands

    def send_and_kill(conn, commands):
        sent[0] += 1
        if sent[0] == 10:
            own.ctl("down", "redis")
            events["killed"] = time.monotonic()

            def restart():
                time.sleep(1.0)
                own.ctl("up", "redis")
                events["up"] = time.monotonic()

            threading.Thread(target=restart).start()
        return original(conn, commands)

    monkeypatch.setattr(online_publish, "_send_commands", send_and_kill)
    publisher = online_publish.online_publisher(store)
    publisher.batch_persons = 200  # 100 batches: the kill lands in the middle
    publisher.retry_policy = RetryPolicy(attempts=8, first_wait_s=0.5, max_wait_s=2.0)
    with Readers(cfg, ws, ids, {1: v1, 2: v2}) as readers:
        time.sleep(0.5)
        publisher.replace(ASSIGNMENT_VIEW, v2)
        done = time.monotonic()
        time.sleep(0.5)
    print(
        f"\nredis kill mid-publish: {publisher.retries.attempts} attempts, {publisher.retries.seconds:.2f} s in the publish; "
        f"Redis back {events['up'] - events['killed']:.2f} s after the kill, publish complete {done - events['killed']:.2f} s after it; "
        f"{readers.reads:,} person reads, {readers.unavailable} failed reads while down, versions seen {sorted(readers.seen)}"
    )
    assert "killed" in events and sent[0] > 10, "the fault was not injected"
    assert publisher.retries.attempts >= 2, "the publish did not retry"
    assert readers.reads > 0
    assert not readers.mixed, f"{len(readers.mixed)} reads mixed two versions, e.g. {readers.mixed[0]}"
    assert not readers.empty, f"{len(readers.empty)} reads found a published person empty, e.g. {readers.empty[0]}"
    after = feature_store(ws, cfg).get_online_features(features=[f"{ASSIGNMENT_VIEW}:{f}" for f in ASSIGNMENT_FEATURES], entity_rows=[{"person_id": p} for p in ids]).to_df()
    assert after["model_version"].tolist() == [2] * PERSONS
    assert after["persona_id"].tolist() == v2["persona_id"].tolist()
    client = publisher.client()
    try:  # the interrupted attempt's list of keys is gone: the next publish cleans nothing twice
        assert client.get(publisher.members_key(store.get_feature_view(ASSIGNMENT_VIEW)) + b":next") is None
    finally:
        client.close()


def test_redis_down_gives_one_line_after_bounded_retries_and_a_later_publish_recovers(prod, own):
    cfg, ws, store = prod
    from personaops.online_publish import online_publisher

    ids = [f"rd-{i:04d}" for i in range(2_000)]
    v1, v3 = _assignments(ids, 1, 31), _assignments(ids, 3, 33)
    online_publisher(store).replace(ASSIGNMENT_VIEW, v1)
    time.sleep(1.5)
    own.ctl("down", "redis")
    try:
        publisher = online_publisher(store)
        publisher.retry_policy = RetryPolicy(attempts=4, first_wait_s=0.25, max_wait_s=1.0)
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as failed:
            publisher.replace(ASSIGNMENT_VIEW, v3)
        took = time.monotonic() - started
    finally:
        own.ctl("up", "redis")
    message = str(failed.value)
    print(f"\nredis down: gave up after {publisher.retries.attempts} attempts in {took:.2f} s: {message}")
    assert isinstance(failed.value, PersonaOpsError)  # the CLI prints it as one line, exit 1
    assert "\n" not in message and message.startswith(f"Redis (the online store) at 127.0.0.1:{own.ports['redis']} did not answer after 4 attempts")
    assert "infra/services.sh up redis" in message
    assert publisher.retries.attempts == 4 and took < 10
    # Back up: the append-only file kept version 1 whole, and the next publish replaces it.
    before = feature_store(ws, cfg).get_online_features(features=[f"{ASSIGNMENT_VIEW}:model_version"], entity_rows=[{"person_id": p} for p in ids]).to_df()
    assert before["model_version"].tolist() == [1] * len(ids)
    online_publisher(store).replace(ASSIGNMENT_VIEW, v3)
    after = feature_store(ws, cfg).get_online_features(features=[f"{ASSIGNMENT_VIEW}:{f}" for f in ASSIGNMENT_FEATURES], entity_rows=[{"person_id": p} for p in ids]).to_df()
    assert after["model_version"].tolist() == [3] * len(ids)
    assert np.allclose(after["confidence"], v3["confidence"])


# --- whole runs through the CLI: PostgreSQL down at start, the MLflow server down while training ---
USERS = 400  # as tests/integration/test_production_profile.py: enough for the first version to pass the gate
SECRETS = {"api_token": "tok-" + os.urandom(12).hex(), "audit_key": "audit-" + os.urandom(12).hex()}


def _leaks(secrets: dict[str, str], home: Path, texts: dict[str, str], mlflow_uri: str, experiment: str, prefect_api: str, flow_run_id: str) -> list[str]:
    """Where any secret value appears: every file of the workspace (logs, reports, run records,
    audit log, lake, MLflow artifacts there), the command's output, every MLflow param and tag
    of the run's experiment and registered versions, and the Prefect server's logs of the run."""
    import httpx
    from mlflow import MlflowClient

    found = []
    values = {name: value.encode() for name, value in secrets.items() if value}
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{name} in {path.relative_to(home)}" for name, v in values.items() if v in data]
    for where_, text in texts.items():
        found += [f"{name} in {where_}" for name, v in values.items() if v.decode() in text]
    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    assert runs, "the scan found no MLflow run to look at"
    for run in runs:
        blob = json.dumps({"params": run.data.params, "tags": run.data.tags, "metrics": list(run.data.metrics)})
        found += [f"{name} in MLflow run {run.info.run_id} params/tags" for name, v in values.items() if v.decode() in blob]
    logs = httpx.post(f"{prefect_api.rstrip('/')}/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}, timeout=30).json()
    assert logs, "the scan found no Prefect log of the run"
    found += [f"{name} in the Prefect logs" for name, v in values.items() if v.decode() in json.dumps(logs)]
    return found


@pytest.fixture(scope="module")
def run_env(own, tmp_path_factory):
    """Environment of a production-profile `personas run` on this module's own services, with a
    running Prefect server."""
    tmp = tmp_path_factory.mktemp("runs")
    from personaops.generate import generate

    generate(USERS, 5, tmp / "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERSONAS_", "PREFECT_", "MLFLOW_"))}
    env.update({k: own.env[k] for k in ("PERSONAS_FEAST_REGISTRY_URL", "PERSONAS_FEAST_REDIS", "PERSONAS_REDIS_URL", "PERSONAS_MLFLOW_TRACKING_URI")})
    env.update(
        PERSONAS_PROFILE="production", PREFECT_API_URL=own.env["PERSONAS_PREFECT_API_URL"], FEAST_USAGE="False", HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1", PERSONAS_SERVICE_ATTEMPTS="4", PERSONAS_SERVICE_MAX_WAIT_S="1",
        # MLflow's own client retries (7 by default, up to minutes): bounded for the test.
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="3", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1", MLFLOW_HTTP_REQUEST_TIMEOUT="20",
        PERSONAS_MODEL__REGISTERED_NAME=f"persona-model-faults-{os.getpid()}", PERSONAS_MODEL__EXPERIMENT=f"personas-faults-{os.getpid()}",
        # Secrets a production run has in its environment: none may appear in anything it writes.
        PERSONAS_API_TOKENS=f"{SECRETS['api_token']}:reader", PERSONAS_AUDIT_KEY=SECRETS["audit_key"],
    )  # fmt: skip
    yield env, tmp


def _personas(env: dict, home: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    # A whole production-profile run: minutes on a quiet machine, over 25 at load average 25 on 2 cores.
    return subprocess.run([sys.executable, "-c", "from personaops.cli import main; main()", *args], cwd=ROOT, env={**env, "PERSONAS_HOME": str(home)}, capture_output=True, text=True, timeout=timeout)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_postgres_down_at_start_is_one_line_then_a_later_run_recovers(own, run_env):
    env, tmp = run_env
    home = tmp / "ws-pg"
    own.ctl("down", "postgres")
    try:
        started = time.monotonic()
        failed = _personas(env, home, "run", "--sources", str(tmp / "data" / "sources.yaml"))
        took = time.monotonic() - started
    finally:
        own.ctl("up", "postgres")
    errors = _error_lines(failed.stderr)
    print(f"\npostgres down at start: exit {failed.returncode} after {took:.1f} s: {errors}")
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "Traceback" not in failed.stderr
    assert len(errors) == 1, failed.stderr[-2000:]
    assert f"PostgreSQL (the Feast SQL registry) at 127.0.0.1:{own.ports['postgres']} did not answer after 4 attempts" in errors[0]
    assert "infra/services.sh up postgres" in errors[0]
    password = own.env["PERSONAS_PG_URL"].split(":")[2].split("@")[0]
    assert password not in failed.stderr and password not in failed.stdout
    assert not list((home / "runs").glob("*.json")) if (home / "runs").exists() else True  # no run record: nothing ran

    started = time.monotonic()
    recovered = _personas(env, home, "run", "--sources", str(tmp / "data" / "sources.yaml"))
    print(f"postgres back: the same command completed in {time.monotonic() - started:.1f} s")
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    records = list((home / "runs").glob("*.json"))
    assert len(records) == 1

    # No secret of the run's environment in anything the run wrote or printed.
    secrets = {**SECRETS, "postgres_password": password, "redis_password": own.redis_password}
    assert own.redis_password and own.redis_password in env["PERSONAS_FEAST_REDIS"]  # Redis did require it
    record = json.loads(records[0].read_text())
    leaks = _leaks(secrets, home, {"stdout": recovered.stdout, "stderr": recovered.stderr}, env["PERSONAS_MLFLOW_TRACKING_URI"], env["PERSONAS_MODEL__EXPERIMENT"], env["PREFECT_API_URL"], record["flow_run_id"])
    assert leaks == [], leaks


def test_mlflow_server_killed_while_training_fails_in_one_line_and_promotes_nothing(own, run_env):
    env, tmp = run_env
    env = {**env, "PERSONAS_MODEL__REGISTERED_NAME": f"persona-model-mlflow-fault-{os.getpid()}", "PERSONAS_MODEL__EXPERIMENT": f"personas-mlflow-fault-{os.getpid()}"}
    home = tmp / "ws-mlflow"
    uri = env["PERSONAS_MLFLOW_TRACKING_URI"]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = subprocess.Popen([sys.executable, "-c", "from personaops.cli import main; main()", "run", "--sources", str(tmp / "data" / "sources.yaml")], cwd=ROOT, env={**env, "PERSONAS_HOME": str(home)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed_at = None
    try:
        # The fault: as soon as the training's MLflow run exists (logging under way), SIGKILL the server.
        deadline = time.monotonic() + 3600
        while killed_at is None and run.poll() is None and time.monotonic() < deadline:
            experiment = client.get_experiment_by_name(env["PERSONAS_MODEL__EXPERIMENT"])
            if experiment is not None and client.search_runs([experiment.experiment_id], max_results=1):
                own.ctl("down", "mlflow")
                killed_at = time.monotonic()
            else:
                time.sleep(0.3)
        stdout, stderr = run.communicate(timeout=1800)
    finally:
        if run.poll() is None:
            run.kill()
        own.ctl("up", "mlflow")
    errors = _error_lines(stderr)
    print(f"\nmlflow killed while training: exit {run.returncode}, {time.monotonic() - killed_at:.1f} s after the kill (incl. restart): {errors}")
    assert killed_at is not None, f"the run ended before training started: {stderr[-2000:]}"
    assert run.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    assert len(errors) == 1 and f"The MLflow server at 127.0.0.1:{own.ports['mlflow']} stopped answering" in errors[0], stderr[-3000:]
    assert "infra/services.sh up mlflow" in errors[0]
    name = env["PERSONAS_MODEL__REGISTERED_NAME"]
    aliased = [v for v in client.search_model_versions(f"name='{name}'") if v.aliases] if client.search_registered_models(f"name='{name}'") else []
    assert aliased == [], f"a version of the failed run got an alias: {[(v.version, v.aliases) for v in aliased]}"
    assert not (home / "runs").exists() or not list((home / "runs").glob("*.json"))

    started = time.monotonic()
    recovered = _personas(env, home, "run", "--sources", str(tmp / "data" / "sources.yaml"))
    print(f"mlflow back: the next run completed in {time.monotonic() - started:.1f} s")
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    model = client.get_registered_model(name)
    champion = client.get_model_version(name, model.aliases["champion"])
    assert champion.tags.get("personas.train_complete") == "true"
    assert client.get_run(champion.run_id).info.status == "FINISHED"
    record = json.loads(next((home / "runs").glob("*.json")).read_text())
    assert int(record["publish"]["model_version"]) == int(champion.version)
