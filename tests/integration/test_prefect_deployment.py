"""Prefect deployments on the production profile, run by a worker: `personas deploy` registers the
work pool and every deployment of flows/prefect.yaml (with the retrain automation) on the real
Prefect server that .ci/run starts through infra/services.sh; `infra/services.sh up worker` starts
a `prefect worker` on that pool; a run of the on-demand build deployment (300 generated people) is
executed by that worker, in its own process, and completes; the server lists the flow run with its
deployment; the champion's personas are read back through Feast from Redis; `infra/services.sh
stop` stops the worker. The pool has a name of this session's own and is deleted at the end, with
its deployments and automation. Missing services fail with one line, never a skip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import free_port
from tests.services import ROOT, SCRIPT, isolated_backends, service_environment, stop_services

pytestmark = pytest.mark.integration
USERS = 300
SUFFIX = f"-test-{uuid.uuid4().hex[:8]}"  # deployments are known by flow and name: this session's own
EXPECTED = {
    f"build_personas/build-personas-daily{SUFFIX}": ["0 3 * * *"],
    f"build_personas/build-personas-on-demand{SUFFIX}": [],
    f"monitor_personas/monitor-personas-every-6h{SUFFIX}": ["0 */6 * * *"],
    f"retrain_personas/retrain-personas-on-drift{SUFFIX}": [],
}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """(environment of the worker and the deploy, `personas deploy --json` output, worker infra dir)."""
    from personaops.generate import generate

    env, started = service_environment("mlflow", "prefect")
    infra_dir = None
    api = env["PERSONAS_PREFECT_API_URL"].rstrip("/")
    pool = f"personas{SUFFIX}"
    try:
        with isolated_backends(env) as isolated:
            tmp = tmp_path_factory.mktemp("deployment")
            generate(USERS, 11, tmp / "data")
            infra_dir = tmp / "worker-infra"  # the worker's pid file, log and Prefect home: this test's own
            run_env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "PERSONAS_"))}
            run_env.update(isolated)
            run_env.update(
                PERSONAS_PROFILE="production",
                PERSONAS_MLFLOW_TRACKING_URI=env["PERSONAS_MLFLOW_TRACKING_URI"],
                PREFECT_API_URL=api,
                PERSONAS_HOME=str(tmp / "ws"),
                PERSONAS_INFRA_DIR=str(infra_dir),
                PERSONAS_WORK_POOL=pool,
                PERSONAS_DEPLOYMENT_SUFFIX=SUFFIX,
                PERSONAS_WORKER_PORT=str(free_port()),
                PERSONAS_WORKER_QUERY_SECONDS="2",
                PERSONAS_SERVICES_WAIT_S="300",
                FEAST_USAGE="False",
                HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1",
                # The MLflow server outlives the session: a model and experiment of this run's own.
                PERSONAS_MODEL__REGISTERED_NAME=f"persona-model-deploy-{tmp.name}-{os.getpid()}",
                PERSONAS_MODEL__EXPERIMENT=f"personas-deploy-{tmp.name}-{os.getpid()}",
            )
            personas = str(Path(sys.executable).parent / "personas")
            done = subprocess.run([personas, "deploy", "--sources", str(tmp / "data" / "sources.yaml"), "--json"],
                                  cwd=tmp, env=run_env, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"personas deploy failed: {done.stderr.strip()[-2000:]}"
            result = json.loads(done.stdout)
            result["scheduled_before_pause"] = _scheduled_then_pause(api, result)
            # PERSONAS_SOURCES unset: the script starts the worker without deploying again.
            up = subprocess.run([str(SCRIPT), "up", "worker"], env=run_env, capture_output=True, text=True, timeout=600)
            assert up.returncode == 0, f"infra/services.sh up worker failed: {up.stderr.strip()[-2000:]}"
            yield run_env, result, infra_dir
    finally:
        if infra_dir is not None:
            subprocess.run([str(SCRIPT), "stop"], env=dict(os.environ, PERSONAS_INFRA_DIR=str(infra_dir)), capture_output=True, timeout=300)
        try:
            from flows.deploy import remove

            remove(api, pool, SUFFIX)
        finally:
            if started:
                stop_services()


def _scheduled_then_pause(api: str, result: dict) -> dict[str, list[str]]:
    """The start times of the runs the server scheduled for each scheduled deployment (waiting up
    to 2 min for its scheduler); then those deployments are paused, so that a schedule falling due
    while this test's worker is online (monitoring runs at 00/06/12/18 UTC) never runs in the
    test's workspace beside the on-demand build."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType

    scheduled = {d["name"]: d["id"] for d in result["deployments"] if d["schedules"]}
    out: dict[str, list[str]] = {}
    with SyncPrefectClient(api=api) as client:
        deadline = time.monotonic() + 120
        for name, deployment_id in scheduled.items():
            while True:
                runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                                             flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["SCHEDULED"]))))
                if runs or time.monotonic() > deadline:
                    break
                time.sleep(2)
            out[name] = sorted(r.expected_start_time.isoformat() for r in runs)
            client.pause_deployment(deployment_id)
    return out


