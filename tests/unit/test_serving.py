"""Pure parts of the serving contract: behaviour updates from pushed events, persona traits rows."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pandas as pd
import pytest

from personaops.serving import EventError, event_frame, trait_values, traits_rows, updated_behaviour

FEATURES = ["n_events", "n_sessions", "active_days", "events_per_session", "days_since_last_event", "share_login", "share_api_call"]
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)


def test_counts_add_up_and_shares_are_recomputed_from_counts():
    current = {"n_events": 10, "n_sessions": 4, "active_days": 3, "events_per_session": 2.5, "days_since_last_event": 2.0, "share_login": 0.6, "share_api_call": 0.4}
    reference = pd.Timestamp("2026-03-08T12:00:00Z")
    events = event_frame([{"event_type": "api_call", "event_time": "2026-03-09T10:00:00Z", "session_id": "s1"}] * 10, now=NOW)
    out, as_of = updated_behaviour(current, reference, events, FEATURES)
    assert out["n_events"] == 20 and out["n_sessions"] == 5 and out["active_days"] == 4
    assert out["share_api_call"] == pytest.approx(14 / 20) and out["share_login"] == pytest.approx(6 / 20)
    assert out["events_per_session"] == pytest.approx(4.0)
    assert as_of == pd.Timestamp("2026-03-09T10:00:00Z") and out["days_since_last_event"] == 0.0


def test_a_person_without_events_starts_from_zero():
    events = event_frame([{"event_type": "login", "event_time": "2026-03-09T10:00:00Z"}, {"event_type": "login", "event_time": "2026-03-09T11:00:00Z"}], now=NOW)
    out, _ = updated_behaviour({}, None, events, FEATURES)
    assert out["n_events"] == 2 and out["n_sessions"] == 1 and out["active_days"] == 1 and out["share_login"] == 1.0


def test_bad_events_are_one_sentence_errors():
    with pytest.raises(EventError, match="not in the person_behaviour view; send one of: login, api_call"):
        updated_behaviour({}, None, event_frame([{"event_type": "teleported"}], now=NOW), FEATURES)
    with pytest.raises(EventError, match="in the future"):
        event_frame([{"event_type": "login", "event_time": "2999-01-01T00:00:00Z"}], now=NOW)
    with pytest.raises(EventError, match="No events"):
        event_frame([], now=NOW)


def test_traits_rows_denormalise_the_profile_of_each_person_s_persona():
    profile = {"persona_id": 2, "description": "Analysts.", "size": 40, "share": 0.2, "terms": ["api", "query"],
               "traits": [{"label": "api call events", "z": 1.5}, {"label": "support tickets", "z": -0.7}],
               "kpis": {"churned_rate": {"value": 0.1}, "engagement_events": {"value": 50.0}}}  # fmt: skip
    at = pd.Timestamp("2026-03-01T00:00:00Z")
    rows = traits_rows(pd.DataFrame({"person_id": ["a", "b"], "persona_id": [2, -1]}), [profile], 3, at)
    a, b = rows.iloc[0], rows.iloc[1]
    assert a["persona_top_traits"] == "more api call events; less support tickets" and a["persona_top_terms"] == "api; query"
    assert a["persona_churn_rate"] == 0.1 and math.isnan(a["persona_conversion_rate"]) and a["profile_model_version"] == 3
    assert b["persona_description"] == "" and b["persona_size"] == 0  # unassigned: no profile
    assert rows["persona_size"].dtype == "int64" and (rows["event_timestamp"] == at).all()
    assert trait_values(None, 1)["profile_model_version"] == 1


def test_staged_rows_expand_to_one_row_per_feature_in_key_order_and_the_last_duplicate_wins():
    """The SQLite publish's expansion (personaops.online_publish): coded and per-person features,
    NULL texts and created times kept, duplicates of an entity replaced by the later row."""
    import sqlite3

    from personaops.online_publish import _SQLITE_TABLE_SQL, SqliteRows, _insert_sqlite_rows

    rows = SqliteRows(
        keys=[b"a", b"b", b"b"],
        features=["name", "score"],
        values=[[b"N0", b"N1"], [b"s1", b"s2", b"s3"]],  # name: coded; score: one value per row
        texts=[["x", None], ["1", "2", None]],
        codes=[[0, 1, 0], None],
        event_ts=[10, 20, 30],
        created_ts=[None, 5, 6],
    )
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute(f"CREATE TABLE t ({_SQLITE_TABLE_SQL}) WITHOUT ROWID")
    _insert_sqlite_rows(conn, "t", rows)
    stored = conn.execute("SELECT entity_key, feature_name, value, value_text, vector_value, event_ts, created_ts FROM t").fetchall()
    assert stored == [
        (b"a", "name", b"N0", "x", None, 10, None),
        (b"a", "score", b"s1", "1", None, 10, None),
        (b"b", "name", b"N0", "x", None, 30, 6),
        (b"b", "score", b"s3", None, None, 30, 6),
    ]
    assert list(rows.tuples())[2:4] == [(b"b", "name", b"N1", None, 20, 5), (b"b", "score", b"s2", "2", 20, 5)]
    assert len(rows) == 6
    assert conn.execute("SELECT count(*) FROM sqlite_temp_master").fetchone()[0] == 0  # staging tables dropped


def test_one_entity_key_is_feast_s_serialized_key_for_every_version():
    """The API readers' per-id key (personaops.serving.entity_key_builder) is byte for byte
    Feast's serialize_entity_key, through the probed prefix or, where the layout differs, Feast."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from personaops.serving import entity_key_builder

    for version in (2, 3):
        one, many = entity_key_builder("person_id", version)
        ids = ["P9b6ac9a70686", "Zoë-ünïcode", "x", "a" * 128]
        feast = [serialize_entity_key(EntityKey(join_keys=["person_id"], entity_values=[Value(string_val=i)]), entity_key_serialization_version=version) for i in ids]
        assert [one(i) for i in ids] == feast == many(ids)
        assert len(set(feast)) == len(ids)


def test_connection_slots_see_live_peers_and_skip_dead_ones(tmp_path):
    """personaops.http_workers: a worker defers a new connection only to a live peer holding fewer
    connections; a dead worker's slot is reused, and live_workers lists the live ones."""
    import os
    import struct
    import subprocess

    from personaops.http_workers import ConnectionSlots, live_workers

    path = tmp_path / "slots"
    path.write_bytes(b"\0" * 512)
    dead = subprocess.Popen(["true"])
    dead.wait()
    peer = subprocess.Popen(["sleep", "30"])
    try:
        with path.open("r+b") as fh:  # slot 0: a worker that died holding 9; slot 1: a live peer holding 2
            fh.write(struct.pack("<IIII", dead.pid, 9, peer.pid, 2))
        mine = ConnectionSlots(str(path))
        assert mine.offset == 0  # the dead worker's slot
        mine.publish(2)
        assert not mine.busier_than_a_peer(2) and mine.busier_than_a_peer(3)
        assert live_workers(str(path)) == {os.getpid(): 2, peer.pid: 2}
        mine.release()
        assert live_workers(str(path)) == {peer.pid: 2}
    finally:
        peer.kill()
        peer.wait()
