"""The fast online publish on the real Feast SQLite online store: same rows as Feast's own write,
read back by the stock SDK, one transaction per publish (a fresh table swapped in), Feast's own
apply still working on the swapped table, and per-person updates that add up under concurrency."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pandas as pd
import pytest

from personaops.config import load_config
from personaops.feature_store import ASSIGNMENT_FEATURES, ASSIGNMENT_VIEW, feature_store, repo_objects, write_table
from personaops.online_publish import OnlineEntity, SqlitePublisher, delete_persons, iter_sqlite_rows, online_publisher, publishing_changes_only, write_sqlite_table
from personaops.workspace import Workspace

from tests.helpers import assignment_rows

pytestmark = pytest.mark.integration
AT = pd.Timestamp("2026-03-01T12:00:00Z")


def _assignments(ids: list[str], version: int, seed: int) -> pd.DataFrame:
    return assignment_rows(ids, version, seed, AT, AT)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A FeatureStore on the project's feature repo with only the persona_assignment view applied."""
    cfg = load_config(environ={})
    cfg.home = tmp_path / "ws"
    ws = Workspace(cfg.home)
    monkeypatch.setenv("PERSONAS_HOME", str(ws.root))
    write_table(ws, ASSIGNMENT_VIEW, _assignments(["p0"], 1, 0))
    fs = feature_store(ws, cfg)
    wanted = {"person", "persona_assignment_source", ASSIGNMENT_VIEW}
    fs.apply([o for o in repo_objects(cfg.feature_repo) if o.name in wanted])
    return fs


def _table_rows(fs) -> list[tuple]:
    publisher = SqlitePublisher(fs)
    table = publisher.table_name(fs.get_feature_view(ASSIGNMENT_VIEW))
    with sqlite3.connect(publisher.db_path()) as conn:
        return sorted(conn.execute(f'SELECT entity_key, feature_name, value, value_text, vector_value, event_ts, created_ts FROM "{table}"'))


def _online(fs, ids: list[str]) -> pd.DataFrame:
    return fs.get_online_features(features=[f"{ASSIGNMENT_VIEW}:{f}" for f in ASSIGNMENT_FEATURES], entity_rows=[{"person_id": i} for i in ids]).to_df()


def test_fast_publish_writes_byte_for_byte_what_feast_writes(store):
    rows = _assignments([f"person-{i:05d}" for i in range(3_000)] + ["Zoë-ünïcode"], 3, 1)
    rows.loc[5, "confidence"] = np.nan
    rows.loc[6, "persona_name"] = None
    store.write_to_online_store(ASSIGNMENT_VIEW, rows)
    by_feast = _table_rows(store)
    publisher = online_publisher(store)
    assert isinstance(publisher, SqlitePublisher)
    assert publisher.replace(ASSIGNMENT_VIEW, rows) == len(rows)
    assert len(by_feast) == len(rows) * len(ASSIGNMENT_FEATURES)
    assert _table_rows(store) == by_feast


def test_stock_sdk_reads_exactly_what_the_fast_publish_wrote(store):
    rows = _assignments([f"p{i}" for i in range(500)], 2, 2)
    online_publisher(store).replace(ASSIGNMENT_VIEW, rows)
    served = _online(store, rows["person_id"].tolist())
    assert served["person_id"].tolist() == rows["person_id"].tolist()
    for f in ASSIGNMENT_FEATURES:
        assert served[f].tolist() == rows[f].tolist(), f


