import numpy as np
import pandas as pd
import pytest

from personaops.config import IngestConfig
from personaops.errors import SourceError
from personaops.ingest import ingest_sources, read_lake, read_quarantine
from personaops.sources import SourceSpec
from personaops.workspace import Workspace
from tests.helpers import CORRUPT_REASONS, TICKETS_HEADER, corrupt_rows, write_tickets_csv

GOOD = [
    "T-1,ann@example.com,,My export fails,2026-01-02T10:00:00Z",
    "T-2,ANN@example.com ,,Still failing,2026-01-03T10:00:00+02:00",
    "T-3,bob@example.com,,Login broken,2026-01-04 09:00:00",
]


def _spec(path):
    return SourceSpec(name="tickets", kind="tickets", path=path, key="ticket_id", identifiers={"email": "email"}, timestamp="created_at", text=["subject", "body"])


def test_good_rows_land_in_the_lake_with_lineage(tmp_path):
    ws = Workspace(tmp_path / "ws")
    path = write_tickets_csv(tmp_path / "t.csv", GOOD)
    [report] = ingest_sources([_spec(path)], ws, IngestConfig(), "r1")
    assert (report.rows_in, report.accepted, report.quarantined) == (3, 3, 0)
    lake = read_lake(ws, "tickets", report.batch_ids)
    assert list(lake["_row_number"]) == [1, 2, 3]
    assert lake["_row_hash"].nunique() == 3
    assert str(lake["event_time"].dtype) == "datetime64[ns, UTC]"
    # mixed time zones are normalised to UTC
    assert lake.loc[1, "event_time"] == pd.Timestamp("2026-01-03T08:00:00Z")
    assert lake.loc[0, "text"] == "My export fails"


def test_corrupted_rows_are_quarantined_with_reasons_and_counts_balance(tmp_path):
    ws = Workspace(tmp_path / "ws")
    path = tmp_path / "t.csv"
    path.write_bytes((TICKETS_HEADER + "\n".join(GOOD) + "\n").encode() + b"".join(corrupt_rows()))
    [report] = ingest_sources([_spec(path)], ws, IngestConfig(), "r1")
    assert report.rows_in == len(GOOD) + len(corrupt_rows())
    assert report.rows_in == report.accepted + report.quarantined
    assert report.accepted == len(GOOD)
    quarantine = read_quarantine(ws, "tickets", report.batch_ids)
    assert len(quarantine) == len(CORRUPT_REASONS)
    by_row = dict(zip(quarantine["_row_number"], quarantine["reason"]))
    for offset, (key, reason) in enumerate(CORRUPT_REASONS.items()):
        assert reason in by_row[len(GOOD) + 1 + offset], (key, by_row[len(GOOD) + 1 + offset])


def test_duplicates_are_quarantined_not_doubled(tmp_path):
    ws = Workspace(tmp_path / "ws")
    rows = GOOD + [GOOD[0], "T-2,zed@example.com,,Different content same key,2026-01-05T00:00:00Z"]
    [report] = ingest_sources([_spec(write_tickets_csv(tmp_path / "t.csv", rows))], ws, IngestConfig(), "r1")
    reasons = read_quarantine(ws, "tickets", report.batch_ids)["reason"].tolist()
    assert report.accepted == 3 and report.quarantined == 2
    assert any("duplicate of row 1" in r for r in reasons)
    assert any("duplicate key 'T-2'" in r for r in reasons)


def test_reingesting_the_same_file_changes_nothing(tmp_path):
    ws = Workspace(tmp_path / "ws")
    path = write_tickets_csv(tmp_path / "t.csv", GOOD)
    [first] = ingest_sources([_spec(path)], ws, IngestConfig(), "r1")
    [second] = ingest_sources([_spec(path)], ws, IngestConfig(), "r2")
    assert first.batch_ids == second.batch_ids
    assert len(list((ws.lake / "tickets").glob("batch=*/part-0.parquet"))) == 1
    assert len(read_lake(ws, "tickets", second.batch_ids)) == 3


