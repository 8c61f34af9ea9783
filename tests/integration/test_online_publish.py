"""The fast online publish on the real Feast SQLite online store: same rows as Feast's own write,
read back by the stock SDK, and one transaction per publish."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pandas as pd
import pytest

from personaops.config import load_config
from personaops.feature_store import ASSIGNMENT_FEATURES, ASSIGNMENT_VIEW, feature_store, repo_objects, write_table
from personaops.online_publish import SqlitePublisher, online_publisher, write_sqlite_table
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
    encoded = publisher.encode(view, _assignments([f"q{i}" for i in range(2_000)], 2, 6))
    broken = encoded[:3_000] + [("truncated",)] + encoded[3_000:]
    with pytest.raises(sqlite3.ProgrammingError):
        write_sqlite_table(publisher.db_path(), publisher.table_name(view), broken)
    assert _table_rows(store) == before