def test_publishing_v2_over_v1_replaces_every_row_in_one_transaction(store):
    v1 = _assignments([f"p{i}" for i in range(20_000)], 1, 3)
    v2 = _assignments([f"p{i}" for i in range(5_000, 25_000)], 2, 4)  # p0..p4999 leave, p20000.. join
    publisher = SqlitePublisher(store)
    publisher.replace(ASSIGNMENT_VIEW, v1)
    table = publisher.table_name(store.get_feature_view(ASSIGNMENT_VIEW))

    # A reader polling the table while v2 is written must only ever see one version in it.
    seen: list[set[bytes]] = []
    stop = threading.Event()

    def read_snapshots() -> None:
        conn = sqlite3.connect(publisher.db_path(), timeout=30)
        while not stop.is_set():
            seen.append({r[0] for r in conn.execute(f"SELECT DISTINCT value FROM \"{table}\" WHERE feature_name = 'model_version'")})
        conn.close()

    reader = threading.Thread(target=read_snapshots)
    reader.start()
    try:
        publisher.replace(ASSIGNMENT_VIEW, v2)
    finally:
        stop.set()
        reader.join()
    assert seen and all(len(s) == 1 for s in seen), [s for s in seen if len(s) != 1][:3]
    assert len({frozenset(s) for s in seen}) <= 2

    served = _online(store, ["p0", "p4999", "p5000", "p24999"])
    assert served["model_version"].isna().tolist() == [True, True, False, False]  # v1-only persons are gone
    assert served["model_version"].iloc[2:].tolist() == [2, 2]
    assert len(_table_rows(store)) == len(v2) * len(ASSIGNMENT_FEATURES)


def test_a_publish_that_fails_midway_leaves_the_previous_version_whole(store):
    publisher = SqlitePublisher(store)
    publisher.replace(ASSIGNMENT_VIEW, _assignments([f"p{i}" for i in range(2_000)], 1, 5))
    before = _table_rows(store)
    view = store.get_feature_view(ASSIGNMENT_VIEW)
    # Slices of 500 persons, written while the next is encoded (the publish's path); the fourth
    # slice cannot be packed, after three slices are already in the transaction's new table.
    slices = list(iter_sqlite_rows(view, _assignments([f"q{i}" for i in range(2_000)], 2, 6), store.config.entity_key_serialization_version, slice_persons=500))
    direct = next(j for j, codes in enumerate(slices[3].codes) if codes is None)  # confidence: one value per person
    slices[3].values[direct][100] = {"not": "bytes"}
    with pytest.raises(TypeError):
        write_sqlite_table(publisher.db_path(), publisher.table_name(view), iter(slices), expected_values=8_000)
    assert _table_rows(store) == before
    with sqlite3.connect(publisher.db_path()) as conn:  # no half-built table is left behind
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE '%personaops_build%'")] == []


def test_the_swapped_table_is_feast_s_layout_and_feast_apply_still_works(store):
    publisher = SqlitePublisher(store)
    table = publisher.table_name(store.get_feature_view(ASSIGNMENT_VIEW))
    v1 = _assignments([f"p{i}" for i in range(3_000)], 1, 7)
    publisher.replace(ASSIGNMENT_VIEW, v1)
    with sqlite3.connect(publisher.db_path()) as conn:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0]
        plan = " ".join(r[3] for r in conn.execute(f'EXPLAIN QUERY PLAN SELECT entity_key, feature_name, value, event_ts FROM "{table}" WHERE entity_key IN (?, ?) ORDER BY entity_key', (b"a", b"b")))
    assert sql.endswith("WITHOUT ROWID") and "PRIMARY KEY(entity_key, feature_name)" in sql
    assert "USING PRIMARY KEY" in plan and "TEMP B-TREE" not in plan  # Feast's read: a seek, no sort
    # `feast apply` on the swapped table: its CREATE TABLE IF NOT EXISTS / CREATE INDEX run as usual.
    store.apply([store.get_entity("person"), store.get_feature_view(ASSIGNMENT_VIEW)])
    with sqlite3.connect(publisher.db_path()) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?", (table + "_ek",)).fetchone()[0] == 1
    assert _online(store, ["p0", "p2999"])["model_version"].tolist() == [1, 1]
    v2 = _assignments([f"p{i}" for i in range(1_000, 4_000)], 2, 8)
    publisher.replace(ASSIGNMENT_VIEW, v2)  # over the re-indexed table
    served = _online(store, ["p0", "p1000", "p3999"])
    assert served["model_version"].isna().tolist() == [True, False, False]
    assert served["persona_name"].tolist()[1:] == v2.set_index("person_id").loc[["p1000", "p3999"], "persona_name"].tolist()
    store.write_to_online_store(ASSIGNMENT_VIEW, _assignments(["p0"], 3, 9))  # Feast's own upsert works on it too
    assert _online(store, ["p0"])["model_version"].tolist() == [3]


