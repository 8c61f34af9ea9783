"""Ingest's vectorised shortcuts give what the slow paths give: ISO times cast by Arrow (_parse_times)
against pandas' to_datetime(format="mixed"), and pandera run only on the rows _may_fail flags
against pandera on every row (the same quarantine, reasons in the same order)."""

import random
import warnings
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from personaops import ingest
from personaops.config import IngestConfig
from personaops.ingest import _may_fail, _parse_times, _pandera_reasons, _schema, ingest_sources, read_lake, read_quarantine
from personaops.sources import SourceSpec
from personaops.workspace import Workspace

TIMES = [
    "2024-07-07T21:52:33.804982+00:00", "2024-07-07T21:52:33+05:30", "2024-07-07 21:52:33.1Z", "2024-07-07T21:52:33.123456789-03:00",
    "2022-09-01", "2024-07-07T21:52:33", "2024-02-30T00:00:00+00:00", "2024-02-29", "2023-02-29", "2024-07-07T24:00:00+00:00",
    "2024-07-07T21:52:60+00:00", "2024-07-07T21:52:33+0530", "2024-07-07T21:52:33+05", "2024-07-07T21:52:33+99:99",
    "2024-07-07T21:52:33+24:00", "1970-01-01T00:30:00+01:00", "1969-12-31", "2199-12-31T23:59:59+00:00", "2262-04-12",
    "0001-01-01", "2024-07-07t21:52:33z", "07/08/2024", "2024-07-07T21:52:33.1234567891+00:00", "٢٠٢٤-07-07", "2024-13-01", None,
]  # fmt: skip


def _pandas_times(values: pd.Series) -> pd.Series:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pd.to_datetime(values, utc=True, errors="coerce", format="mixed")


@pytest.mark.parametrize("values", [TIMES, TIMES[:5], [None, None], [], ["2024-07-07T21:52:33+00:00"] * 3, ["2024-02-30"] + TIMES[:2]])
def test_parse_times_equals_pandas_mixed(values):
    s = pd.Series(values, dtype=object, index=pd.RangeIndex(3, 3 + len(values)))
    pd.testing.assert_series_equal(_parse_times(s), _pandas_times(s))


def test_parse_times_random_iso_like_values():
    rng = random.Random(3)
    parts = dict(
        y=["1970", "1969", "2024", "2199", "2200", "0001"], mo=["01", "02", "12", "13", "00"], d=["01", "28", "29", "30", "31", "00"],
        h=["00", "23", "24"], mi=["00", "59", "60"], s=["00", "59", "60"], f=["", ".1", ".123456", ".123456789", "."],
        z=["Z", "+00:00", "-05:00", "+05:30", "+23:59", "+24:00", "", "+0530"], sep=["T", " "],
    )  # fmt: skip
    values = []
    for _ in range(20_000):
        p = {k: rng.choice(v) for k, v in parts.items()}
        values.append(rng.choice([f"{p['y']}-{p['mo']}-{p['d']}", f"{p['y']}-{p['mo']}-{p['d']}{p['sep']}{p['h']}:{p['mi']}:{p['s']}{p['f']}{p['z']}"]))
    s = pd.Series(values, dtype=object)
    got, want = _parse_times(s), _pandas_times(s)
    assert got.notna().sum() > 1_000  # the Arrow path was taken for many
    pd.testing.assert_series_equal(got, want)


def _spec(path, kind="tickets", **extra):
    return SourceSpec(name="tickets", kind=kind, path=path, key="ticket_id", identifiers={"email": "email", "phone": "phone"}, timestamp="created_at", text=["body"], **extra)


