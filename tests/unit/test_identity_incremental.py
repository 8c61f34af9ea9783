"""Incremental identity resolution on small hand-made records: new records join earlier persons
through their keys or become new persons with the ids a full resolve would give; new records that
would change an earlier person (join two, break a cap, make a device shared) are left to the full
resolve, with the reason."""

from __future__ import annotations

import pandas as pd

from personaops.config import IdentityConfig
from personaops.identity import resolve_identities, resolve_incremental
from tests.helpers import lake_records

CFG = IdentityConfig(probabilistic=False)
EARLIER = [
    {"source": "crm", "source_key": "1", "customer_id": "C1", "email": "ann@example.com", "phone": "555-0101"},
    {"source": "crm", "source_key": "2", "customer_id": "C2", "email": "bob@example.com", "phone": "555-0202"},
    {"source": "events", "source_key": "e1", "customer_id": "C1", "device_id": "D1"},
    {"source": "events", "source_key": "e2", "device_id": "D1"},
]


def _run(new_rows: list[dict]):
    earlier = lake_records(EARLIER)
    first = resolve_identities(earlier, CFG)
    both = lake_records(EARLIER + new_rows)
    new = both.iloc[len(EARLIER) :]
    inc, reason = resolve_incremental(new, set(first.records["person_id"]), first.index, CFG)
    full = resolve_identities(both, CFG, first.records)
    return first, inc, reason, full


def _person(result, key: str) -> str:
    records = result.records
    return records.loc[records["source_key"] == key, "person_id"].iloc[0]


def test_new_records_join_earlier_persons_by_key_or_become_new_persons_as_in_a_full_resolve():
    first, inc, reason, full = _run(
        [
            {"source": "tickets", "source_key": "t1", "email": " ANN@example.com "},
            {"source": "events", "source_key": "e3", "device_id": "d1"},
            {"source": "crm", "source_key": "3", "customer_id": "C3", "email": "cy@example.com"},
            {"source": "tickets", "source_key": "t2", "email": "cy@example.com"},
        ]
    )
    assert reason == "" and inc is not None
    assert _person(inc, "t1") == _person(inc, "e3") == _person(first, "1")
    assert _person(inc, "3") == _person(inc, "t2") not in set(first.records["person_id"])
    got = inc.records.set_index("source_key")[["person_id", "linked_by"]]
    want = full.records.set_index("source_key").loc[got.index, ["person_id", "linked_by"]]
    pd.testing.assert_frame_equal(got, want)
    assert inc.stats["new_records"] == 4 and inc.stats["new_persons"] == 1
    # the new records' evidence: the rule edges to the earlier record holding the key, and among themselves
    assert {("crm:1", "tickets:t1"), ("crm:3", "tickets:t2")} <= set(zip(inc.edges["record_l"], inc.edges["record_r"]))


def test_a_new_record_joining_two_earlier_persons_is_left_to_the_full_resolve():
    _, inc, reason, full = _run([{"source": "tickets", "source_key": "t1", "email": "ann@example.com", "phone": "555-0202"}])
    assert inc is None and "two earlier persons" in reason
    # the full resolve's guard keeps the two apart (the e-mail links first, the phone link is refused)
    assert _person(full, "t1") == _person(full, "1") != _person(full, "2") and full.stats["refused_links"] == 1


def test_a_new_record_breaking_a_cap_or_sharing_a_device_is_left_to_the_full_resolve():
    _, inc, reason, _ = _run([{"source": "crm", "source_key": "9", "customer_id": "C9", "email": "ann@example.com"}])
    assert inc is None and "more than 1 customer_id" in reason
    _, inc, reason, _ = _run([{"source": "events", "source_key": "e9", "customer_id": "C2", "device_id": "D1"}])
    assert inc is None and "shared" in reason


def test_no_new_records_changes_nothing():
    first, inc, reason, _ = _run([])
    assert reason == "" and len(inc.records) == 0 and inc.stats["new_records"] == 0 and inc.index is first.index
