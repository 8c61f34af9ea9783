"""The workspace: every file a run writes lives under one directory ($PERSONAS_HOME).

Deleting the directory resets the system. Paths are computed, never created, until a stage
writes to them (`ensure`).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from personaops.config import PersonasConfig
from personaops.errors import PersonaOpsError


@dataclass(frozen=True)
class Workspace:
    root: Path
    # An MLflow tracking server instead of the workspace's SQLite store (profile: production).
    mlflow_server: str = ""

    @classmethod
    def from_config(cls, cfg: PersonasConfig) -> "Workspace":
        # profile: production tracks to the server PERSONAS_MLFLOW_TRACKING_URI names (infra/services.sh prints it).
        server = os.environ.get("PERSONAS_MLFLOW_TRACKING_URI", "") if cfg.profile == "production" else ""
        return cls(Path(cfg.home), server)

    # --- layout -----------------------------------------------------------------------------
    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def quarantine(self) -> Path:
        return self.root / "lake" / "_quarantine"

    @property
    def identity(self) -> Path:
        return self.root / "identity"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def feast(self) -> Path:
        return self.root / "feast"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow_server or f"sqlite:///{self.mlflow / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow / "artifacts"

    @property
    def prefect(self) -> Path:
        return self.root / "prefect"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def embedding_cache(self) -> Path:
        return self.root / "cache" / "embeddings"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.jsonl"

    def feature_table(self, view: str) -> Path:
        return self.features / f"{view}.parquet"

    @staticmethod
    def ensure(path: Path) -> Path:
        """Create `path`'s parent folders; return `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # --- process environment ----------------------------------------------------------------
    def export_environment(self) -> None:
        """Point Feast, MLflow and Prefect (in this process and its children) at this workspace.

        Feast expands ${PERSONAS_HOME} in feature_repo/feature_store.yaml; MLflow and Prefect read
        their own variables. Explicit user settings (MLFLOW_TRACKING_URI, PREFECT_HOME,
        PREFECT_API_URL) win for Prefect; the local profile's MLflow store is the workspace's.
        """
        os.environ["PERSONAS_HOME"] = str(self.root)
        os.environ["MLFLOW_TRACKING_URI"] = self.mlflow_tracking_uri
        if "PREFECT_API_URL" not in os.environ:
            os.environ.setdefault("PREFECT_HOME", str(self.prefect))
        os.environ.setdefault("FEAST_USAGE", "False")
        # Prefect's ephemeral API server gets 20 s to start by default; on a loaded machine that
        # fails the whole run before any stage, so allow more (an explicit setting wins).
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    # --- run records ------------------------------------------------------------------------
    def new_run_id(self) -> str:
        return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]

    def write_run_record(self, run_id: str, record: dict[str, Any]) -> Path:
        # the run's manifest, committed last and atomically: a run killed earlier leaves none
        return atomic_write_text(self.runs / f"{run_id}.json", json.dumps(record, indent=2, default=str))

    def lock(self, command: str = "personas", timeout: float | None = None) -> "WorkspaceLock":
        """The workspace's exclusive lock (a context manager); see `WorkspaceLock`."""
        return WorkspaceLock(self, command, timeout)

    def latest_run_record(self) -> dict[str, Any] | None:
        if not self.runs.is_dir():
            return None
        records = sorted(self.runs.glob("*.json"))
        return json.loads(records[-1].read_text(encoding="utf-8")) if records else None

    def last_healthy_ingest(self) -> list[dict] | None:
        """Ingest counts of the newest run whose monitoring did not call for review or rollback:
        the baseline for source-volume checks (a broken run is no baseline)."""
        if not self.runs.is_dir():
            return None
        for path in sorted(self.runs.glob("*.json"), reverse=True):
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("monitor", {}).get("action") not in ("review", "rollback") and record.get("ingest"):
                return record["ingest"]
        return None

    def audit(self, event: str, **details: Any) -> None:
        """Append one event to the workspace's tamper-evident audit log (a hash chain of JSON lines;
        see personaops/audit.py)."""
        from personaops import audit

        audit.append(self.audit_log, event, **details)