def test_header_only_and_empty_files_are_zero_rows(tmp_path):
    ws = Workspace(tmp_path / "ws")
    header_only = write_tickets_csv(tmp_path / "h.csv", [])
    [report] = ingest_sources([_spec(header_only)], ws, IngestConfig(), "r1")
    assert (report.rows_in, report.accepted, report.quarantined) == (0, 0, 0)
    empty = tmp_path / "e.csv"
    empty.write_bytes(b"")
    [report] = ingest_sources([_spec(empty)], ws, IngestConfig(), "r1")
    assert report.rows_in == 0 and "empty file" in report.files[0].note


def test_a_mapped_column_missing_from_the_file_is_one_error(tmp_path):
    path = write_tickets_csv(tmp_path / "t.csv", ["T-1,a@b.co,x,2026-01-01"], header="ticket_id,email,body,created_at\n")
    with pytest.raises(SourceError) as exc:
        ingest_sources([_spec(path)], Workspace(tmp_path / "ws"), IngestConfig(), "r1")
    assert "'subject'" in str(exc.value) and "t.csv" in str(exc.value) and "'tickets'" in str(exc.value)


def test_parquet_sources_are_validated_the_same_way(tmp_path):
    ws = Workspace(tmp_path / "ws")
    frame = pd.DataFrame(
        {"event_id": ["e1", "e2", "e3"], "user_id": ["C1", None, None], "device_id": ["d1", "d2", None],
         "event_type": ["login", "page_view", "login"], "ts": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"], utc=True)}
    )  # fmt: skip
    path = tmp_path / "events.parquet"
    frame.to_parquet(path)
    spec = SourceSpec(name="events", kind="events", path=path, key="event_id", identifiers={"customer_id": "user_id", "device_id": "device_id"}, timestamp="ts", fields={"event_type": "event_type"})
    [report] = ingest_sources([spec], ws, IngestConfig(), "r1")
    assert (report.accepted, report.quarantined) == (2, 1)
    assert "no identifier" in read_quarantine(ws, "events", report.batch_ids)["reason"].iloc[0]


def test_range_and_length_checks_give_readable_reasons(tmp_path):
    ws = Workspace(tmp_path / "ws")
    long_text = "x" * 30
    rows = ["T-1,a@b.co,,ok,1950-01-01T00:00:00Z", f"T-2,a@b.co,,{long_text},2026-01-01T00:00:00Z"]
    [report] = ingest_sources([_spec(write_tickets_csv(tmp_path / "t.csv", rows))], ws, IngestConfig(max_text_chars=20), "r1")
    reasons = read_quarantine(ws, "tickets", report.batch_ids)["reason"].tolist()
    assert report.quarantined == 2
    assert "created_at ('1950-01-01 00:00:00+00:00') is before 1970 or in the future" in reasons[0]
    assert "subject+body is too long" in reasons[1]


def test_a_row_with_no_identifier_gets_that_reason_once(tmp_path):
    ws = Workspace(tmp_path / "ws")
    spec = SourceSpec(name="crm", kind="crm", path=tmp_path / "c.csv", key="id", identifiers={"email": "email", "phone": "phone"})
    (tmp_path / "c.csv").write_text("id,email,phone\n1,,\n")
    [report] = ingest_sources([spec], ws, IngestConfig(), "r1")
    assert read_quarantine(ws, "crm", report.batch_ids)["reason"].iloc[0] == "no identifier column holds a value"


def _lake_and_quarantine(ws, source, batch_ids):
    lake = read_lake(ws, source, batch_ids).drop(columns=["_ingested_at"])
    return lake, read_quarantine(ws, source, batch_ids)


def test_chunked_ingest_gives_the_same_lake_and_quarantine_as_one_chunk(tmp_path, monkeypatch):
    import personaops.ingest as ingest

    # a BOM, blank lines, a NUL byte, bad UTF-8, malformed lines, and repeats that straddle chunks
    rows = [r.encode() + b"\n" for r in GOOD] + [b"\n", b"T-4,dan@example.com,,Nul \x00 inside,2026-01-05T00:00:00Z\n"]
    rows += [b"T-5,eli@example.com,,Fine,2026-01-06T00:00:00Z\n", (GOOD[0] + "\n").encode(), b"T-3,new@example.com,,Same key,2026-01-07T00:00:00Z\n"]
    rows += [(GOOD[1] + "\n").encode(), b"\n"] + corrupt_rows()
    data = b"\xef\xbb\xbf" + TICKETS_HEADER.encode() + b"".join(rows)
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    whole_ws, chunked_ws = Workspace(tmp_path / "whole"), Workspace(tmp_path / "chunked")
    [whole] = ingest_sources([_spec(path)], whole_ws, IngestConfig(), "r1")
    monkeypatch.setattr(ingest, "CHUNK_ROWS", 2)
    [chunked] = ingest_sources([_spec(path)], chunked_ws, IngestConfig(), "r1")
    assert (chunked.rows_in, chunked.accepted, chunked.quarantined) == (whole.rows_in, whole.accepted, whole.quarantined)
    assert chunked.rows_in == chunked.accepted + chunked.quarantined == len(GOOD) + 5 + len(corrupt_rows())
    lake, quarantine = _lake_and_quarantine(chunked_ws, "tickets", chunked.batch_ids)
    whole_lake, whole_quarantine = _lake_and_quarantine(whole_ws, "tickets", whole.batch_ids)
    pd.testing.assert_frame_equal(lake, whole_lake)
    pd.testing.assert_frame_equal(quarantine, whole_quarantine)
    reasons = dict(zip(quarantine["_row_number"], quarantine["reason"]))
    # row 6 repeats row 1 and row 8 repeats row 2, each in a later chunk than the row it repeats
    assert reasons[6] == "duplicate of row 1" and reasons[8] == "duplicate of row 2"
    assert reasons[7] == "duplicate key 'T-3' (first at t.csv row 3)"
    assert "not valid UTF-8" in reasons[4]
    assert list(lake["source_key"]) == ["T-1", "T-2", "T-3", "T-5"]
    # the parquet file holds one row group per chunk that had accepted rows
    import pyarrow.parquet as pq

    assert pq.ParquetFile(ws_lake_file(chunked_ws, "tickets", chunked.batch_ids[0])).num_row_groups > 1


def ws_lake_file(ws, source, batch_id):
    return ws.lake / source / f"batch={batch_id}" / "part-0.parquet"


def test_chunked_parquet_ingest_reads_integers_with_gaps_as_one_read_does(tmp_path, monkeypatch):
    import personaops.ingest as ingest

    # `score` has a gap only in the last chunk: one read makes every value a float ("7.0"), so must chunks
    import pyarrow as pa
    import pyarrow.parquet as pq

    # written without pandas metadata, as a Spark or DuckDB export is
    table = pa.table({"response_id": ["r1", "r2", "r1", "r3"], "email": ["a@b.co", "c@d.co", "a@b.co", "e@f.co"],
                      "nps": pa.array([7, 9, 7, None], type=pa.int64()), "ts": ["2026-01-01", "2026-01-02", "2026-01-01", "2026-01-03"]})  # fmt: skip
    path = tmp_path / "surveys.parquet"
    pq.write_table(table, path)
    spec = SourceSpec(name="surveys", kind="surveys", path=path, key="response_id", identifiers={"email": "email"}, timestamp="ts", fields={"score": "nps"})
    whole_ws, chunked_ws = Workspace(tmp_path / "whole"), Workspace(tmp_path / "chunked")
    [whole] = ingest_sources([spec], whole_ws, IngestConfig(), "r1")
    monkeypatch.setattr(ingest, "CHUNK_ROWS", 2)
    [chunked] = ingest_sources([spec], chunked_ws, IngestConfig(), "r1")
    lake, quarantine = _lake_and_quarantine(chunked_ws, "surveys", chunked.batch_ids)
    pd.testing.assert_frame_equal(lake, _lake_and_quarantine(whole_ws, "surveys", whole.batch_ids)[0])
    assert lake["score"].tolist()[:2] == [7.0, 9.0] and lake["score"].isna().tolist() == [False, False, True]
    assert quarantine["reason"].tolist() == ["duplicate of row 1"]
    assert '"nps": "7.0"' in quarantine["raw"].iloc[0]  # as one read of the file gives it


def test_read_lake_reads_only_the_columns_asked_for(tmp_path):
    ws = Workspace(tmp_path / "ws")
    [report] = ingest_sources([_spec(write_tickets_csv(tmp_path / "t.csv", GOOD))], ws, IngestConfig(), "r1")
    lake = read_lake(ws, "tickets", report.batch_ids, columns=["source_key", "text", "not_there"], prefixes=("_row",))
    assert list(lake.columns) == ["source_key", "text", "_row_number", "_row_hash"]
    assert lake["text"].tolist() == read_lake(ws, "tickets", report.batch_ids)["text"].tolist()


# --- incremental ingest: a grown file has only its added rows validated, with the same result --
def _ingest_twice(tmp_path, spec_of, before: bytes | None, after_files: dict[str, bytes], folder: bool = False):
    """Ingest `before` then the grown files into one workspace (incremental) and the grown files
    alone into another (full); return (incremental reports, full reports, both workspaces)."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    target = src if folder else src / next(iter(after_files))
    if before is not None:
        for name, data in before.items():
            (src / name).write_bytes(data)
        ws_inc = Workspace(tmp_path / "ws-inc")
        ingest_sources([spec_of(target)], ws_inc, IngestConfig(incremental=True), "r1")
    for name, data in after_files.items():
        (src / name).write_bytes(data)
    ws_full = Workspace(tmp_path / "ws-full")
    inc = ingest_sources([spec_of(target)], ws_inc, IngestConfig(incremental=True), "r2")
    full = ingest_sources([spec_of(target)], ws_full, IngestConfig(), "r3")
    return inc, full, ws_inc, ws_full


def _assert_same_lake(inc, full, ws_inc, ws_full):
    drop = ["_batch_id", "_ingested_at"]
    for a, b in zip(inc, full):
        assert (a.rows_in, a.accepted, a.quarantined) == (b.rows_in, b.accepted, b.quarantined)
        for f in a.files:
            assert f.new_rows_in == f.new_accepted + f.new_quarantined
        pd.testing.assert_frame_equal(read_lake(ws_inc, a.source, a.batch_ids).drop(columns=drop), read_lake(ws_full, b.source, b.batch_ids).drop(columns=drop), check_dtype=False)
        qa, qb = read_quarantine(ws_inc, a.source, a.batch_ids), read_quarantine(ws_full, b.source, b.batch_ids)
        pd.testing.assert_frame_equal(qa.drop(columns=drop, errors="ignore"), qb.drop(columns=drop, errors="ignore"), check_dtype=False)


def test_a_grown_csv_validates_only_its_tail_and_equals_a_full_ingest(tmp_path):
    head = (TICKETS_HEADER + "\n".join(GOOD) + "\n").encode() + b"".join(corrupt_rows()[:2] + corrupt_rows()[3:6])
    tail = (
        b"T-4,dan@example.com,,New ticket,2026-01-06T10:00:00Z\n"
        + (GOOD[0] + "\n").encode()  # the same row as row 1: a duplicate row
        + b"T-2,zed@example.com,,Same key as an earlier row,2026-01-07T00:00:00Z\n"  # a key seen in the earlier rows
        + b"BAD-1,gus@example.com,,Key of an earlier quarantined row,2026-01-07T00:00:00Z\n"
        + b'T-5,hal@example.com,"multi\nline",body,2026-01-08T00:00:00Z\n'
        + b"T-6,ivy@example.com,,broken,date\n"
        + b"T-7,not-an-email,,x,2026-01-08T00:00:00Z\n"
    )
    inc, full, ws_inc, ws_full = _ingest_twice(tmp_path, _spec, {"t.csv": head}, {"t.csv": head + tail})
    [report] = inc
    assert report.mode == "incremental" and report.files[0].mode == "appended"
    assert report.files[0].new_rows_in == 7 and len(report.batch_ids) == 2
    _assert_same_lake(inc, full, ws_inc, ws_full)
    reasons = read_quarantine(ws_inc, "tickets", report.batch_ids[1:])["reason"].tolist()
    assert any("duplicate of row 1" in r for r in reasons) and any("duplicate key 'T-2' (first at t.csv row 2)" in r for r in reasons)
    # unchanged on the next run: nothing validated, the same batches and counts
    [again] = ingest_sources([_spec(tmp_path / "src" / "t.csv")], ws_inc, IngestConfig(incremental=True), "r4")
    assert again.files[0].mode == "unchanged" and again.batch_ids == report.batch_ids and again.rows_in == report.rows_in


def test_a_changed_earlier_row_or_an_unsettled_file_ingests_in_full(tmp_path):
    head = (TICKETS_HEADER + "\n".join(GOOD) + "\n").encode()
    changed = head.replace(b"Login broken", b"Login broke!") + b"T-4,dan@example.com,,New,2026-01-06T10:00:00Z\n"
    inc, full, ws_inc, ws_full = _ingest_twice(tmp_path, _spec, {"t.csv": head}, {"t.csv": changed})
    assert inc[0].mode == "full" and "changed" in inc[0].full_reason
    _assert_same_lake(inc, full, ws_inc, ws_full)
    # a row quarantined for a future time may be accepted later: the file is re-validated whole
    future = changed + corrupt_rows()[2]
    path = tmp_path / "src" / "t.csv"
    path.write_bytes(future)
    [first] = ingest_sources([_spec(path)], ws_inc, IngestConfig(incremental=True), "r5")
    path.write_bytes(future + b"T-8,eve@example.com,,More,2026-01-09T10:00:00Z\n")
    [second] = ingest_sources([_spec(path)], ws_inc, IngestConfig(incremental=True), "r6")
    assert first.mode == "incremental" and second.mode == "full" and "future" in second.full_reason


def test_a_grown_parquet_file_with_row_groups_equals_a_full_ingest(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def frame(n):
        return pd.DataFrame({
            "event_id": [f"E{i}" if i != 950 else "E5" for i in range(n)],  # one repeated key in the tail
            "user_id": [f"U{i % 40}" for i in range(n)],
            "ts": [f"2026-01-{1 + i % 28:02d}T00:00:00Z" if i % 97 else "nope" for i in range(n)],
            "event_type": ["view" if i % 3 else "click" for i in range(n)],
        })  # fmt: skip

    def write(n) -> bytes:
        out = tmp_path / "tmp.parquet"
        pq.write_table(pa.Table.from_pandas(frame(n), preserve_index=False), out, row_group_size=250)
        return out.read_bytes()

    def spec(path):
        return SourceSpec(name="events", kind="events", path=path, key="event_id", identifiers={"customer_id": "user_id"}, timestamp="ts", fields={"event_type": "event_type"})

    inc, full, ws_inc, ws_full = _ingest_twice(tmp_path, spec, {"e.parquet": write(900)}, {"e.parquet": write(1000)})
    assert inc[0].mode == "incremental" and inc[0].files[0].new_rows_in == 100
    _assert_same_lake(inc, full, ws_inc, ws_full)


def test_a_tail_key_first_seen_in_a_later_file_ingests_the_folder_in_full(tmp_path):
    head = (TICKETS_HEADER + "\n".join(GOOD) + "\n").encode()
    later = (TICKETS_HEADER + "T-9,kim@example.com,,In the later file,2026-01-09T10:00:00Z\n").encode()
    grown = head + b"T-9,lee@example.com,,Added to the first file,2026-01-10T10:00:00Z\n"
    inc, full, ws_inc, ws_full = _ingest_twice(tmp_path, _spec, {"a.csv": head, "b.csv": later}, {"a.csv": grown}, folder=True)
    assert inc[0].mode == "full" and "later file" in inc[0].full_reason
    _assert_same_lake(inc, full, ws_inc, ws_full)


def test_seen_rows_and_keys_across_many_chunks_match_a_plain_dictionary():
    """The sorted runs of `_SeenRows` (merged like a binary counter) and `_Keys`' packed positions
    give, chunk after chunk, exactly what one dict of everything seen so far gives."""
    import personaops.ingest as ingest

    rng = np.random.default_rng(5)
    seen, keys = ingest._SeenRows(), ingest._Keys()
    first_of: dict[int, int] = {}
    where_of: dict[str, str] = {}
    row = 0
    for chunk in range(40):
        size = int(rng.integers(1, 300))
        rows = np.arange(row + 1, row + size + 1, dtype=np.int64)
        row += size
        hashes = rng.integers(0, 500, size).astype(np.uint64)  # many repeats, within and across chunks
        expected = np.array([first_of.get(int(h), 0) for h in hashes])
        for h, r in zip(hashes, rows):
            first_of.setdefault(int(h), int(r))
        within = [first_of[int(h)] if first_of[int(h)] != r else 0 for h, r in zip(hashes, rows)]
        expected = np.where(expected > 0, expected, within)
        assert seen.first_rows(hashes, rows).tolist() == expected.tolist(), f"chunk {chunk}"
        assert len(seen._runs) <= 1 + int(np.log2(max(2, len(first_of))))  # merged: a few runs, not one per chunk
        file = f"part-{chunk // 10}.csv"
        batch = pd.Series([f"K{int(k)}" for k in rng.integers(0, 700, size)], index=rows)
        again = batch.duplicated(keep="first") | keys.seen(batch)
        assert again.tolist() == [k in where_of or k in set(batch.iloc[:i]) for i, k in enumerate(batch)]
        keys.add(batch[~again], file)
        for i, k in batch[~again].items():
            where_of[k] = f"{file} row {i}"
        assert all(keys.where(k) == w for k, w in where_of.items())
    order = np.argsort(np.array(list(first_of), dtype=np.uint64), kind="stable")
    assert seen.hashes.tolist() == np.array(list(first_of), dtype=np.uint64)[order].tolist()  # what the state saves
    assert seen.rows.tolist() == np.array(list(first_of.values()))[order].tolist()


def test_row_hashes_column_by_column_equal_pandas_whole_frame_hashes():
    """`_row_hashes` hashes each column the cheaper way (factorized or value by value): the same
    uint64 per row as `hash_pandas_object` on the whole frame, which the lake's `_row_hash` and the
    saved ingest state hold; and `_hex` spells them as f"{h:016x}" does."""
    import personaops.ingest as ingest

    rng = np.random.default_rng(11)
    n = 5_000
    raw = pd.DataFrame(
        {
            "id": [f"E-{i:07d}" for i in range(n)],  # every value distinct: hashed value by value
            "kind": rng.choice(["login", "view", "café", ""], n).astype(object),  # few values: factorized first
            "sparse": pd.Series(rng.choice(["a", None], n), dtype=object),  # missing values hash as "\x00"
            "late": [None] * (n // 2) + [f"v{i % 3000}" for i in range(n - n // 2)],  # the first rows do not show the rest
            "empty": pd.Series([None] * n, dtype=object),
        },
        index=pd.Index(np.arange(1, n + 1), name="_row_number"),
    )
    expected = pd.util.hash_pandas_object(raw.fillna("\x00"), index=False)
    got = ingest._row_hashes(raw)
    assert got.dtype == np.uint64 and got.index.equals(raw.index)
    assert got.to_numpy().tolist() == expected.to_numpy().tolist()
    assert ingest._row_hashes(raw.iloc[:0]).empty
    values = np.array([0, 1, 255, 2**63, 2**64 - 1, *expected.to_numpy()[:50]], dtype=np.uint64)
    assert ingest._hex(values).tolist() == [f"{int(h):016x}" for h in values]


def test_key_runs_find_keys_by_both_hashes_even_when_the_first_collides():
    """`_KeyRuns` (record keys as two 64-bit hashes in sorted runs) answers what a dict keyed by
    the pair answers, chunk after chunk, also where many keys share their first hash."""
    import personaops.ingest as ingest

    rng = np.random.default_rng(3)
    runs, expected = ingest._KeyRuns(), {}
    pos = 0
    for chunk in range(60):
        size = int(rng.integers(1, 200))
        h1 = rng.integers(0, 40, size).astype(np.uint64)  # first hashes collide a lot
        h2 = rng.integers(0, 30, size).astype(np.uint64)
        got = runs.find(h1, h2)
        assert got.tolist() == [expected.get((int(a), int(b)), -1) for a, b in zip(h1, h2)], f"chunk {chunk}"
        fresh: dict = {}
        for a, b in zip(h1.tolist(), h2.tolist()):
            if (a, b) not in expected and (a, b) not in fresh:
                fresh[(a, b)] = pos
                pos += 1
        if fresh:
            pairs = np.array(list(fresh), dtype=np.uint64)
            runs.add(pairs[:, 0].copy(), pairs[:, 1].copy(), np.array(list(fresh.values()), dtype=np.int64))
            expected.update(fresh)
        assert len(runs) == len(expected) and len(runs._runs) <= 1 + int(np.log2(max(2, len(expected))))
    keys = pd.Series(["K1", "K2", "k1"], index=[4, 9, 12], dtype=object)
    a1, a2 = ingest._key_hashes(keys.to_numpy())
    b1, b2 = ingest._key_hashes(np.array(["K1"], dtype=object))
    assert a1[0] == b1[0] and a2[0] == b2[0] and len(set(a1.tolist())) == 3 and not np.array_equal(a1, a2)  # deterministic, independent


def test_merge_runs_equals_a_stable_sort_of_both_runs():
    """`_merge_runs` merges the last two sorted runs in linear time, letting each old array go as
    its merged copy is made: the same arrays as a stable argsort of the two concatenated (the
    earlier run's entries first among equal keys)."""
    import personaops.ingest as ingest

    rng = np.random.default_rng(2)
    for n_a, n_b in ((0, 5), (5, 0), (1, 1), (300, 40), (40, 300), (1000, 1000)):
        a_key, b_key = np.sort(rng.integers(0, 50, n_a).astype(np.uint64)), np.sort(rng.integers(0, 50, n_b).astype(np.uint64))  # many ties
        a_val, b_val = rng.integers(0, 10**9, n_a), rng.integers(0, 10**9, n_b)
        keep = (np.arange(3, dtype=np.uint64), np.arange(3))
        runs = [keep, (a_key, a_val), (b_key, b_val)]
        order = np.argsort(np.concatenate([a_key, b_key]), kind="stable")
        expected = (np.concatenate([a_key, b_key])[order], np.concatenate([a_val, b_val])[order])
        merged = ingest._merge_runs(runs)
        assert len(runs) == 1 and runs[0] is keep  # the two last runs were taken off the list
        assert merged[0].tolist() == expected[0].tolist() and merged[1].tolist() == expected[1].tolist()
        assert merged[0].dtype == np.uint64 and merged[1].dtype == a_val.dtype
