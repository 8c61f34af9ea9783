"""Consent registry (append-only history, current view, default) and the erasure tombstone's
ingest hook, on tiny local data (no Feast: nothing was published, so nothing is deleted online)."""

import json

import pandas as pd
import pytest

from personaops import consent, erasure
from personaops.config import IngestConfig
from personaops.ingest import ingest_sources, read_lake, read_quarantine
from personaops.sources import SourceSpec
from personaops.workspace import Workspace
from tests.helpers import write_tickets_csv


class _Cfg:
    profile = "local"


def test_history_is_append_only_and_current_is_the_newest(tmp_path):
    ws = Workspace(tmp_path / "ws")
    consent.set_consent(ws, _Cfg(), "P1", "analytics", "granted")
    consent.set_consent(ws, _Cfg(), "P1", "analytics", "revoked", reason="asked by email")
    consent.set_consent(ws, _Cfg(), "P2", "marketing", "denied")
    assert list(consent.history(ws, "P1")["status"]) == ["granted", "revoked"]
    now = consent.status_of(ws, "P1")
    assert now["analytics"]["status"] == "revoked" and now["analytics"]["reason"] == "asked by email"
    assert now["marketing"] == {"status": "granted", "recorded_at": None, "reason": "", "default": True}
    record_person = pd.DataFrame({"source": ["crm"] * 3, "source_key": ["a", "b", "c"], "person_id": ["P1", "P2", "P3"]})
    # P2 denied marketing only: still processed; P1 revoked analytics: excluded
    assert list(consent.exclude_without_analytics(ws, record_person)["person_id"]) == ["P2", "P3"]
    events = [json.loads(line)["event"] for line in ws.audit_log.read_text().splitlines()]
    assert events.count("consent_changed") == 3


def test_default_denied_processes_only_explicit_grants(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    consent.record(ws, "P3", "analytics", "granted")
    monkeypatch.setenv(consent.DEFAULT_ENV, "denied")
    record_person = pd.DataFrame({"source": ["crm"] * 3, "source_key": ["a", "b", "c"], "person_id": ["P1", "P2", "P3"]})
    assert list(consent.exclude_without_analytics(ws, record_person)["person_id"]) == ["P3"]


@pytest.mark.parametrize("purpose,status", [("advertising", "granted"), ("analytics", "maybe")])
def test_unknown_purpose_or_status_is_one_sentence(tmp_path, purpose, status):
    with pytest.raises(consent.ConsentError, match="use one of"):
        consent.record(Workspace(tmp_path / "ws"), "P1", purpose, status)


def test_tombstoned_rows_are_quarantined_as_erased_without_raw_values(tmp_path):
    ws = Workspace(tmp_path / "ws")
    rows = ["T-1,ann@example.com,,My export fails,2026-01-02T10:00:00Z", "T-2,bob@example.com,,Login broken,2026-01-04 09:00:00", "T-3,ANN@Example.com ,,New key,2026-01-05 09:00:00"]
    path = write_tickets_csv(tmp_path / "t.csv", rows)
    spec = SourceSpec(name="tickets", kind="tickets", path=path, key="ticket_id", identifiers={"email": "email"}, timestamp="created_at", text=["subject", "body"])
    pd.DataFrame({"hash": [erasure.hash_value("key:tickets", "T-1"), erasure.hash_value("email", "ann@example.com")]}).to_parquet(
        Workspace.ensure(erasure.tombstone_path(ws)), index=False
    )
    [report] = ingest_sources([spec], ws, IngestConfig(), "r1")
    assert (report.rows_in, report.accepted, report.quarantined) == (3, 1, 2)
    assert list(read_lake(ws, "tickets", report.batch_ids)["source_key"]) == ["T-2"]
    q = read_quarantine(ws, "tickets", report.batch_ids)
    assert set(q["reason"]) == {"erased"} and set(q["raw"]) == {"{}"}
    assert "ann@" not in q.to_json().lower()