def test_stock_sdk_readers_during_publishes_see_one_whole_version(store):
    """Readers through Feast's get_online_features, while v1 and v2 are published in turn, each
    read only one version for all the persons they ask for, and never fail."""
    ids = [f"p{i}" for i in range(30_000)]
    versions = {1: _assignments(ids, 1, 10), 2: _assignments(ids, 2, 11)}
    publisher = SqlitePublisher(store)
    publisher.replace(ASSIGNMENT_VIEW, versions[1])
    seen: list[tuple] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    sample = ids[::1_500]

    def read() -> None:
        try:
            while not stop.is_set():
                seen.append(tuple(_online(store, sample)["model_version"].tolist()))
        except BaseException as exc:  # noqa: BLE001 — the assertion below reports it
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for version in (2, 1, 2):
            publisher.replace(ASSIGNMENT_VIEW, versions[version])
    finally:
        stop.set()
        reader.join()
    assert not errors, errors[:1]
    assert {s[0] for s in seen} == {1, 2}  # the reader did read while the versions changed
    assert seen and all(len(set(s)) == 1 for s in seen), [s for s in seen if len(set(s)) != 1][:2]
    assert _online(store, sample)["model_version"].tolist() == [2] * len(sample)


def test_concurrent_person_updates_add_up(store):
    """update_entity reads and writes one person in one transaction: two threads raising a
    person's persona_id ten times each end ten + ten higher, and the reads see each other."""
    publisher = SqlitePublisher(store)
    publisher.replace(ASSIGNMENT_VIEW, _assignments(["p0", "p1"], 1, 12).assign(persona_id=0))
    seen: list[OnlineEntity | None] = []

    def bump(current):
        seen.append(current[ASSIGNMENT_VIEW])
        row = _assignments(["p0"], 1, 13).assign(persona_id=int(current[ASSIGNMENT_VIEW].values["persona_id"]) + 1)
        return {ASSIGNMENT_VIEW: row}, None

    def worker() -> None:
        for _ in range(10):
            SqlitePublisher(store).update_entity("p0", [ASSIGNMENT_VIEW], bump)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    served = _online(store, ["p0", "p1"])
    assert served["persona_id"].tolist()[0] == 20
    assert served["persona_id"].tolist()[1] == 0  # the other person is untouched
    assert seen[0].event_time == AT and sorted(e.values["persona_id"] for e in seen) == list(range(20))
    assert len(_table_rows(store)) == 2 * len(ASSIGNMENT_FEATURES)


def test_a_changes_only_publish_writes_the_changed_persons_and_equals_a_full_publish(store):
    """Republishing the same view (the incremental run with an unchanged champion): only new,
    changed and removed persons are written, in one transaction; the table is then row for row
    what a full rebuild writes, and the stock SDK reads the new persons and the unchanged ones."""
    publisher = SqlitePublisher(store)
    v1 = _assignments([f"p{i}" for i in range(3_000)], 4, 20)
    with publishing_changes_only() as report:
        publisher.replace(ASSIGNMENT_VIEW, v1)
    assert report[ASSIGNMENT_VIEW]["mode"] == "full"  # nothing to compare with yet
    with publishing_changes_only() as report:
        publisher.replace(ASSIGNMENT_VIEW, v1)
    assert report[ASSIGNMENT_VIEW] == {"mode": "changes", "persons_written": 0, "persons_removed": 0}
    v2 = pd.concat([v1.iloc[10:].copy(), _assignments([f"new{i}" for i in range(30)], 4, 21)], ignore_index=True)
    v2.loc[v2["person_id"].isin(["p100", "p200"]), "persona_id"] = 99  # two persons re-assigned
    v2.loc[v2["person_id"] == "p300", "confidence"] = np.nan
    with publishing_changes_only() as report:
        publisher.replace(ASSIGNMENT_VIEW, v2)
    assert report[ASSIGNMENT_VIEW] == {"mode": "changes", "persons_written": 33, "persons_removed": 10}
    changed = _table_rows(store)
    served = _online(store, ["new0", "new29", "p100", "p300", "p0", "p9", "p10", "p2999"])
    expected = v2.set_index("person_id")
    assert served["persona_id"].tolist()[:3] == [expected.loc["new0", "persona_id"], expected.loc["new29", "persona_id"], 99]
    assert np.isnan(served["confidence"].tolist()[3])
    assert served["model_version"].isna().tolist() == [False, False, False, False, True, True, False, False]  # p0-p9 removed
    assert served["confidence"].tolist()[6:] == [expected.loc["p10", "confidence"], expected.loc["p2999", "confidence"]]  # unchanged
    publisher.replace(ASSIGNMENT_VIEW, v2)  # a full rebuild of the same rows
    assert _table_rows(store) == changed


