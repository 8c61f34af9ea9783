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


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def from_config(cls, cfg: PersonasConfig) -> "Workspace":
        return cls(Path(cfg.home))

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
        return f"sqlite:///{self.mlflow / 'mlflow.db'}"

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
        path = self.ensure(self.runs / f"{run_id}.json")
        path.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
        return path

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
        """Append one event to the workspace audit log (JSON lines)."""
        entry = {"at": datetime.now(timezone.utc).isoformat(), "event": event, **details}
        with self.ensure(self.audit_log).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, default=str) + "\n")
