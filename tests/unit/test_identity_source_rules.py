"""Per-source rule configuration: which deterministic keys each source may link on."""

import pandas as pd
import pytest
from pydantic import ValidationError

from personaops.config import IdentityConfig, load_config
from personaops.errors import ConfigError
from personaops.identity import resolve_identities
from tests.helpers import lake_records


def _frame(rows):
    return lake_records(rows)


ROWS = [
    {"source": "crm", "source_key": "C1", "customer_id": "C1", "email": "ann@example.com", "phone": "5551112222"},
    {"source": "crm", "source_key": "C2", "customer_id": "C2", "email": "bob@example.com", "phone": "5553334444"},
    # A helpdesk agent typed Ann's phone on Bob's ticket.
    {"source": "tickets", "source_key": "K1", "email": "bob@example.com", "phone": "555-111-2222"},
    {"source": "tickets", "source_key": "K2", "phone": "(555) 111 2222"},
    {"source": "events", "source_key": "E1", "customer_id": "C1", "device_id": "D1"},
]


def _pid(result):
    return result.records.set_index("source_key")["person_id"]


def test_a_source_links_only_on_the_keys_it_is_allowed():
    default = _pid(resolve_identities(_frame(ROWS), IdentityConfig(probabilistic=False)))
    assert default["K2"] == default["C1"]  # by phone
    assert default["E1"] == default["C1"]  # by customer id

    cfg = IdentityConfig(probabilistic=False, source_link_keys={"tickets": ["email"]})
    result = resolve_identities(_frame(ROWS), cfg)
    pid = _pid(result)
    assert pid["K1"] == pid["C2"]  # e-mail still links tickets
    assert pid["K2"] not in {pid["C1"], pid["C2"]}  # the ticket's phone is not a link key any more
    assert pid["E1"] == pid["C1"]  # sources not listed link on every key
    ticket_edges = result.edges[result.edges["record_r"].str.startswith("tickets:") | result.edges["record_l"].str.startswith("tickets:")]
    assert set(ticket_edges["rule"]) == {"email"}
    assert result.records.set_index("source_key").loc["K2", "linked_by"] == "unlinked"


def test_a_source_allowed_no_keys_never_links_by_rule():
    cfg = IdentityConfig(probabilistic=False, source_link_keys={"events": []})
    pid = _pid(resolve_identities(_frame(ROWS), cfg))
    assert pid["E1"] != pid["C1"]


def test_source_keys_must_be_link_keys():
    with pytest.raises(ValidationError, match="'phone', which is not in link_keys"):
        IdentityConfig(link_keys=["customer_id", "email"], source_link_keys={"tickets": ["phone"]})
    with pytest.raises(ValidationError):
        IdentityConfig(source_link_keys={"tickets": ["shoe_size"]})


def test_source_keys_load_from_yaml_and_environment(tmp_path):
    path = tmp_path / "personas.yaml"
    path.write_text("identity:\n  source_link_keys:\n    tickets: [email]\n", encoding="utf-8")
    assert load_config(path, environ={}).identity.source_link_keys == {"tickets": ["email"]}
    cfg = load_config(None, environ={"PERSONAS_IDENTITY__SOURCE_LINK_KEYS": "{surveys: [email, phone]}"})
    assert cfg.identity.source_link_keys == {"surveys": ["email", "phone"]}
    path.write_text("identity:\n  link_keys: [email]\n  source_link_keys:\n    tickets: [phone]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"Setting 'identity' in {path} is invalid"):
        load_config(path, environ={})