def _client(run_env):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api=run_env["PREFECT_API_URL"])


def test_personas_deploy_registers_the_pool_the_deployments_and_the_automation(deployed):
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus

    run_env, result, _ = deployed
    pool = run_env["PERSONAS_WORK_POOL"]
    assert result["work_pool"] == pool and result["work_pool_created"] is True
    by_name = {d["name"]: d for d in result["deployments"]}
    assert {name: d["schedules"] for name, d in by_name.items()} == EXPECTED
    sources = str(Path(run_env["PERSONAS_HOME"]).parent / "data" / "sources.yaml")
    assert by_name[f"build_personas/build-personas-on-demand{SUFFIX}"]["parameters"] == {"sources": sources, "home": run_env["PERSONAS_HOME"]}
    assert by_name[f"monitor_personas/monitor-personas-every-6h{SUFFIX}"]["parameters"] == {"home": run_env["PERSONAS_HOME"], "retrain_via_event": True}
    # the server's scheduler planned the nightly build at 03:00 UTC and monitoring every 6 hours
    planned = result["scheduled_before_pause"]
    assert planned[f"build_personas/build-personas-daily{SUFFIX}"] and all("T03:00:00" in t for t in planned[f"build_personas/build-personas-daily{SUFFIX}"])
    monitor_times = planned[f"monitor_personas/monitor-personas-every-6h{SUFFIX}"]
    assert monitor_times and all(int(t[11:13]) % 6 == 0 and t[13:19] == ":00:00" for t in monitor_times)
    (automation,) = result["automations"]
    assert automation["enabled"] and automation["deployments"] == [by_name[f"retrain_personas/retrain-personas-on-drift{SUFFIX}"]["id"]]
    with _client(run_env) as client:  # what the server itself lists
        assert client.read_work_pool(pool).type == "process"
        for name, d in by_name.items():
            listed = client.read_deployment(d["id"])
            assert (listed.name, listed.work_pool_name) == (name.split("/")[1], pool)
            # nothing secret in a deployment: the worker's environment carries the connections
            assert "password" not in json.dumps(listed.model_dump(mode="json")).lower()
        deadline = time.monotonic() + 120  # the health endpoint may answer before the first heartbeat reaches the server
        while not (workers := client.read_workers_for_work_pool(pool, worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"])))):
            if time.monotonic() > deadline:
                break
            time.sleep(2)
    assert len(workers) == 1 and workers[0].name.startswith("personas-")


@pytest.fixture(scope="module")
def worker_run(deployed):
    """The on-demand build deployment, run by the worker: (flow run, deployment id)."""
    from prefect.client.schemas.objects import TERMINAL_STATES

    run_env, result, _ = deployed
    deployment_id = next(d["id"] for d in result["deployments"] if d["name"] == f"build_personas/build-personas-on-demand{SUFFIX}")
    with _client(run_env) as client:
        flow_run = client.create_flow_run_from_deployment(deployment_id)
        deadline = time.monotonic() + 1200
        while flow_run.state_type not in TERMINAL_STATES and time.monotonic() < deadline:
            time.sleep(2)
            flow_run = client.read_flow_run(flow_run.id)
    return flow_run, deployment_id


def test_the_worker_runs_the_on_demand_build_to_completion(deployed, worker_run):
    run_env, _, infra_dir = deployed
    flow_run, deployment_id = worker_run
    log = (Path(infra_dir) / "logs" / "worker.log").read_text(errors="replace")
    assert flow_run.state_type.value == "COMPLETED", f"flow run {flow_run.id} ended {flow_run.state_type}; worker log: {log[-2000:]}"
    assert str(flow_run.deployment_id) == deployment_id and flow_run.work_pool_name == run_env["PERSONAS_WORK_POOL"]
    # run by the worker, in a process of its own: it submitted the run and recorded the process id
    assert f"submitting flow run '{flow_run.id}'" in log
    assert flow_run.infrastructure_pid and str(os.getpid()) not in flow_run.infrastructure_pid.split(":")
    # the flow run wrote the workspace's run record (production profile, the deployment's parameters)
    records = [json.loads(p.read_text()) for p in (Path(run_env["PERSONAS_HOME"]) / "runs").glob("*.json")]
    assert [r["flow_run_id"] for r in records] == [str(flow_run.id)]
    assert records[0]["resolve"]["persons"] > USERS * 0.8


def test_the_server_lists_the_flow_run_with_its_deployment(deployed, worker_run):
    import httpx

    run_env, _, _ = deployed
    flow_run, deployment_id = worker_run
    api = run_env["PREFECT_API_URL"]
    listed = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"deployment_id": {"any_": [deployment_id]}}}, timeout=30).json()
    assert [(r["id"], r["state_type"]) for r in listed] == [(str(flow_run.id), "COMPLETED")]
    flow = httpx.get(f"{api}/flows/{listed[0]['flow_id']}", timeout=30).json()
    assert flow["name"] == "build_personas"


