"""The production profile's real services for tests: the ones `.ci/run` started (their variables
are in the environment), or started here through infra/services.sh so `make test` alone works.

Each test session gets its own Feast registry database and its own Redis database number, so
parallel sessions on one server do not see each other's objects.
"""

from __future__ import annotations

import os
import random
import shlex
import subprocess
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "infra" / "services.sh"
SERVER_VARIABLES = {"mlflow": "PERSONAS_MLFLOW_TRACKING_URI", "prefect": "PERSONAS_PREFECT_API_URL"}


def _exports(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            name, _, value = line[len("export ") :].partition("=")
            out[name] = shlex.split(value)[0] if value else ""
    return out


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=900)


def service_environment(*extra: str) -> tuple[dict[str, str], bool]:
    """(connection variables, whether this call started services): the environment's when
    .ci/run exported them, otherwise `infra/services.sh install` + `start [--with ...]`.
    A failure is an AssertionError of one line, never a skip."""
    wanted = ["PERSONAS_REDIS_URL", "PERSONAS_PG_URL", "PERSONAS_FEAST_REGISTRY_URL", *(SERVER_VARIABLES[n] for n in extra)]
    if all(os.environ.get(n) for n in wanted) and os.environ.get("PERSONAS_INFRA_DIR"):
        return {n: os.environ[n] for n in wanted}, False
    up = _run("status").returncode == 0
    if subprocess.run(["bash", "-c", "command -v redis-server && (ls /usr/lib/postgresql/*/bin/initdb || command -v initdb)"], capture_output=True).returncode:
        done = _run("install")
        assert done.returncode == 0, f"infra/services.sh install failed: {done.stderr.strip().splitlines()[-1:]}"
    args = ["start"]
    for name in extra:
        args += ["--with", name]
    done = _run(*args)
    assert done.returncode == 0, f"infra/services.sh {' '.join(args)} failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}"
    env = _exports(done.stdout)
    missing = [n for n in wanted if not env.get(n)]
    assert not missing, f"infra/services.sh start printed no {missing[0]}; check infra/services.sh status."
    return env, not up


def stop_services() -> None:
    _run("stop")


@contextmanager
def isolated_backends(env: dict[str, str]):
    """Variables for one session: a fresh PostgreSQL database for the Feast registry and a Redis
    database number of its own (flushed at the end)."""
    import psycopg
    import redis

    from personaops.feature_store import redis_connection_string

    admin_url = env["PERSONAS_PG_URL"]
    name = f"personas_feast_test_{uuid.uuid4().hex[:10]}"
    base = env["PERSONAS_REDIS_URL"].rsplit("/", 1)[0]
    # Claimed in database 0 (SET NX, expiring after 3 h should a session die): two sessions or
    # xdist workers at once never share a number, and neither flushes the other's database.
    claims = redis.Redis.from_url(f"{base}/0")
    numbers = random.Random(uuid.uuid4().int).sample(range(1, 16), 15)
    db = next((n for n in numbers if claims.set(f"personas-test-db:{n}", name, nx=True, ex=3 * 3600)), None)
    if db is None:
        claims.close()
        raise AssertionError(f"Redis databases 1-15 at {base.rsplit('@', 1)[-1]} are all claimed by other test sessions; wait for them or delete the personas-test-db:* keys in database 0.")
    redis_url = f"{base}/{db}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    registry_url = env["PERSONAS_FEAST_REGISTRY_URL"].rsplit("/", 1)[0] + "/" + name
    try:
        yield {**env, "PERSONAS_FEAST_REGISTRY_URL": registry_url, "PERSONAS_REDIS_URL": redis_url, "PERSONAS_FEAST_REDIS": redis_connection_string(redis_url)}
    finally:
        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        client.close()
        if claims.get(f"personas-test-db:{db}") == name.encode():
            claims.delete(f"personas-test-db:{db}")
        claims.close()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- services of one test's own, to kill and restart (fault injection) ---------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OwnServices:
    """A private Redis / PostgreSQL [/ MLflow server] on free ports with its own state directory:
    a test may kill and restart these (`down`, `up`, `restart`) without touching shared ones."""

    infra_dir: Path
    ports: dict[str, int]
    env: dict[str, str]
    redis_password: str = ""  # Redis requires it (requirepass): the tests check it never leaks

    def script_env(self) -> dict[str, str]:
        out = {k: v for k, v in os.environ.items() if not k.startswith(("PERSONAS_", "MLFLOW_", "PREFECT_"))}
        out.update(
            PERSONAS_INFRA_DIR=str(self.infra_dir), PERSONAS_REDIS_PORT=str(self.ports["redis"]), PERSONAS_PG_PORT=str(self.ports["postgres"]),
            PERSONAS_MLFLOW_PORT=str(self.ports["mlflow"]), PERSONAS_PREFECT_PORT=str(self.ports["prefect"]), PERSONAS_REDIS_APPENDONLY="yes",
            PERSONAS_REDIS_PASSWORD=self.redis_password, PERSONAS_SERVICES_WAIT_S="600",
        )  # fmt: skip
        return out

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        """infra/services.sh ARGS on these services; AssertionError of one line when it fails."""
        done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=self.script_env())
        assert done.returncode == 0, f"infra/services.sh {' '.join(args)} failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}"
        return done


@contextmanager
def own_services(*extra: str):
    """Start a private Redis (append-only file on, so a restart keeps what was written),
    PostgreSQL and optionally an MLflow server (`extra`: "mlflow") in a fresh directory; stop them
    and remove it at the end. (Not under pytest's tmp_path: that is mode 700, and PostgreSQL runs
    as its own OS user when the tests run as root.)"""
    import shutil
    import tempfile

    infra_dir = Path(tempfile.mkdtemp(prefix="personas-faults-"))
    infra_dir.chmod(0o755)
    ports = {name: _free_port() for name in ("redis", "postgres", "mlflow", "prefect")}
    own = OwnServices(infra_dir, ports, {}, redis_password="redis-" + uuid.uuid4().hex[:16])
    if subprocess.run(["bash", "-c", "command -v redis-server && (ls /usr/lib/postgresql/*/bin/initdb || command -v initdb)"], capture_output=True).returncode:
        own.ctl("install")
    args = ["start"]
    for name in extra:
        args += ["--with", name]
    try:
        own.env = _exports(own.ctl(*args).stdout)
        yield own
    finally:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True, timeout=300, env=own.script_env())
        shutil.rmtree(infra_dir, ignore_errors=True)
