"""A full resolve's records loaded as Categoricals (identity_store.lake_records, issue #9: 37.7M
records at 1,000,000 people) hold what the per-source frames concatenated held, and resolve to
the same persons, edges, review pairs and index as the object columns."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from personaops import identity_store
from personaops.config import IdentityConfig
from personaops.identity import _factorize, resolve_identities
from personaops.ingest import read_lake
from personaops.workspace import Workspace
from tests.unit.test_identity_compact import _arrow_lineage, _population


def _batch(ws: Workspace, source: str, batch: str, columns: dict) -> None:
    path = ws.lake / source / f"batch={batch}" / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def test_lake_records_hold_what_the_concatenated_frames_held(tmp_path):
    ws = Workspace(tmp_path)
    _batch(ws, "crm", "b1", {"source_key": ["c1", "c2", "c3"], "customer_id": ["A", None, "a "], "email": ["x@y.z", "", None], "_row_number": [1, 2, 3]})
    _batch(ws, "crm", "b2", {"source_key": ["c4"], "customer_id": ["B"], "_row_number": [1]})  # no email column in this batch
    _batch(ws, "events", "e1", {"source_key": ["e1", "e2"], "customer_id": ["B", "A"], "device_id": ["d1", "d1"], "_row_number": [1, 2]})
    _batch(ws, "shop", "s1", {"source_key": ["s1", "s2"], "phone": pa.array([5551234567, None], pa.int64()), "_row_number": [1, 2]})  # not text
    _batch(ws, "shop", "s2", {"source_key": ["s3"], "phone": ["555-123-4567"], "_row_number": [1]})
    _batch(ws, "bare", "x1", {"source_key": ["x1", "x2"], "_row_number": [1, 2]})  # none of the columns: rows still count
    batches = {"crm": ["b1", "b2"], "events": ["e1"], "shop": ["s1", "s2"], "bare": ["x1"]}
    columns = ["customer_id", "email", "phone", "account_id", "device_id"]

    got = identity_store.lake_records(ws, batches, columns)
    frames = []
    for source, ids in batches.items():
        frame = read_lake(ws, source, ids, ["_row_number", *columns])
        frame["source"] = source
        frames.append(frame)
    want = pd.concat(frames, ignore_index=True).drop(columns=["_row_number"])
    assert list(got.columns) == ["source", "customer_id", "email", "phone", "device_id"]  # account_id: no batch has it
    assert isinstance(got["customer_id"].dtype, pd.CategoricalDtype) and got["phone"].dtype == object  # the int batch: objects
    pd.testing.assert_frame_equal(got.astype(object), want[got.columns].astype(object), check_exact=True)
    for column in got.columns:  # what the identity code takes from a column: the same codes and values either way
        codes, values = _factorize(got[column])
        want_codes, want_values = pd.factorize(want[column].to_numpy(dtype=object))
        np.testing.assert_array_equal(codes, want_codes)
        assert list(values) == list(want_values)


@pytest.mark.parametrize("probabilistic", [False, True])
def test_categorical_records_resolve_like_object_records(probabilistic):
    records = _population(1500, 11)
    cfg = IdentityConfig(probabilistic=probabilistic, min_entities_for_matching=2)
    bare = records.drop(columns=["source_key", "_batch_id", "_row_number", "_row_hash"])
    objects = resolve_identities(bare, cfg, lineage=_arrow_lineage(records, 113))
    # astype("category") sorts the categories: their order must not matter, only the values
    coded = bare.astype({c: "category" for c in bare.columns})
    assert all(isinstance(t, pd.CategoricalDtype) for t in coded.dtypes)
    categorical = resolve_identities(coded, cfg, lineage=_arrow_lineage(records, 113))
    assert len(objects.edges) > 500 and objects.stats["persons"] < len(records)
    pd.testing.assert_frame_equal(categorical.records.to_pandas(), objects.records.to_pandas(), check_exact=True)
    pd.testing.assert_frame_equal(categorical.edges.to_pandas(), objects.edges.to_pandas(), check_exact=True)
    pd.testing.assert_frame_equal(categorical.review, objects.review, check_exact=True)
    for name in ("keys", "devices", "entities"):
        pd.testing.assert_frame_equal(getattr(categorical.index, name), getattr(objects.index, name), check_exact=True)
    assert categorical.stats == objects.stats and categorical.events == objects.events
