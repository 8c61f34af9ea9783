"""The production profile end to end on real services (started by infra/services.sh, as .ci/run
does): the pipeline runs with PERSONAS_PROFILE=production on tiny generated data, the champion's
personas are read back through the Feast SDK from Redis (PostgreSQL SQL registry), the MLflow
server lists the model, and the Prefect server lists the flow run. Missing services fail with
one line, never a skip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.services import ROOT, isolated_backends, service_environment, stop_services

pytestmark = pytest.mark.integration
USERS = 400

PIPELINE = r"""
import json, sys
from personaops.generate import generate
from flows.build_personas import build_personas
out, home = sys.argv[1], sys.argv[2]
generate(int(sys.argv[3]), 7, out)
state = build_personas(sources=out + "/sources.yaml", home=home, return_state=True)
record = state.result()
print("RESULT" + json.dumps({"flow_run_id": str(state.state_details.flow_run_id), "record": record}, default=str))
"""


@pytest.fixture(scope="module")
def production_run(tmp_path_factory):
    """(services env, workspace path, flow run id, run record) of one production-profile pipeline run."""
    env, started = service_environment("mlflow", "prefect")
    try:
        with isolated_backends(env) as isolated:
            tmp = tmp_path_factory.mktemp("production")
            run_env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
            run_env.update(isolated)
            run_env.update(
                PERSONAS_PROFILE="production",
                PERSONAS_MLFLOW_TRACKING_URI=env["PERSONAS_MLFLOW_TRACKING_URI"],
                PREFECT_API_URL=env["PERSONAS_PREFECT_API_URL"],
                PERSONAS_HOME=str(tmp / "ws"),
                FEAST_USAGE="False",
                HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1",
                # The MLflow server outlives the session: a model and experiment of this run's own,
                # so an earlier run's champion never takes part in this run's promotion gate.
                PERSONAS_MODEL__REGISTERED_NAME=f"persona-model-{tmp.name}-{os.getpid()}",
                PERSONAS_MODEL__EXPERIMENT=f"personas-{tmp.name}-{os.getpid()}",
            )
            done = subprocess.run([sys.executable, "-c", PIPELINE, str(tmp / "data"), str(tmp / "ws"), str(USERS)], cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=1200)
            assert done.returncode == 0, f"production-profile pipeline failed: {done.stderr[-3000:]}"
            result = json.loads(next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))[len("RESULT") :])
            yield run_env, tmp / "ws", result["flow_run_id"], result["record"]
    finally:
        if started:
            stop_services()


def test_champion_personas_are_read_back_through_feast_from_redis(production_run, monkeypatch):
    run_env, home, _, _ = production_run
    for name in ("PERSONAS_HOME", "PERSONAS_FEAST_REGISTRY_URL", "PERSONAS_FEAST_REDIS"):
        monkeypatch.setenv(name, run_env[name])
    from feast import FeatureStore

    repo = ROOT / "feature_repo"
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / "feature_store.production.yaml")
    assert store.config.online_store.type == "redis" and store.config.registry.registry_type == "sql"
    published = pd.read_parquet(Path(home) / "features" / "persona_assignment.parquet")
    champion = published[published["model_version"] == published["model_version"].max()]
    sample = champion.sample(min(100, len(champion)), random_state=0)
    served = store.get_online_features(
        features=["persona_assignment:persona_id", "persona_assignment:persona_name", "persona_assignment:model_version"],
        entity_rows=[{"person_id": p} for p in sample["person_id"]],
    ).to_df()
    assert len(sample) >= 50
    assert served["persona_id"].tolist() == sample["persona_id"].tolist()
    assert served["persona_name"].tolist() == sample["persona_name"].tolist()
    assert set(served["model_version"]) == {int(champion["model_version"].iloc[0])}


def test_mlflow_server_lists_the_model_with_a_champion(production_run):
    run_env, home, _, record = production_run
    from mlflow import MlflowClient

    from personaops.config import load_config

    client = MlflowClient(tracking_uri=run_env["PERSONAS_MLFLOW_TRACKING_URI"], registry_uri=run_env["PERSONAS_MLFLOW_TRACKING_URI"])
    name = load_config(environ=run_env).model.registered_name
    assert name in {m.name for m in client.search_registered_models()}
    model = client.get_registered_model(name)
    assert "champion" in model.aliases
    version = client.get_model_version(name, model.aliases["champion"])
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags.get("personas.run_id") == record["run_id"]
    # This session's run (the server is shared): the workspace's own MLflow store stays empty.
    assert not (Path(home) / "mlflow" / "mlflow.db").exists()


def test_prefect_server_lists_the_flow_run(production_run):
    run_env, _, flow_run_id, _ = production_run
    import httpx

    api = run_env["PREFECT_API_URL"].rstrip("/")
    response = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=30)
    assert response.status_code == 200, response.text[:300]
    flow_run = response.json()
    assert flow_run["state_type"] == "COMPLETED"
    flow = httpx.get(f"{api}/flows/{flow_run['flow_id']}", timeout=30).json()
    assert flow["name"] == "build_personas"
    listed = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}, timeout=30).json()
    assert [r["id"] for r in listed] == [flow_run_id]


def test_personas_serve_answers_from_redis_on_the_production_profile(production_run, tmp_path):
    """`personas serve` on the production profile: ready (/health 200 with the champion, read from
    Redis, PostgreSQL and the MLflow server, no local files) and serving the published personas."""
    import httpx

    from tests.helpers import free_port, wait_healthy

    run_env, home, _, _ = production_run
    published = pd.read_parquet(Path(home) / "features" / "persona_assignment.parquet")
    champion = published[published["model_version"] == published["model_version"].max()].sample(20, random_state=1)
    port = free_port()
    env = dict(run_env, PERSONAS_API_TOKENS="prod-reader-token:reader,prod-writer-token:writer")
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "personas"), "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, 300, 10, "personas serve (production profile)", lambda: log.read_text()[-2000:])
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
        assert health["online_store"] is True and health["champion_version"] == int(champion["model_version"].iloc[0])
        headers = {"Authorization": "Bearer prod-reader-token"}
        for row in champion.itertuples(index=False):
            got = httpx.get(f"http://127.0.0.1:{port}/persons/{row.person_id}/persona", headers=headers, timeout=10)
            assert got.status_code == 200, got.text
            assert (got.json()["persona_id"], got.json()["model_version"]) == (int(row.persona_id), int(row.model_version))
        # Pushed events (living personas) update the person's features and persona in Redis: the
        # same code path as on the local profile, with the registry in PostgreSQL (no registry file).
        behaviour = pd.read_parquet(Path(home) / "features" / "person_behaviour.parquet").set_index("person_id")
        current = published[published["model_version"] == published["model_version"].max()]
        person = current[~current["person_id"].isin(champion["person_id"]) & current["person_id"].isin(behaviour.index)].iloc[-1]
        pushed = httpx.post(f"http://127.0.0.1:{port}/persons/{person.person_id}/events", json={"events": [{"event_type": "login"}] * 3},
                            headers={"Authorization": "Bearer prod-writer-token"}, timeout=60)  # fmt: skip
        assert pushed.status_code == 200, pushed.text
        body = pushed.json()
        assert body["previous"]["persona_id"] == int(person.persona_id) and body["model_version"] == int(person.model_version)
        assert body["behaviour"]["n_events"] == behaviour.loc[person.person_id, "n_events"] + 3
        again = httpx.get(f"http://127.0.0.1:{port}/persons/{person.person_id}/persona", headers=headers, timeout=10).json()
        assert again["persona_id"] == body["persona_id"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