def test_a_changes_only_publish_rebuilds_after_any_other_write_or_many_changes(store):
    """A pushed update, a deletion, a full publish outside the block, or more than 30% of persons
    changed: the next changes-only publish rebuilds the table (the pushed person back to batch)."""
    publisher = SqlitePublisher(store)
    v1 = _assignments([f"p{i}" for i in range(1_000)], 5, 30)

    def mode() -> str:
        with publishing_changes_only() as report:
            publisher.replace(ASSIGNMENT_VIEW, v1)
        return report[ASSIGNMENT_VIEW]["mode"]

    assert mode() == "full" and mode() == "changes"
    publisher.update_entity("p1", [ASSIGNMENT_VIEW], lambda current: ({ASSIGNMENT_VIEW: _assignments(["p1"], 5, 31).assign(persona_id=77)}, None))
    assert _online(store, ["p1"])["persona_id"].tolist() == [77]
    assert mode() == "full"
    assert _online(store, ["p1"])["persona_id"].tolist() == [v1.set_index("person_id").loc["p1", "persona_id"]]
    assert mode() == "changes"
    assert delete_persons(store, ["p2"])[ASSIGNMENT_VIEW] == len(ASSIGNMENT_FEATURES)
    assert mode() == "full" and _online(store, ["p2"])["model_version"].tolist() == [5]
    publisher.replace(ASSIGNMENT_VIEW, v1)  # outside the block: no snapshot is kept for it
    assert mode() == "full" and mode() == "changes"
    with publishing_changes_only() as report:
        publisher.replace(ASSIGNMENT_VIEW, v1.assign(model_version=6))  # a new model version: every person changed
    assert report[ASSIGNMENT_VIEW]["mode"] == "full"
    assert _online(store, ["p999"])["model_version"].tolist() == [6]


@pytest.fixture(scope="module")
def redis_url():
    """A Redis database of this module's own on the real server (.ci/run's, or infra/services.sh)."""
    from tests.services import isolated_backends, service_environment, stop_services

    env, started = service_environment()
    try:
        with isolated_backends(env) as isolated:
            yield isolated["PERSONAS_REDIS_URL"]
    finally:
        if started:
            stop_services()


def test_redis_person_updates_are_one_hash_write_and_add_up(redis_url, tmp_path):
    """RedisPublisher.update_entity: WATCH/MULTI on the person's hash, so concurrent updates add
    up; the read returns Feast's stored event time; the stock SDK reads the result."""
    from feast import FeatureStore, RepoConfig

    from personaops.feature_store import redis_connection_string
    from personaops.online_publish import RedisPublisher

    cfg = load_config(environ={})
    cfg.home = tmp_path / "ws"
    ws = Workspace(cfg.home)
    write_table(ws, ASSIGNMENT_VIEW, _assignments(["p0"], 1, 0))
    config = RepoConfig(
        project="personaops", provider="local", registry=str(ws.feast / "registry.db"), offline_store={"type": "file"},
        online_store={"type": "redis", "connection_string": redis_connection_string(redis_url)}, entity_key_serialization_version=3, repo_path=cfg.feature_repo,
    )  # fmt: skip
    fs = FeatureStore(config=config)
    fs.apply([o for o in repo_objects(cfg.feature_repo) if o.name in {"person", "persona_assignment_source", ASSIGNMENT_VIEW}])
    publisher = online_publisher(fs)
    assert isinstance(publisher, RedisPublisher)
    publisher.replace(ASSIGNMENT_VIEW, _assignments(["p0", "p1"], 1, 14).assign(persona_id=0))
    seen: list[OnlineEntity | None] = []

    def bump(current):
        seen.append(current[ASSIGNMENT_VIEW])
        return {ASSIGNMENT_VIEW: _assignments(["p0"], 2, 15).assign(persona_id=int(current[ASSIGNMENT_VIEW].values["persona_id"]) + 1)}, "done"

    def worker() -> None:
        for _ in range(5):
            assert RedisPublisher(fs).update_entity("p0", [ASSIGNMENT_VIEW], bump) == "done"

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    served = _online(fs, ["p0", "p1", "nobody"])
    assert served["persona_id"].tolist()[:2] == [10, 0] and served["model_version"].tolist()[:2] == [2, 1]
    assert pd.isna(served["persona_id"].iloc[2])
    assert seen[0].event_time == AT and seen[0].values["model_version"] == 1
    assert len(seen) >= 10  # a lost race re-runs the read and compute (WATCH), never loses an update
    missing = RedisPublisher(fs).update_entity("nobody", [ASSIGNMENT_VIEW], lambda current: ({}, current[ASSIGNMENT_VIEW]))
    assert missing is None