CELLS = {
    "email": ["ann@example.com", "", "no-at", "a@b", "a b@c.de", "x@y.z\n", "ü@mail.test", "a@b.c\x1c", "@x.y", "a\u00a0@b.c", "x" * 600 + "@a.b", None],
    "phone": ["+1 (555) 010-0000", "12", "1" * 20, "abc", "٠١٢٣٤٥٦٧٨٩", "555\x1c0100000", None],
    "created_at": ["2026-01-02T10:00:00Z", "1969-01-01", "2999-01-01T00:00:00+00:00", "", None, "2026-01-02"],
    "body": ["fine", "", None, "y" * 30],
    "ticket_id": ["T", "", None, "k" * 600],
}


def _dirty_frame(n: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = {c: [rng.choice(v) for _ in range(n)] for c, v in CELLS.items()}
    rows["ticket_id"] = [f"T{i}" if v == "T" else v for i, v in enumerate(rows["ticket_id"])]
    return pd.DataFrame(rows, dtype=object)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_may_fail_flags_every_row_pandera_rejects(seed):
    spec = _spec("t.csv")
    cfg = IngestConfig(max_text_chars=20)
    raw = _dirty_frame(400, seed)
    raw.index = pd.Index(np.arange(1, len(raw) + 1), name="_row_number")
    canon, _ = ingest._canonical(spec, raw, cfg)
    now = pd.Timestamp(datetime.now(timezone.utc))
    schema = _schema(spec, cfg, now)
    every = _pandera_reasons(schema, canon, spec)
    may = _may_fail(spec, cfg, canon, now)
    assert every and set(every) <= set(canon.index[may])
    assert not may.all()  # it does leave rows out
    assert _pandera_reasons(schema, canon[may], spec) == every  # same reasons, same order


def test_quarantine_is_the_same_as_pandera_on_every_row(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    _dirty_frame(600, 5).to_csv(path, index=False)
    spec = _spec(path)
    cfg = IngestConfig(max_text_chars=20)
    out = {}
    for name, may in (("fast", None), ("every", lambda spec, cfg, frame, now: np.ones(len(frame), dtype=bool))):
        if may is not None:
            monkeypatch.setattr(ingest, "_may_fail", may)
        ws = Workspace(tmp_path / name)
        [report] = ingest_sources([spec], ws, cfg, "r1", incremental=False)
        out[name] = (read_lake(ws, "tickets", report.batch_ids).drop(columns="_ingested_at"), read_quarantine(ws, "tickets", report.batch_ids))
    assert out["fast"][1]["reason"].str.contains("e-mail|digits|missing|longer|1970").any()
    pd.testing.assert_frame_equal(out["fast"][0], out["every"][0])
    pd.testing.assert_frame_equal(out["fast"][1], out["every"][1])


def test_lake_dictionary_encodes_only_repeating_columns(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "t.csv"
    rows = [f"T{i},p{i % 3}@example.com,,same body,2026-01-02T10:{i % 60:02d}:00Z" for i in range(200)]
    path.write_text("ticket_id,email,subject,body,created_at\n" + "\n".join(rows) + "\n")
    spec = SourceSpec(name="tickets", kind="tickets", path=path, key="ticket_id", identifiers={"email": "email"}, timestamp="created_at", text=["subject", "body"])
    ws = Workspace(tmp_path / "ws")
    [report] = ingest_sources([spec], ws, IngestConfig(), "r1", incremental=False)
    lake_file = ws.lake / "tickets" / f"batch={report.batch_ids[0]}" / "part-0.parquet"
    meta = pq.ParquetFile(lake_file).metadata.row_group(0)
    encodings = {meta.column(j).path_in_schema: meta.column(j).encodings for j in range(meta.num_columns)}
    assert not any("DICT" in e for e in encodings["source_key"])  # every key distinct: plain pages
    assert not any("DICT" in e for e in encodings["_row_hash"])
    assert any("DICT" in e for e in encodings["email"]) and any("DICT" in e for e in encodings["_source"])
    lake = read_lake(ws, "tickets", report.batch_ids)
    assert lake["source_key"].tolist() == [f"T{i}" for i in range(200)] and lake["email"].nunique() == 3
