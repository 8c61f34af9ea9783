import pandas as pd

from personaops.config import IdentityConfig
from personaops.identity import resolve_identities
from tests.helpers import lake_records


def _records(rows):
    return lake_records(rows)


ROWS = [
    {"source": "crm", "source_key": "C1", "customer_id": "C1", "email": "Ann@Example.com", "phone": "+1 (555) 123-4567"},
    {"source": "crm", "source_key": "C2", "customer_id": "C2", "email": "bob@example.com"},
    {"source": "tickets", "source_key": "K1", "email": "  ann@example.com "},
    {"source": "surveys", "source_key": "R1", "phone": "555.123.4567"},
    {"source": "events", "source_key": "E1", "customer_id": "C2", "device_id": "D9"},
    {"source": "events", "source_key": "E2", "device_id": "D9"},
    {"source": "tickets", "source_key": "K2", "email": "test@test.com"},
]


def test_normalised_keys_link_records_across_sources():
    result = resolve_identities(_records(ROWS), IdentityConfig())
    pid = result.records.set_index("source_key")["person_id"]
    assert pid["C1"] == pid["K1"] == pid["R1"]  # e-mail case/space and phone formats
    assert pid["C2"] == pid["E1"] == pid["E2"]  # anonymous event via an unshared device
    assert pid["C1"] != pid["C2"]
    assert pid["K2"] not in {pid["C1"], pid["C2"]}  # junk e-mail never links
    assert result.stats["persons"] == 3


def test_shared_devices_never_merge_customers():
    rows = ROWS + [{"source": "events", "source_key": "E3", "customer_id": "C1", "device_id": "D9"}]
    result = resolve_identities(_records(rows), IdentityConfig())
    pid = result.records.set_index("source_key")["person_id"]
    assert pid["C1"] != pid["C2"]
    assert pid["E2"] not in {pid["C1"], pid["C2"]}
    assert result.stats["shared_devices_ignored"] == 1


def test_person_ids_are_stable_when_data_grows():
    first = resolve_identities(_records(ROWS), IdentityConfig()).records.set_index("source_key")["person_id"]
    grown = ROWS + [{"source": "crm", "source_key": "C3", "customer_id": "C3", "email": "cy@example.com"},
                    {"source": "tickets", "source_key": "K3", "email": "bob@example.com"}]  # fmt: skip
    second = resolve_identities(_records(grown), IdentityConfig()).records.set_index("source_key")["person_id"]
    for key in first.index:
        assert first[key] == second[key]
    assert second["K3"] == second["C2"]