def test_the_champion_is_read_from_redis_through_feast(deployed, worker_run, monkeypatch):
    run_env, _, _ = deployed
    assert worker_run[0].state_type.value == "COMPLETED"
    for name in ("PERSONAS_HOME", "PERSONAS_FEAST_REGISTRY_URL", "PERSONAS_FEAST_REDIS"):
        monkeypatch.setenv(name, run_env[name])
    from feast import FeatureStore

    repo = ROOT / "feature_repo"
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / "feature_store.production.yaml")
    assert store.config.online_store.type == "redis" and store.config.registry.registry_type == "sql"
    published = pd.read_parquet(Path(run_env["PERSONAS_HOME"]) / "features" / "persona_assignment.parquet")
    sample = published.sample(min(60, len(published)), random_state=0)
    served = store.get_online_features(
        features=["persona_assignment:persona_id", "persona_assignment:model_version"],
        entity_rows=[{"person_id": p} for p in sample["person_id"]],
    ).to_df()
    assert len(sample) >= 50
    assert served["persona_id"].tolist() == sample["persona_id"].tolist()
    assert set(served["model_version"]) == {1}  # this run's own model: version 1 is the champion
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=run_env["PERSONAS_MLFLOW_TRACKING_URI"], registry_uri=run_env["PERSONAS_MLFLOW_TRACKING_URI"])
    assert client.get_registered_model(run_env["PERSONAS_MODEL__REGISTERED_NAME"]).aliases.get("champion") == "1"


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_services_stop_ends_the_worker(deployed, worker_run):
    """Last: `infra/services.sh stop` on the worker's infra dir ends the worker process and its health endpoint."""
    run_env, _, infra_dir = deployed
    pid = int((Path(infra_dir) / "worker.pid").read_text())
    assert _alive(pid)
    status = subprocess.run([str(SCRIPT), "status"], env=run_env, capture_output=True, text=True, timeout=120)
    assert any(line.split()[:2] == ["worker", "up"] for line in status.stdout.splitlines()), status.stdout
    done = subprocess.run([str(SCRIPT), "stop"], env=dict(os.environ, PERSONAS_INFRA_DIR=str(infra_dir)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "worker stopped" in done.stderr
    assert not _alive(pid)
    assert not (Path(infra_dir) / "worker.pid").exists()
