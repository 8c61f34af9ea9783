"""`personas get --source NAME --key VALUE`: a source key resolves to its person through the
identity graph written by the resolve stage, and follows merges of later runs."""

import os

import pandas as pd
import pytest
from typer.testing import CliRunner

from personaops.cli import app
from personaops.config import IdentityConfig
from personaops.errors import NotFoundError, PipelineStateError
from personaops.identity import resolve_identities
from personaops.identity_store import lookup_record, write_identity
from personaops.workspace import Workspace
from tests.helpers import lake_records

RULES = IdentityConfig(probabilistic=False)


def _frame(rows):
    return lake_records(rows, ("customer_id", "email", "phone"))


BASE = [
    {"source": "crm", "source_key": "C1", "customer_id": "C1", "email": "a@example.com"},
    {"source": "crm", "source_key": "C2", "customer_id": "C2", "email": "z@example.com"},
    {"source": "tickets", "source_key": "T1", "email": "b@example.com", "phone": "5551112222"},
]
BRIDGE = BASE + [{"source": "tickets", "source_key": "T2", "email": "a@example.com", "phone": "555-111-2222"}]


def test_a_source_key_resolves_to_its_person_and_follows_a_merge(tmp_path):
    ws = Workspace(tmp_path)
    run1 = resolve_identities(_frame(BASE), RULES)
    write_identity(ws, run1, "run1")
    pid = run1.records.set_index("source_key")["person_id"]
    found = lookup_record(ws, "crm", "C1")
    assert found == {"source": "crm", "source_key": "C1", "person_id": pid["C1"], "linked_by": "unlinked"}
    assert lookup_record(ws, "tickets", "T1")["person_id"] == pid["T1"] != pid["C1"]
    # Keys are trimmed at ingest; a retyped key with spaces or another case still finds the record.
    assert lookup_record(ws, "crm", "  c2 ")["person_id"] == pid["C2"]

    run2 = resolve_identities(_frame(BRIDGE), RULES, previous=run1.records)  # T2 bridges C1 and T1
    write_identity(ws, run2, "run2")
    merged = lookup_record(ws, "tickets", "T1")
    assert merged["person_id"] == lookup_record(ws, "crm", "C1")["person_id"] == pid["C1"]
    assert merged["linked_by"] in {"email", "phone"}


def test_unknown_sources_and_keys_are_one_clear_error(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(PipelineStateError, match="No identity map"):
        lookup_record(ws, "crm", "C1")
    write_identity(ws, resolve_identities(_frame(BASE), RULES), "run1")
    with pytest.raises(NotFoundError, match=r"Source 'crn' is not in the identity map .*sources: crm, tickets"):
        lookup_record(ws, "crn", "C1")
    with pytest.raises(NotFoundError, match="No record with key 'C9' in source 'crm'"):
        lookup_record(ws, "crm", "C9")


@pytest.fixture
def own_environment():
    """The CLI points MLflow, Prefect and Feast at its workspace through os.environ; undo that."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_get_by_key_goes_through_the_identity_map(tmp_path, monkeypatch, own_environment):
    ws = Workspace(tmp_path)
    write_identity(ws, resolve_identities(_frame(BASE), RULES), "run1")
    monkeypatch.setenv("PERSONAS_HOME", str(tmp_path))
    runner = CliRunner()
    missing = runner.invoke(app, ["get", "--source", "crm", "--key", "C9"])
    assert isinstance(missing.exception, NotFoundError) and "No record with key 'C9'" in str(missing.exception)
    # A key that resolves reaches the online store, which this workspace has not got yet.
    found = runner.invoke(app, ["get", "--source", "crm", "--key", "C1"])
    assert isinstance(found.exception, NotFoundError) and "No Feast registry" in str(found.exception)
