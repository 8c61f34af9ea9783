"""The consent registry: per person and purpose, granted / denied / revoked, with timestamps.

Storage is one SQLite file in the workspace (`governance/consent.sqlite`) holding an append-only
history table (`consent_history`: every change, who made it, why, when); the current view is the
newest history row per (person, purpose). Nothing is ever updated or deleted there — except by an
erasure, which removes the erased person's rows with the rest of their data.

Effects (docs/governance.md, "Consent"):
- a person whose current `analytics` status is denied or revoked is left out of features,
  training, the graph/insights and serving from the next run on (`exclude_without_analytics`);
- setting `revoked` (any purpose used by serving: analytics or personalisation) deletes the
  person's rows from the online store at once (`set_consent` does it).

A person with no record has the default status, `granted` unless $PERSONAS_CONSENT_DEFAULT says
`denied` (an opt-in regime: then only persons with an explicit grant are processed).
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from personaops.errors import PersonaOpsError
from personaops.workspace import Workspace

PURPOSES = ("analytics", "personalisation", "marketing")
STATUSES = ("granted", "denied", "revoked")
DEFAULT_ENV = "PERSONAS_CONSENT_DEFAULT"
# Revoking one of these removes the person from the online store at once (serving uses them).
ONLINE_PURPOSES = ("analytics", "personalisation")


class ConsentError(PersonaOpsError):
    """A consent value that is not one of the known purposes or statuses."""


def default_status() -> str:
    value = os.environ.get(DEFAULT_ENV, "granted").strip().lower() or "granted"
    if value not in ("granted", "denied"):
        raise ConsentError(f"{DEFAULT_ENV}={value!r} is not a default consent status; set it to granted or denied.")
    return value


def db_path(ws: Workspace) -> Path:
    return ws.root / "governance" / "consent.sqlite"


def _connect(ws: Workspace) -> sqlite3.Connection:
    conn = sqlite3.connect(Workspace.ensure(db_path(ws)), timeout=30, isolation_level=None)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS consent_history (seq INTEGER PRIMARY KEY AUTOINCREMENT, person_id TEXT NOT NULL, "
        "purpose TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, actor TEXT, origin TEXT, recorded_at TEXT NOT NULL)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS consent_person ON consent_history (person_id, purpose, seq)")
    return conn


def _check(purpose: str, status: str) -> None:
    if purpose not in PURPOSES:
        raise ConsentError(f"Consent purpose {purpose!r} is unknown; use one of {', '.join(PURPOSES)}.")
    if status not in STATUSES:
        raise ConsentError(f"Consent status {status!r} is unknown; use one of {', '.join(STATUSES)}.")


def record(ws: Workspace, person_id: str, purpose: str, status: str, reason: str = "", actor: str = "", origin: str = "command") -> dict:
    """Append one consent change to the history (no side effects; see `set_consent`)."""
    purpose, status = purpose.strip().lower(), status.strip().lower()
    _check(purpose, status)
    row = {
        "person_id": str(person_id), "purpose": purpose, "status": status, "reason": reason or "",
        "actor": actor or os.environ.get("USER", ""), "origin": origin, "recorded_at": datetime.now(timezone.utc).isoformat(),
    }  # fmt: skip
    conn = _connect(ws)
    try:
        conn.execute(
            "INSERT INTO consent_history (person_id, purpose, status, reason, actor, origin, recorded_at) VALUES (?,?,?,?,?,?,?)",
            tuple(row.values()),
        )
    finally:
        conn.close()
    return row


def history(ws: Workspace, person_id: str | None = None) -> pd.DataFrame:
    """Every consent change (of one person, or of all), oldest first."""
    cols = ["seq", "person_id", "purpose", "status", "reason", "actor", "origin", "recorded_at"]
    if not db_path(ws).exists():
        return pd.DataFrame(columns=cols)
    conn = _connect(ws)
    try:
        where, args = ("WHERE person_id = ?", (str(person_id),)) if person_id is not None else ("", ())
        rows = conn.execute(f"SELECT {', '.join(cols)} FROM consent_history {where} ORDER BY seq", args).fetchall()
    finally:
        conn.close()
    return pd.DataFrame(rows, columns=cols)


def current(ws: Workspace, person_id: str | None = None) -> pd.DataFrame:
    """The current status per (person, purpose): the newest history row of each."""
    hist = history(ws, person_id)
    if hist.empty:
        return hist.drop(columns=["seq"])
    return hist.sort_values("seq").drop_duplicates(["person_id", "purpose"], keep="last").drop(columns=["seq"]).reset_index(drop=True)


def status_of(ws: Workspace, person_id: str) -> dict[str, dict]:
    """{purpose: {status, recorded_at, reason, default}} for one person, every purpose."""
    now = current(ws, person_id).set_index("purpose")
    out = {}
    for purpose in PURPOSES:
        if purpose in now.index:
            r = now.loc[purpose]
            out[purpose] = {"status": r["status"], "recorded_at": r["recorded_at"], "reason": r["reason"], "default": False}
        else:
            out[purpose] = {"status": default_status(), "recorded_at": None, "reason": "", "default": True}
    return out


def persons_without(ws: Workspace, purpose: str = "analytics", known: pd.Series | None = None) -> set[str]:
    """Person ids whose current `purpose` status is not granted. With the default `granted`, only
    persons with a denied/revoked record; with default `denied`, every person in `known` without
    an explicit grant as well."""
    now = current(ws)
    now = now[now["purpose"] == purpose] if len(now) else now
    refused = set(now.loc[now["status"] != "granted", "person_id"]) if len(now) else set()
    if default_status() == "denied" and known is not None:
        granted = set(now.loc[now["status"] == "granted", "person_id"]) if len(now) else set()
        refused |= set(map(str, known)) - granted
    return refused


def exclude_without_analytics(ws: Workspace, record_person: pd.DataFrame) -> pd.DataFrame:
    """`record_person` (record -> person map) without the records of persons lacking analytics
    consent: what the features, training, graph and serving stages read."""
    if not db_path(ws).exists() and default_status() == "granted":
        return record_person
    refused = persons_without(ws, "analytics", record_person["person_id"].drop_duplicates())
    return record_person[~record_person["person_id"].isin(refused)] if refused else record_person


def set_consent(ws: Workspace, cfg, person_id: str, purpose: str, status: str, reason: str = "", actor: str = "", origin: str = "command") -> dict:
    """Record a consent change, audit it, and on a revocation of a serving purpose delete the
    person's online rows at once. Returns the change plus what was deleted online."""
    row = record(ws, person_id, purpose, status, reason, actor, origin)
    deleted: dict[str, int] = {}
    if row["status"] in ("revoked", "denied") and row["purpose"] in ONLINE_PURPOSES:
        deleted = remove_online(ws, cfg, [row["person_id"]])
    ws.audit("consent_changed", person_id=row["person_id"], purpose=row["purpose"], status=row["status"], reason=row["reason"], actor=row["actor"], origin=origin, online_rows_deleted=deleted)
    return {**row, "online_deleted": deleted}


def remove_online(ws: Workspace, cfg, person_ids: list[str]) -> dict[str, int]:
    """Delete the persons' rows from the online store (nothing to do before the first publish)."""
    from personaops.feature_store import feature_store
    from personaops.online_publish import delete_persons

    if cfg.profile != "production" and not (ws.feast).exists():
        return {}
    return delete_persons(feature_store(ws, cfg), person_ids)


def load_source(ws: Workspace, cfg, path: Path, columns: dict[str, str] | None = None) -> int:
    """Load consent records from a CSV (person_id, purpose, status[, reason][, recorded_at]);
    rows are appended to the history with origin `source:<file>`. Returns rows loaded."""
    cols = {"person_id": "person_id", "purpose": "purpose", "status": "status", "reason": "reason", **(columns or {})}
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for k, c in cols.items() if k != "reason" and c not in frame.columns]
    if missing:
        raise ConsentError(f"Consent file {path} has no column {missing[0]!r}; give person_id, purpose and status columns.")
    n = 0
    for _, r in frame.iterrows():
        set_consent(ws, cfg, r[cols["person_id"]], r[cols["purpose"]], r[cols["status"]], r.get(cols["reason"], ""), origin=f"source:{Path(path).name}")
        n += 1
    return n