# --- reliability: atomic writes, the workspace lock, the crash-test hook -----------------------
def atomic_write_text(path: Path, text: str) -> Path:
    """Write `text` to `path` so that readers (and a crash) see the old content or the new, never
    half: write a hidden temporary file beside it, fsync it, rename it over `path`."""
    Workspace.ensure(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    return path


FAULT_ENV = "PERSONAS_FAULT_KILL_AT"


def fault_point(name: str) -> None:
    """Test hook: SIGKILL this process when $PERSONAS_FAULT_KILL_AT names `name`.

    The crash-resume tests use it to die deterministically at the start of a stage (`ingest`,
    `resolve`, `features`, `quality`, `train`, `publish`, `monitor`) or at a point inside one
    (`train.registered`: after the model version is registered, before any alias moves). Unset —
    as in production — it does nothing.
    """
    wanted = os.environ.get(FAULT_ENV)
    if wanted and wanted == name:
        import signal
        import sys

        sys.stderr.write(f"fault injection: SIGKILL at {name}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


LOCK_TIMEOUT_ENV = "PERSONAS_LOCK_TIMEOUT"


class WorkspaceBusyError(PersonaOpsError):
    """Another process holds the workspace lock past the timeout."""


class _LockState:
    """This process's hold on one workspace lock (re-entrant: the CLI and the flow it runs both
    take it)."""

    def __init__(self) -> None:
        self.fh = None
        self.depth = 0


_HELD: dict[str, _LockState] = {}


def _describe_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "another process"
    return f"pid {info.get('pid', '?')} ({info.get('command', 'personas')}, since {str(info.get('since', '?'))[:19]})"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkspaceLock:
    """An exclusive lock on a workspace: `$PERSONAS_HOME/.lock`, held with `fcntl.flock`.

    The kernel drops a flock when its holder dies (SIGKILL included), so a lock left by a killed
    run never blocks the next one: the file's stale owner record (pid, command, start) is simply
    overwritten, and the take-over is noted in the audit log. A second live run waits up to
    `timeout` seconds (default $PERSONAS_LOCK_TIMEOUT, else 0) and then refuses with one sentence.
    """

    def __init__(self, ws: "Workspace", command: str = "personas", timeout: float | None = None) -> None:
        self.ws = ws
        self.path = ws.root / ".lock"
        self.command = command
        if timeout is None:
            try:
                timeout = float(os.environ.get(LOCK_TIMEOUT_ENV, "0") or 0)
            except ValueError:
                timeout = 0.0
        self.timeout = max(0.0, timeout)

    def __enter__(self) -> "WorkspaceLock":
        import fcntl
        import time

        key = str(self.path.resolve())
        state = _HELD.setdefault(key, _LockState())
        if state.depth:
            state.depth += 1
            return self
        Workspace.ensure(self.path)
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 — held for the lock's lifetime
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _describe_holder(self.path)
                    fh.close()
                    raise WorkspaceBusyError(
                        f"Workspace {self.ws.root} is in use by {holder}; wait for it to finish, or set "
                        f"{LOCK_TIMEOUT_ENV}=SECONDS to wait that long for it."
                    ) from None
                time.sleep(min(0.2, max(0.01, deadline - time.monotonic())))
        fh.seek(0)
        previous = fh.read()
        stale = None
        try:
            prior = json.loads(previous) if previous.strip() else None
        except ValueError:
            prior = None
        if prior and isinstance(prior.get("pid"), int) and prior["pid"] != os.getpid():
            stale = prior  # we hold the flock, so its recorded owner is gone (or was killed)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "command": self.command, "since": datetime.now(timezone.utc).isoformat()}))
        fh.flush()
        state.fh, state.depth = fh, 1
        self.took_over = stale
        if stale is not None and not stale.get("released"):
            try:
                self.ws.audit("workspace_lock_taken_over", stale_pid=stale.get("pid"), stale_command=stale.get("command"), stale_since=stale.get("since"), alive=pid_alive(int(stale["pid"])))
            except Exception:  # the audit trail is best effort here; the lock itself is what matters
                pass
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        state = _HELD[str(self.path.resolve())]
        state.depth -= 1
        if state.depth:
            return
        fh, state.fh = state.fh, None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"pid": os.getpid(), "command": self.command, "released": datetime.now(timezone.utc).isoformat()}))
            fh.flush()
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()
