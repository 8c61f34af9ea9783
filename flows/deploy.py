"""Register the deployments of flows/prefect.yaml on a Prefect server, with their work pool.

`personas deploy --sources FILE` (and `infra/services.sh start --with worker`) calls `deploy()`:

1. the Prefect server must answer (`PREFECT_API_URL`, else `PERSONAS_PREFECT_API_URL`);
2. the process work pool (`personas` by default, the name compose and Kubernetes use) is created
   when absent;
3. `prefect deploy --all --no-prompt` registers every deployment of flows/prefect.yaml from the
   repository root: the nightly and on-demand builds, the 6-hourly monitoring pass and the
   retrain deployment with its drift automation. `{{ $PERSONAS_SOURCES }}` and
   `{{ $PERSONAS_HOME }}` in the parameters are filled in from `sources` and `home`.

Nothing secret goes into a deployment: its parameters are two paths, and a flow run takes its
connection variables (Redis, PostgreSQL, MLflow) from the environment of the worker that runs
it (`prefect worker start --pool personas --type process`). The deployments carry no pull step
of their own, so Prefect records the repository root as their working directory: the worker runs
on the machine (or in the image) that has the code at that path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from personaops.errors import PersonaOpsError

ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = Path(__file__).with_name("prefect.yaml")
DEFAULT_POOL = "personas"


def api_url(environ: dict[str, str] | None = None) -> str:
    """The Prefect server's API URL, or one sentence saying how to get one."""
    environ = os.environ if environ is None else environ
    url = environ.get("PREFECT_API_URL") or environ.get("PERSONAS_PREFECT_API_URL")
    if not url:
        raise PersonaOpsError(
            "No Prefect server is configured (PREFECT_API_URL is unset); start one with "
            "'eval \"$(infra/services.sh start --with prefect)\"' or set PREFECT_API_URL to your server's /api URL."
        )
    return url.rstrip("/")


def check_server(url: str, timeout: float = 10.0) -> None:
    import httpx

    try:
        response = httpx.get(f"{url}/health", timeout=timeout)
        response.raise_for_status()
    except (httpx.HTTPError, OSError) as exc:
        raise PersonaOpsError(f"The Prefect server at {url} does not answer ({exc.__class__.__name__}); check 'infra/services.sh status' or PREFECT_API_URL.") from None


def deployment_specs(pool: str = DEFAULT_POOL, suffix: str = "", prefect_file: Path = PREFECT_FILE) -> dict:
    """flows/prefect.yaml with every deployment on work pool `pool`, `suffix` appended to each
    deployment's (and trigger's) name. A deployment is known to the server by flow and name, not
    by pool: a second set on the same server (staging, a test) needs names of its own, or it
    replaces the first."""
    try:
        spec = yaml.safe_load(prefect_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PersonaOpsError(f"Cannot read the deployments file {prefect_file} ({exc.__class__.__name__}); restore it from the repository.") from None
    for deployment in spec.get("deployments") or []:
        deployment["work_pool"] = {**(deployment.get("work_pool") or {}), "name": pool}
        deployment["name"] = f"{deployment['name']}{suffix}"
        for trigger in deployment.get("triggers") or []:
            if trigger.get("name"):
                trigger["name"] = f"{trigger['name']}{suffix}"
    return spec


def _client(url: str):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api=url)


def ensure_work_pool(url: str, pool: str = DEFAULT_POOL) -> bool:
    """Create the process work pool `pool` unless it exists; True when it was created."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with _client(url) as client:
        try:
            existing = client.read_work_pool(pool)
        except ObjectNotFound:
            existing = None
        if existing is not None:
            if existing.type != "process":
                raise PersonaOpsError(f"Work pool '{pool}' on {url} has type '{existing.type}', not 'process'; delete it or deploy to another pool with --pool.")
            return False
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process", description="PersonaOps flows (flows/prefect.yaml), run by `prefect worker start --pool %s`." % pool))
        except ObjectAlreadyExists:  # created by a concurrent deploy
            return False
        return True


def deploy(sources: Path, home: Path, pool: str = DEFAULT_POOL, suffix: str = "", url: str | None = None, timeout: float = 900.0) -> dict:
    """Work pool + every deployment of flows/prefect.yaml on the Prefect server; what is registered."""
    sources = Path(sources).resolve()
    if not sources.is_file():
        raise PersonaOpsError(f"Sources file {sources} does not exist; give the sources.yaml the deployed builds should read with --sources (or PERSONAS_SOURCES).")
    url = url or api_url()
    check_server(url)
    created = ensure_work_pool(url, pool)
    spec = deployment_specs(pool, suffix)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=url, PERSONAS_SOURCES=str(sources), PERSONAS_HOME=str(Path(home).resolve()), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    with tempfile.TemporaryDirectory(prefix="personas-deploy-") as tmp:
        prefect_file = Path(tmp) / "prefect.yaml"
        prefect_file.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        prefect = Path(sys.executable).parent / "prefect"
        command = [str(prefect)] if prefect.exists() else [sys.executable, "-m", "prefect"]
        try:
            done = subprocess.run([*command, "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PersonaOpsError(f"'prefect deploy' did not finish within {timeout:.0f} s against {url}; check the server's load and retry.") from None
    if done.returncode != 0:
        lines = [x.strip() for x in (done.stderr + "\n" + done.stdout).splitlines() if x.strip()]
        raise PersonaOpsError(f"'prefect deploy' of {PREFECT_FILE} failed: {(lines or ['no output'])[-1][:300]}")
    return {"api_url": url, "work_pool": pool, "work_pool_created": created, "sources": str(sources), "home": str(Path(home).resolve()),
            "deployments": (found := registered(url, pool)), "automations": automations(url, spec, [d["id"] for d in found])}


def registered(url: str, pool: str = DEFAULT_POOL) -> list[dict]:
    """The deployments on work pool `pool`: name (flow/deployment), id, schedules, parameters."""
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    with _client(url) as client:
        found = client.read_deployments(work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])))
        flows = {d.flow_id: client.read_flow(d.flow_id).name for d in found}
    return sorted(
        ({"name": f"{flows[d.flow_id]}/{d.name}", "id": str(d.id), "work_pool": d.work_pool_name,
          "schedules": [getattr(s.schedule, "cron", None) or str(s.schedule) for s in d.schedules], "parameters": d.parameters} for d in found),
        key=lambda d: d["name"],
    )


def automations(url: str, spec: dict, deployment_ids: list[str]) -> list[dict]:
    """The automations the deployments' triggers created: by trigger name, acting on one of `deployment_ids`."""
    names = {t.get("name") for d in spec.get("deployments") or [] for t in d.get("triggers") or [] if t.get("name")}
    out = []
    with _client(url) as client:
        for name in sorted(names):
            for a in client.read_automations_by_name(name):
                targets = [str(getattr(action, "deployment_id", None)) for action in a.actions]
                if any(t in deployment_ids for t in targets):
                    out.append({"name": a.name, "id": str(a.id), "enabled": a.enabled, "deployments": targets})
    return out


def remove(url: str, pool: str, suffix: str = "") -> None:
    """Delete the deployments on `pool`, the automations they made, and the pool (tests, teardown)."""
    spec = deployment_specs(pool, suffix)
    ids = [d["id"] for d in registered(url, pool)]
    autos = automations(url, spec, ids)
    with _client(url) as client:
        for automation in autos:
            client.delete_automation(automation["id"])
        for deployment_id in ids:
            client.delete_deployment(deployment_id)
        client.delete_work_pool(pool)


def worker_command(pool: str = DEFAULT_POOL) -> list[str]:
    return [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