def test_the_packed_insert_writes_what_the_rows_say_for_every_column_shape():
    """The SQLite publish binds one blob per column and lets SQLite cut each row's value out of it:
    fixed and varying widths, empty values, NULL and non-ASCII texts, coded features, constant and
    varying (negative, NULL) times, duplicates (the later wins), several slices — the table must
    hold exactly what a row-by-row INSERT OR REPLACE of the same rows leaves."""
    from personaops.online_publish import _SQLITE_COLUMNS, _SQLITE_TABLE_SQL, SqliteRows, _insert_sqlite_slices

    rng = np.random.default_rng(5)

    def rows(start: int, n: int) -> SqliteRows:
        ids = sorted({f"k{i:05d}" + "é" * int(i % 7 == 0) + "x" * int(i % 3) for i in range(start, start + n)})
        keys = [i.encode() for i in ids]
        keys[5:7] = [keys[4], keys[4]]  # duplicates of one entity, in order: the last one wins
        m = len(keys)
        fixed = [rng.bytes(9) for _ in range(m)]
        varying = [rng.bytes(int(rng.integers(0, 5))) for _ in range(m)]  # empty values too
        words = [None if i % 11 == 0 else "" if i % 13 == 0 else f"wörd{i}" * int(i % 4) for i in range(m)]
        ts = [int(t) for t in rng.integers(-10**9, 2 * 10**9, m)]
        created = [None if i % 5 == 0 else int(t) for i, t in enumerate(rng.integers(0, 10**6, m))]
        return SqliteRows(
            keys=keys,
            features=["a_coded", "b_coded_varying", "c_fixed", "d_varying"],
            values=[[b"AA", b"BB", b"CC"], [b"x", b"", b"yyyy"], fixed, varying],
            texts=[["1", "2", "3"], ["x", None, "ÿÿÿÿ"], [str(i) for i in range(m)], words],
            codes=[rng.integers(0, 3, m).tolist(), rng.integers(0, 3, m).tolist(), None, None],
            event_ts=ts if start else [7] * m,  # varying, then constant
            created_ts=created if start else [None] * m,
        )

    slices = [rows(0, 1_000), rows(1_000, 1_500)]
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.execute(f"CREATE TABLE packed ({_SQLITE_TABLE_SQL}) WITHOUT ROWID")
    conn.execute(f"CREATE TABLE plain ({_SQLITE_TABLE_SQL})")
    _insert_sqlite_slices(conn, "packed", iter(slices))  # lazily: the second slice is packed while the first is written
    for part in slices:
        conn.executemany(f"INSERT OR REPLACE INTO plain ({', '.join(_SQLITE_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)", part.tuples())
    query = "SELECT entity_key, feature_name, typeof(value), value, typeof(value_text), value_text, vector_value, typeof(event_ts), event_ts, created_ts FROM {} ORDER BY entity_key, feature_name"
    packed, plain = conn.execute(query.format("packed")).fetchall(), conn.execute(query.format("plain")).fetchall()
    assert len(packed) == (len(slices[0].keys) - 2 + len(slices[1].keys) - 2) * 4
    assert packed == plain
    assert {r[2] for r in packed} == {"blob"} and {r[4] for r in packed} == {"text", "null"} and {r[7] for r in packed} == {"integer"}
