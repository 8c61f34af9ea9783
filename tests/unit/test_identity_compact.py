"""A full resolve's compact path (issue #9: bounded memory at 1,000,000 people) gives what the
whole-frame path gives: the record map and edges built in chunks from record positions and a
lineage read back as Arrow (RecordMap, EdgeList), written chunk by chunk, and the shared-device
filter of the link keys done on codes."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from personaops import identity, identity_store
from personaops.config import IdentityConfig
from personaops.identity import LINEAGE, EdgeList, RecordMap, _keys, resolve_identities
from tests.unit.test_identity_memory import _old_keys, _records


def _population(n: int, seed: int) -> pd.DataFrame:
    records = _records(n, seed)
    rng = np.random.default_rng(seed)
    records["name"] = rng.choice(np.array(["Ana Silva", "ana silva ", "Bob Jones", None, "Carla Diaz"], dtype=object), n)
    records["_batch_id"] = np.where(np.arange(n) < n // 2, "b1", "b2")
    records["_row_number"] = np.arange(n, dtype=np.int64)
    records["_row_hash"] = [f"h{i:08x}" for i in range(n)]
    return records


def _arrow_lineage(records: pd.DataFrame, chunk: int):
    table = pa.Table.from_pandas(records[LINEAGE], preserve_index=False)

    def tables(columns=LINEAGE):
        for batch in table.to_batches(max_chunksize=chunk):
            yield pa.Table.from_batches([batch]).select(list(columns))

    return tables


@pytest.mark.parametrize("probabilistic", [False, True])
def test_compact_resolve_equals_the_whole_frame_resolve(tmp_path, monkeypatch, probabilistic):
    records = _population(1500, 5)
    cfg = IdentityConfig(probabilistic=probabilistic, min_entities_for_matching=2)
    whole = resolve_identities(records, cfg)
    assert len(whole.edges) > 500 and whole.records["linked_by"].nunique() > 2  # rules linked plenty

    monkeypatch.setattr(RecordMap, "CHUNK", 97)
    monkeypatch.setattr(EdgeList, "CHUNK", 89)
    monkeypatch.setattr(identity_store, "ROW_GROUP", 50)  # the chunked writer, not the whole-frame one
    bare = records.drop(columns=["source_key", "_batch_id", "_row_number", "_row_hash"])  # what the flow loads
    compact = resolve_identities(bare, cfg, lineage=_arrow_lineage(records, 113))
    assert isinstance(compact.records, RecordMap) and isinstance(compact.edges, EdgeList)
    pd.testing.assert_frame_equal(compact.records.to_pandas(), whole.records, check_exact=True)
    pd.testing.assert_frame_equal(compact.edges.to_pandas(), whole.edges, check_exact=True)
    pd.testing.assert_frame_equal(compact.review, whole.review, check_exact=True)
    for name in ("keys", "devices", "entities"):
        pd.testing.assert_frame_equal(getattr(compact.index, name), getattr(whole.index, name), check_exact=True)
    assert compact.stats == whole.stats and compact.events == whole.events

    # written in chunks (Arrow tables of the lineage and edges), read back as the whole frames
    for name, part in (("records", compact.records), ("edges", compact.edges)):
        identity_store._write_parquet(part, tmp_path / f"{name}.parquet")
        back = pd.read_parquet(tmp_path / f"{name}.parquet")
        pd.testing.assert_frame_equal(back, getattr(whole, name), check_exact=True)


def test_compact_resolve_refuses_a_lineage_of_other_records():
    records = _population(300, 6)
    short = _arrow_lineage(records.iloc[:200], 64)
    with pytest.raises(ValueError, match="the lineage has 200 records"):
        resolve_identities(records.drop(columns=["source_key"]), IdentityConfig(probabilistic=False), lineage=short)


def test_shared_device_filter_on_codes_matches_the_frame_merge():
    records = _records(3000, 2)
    records.loc[records.index[::7], "device_id"] = " D1"  # raw spellings of one device key
    for cfg in (IdentityConfig(), IdentityConfig(max_persons_per_device=2), IdentityConfig(source_link_keys={"events": ["device_id"]})):
        keys, shared = _keys(records, cfg)
        old = _old_keys(records, cfg)
        # the earlier filter: distinct (device, customer) key pairs per record, by key value
        dev = old[old.kind == "device_id"][["record_idx", "key"]]
        cust = old[old.kind == "customer_id"][["record_idx", "key"]]
        pairs = dev.merge(cust, on="record_idx", suffixes=("_dev", "_cust")).drop_duplicates(["key_dev", "key_cust"])
        per_device = pairs.groupby("key_dev").size()
        shared_keys = set(per_device[per_device > cfg.max_persons_per_device].index)
        old = old[~((old.kind == "device_id") & old.key.isin(shared_keys) & old.record_idx.isin(set(cust["record_idx"])))].reset_index(drop=True)
        pd.testing.assert_frame_equal(keys, old, check_exact=True)
        assert shared == len(shared_keys)
    assert shared_keys  # some device was shared under the last configuration


def test_record_ids_on_demand_match_the_string_column():
    records = _records(500, 3)
    records["source_key"] = [f"k:{i}" if i % 3 else f"k{i}" for i in range(len(records))]  # keys may hold ':'
    expected = identity.record_ids(records).to_numpy()
    rid = identity._RecordIds(records["source"], records["source_key"])
    positions = np.array([499, 0, 17, 17, 250])
    assert rid.at(positions).tolist() == expected[positions].tolist()
    assert rid.arrow(positions).to_pylist() == expected[positions].tolist()
    assert rid.find({expected[3], expected[100], "nosuch:k1"}) == {expected[3]: 3, expected[100]: 100}
