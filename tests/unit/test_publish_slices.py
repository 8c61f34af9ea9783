"""The Redis publish encodes field values a slice of persons at a time (personaops/online_publish.py
`_ValuesBySlice`): the bytes must be those of encoding every person at once."""

import numpy as np
import pandas as pd


def _view():
    from feast import Entity, FeatureView, Field, FileSource
    from feast.types import Float64, Int64, String
    from feast.value_type import ValueType

    person = Entity(name="person", join_keys=["person_id"], value_type=ValueType.STRING)
    source = FileSource(path="unused.parquet", timestamp_field="event_timestamp")
    schema = [Field(name="person_id", dtype=String), Field(name="score", dtype=Float64), Field(name="n_events", dtype=Int64), Field(name="plan", dtype=String)]
    return FeatureView(name="person_slices", entities=[person], schema=schema, source=source)


def test_values_encoded_by_slice_equal_the_whole_encoding():
    from personaops.online_publish import _ValuesBySlice, encode_redis_hashes, redis_keys

    rng = np.random.default_rng(1)
    n = 2_345
    rows = pd.DataFrame({
        "person_id": [f"p{i:05d}" for i in range(n)],
        "score": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),  # many distinct numbers, some missing
        "n_events": rng.integers(0, 5, n),  # few distinct values
        "plan": rng.choice(["basic", "pro", None], n),
        "event_timestamp": pd.Timestamp("2026-11-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 3, n), unit="D"),
    })  # fmt: skip
    view = _view()
    keys, fields, values = encode_redis_hashes(view, rows, "proj", "person_slices", 3)
    assert keys == redis_keys(view, rows, "proj", 3) and len(values) == n * len(fields)
    sliced = _ValuesBySlice(view, rows, 1_000)
    got = [v for start in range(0, n, 250) for v in sliced.get(start, min(start + 250, n))]
    assert got == values
