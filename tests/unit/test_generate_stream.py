"""`generate` writes its rows slice by slice (issue #9: 1,000,000 people within memory); the files
must be the ones writing each whole frame at once gave: CSVs byte for byte, Parquet the same
schema and frame (and bytes, while the row groups are cut where the whole frame's were)."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import personaops.generate as gen

CASES = [
    dict(users=150, seed=7),
    dict(users=240, seed=7, join_rate=0.05, leave_rate=0),  # period 0 "grow"
    dict(users=220, seed=5, period=2),  # turnover: joiners and leavers
    dict(users=160, seed=9, period=1, drift="mix", join_rate=0.1, leave_rate=0.1),
]


def _whole(monkeypatch, out: Path, case: dict) -> dict:
    """The reference: every drift kept in memory and each frame written whole (what generate did before)."""
    with monkeypatch.context() as m:
        m.setattr(gen, "WHOLE_FRAME_DRIFTS", gen.DRIFT_KINDS)
        kw = dict(case)
        return gen.generate(kw.pop("users"), kw.pop("seed"), out, **kw)


def _files(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


def _assert_same_output(a: Path, b: Path, row_group: int | None = None) -> None:
    """Same files; Parquet bytes too, unless `row_group` cut a file's rows into more groups than one."""
    assert _files(a) == _files(b) and len(_files(a)) == 9
    for rel in _files(a):
        x, y = a / rel, b / rel
        if rel.suffix == ".parquet":
            assert pq.read_schema(x).equals(pq.read_schema(y), check_metadata=True), rel
            pd.testing.assert_frame_equal(pd.read_parquet(x), pd.read_parquet(y), check_exact=True)
            one_group = row_group is None or pq.ParquetFile(x).metadata.num_rows <= row_group
            assert (x.read_bytes() == y.read_bytes()) is one_group, rel
        elif rel.suffix == ".yaml":  # absolute paths: the folders differ
            assert x.read_text().replace(str(a), "@") == y.read_text().replace(str(b), "@")
        else:
            assert x.read_bytes() == y.read_bytes(), rel


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_streamed_output_is_the_whole_frame_output(tmp_path, monkeypatch, case):
    reference = _whole(monkeypatch, tmp_path / "whole", case)
    monkeypatch.setattr(gen, "SLICE_PERSONS", 7)  # dozens of slices
    slices = []
    write = gen._Stream.write
    monkeypatch.setattr(gen._Stream, "write", lambda self, rows: (slices.append(len(rows.events)), write(self, rows))[1])
    kw = dict(case)
    counts = gen.generate(kw.pop("users"), kw.pop("seed"), tmp_path / "stream", **kw)
    assert counts == reference
    assert len(slices) > case["users"] // 7 and max(slices) < counts["events"] / 5  # written as it goes, not held
    _assert_same_output(tmp_path / "whole", tmp_path / "stream")


def test_row_groups_are_cut_across_slices_with_one_schema(tmp_path, monkeypatch):
    case = dict(users=200, seed=3, period=1)
    _whole(monkeypatch, tmp_path / "whole", case)
    monkeypatch.setattr(gen, "SLICE_PERSONS", 11)
    monkeypatch.setattr(gen, "ROW_GROUP", 500)
    counts = gen.generate(200, 3, tmp_path / "stream", period=1)
    # other row groups than the whole frame's one: other bytes, the same schema and rows
    _assert_same_output(tmp_path / "whole", tmp_path / "stream", row_group=500)
    for name, n in [("events_p1.parquet", counts["events"]), ("truth/records_p1.parquet", None), ("truth/persons_p1.parquet", None)]:
        meta = pq.ParquetFile(tmp_path / "stream" / name).metadata
        n = n or meta.num_rows
        assert meta.num_row_groups == math.ceil(n / 500)
        assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [500] * (n // 500) + ([n % 500] if n % 500 else [])


def test_pick_draws_what_generator_choice_draws():
    weights = np.random.default_rng(0).dirichlet(np.ones(14), size=20)
    for p in weights:
        a, b = np.random.default_rng(42), np.random.default_rng(42)
        cdf = gen._cdf(p)
        assert [int(a.choice(len(p), p=p)) for _ in range(300)] == [gen._pick(b, cdf) for _ in range(300)]
        assert a.random() == b.random()  # and the streams stay in step
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    plans = {"pro": 0.6, "enterprise": 0.3, "basic": 0.1}
    keys = list(plans)
    expected = [keys[a.choice(3, p=np.array(list(plans.values())) / 1.0)] for _ in range(200)]
    assert expected == [gen._choice(b, plans) for _ in range(200)]
    a, b = np.random.default_rng(2), np.random.default_rng(2)
    assert [int(a.choice(3, p=gen.GENDER_SHARES)) for _ in range(200)] == [gen._pick(b, gen.GENDER_CDF) for _ in range(200)]
