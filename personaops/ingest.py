"""Ingest: sources -> validated, lineage-tagged Parquet lake, with a row-level quarantine.

For every file of every source: rows in = rows accepted + rows quarantined, always. Accepted
rows land at `lake/<source>/batch=<id>/part-0.parquet` in canonical columns (identifiers,
`event_time`, `text`, role fields, `num__*`, `cat__*`, `label__*`, `sensitive__*`) plus lineage
(`_source`, `_batch_id`, `_file`, `_row_number`, `_row_hash`, `_ingested_at`). The batch id is a
hash of the file's bytes, so re-ingesting a file rewrites the same batch and duplicates nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandas.core.util.hashing import combine_hash_arrays  # pandas' own row-hash combiner (pandas<3 pinned)

from personaops.config import IngestConfig
from personaops.errors import SourceError
from personaops.sources import SourceSpec
from personaops.workspace import Workspace

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

LINEAGE_COLUMNS = ["_source", "_batch_id", "_file", "_row_number", "_row_hash", "_ingested_at"]
TRUE_VALUES = {"1", "true", "t", "yes", "y", "1.0"}
FALSE_VALUES = {"0", "false", "f", "no", "n", "0.0"}
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
MIN_TIME = pd.Timestamp("1970-01-01", tz="UTC")
# A time written with a zone abbreviation other than UTC/GMT/Z (EST, CET, IST...): ambiguous.
UNKNOWN_ZONE = r"(?i)\d\s*(?!(?:utc|gmt|z|am|pm)\s*$)[a-z]{2,5}\s*$"
# Cells of non-text columns (categories, roles, numbers) longer than this are not data.
MAX_FIELD_CHARS = 1024


@dataclass
class FileReport:
    file: str
    batch_id: str
    rows_in: int
    accepted: int
    quarantined: int
    note: str = ""
    # Incremental ingest: the file's lake batches (the first ingest's, then one per appended tail)
    # and what this run did with it: "full" (validated whole), "appended" (only the rows added
    # since the last run were validated, into the last batch) or "unchanged" (nothing to do).
    batches: list[str] = field(default_factory=list)
    mode: str = "full"
    new_rows_in: int = 0
    new_accepted: int = 0
    new_quarantined: int = 0


@dataclass
class SourceReport:
    source: str
    kind: str
    files: list[FileReport] = field(default_factory=list)
    mode: str = "full"  # "incremental" when the files' earlier rows were kept as ingested (see _ingest_incremental)
    full_reason: str = ""

    @property
    def rows_in(self) -> int:
        return sum(f.rows_in for f in self.files)

    @property
    def accepted(self) -> int:
        return sum(f.accepted for f in self.files)

    @property
    def quarantined(self) -> int:
        return sum(f.quarantined for f in self.files)

    @property
    def batch_ids(self) -> list[str]:
        return [b for f in self.files for b in (f.batches or [f.batch_id])]

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "kind": self.kind,
            "rows_in": self.rows_in,
            "accepted": self.accepted,
            "quarantined": self.quarantined,
            "mode": self.mode,
            "full_reason": self.full_reason,
            "files": [asdict(f) for f in self.files],
        }


# --- reading ---------------------------------------------------------------------------------
# Rows validated at a time when no config says otherwise: memory follows a chunk, not the file.
CHUNK_ROWS = 200_000
_NO_REJECTS = ["_row_number", "reason", "raw"]


def _csv_lines(fh, first: bool = True) -> Iterator[str]:
    """The decoded lines of a CSV file: NUL bytes become U+FFFD, a leading BOM is dropped."""
    for line in fh:
        line = line.replace("\x00", "\ufffd")
        if first:
            first = False
            if line.startswith("\ufeff"):
                line = line[1:]
        yield line


def _read_csv(
    spec: SourceSpec, path: Path, chunk_rows: int, start: dict | None = None, info: dict | None = None
) -> Iterator[tuple[list[str], pd.DataFrame, pd.DataFrame]]:
    """Parse a CSV file into chunks of (header, string frame, structural rejects), at most
    `chunk_rows` parsed rows each. Row numbers start at 1 and run on across chunks. A file
    without a header yields one chunk with an empty header; a header without rows, one empty chunk.
    `start` ({"offset", "header", "rows"}) parses only the bytes from `offset` (a line boundary
    where an earlier parse ended cleanly) with that header, numbering rows on from `rows`.
    `info` receives what a later append needs: the header, the rows counted and whether the
    parse ended cleanly (at a line end, no quote left open)."""
    info = {} if info is None else info
    with open(path, "rb") as fh:
        if fh.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            raise SourceError(f"Source '{spec.name}': {path} is UTF-16 encoded; save it as UTF-8 (CSV UTF-8) and run again.")
        fh.seek(0, 2)
        size = fh.tell()
        if size:
            fh.seek(size - 1)
            info["ends_with_newline"] = fh.read(1) == b"\n"
    info["clean_end"] = False
    # errors="replace": undecodable bytes become U+FFFD (quarantined below), as a whole-file decode would
    with open(path, "rb") as binary:
        if start is not None:
            binary.seek(start["offset"])
        fh = io.TextIOWrapper(binary, encoding="utf-8", errors="replace", newline="")
        # strict: a quote left open (a file cut off inside a quoted field) is an error, not a value
        reader = csv.reader(_csv_lines(fh, first=start is None), strict=True)
        header: list[str] = []
        if start is not None:
            header = list(start["header"])
        else:
            try:
                while not any(h.strip() for h in header):  # blank lines before the header are not the header
                    header = next(reader)
            except StopIteration:
                yield [], pd.DataFrame(), pd.DataFrame(columns=_NO_REJECTS)
                return
            except csv.Error as exc:
                raise SourceError(f"Source '{spec.name}': cannot read the header of {path} ({exc}); check that it is a CSV file.") from None
            header = [h.strip() for h in header]
        info["header"] = header
        repeated = sorted({h for h in header if h and header.count(h) > 1})
        if repeated:
            raise SourceError(f"Source '{spec.name}': column '{repeated[0]}' appears {header.count(repeated[0])} times in the header of {path}; rename or remove the copies.")
        rows: list[list[str]] = []
        numbers: list[int] = []
        rejects: list[tuple[int, str, str]] = []
        n = int(start["rows"]) if start is not None else 0
        line0 = int(start["lines"]) if start is not None else 0  # lines before the tail, for the messages
        emitted = False
        last_error = False
        while True:
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                n += 1
                last_error = True
                rejects.append((n, f"malformed CSV line ending at line {line0 + reader.line_num} ({exc}: an unclosed quote, or the file is cut off)", ""))
                continue
            last_error = False
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank (or whitespace-only) line: not a row
            n += 1
            if len(record) != len(header):
                rejects.append((n, f"malformed line: {len(record)} fields where the header has {len(header)} (truncated or unquoted delimiter)", json.dumps(record)[:2000]))
                continue
            rows.append(record)
            numbers.append(n)
            if len(rows) >= chunk_rows:
                yield header, _string_frame(rows, numbers, header), pd.DataFrame(rejects, columns=_NO_REJECTS)
                rows, numbers, rejects, emitted = [], [], [], True
        info["rows"], info["lines"] = n, line0 + reader.line_num
        info["clean_end"] = bool(info.get("ends_with_newline")) and not last_error
        if rows or rejects or not emitted:
            yield header, _string_frame(rows, numbers, header), pd.DataFrame(rejects, columns=_NO_REJECTS)


def _string_frame(rows: list[list[str]], numbers: list[int], header: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    frame.index = pd.Index(numbers, name="_row_number", dtype="int64")
    return frame


def _parquet_with_nulls(path: Path, file: pq.ParquetFile) -> set[str]:
    """(Numpy) integer columns holding nulls: they read as floats ("1.0"), decided on the whole file."""
    numpy_ints = [c for c, t in file.schema_arrow.empty_table().to_pandas().dtypes.items() if isinstance(t, np.dtype) and t.kind in "iu"]
    return {c for c in numpy_ints if pq.read_table(path, columns=[c]).column(0).null_count}


def _read_parquet(
    spec: SourceSpec, path: Path, chunk_rows: int, start: dict | None = None, info: dict | None = None
) -> Iterator[tuple[list[str], pd.DataFrame, pd.DataFrame]]:
    """A Parquet file in chunks of (columns, string frame, no rejects); row numbers start at 1.
    `start` ({"rows"}) reads only the rows after the first `rows` (an append's tail)."""
    info = {} if info is None else info
    try:
        file = pq.ParquetFile(path)
        schema = file.schema_arrow
        # A (numpy) integer column holding nulls reads as floats ("1.0"): decided on the whole file, as one read would.
        with_nulls = _parquet_with_nulls(path, file)
        info["with_nulls"] = sorted(with_nulls)
        skip = int(start["rows"]) if start is not None else 0
        groups, first_row, to_skip = [], 0, skip  # the row groups holding rows after `skip`, and the rows to drop from the first
        for i in range(file.metadata.num_row_groups):
            n_rows = file.metadata.row_group(i).num_rows
            if first_row + n_rows > skip:
                groups.append(i)
            else:
                to_skip -= n_rows
            first_row += n_rows
        info["rows"] = first_row
        batches = file.iter_batches(batch_size=chunk_rows, row_groups=groups) if groups else iter(())
        offset, emitted = skip, False
        for batch in batches:
            if to_skip:
                dropped = min(to_skip, batch.num_rows)
                batch, to_skip = batch.slice(dropped), to_skip - dropped
                if not batch.num_rows:
                    continue
            table = pa_arrow.Table.from_batches([batch])
            for name in with_nulls:
                table = table.set_column(table.schema.get_field_index(name), name, table.column(name).cast(pa_arrow.float64()))
            frame = _as_strings(table)
            frame.index = pd.Index(np.arange(offset + 1, offset + len(frame) + 1), name="_row_number")
            # The string columns as Arrow already holds them, for the checks (see _arrow_columns):
            # converting their Python strings back to Arrow took ~4 s of the 100k ingest.
            info["arrow"] = {f.name: table.column(f.name).cast(pa_arrow.large_string()) for f in table.schema if pa_arrow.types.is_string(f.type) or pa_arrow.types.is_large_string(f.type)}
            offset += len(frame)
            emitted = True
            yield list(frame.columns), frame, pd.DataFrame(columns=_NO_REJECTS)
    except (pa_arrow.ArrowException, OSError) as exc:
        raise SourceError(f"Source '{spec.name}': {path} is not a readable Parquet file ({exc.__class__.__name__}); re-export it or fix format.") from None
    if not emitted:
        frame = _as_strings(schema.empty_table())
        frame.index = pd.Index(np.arange(1, 1), name="_row_number")
        yield list(frame.columns), frame, pd.DataFrame(columns=_NO_REJECTS)


def _as_strings(table: pa_arrow.Table) -> pd.DataFrame:
    """Every column as str values (None where missing)."""
    frame = table.to_pandas()
    for col, arrow_field in zip(frame.columns, table.schema):
        values = frame[col]
        if pa_arrow.types.is_string(arrow_field.type) or pa_arrow.types.is_large_string(arrow_field.type):
            frame[col] = values.astype(object)  # already str or None: no per-value pass
            continue
        frame[col] = values.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT or v is pd.NA else str(v)).astype(object)
    return frame


# --- validation ------------------------------------------------------------------------------
# What Python's str.strip() strips (every character whose isspace() is true), for Arrow's trim.
_PY_WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())


def _all_strings(series: pd.Series) -> bool:
    """True when every non-missing value is a str (a C scan; no per-value Python call)."""
    return pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty")


def _arrow_strings(series: pd.Series) -> pa_arrow.ChunkedArray | None:
    """The series as Arrow strings when every value is a str or missing (None if not possible)."""
    if not len(series) or not _all_strings(series):
        return None
    try:
        return pa_arrow.chunked_array([pa_arrow.array(series.to_numpy(dtype=object), type=pa_arrow.large_string(), from_pandas=True)])
    except (pa_arrow.ArrowException, UnicodeError):  # e.g. a lone surrogate: take the per-value path
        return None


_UNSET = object()


def _arrow_columns(raw: pd.DataFrame, given: dict | None = None) -> dict:
    """Each column of a chunk as Arrow strings (or None, see _arrow_strings), made once per chunk
    for the checks and the cleaning that each read it (three conversions a column before).
    `given`: columns the reader already holds as Arrow strings (a Parquet file's string columns:
    the same values _arrow_strings would make from their Python strings)."""
    given = given or {}
    return {c: given[c] if c in given and len(given[c]) == len(raw) else _arrow_strings(raw[c]) for c in raw.columns}


def _clean(series: pd.Series, strings=_UNSET) -> pd.Series:
    """Strip strings (as str.strip() does); empty strings become missing. `strings`: the series
    as _arrow_strings gives it, when already made."""
    strings = _arrow_strings(series) if strings is _UNSET else strings
    if strings is not None:
        # Vectorised in Arrow: the same characters str.strip() removes, then "" -> missing.
        stripped = pc.utf8_trim(strings, characters=_PY_WHITESPACE)
        stripped = pc.if_else(pc.equal(stripped, ""), None, stripped)
        return pd.Series(stripped.to_numpy(zero_copy_only=False), index=series.index, dtype=object)
    s = series.astype(object).map(lambda v: v.strip() if isinstance(v, str) else v)
    return s.where(s.map(lambda v: isinstance(v, str) and v != ""), None)


def _str_mask(series: pd.Series, arrow_test, python_test, strings=_UNSET) -> pd.Series:
    """Boolean mask of str values passing the test (Arrow when all values are str); False elsewhere."""
    strings = _arrow_strings(series) if strings is _UNSET else strings
    if strings is not None:
        return pd.Series(pc.fill_null(arrow_test(strings), False).to_numpy(zero_copy_only=False), index=series.index, dtype=bool)
    return series.map(lambda v: isinstance(v, str) and python_test(v)).astype(bool)


def _parse_bool(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    lowered = series.map(lambda v: v.lower() if isinstance(v, str) else v)
    out = pd.Series(np.nan, index=series.index, dtype=float)
    out[lowered.isin(TRUE_VALUES)] = 1.0
    out[lowered.isin(FALSE_VALUES)] = 0.0
    bad = series.notna() & out.isna()
    return out, bad


def _date_problem(value: str) -> str:
    """Why a timestamp did not parse: a real date out of range, or not a date at all."""
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return "is not a date-time"
    return "is before 1970 or in the future"


# Plain ISO 8601 times (years 1970-2199, so within the nanosecond range whatever the offset):
# Arrow's cast reads them in C, as pandas' ISO parser reads them inside to_datetime(format="mixed")
# (the same instants: tests/unit/test_ingest_times.py); anything else is left to pandas. At 100k
# people the 3.8M times took 9.5 s of ingest's 85 (profiled) in pandas' per-value loop.
_ISO_DAY = r"(?:19[7-9][0-9]|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}"
_ISO_ZONED = rf"^{_ISO_DAY}[T ][0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}(?:\.[0-9]{{1,9}})?(?:Z|[+-][0-9]{{2}}:[0-9]{{2}})$"
_ISO_DATE = rf"^{_ISO_DAY}$"


def _parse_times(values: pd.Series) -> pd.Series:
    """`pd.to_datetime(values, utc=True, errors="coerce", format="mixed")` (datetime64[ns, UTC]):
    values in plain ISO form (a date, or a time with its UTC offset) are cast by Arrow; a group
    Arrow refuses (an impossible day or hour), and every other value, are parsed by pandas, each
    value on its own (format="mixed" parses value by value, so a subset gives the same values)."""
    out = np.full(len(values), np.datetime64("NaT", "ns"), dtype="datetime64[ns]")
    rest = values.notna().to_numpy()
    strings = _arrow_strings(values) if rest.any() else None
    if strings is not None:
        for pattern, arrow_type in ((_ISO_ZONED, pa_arrow.timestamp("ns", "UTC")), (_ISO_DATE, pa_arrow.timestamp("ns"))):
            group = pc.fill_null(pc.match_substring_regex(strings, pattern), False).to_numpy(zero_copy_only=False)
            if not group.any():
                continue
            try:
                cast = pc.filter(strings, group).cast(arrow_type)
            except pa_arrow.ArrowInvalid:
                continue  # e.g. "2024-02-30": pandas says what it says (NaT)
            out[group] = cast.cast(pa_arrow.int64()).to_numpy().view("datetime64[ns]")
            rest &= ~group
    if rest.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slow = pd.to_datetime(values[rest], utc=True, errors="coerce", format="mixed")
        out[rest] = slow.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]") if len(slow) else out[rest]
    return pd.Series(out, index=values.index).dt.tz_localize("UTC")


def _canonical(spec: SourceSpec, raw: pd.DataFrame, cfg: IngestConfig, key_prefix: str = "", arrow: dict | None = None) -> tuple[pd.DataFrame, dict[int, list[str]]]:
    """Map raw string columns to canonical typed columns; collect coercion failures per row.
    `arrow`: the chunk's columns as _arrow_columns gives them, when already made."""
    reasons: dict[int, list[str]] = {}

    def clean(col: str) -> pd.Series:
        return _clean(raw[col], arrow[col] if arrow is not None and col in arrow else _UNSET)

    def flag(mask: pd.Series, message) -> None:
        for idx in mask[mask].index:
            reasons.setdefault(int(idx), []).append(message(idx) if callable(message) else message)

    out = pd.DataFrame(index=raw.index)
    out["source_key"] = clean(spec.key) if spec.key else pd.Series([f"{key_prefix}row{i}" for i in raw.index], index=raw.index, dtype=object)
    for kind, col in spec.identifiers.items():
        out[kind] = clean(col)
    for kind, cols in spec.attributes.items():
        parts = [clean(c).fillna("") for c in ([cols] if isinstance(cols, str) else cols)]
        joined = parts[0]
        for p in parts[1:]:
            joined = joined.str.cat(p, sep=" ")
        out[kind] = _clean(joined.str.replace(r"\s+", " ", regex=True))
    if spec.timestamp:
        raw_ts = clean(spec.timestamp)
        # dateutil reads "now"/"today" as the parse time and drops zone names it does not know
        # ("EST" becomes UTC, 5 hours off): neither is a recorded time, so neither is parsed.
        ts_strings = _arrow_strings(raw_ts)  # once, for the two masks below
        words = raw_ts.notna() & ~_str_mask(raw_ts, lambda a: pc.match_substring_regex(a, r"\p{Nd}"), lambda v: re.search(r"\d", v) is not None, ts_strings)
        # Only values ending in letters can name a zone: Arrow finds those, Python's regex judges them.
        # (U+017F and U+212A are the two non-ASCII letters Python's case-insensitive [a-z] matches.)
        ends_in_letters = _str_mask(raw_ts, lambda a: pc.match_substring_regex(a, r"[A-Za-z\x{17F}\x{212A}]\s*$"), lambda v: True, ts_strings)
        zones = raw_ts.notna() & ends_in_letters
        candidates = zones[zones].index
        zones.loc[candidates] = raw_ts.loc[candidates].astype(str).str.contains(UNKNOWN_ZONE, regex=True).to_numpy(dtype=bool)
        flag(words, lambda i: f"{spec.timestamp}: {str(raw_ts[i])[:60]!r} is not a date-time")
        flag(zones, lambda i: f"{spec.timestamp}: {str(raw_ts[i])[:60]!r} names a time zone by abbreviation; give a UTC offset such as -05:00 instead")
        parsed = _parse_times(raw_ts.where(~(words | zones), None))
        flag(raw_ts.notna() & parsed.isna() & ~(words | zones), lambda i: f"{spec.timestamp}: {str(raw_ts[i])[:60]!r} {_date_problem(raw_ts[i])}")
        out["event_time"] = parsed
    if spec.text:
        parts = [clean(c).fillna("") for c in spec.text]
        joined = parts[0]
        for p in parts[1:]:
            joined = joined.str.cat(p, sep="\n")
        out["text"] = joined.str.strip().where(lambda s: s != "", None)
    for role, col in spec.fields.items():
        values = clean(col)
        if role == "score":
            num = pd.to_numeric(values, errors="coerce")
            flag(values.notna() & num.isna(), lambda i, c=col, v=values: f"{c}: {str(v[i])[:60]!r} is not a number")
            out["score"] = num
        elif role == "converted":
            parsed_bool, bad = _parse_bool(values)
            flag(bad, lambda i, c=col, v=values: f"{c}: {str(v[i])[:60]!r} is not a yes/no value")
            out["converted"] = parsed_bool
        else:
            out[role] = values
    for col in spec.numeric:
        values = clean(col)
        num = pd.to_numeric(values, errors="coerce")
        flag(values.notna() & num.isna(), lambda i, c=col, v=values: f"{c}: {str(v[i])[:60]!r} is not a number")
        out[f"num__{col}"] = num
    for col in spec.categorical:
        out[f"cat__{col}"] = clean(col)
    for col in spec.labels:
        parsed_bool, bad = _parse_bool(clean(col))
        flag(bad, lambda i, c=col: f"{c}: {str(raw.at[i, c])[:60]!r} is not a yes/no label")
        out[f"label__{col}"] = parsed_bool
    for col in spec.sensitive:
        out[f"sensitive__{col}"] = clean(col)
    return out, reasons


def _schema(spec: SourceSpec, cfg: IngestConfig, now: pd.Timestamp) -> pa.DataFrameSchema:
    """The pandera contract of a source's canonical frame."""
    columns: dict[str, pa.Column] = {
        "source_key": pa.Column(object, nullable=False, checks=pa.Check.str_length(1, 512)),
    }
    for kind in spec.identifiers:
        checks = [pa.Check.str_length(1, 512)]
        if kind == "email":
            checks.append(pa.Check(lambda s: s.str.match(EMAIL_PATTERN), element_wise=False, name="email_format"))
        if kind == "phone":
            checks.append(pa.Check(lambda s: s.str.count(r"\d").between(7, 15), element_wise=False, name="phone_digits"))
        columns[kind] = pa.Column(object, nullable=True, checks=checks)
    for kind in spec.attributes:
        columns[kind] = pa.Column(object, nullable=True, checks=[pa.Check.str_length(1, 512)])
    if spec.timestamp:
        columns["event_time"] = pa.Column(
            "datetime64[ns, UTC]",
            nullable=spec.kind == "crm",
            checks=pa.Check(lambda s, hi=now + timedelta(hours=cfg.max_future_skew_hours): s.between(MIN_TIME, hi), element_wise=False, name="time_range"),
        )
    if spec.text:
        columns["text"] = pa.Column(object, nullable=spec.kind != "tickets", checks=pa.Check(lambda s: s.str.len() <= cfg.max_text_chars, element_wise=False, name="text_length"))
    if "event_type" in spec.fields:
        columns["event_type"] = pa.Column(object, nullable=False, checks=pa.Check.str_length(1, 200))
    if "campaign" in spec.fields:
        columns["campaign"] = pa.Column(object, nullable=False, checks=pa.Check.str_length(1, 200))
    if "converted" in spec.fields:
        columns["converted"] = pa.Column(float, nullable=False)
    if "score" in spec.fields:
        columns["score"] = pa.Column(float, nullable=True, checks=pa.Check(lambda s: s.between(0, 10), element_wise=False, name="score_range"))
    # A record carrying only person attributes (e.g. name + date of birth) can still be matched.
    id_cols = list(spec.identifiers) + list(spec.attributes)
    return pa.DataFrameSchema(
        columns,
        checks=[pa.Check(lambda df: df[id_cols].notna().any(axis=1), name="has_identifier")],
        strict=False,
    )


# Rows the contract may reject, found in Arrow and numpy; pandera then validates only those rows,
# so its report (which checks, in which order, with which values) stays the reasons' source. Each
# of these tests flags every row that _schema's checks could fail (it may flag more: an e-mail or
# phone that is not plain ASCII, any missing time), so the reasons are the same as validating the
# whole chunk. At 100k people pandera over every row took ~12 s of ingest's ~85 (its null tests
# and str.len on every column of every row).
_PLAIN_EMAIL = r"^[!-?A-~]+@[!-?A-~]+\.[!-?A-~]+$"  # printable ASCII but '@' and space: a subset of EMAIL_PATTERN's [^@\s]


def _may_fail(spec: SourceSpec, cfg: IngestConfig, frame: pd.DataFrame, now: pd.Timestamp) -> np.ndarray:
    """Per row of a canonical frame, whether `_schema(spec, cfg, now)` may reject it (a superset)."""
    n = len(frame)
    may = np.zeros(n, dtype=bool)
    if not n:
        return may
    present: dict[str, np.ndarray] = {}

    def strings(col: str, nullable: bool, lo: int, hi: int, ok=None) -> None:
        nonlocal may
        arr = _arrow_strings(frame[col]) if frame[col].dtype == object else None
        if arr is None:  # not all str: pandera sees every row
            may |= True
            present[col] = frame[col].notna().to_numpy()
            return
        length = pc.utf8_length(arr)
        bad = pc.or_(pc.less(length, lo), pc.greater(length, hi))
        if ok is not None:
            bad = pc.or_(bad, pc.invert(ok(arr)))
        may |= pc.fill_null(bad, not nullable).to_numpy(zero_copy_only=False)
        present[col] = pc.is_valid(arr).to_numpy(zero_copy_only=False)

    def email(a):
        return pc.and_(pc.string_is_ascii(a), pc.match_substring_regex(a, _PLAIN_EMAIL))

    def phone(a):
        digits = pc.count_substring_regex(a, "[0-9]")  # = Python's \d count on ASCII
        return pc.and_(pc.string_is_ascii(a), pc.and_(pc.greater_equal(digits, 7), pc.less_equal(digits, 15)))

    strings("source_key", False, 1, 512)
    for kind in spec.identifiers:
        strings(kind, True, 1, 512, email if kind == "email" else phone if kind == "phone" else None)
    for kind in spec.attributes:
        strings(kind, True, 1, 512)
    if spec.timestamp:
        times = frame["event_time"]
        if isinstance(times.dtype, pd.DatetimeTZDtype) and times.dtype.unit == "ns":
            ns = times.array.asi8
            hi = (now + timedelta(hours=cfg.max_future_skew_hours)).value
            may |= times.isna().to_numpy() | (ns < MIN_TIME.value) | (ns > hi)
        else:
            may |= True
    if spec.text:
        strings("text", spec.kind != "tickets", 0, cfg.max_text_chars)
    for role in ("event_type", "campaign"):
        if role in spec.fields:
            strings(role, False, 1, 200)
    if "converted" in spec.fields:
        converted = frame["converted"]
        may |= converted.isna().to_numpy() if converted.dtype.kind == "f" else True
    if "score" in spec.fields:
        score = frame["score"]
        may |= (score.notna() & ~score.between(0, 10)).to_numpy(dtype=bool) if score.dtype.kind in "fiu" else True
    id_cols = list(spec.identifiers) + list(spec.attributes)
    has_id = np.zeros(n, dtype=bool)
    for col in id_cols:
        has_id |= present[col]
    return may | ~has_id


_CHECK_TEXT = {
    "not_nullable": "is missing",
    "email_format": "is not an e-mail address",
    "phone_digits": "does not hold 7-15 digits",
    "time_range": "is before 1970 or in the future",
    "text_length": "is too long",
    "score_range": "is outside 0-10",
    "has_identifier": "no identifier column holds a value",
    "str_length": "is longer than its limit (512 characters; 200 for event types and campaigns)",
}


def _pandera_reasons(schema: pa.DataFrameSchema, frame: pd.DataFrame, spec: SourceSpec) -> dict[int, list[str]]:
    reasons: dict[int, list[str]] = {}
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        names = {"source_key": spec.key or "row", "event_time": spec.timestamp, **spec.identifiers, **spec.fields}
        names.update({k: v if isinstance(v, str) else "+".join(v) for k, v in spec.attributes.items()})
        if spec.text:
            names["text"] = "+".join(spec.text)
        for case in exc.failure_cases.itertuples(index=False):
            if case.index is None or (isinstance(case.index, float) and np.isnan(case.index)):
                continue
            check = str(case.check)
            text = next((v for k, v in _CHECK_TEXT.items() if check.startswith(k)), f"fails {check}")
            column = case.column if isinstance(case.column, str) else None
            if check.startswith("has_identifier"):
                message = text
            else:
                shown = "" if check.startswith(("not_nullable", "text_length")) else f" ({str(case.failure_case)[:60]!r})"
                message = f"{names.get(column, column)}{shown} {text}"
            reasons.setdefault(int(case.index), []).append(message)
    return reasons


def _row_hashes(raw: pd.DataFrame) -> pd.Series:
    """Each row's 64-bit hash over its mapped columns (uint64); a row's hash depends on that row alone.

    The same values as `pd.util.hash_pandas_object(raw.fillna("\\x00"), index=False)`, column by
    column: pandas factorizes every object column before hashing it (a hash table per column, then
    the distinct values hashed), which for columns of mostly distinct values (ids, times) costs more
    than hashing every value; a column's first rows decide which way it is hashed (the hashes are the
    same either way: tests/unit/test_ingest.py), and only a column holding missing values is copied."""
    if raw.empty:
        return pd.Series([], dtype="uint64", index=raw.index)
    arrays = []
    for _, column in raw.items():
        if column.isna().any():
            column = column.fillna("\x00")
        values = column.to_numpy()
        sample = values[:_HASH_SAMPLE]
        repeats = values.dtype == object and len(pd.unique(sample)) <= len(sample) // 2
        arrays.append(pd.util.hash_array(values, categorize=bool(repeats)))
    return pd.Series(combine_hash_arrays(iter(arrays), len(arrays)), index=raw.index, dtype="uint64")


_HASH_SAMPLE = 2_000
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _hex(hashes: np.ndarray) -> np.ndarray:
    """Each uint64 as 16 lower-case hex digits (f"{h:016x}"), as an object array of str, without a Python call per value."""
    raw = np.ascontiguousarray(hashes, dtype=">u8").view(np.uint8).reshape(-1, 8)
    digits = np.empty((len(raw), 16), dtype=np.uint8)
    digits[:, 0::2] = _HEX_DIGITS[raw >> 4]
    digits[:, 1::2] = _HEX_DIGITS[raw & 15]
    return digits.view("S16").ravel().astype("U16").astype(object)


def _merge_runs(runs: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Pop the last two runs (arrays sorted by the first one) and return them merged: what a stable
    sort of the two concatenated gives (the earlier run's value first among equal keys). Timsort
    merges the two sorted key runs in linear time; the merge keeps only which run each merged
    entry comes from (a byte an entry), and each old array is let go as soon as its merged copy is
    made: about 40 bytes an entry at the peak for the keys' three arrays where taking every array
    through the sort order needed 64 (the 33M rows of 1M people: ~0.8 GiB less)."""
    later, earlier = list(runs.pop()), list(runs.pop())
    n_earlier = len(earlier[0])
    from_earlier = np.argsort(np.concatenate([earlier[0], later[0]]), kind="stable") < n_earlier
    from_later = ~from_earlier
    merged = []
    for i in range(len(earlier)):
        out = np.empty(len(from_earlier), dtype=earlier[i].dtype)
        out[from_earlier] = earlier[i]
        out[from_later] = later[i]
        earlier[i] = later[i] = None  # type: ignore[call-overload]
        merged.append(out)
    return tuple(merged)


class _SeenRows:
    """The row hashes of a file seen so far (sorted) with the number of each hash's first row,
    so a repeated row is found across chunks: 16 bytes per distinct row, not a Python dict entry.

    Kept as a few sorted runs, merged like a binary counter (a run joins the one before it once it
    is as large): each chunk's new hashes cost a sort of the chunk and their
    share of O(log n) merges, not a re-sort of every hash seen so far (which made a file of n rows
    cost O(n^2 / chunk); with `_Keys.seen`'s twin cost, 300,000 people's ingest took 627 s where
    100,000 took 81 s)."""

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

    def load(self, hashes: np.ndarray, rows: np.ndarray) -> None:
        """Start from saved state: `hashes` sorted, `rows` their first rows."""
        self._runs = [(hashes, rows)] if len(hashes) else []

    def _merged(self) -> tuple[np.ndarray, np.ndarray]:
        while len(self._runs) > 1:
            self._merge_last()
        return self._runs[0] if self._runs else (np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64))

    @property
    def hashes(self) -> np.ndarray:
        """Every distinct hash seen, sorted (what the ingest state saves)."""
        return self._merged()[0]

    @property
    def rows(self) -> np.ndarray:
        """The first row of each of `hashes`."""
        return self._merged()[1]

    def _merge_last(self) -> None:
        self._runs.append(_merge_runs(self._runs))  # type: ignore[arg-type]

    def first_rows(self, hashes: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Per row (in file order), the number of the first earlier row with the same hash (0 when
        none); remembers the hashes seen for the first time."""
        first = np.zeros(len(hashes), dtype=np.int64)
        found = np.zeros(len(hashes), dtype=bool)
        if len(hashes) and self._runs:
            needles = np.argsort(hashes, kind="stable")  # sorted needles: each binary search starts near the last
            sorted_hashes = hashes[needles]
            for run_hashes, run_rows in self._runs:  # a hash is in one run at most: only new ones are added
                pos = np.minimum(np.searchsorted(run_hashes, sorted_hashes), len(run_hashes) - 1)
                hit = run_hashes[pos] == sorted_hashes
                first[needles[hit]] = run_rows[pos[hit]]
                found[needles[hit]] = True
        again = pd.Series(hashes).duplicated(keep="first").to_numpy()
        new = ~found & ~again
        within = again & ~found  # first seen earlier in this chunk
        if within.any():
            first[within] = pd.Series(rows[new], index=hashes[new]).reindex(hashes[within]).to_numpy()
        if new.any():
            order = np.argsort(hashes[new], kind="stable")
            self._runs.append((hashes[new][order], rows[new][order]))
            while len(self._runs) > 1 and len(self._runs[-1][0]) >= len(self._runs[-2][0]):
                self._merge_last()
        return first


def _dictionary_columns(table: pa_arrow.Table) -> list[str]:
    """The columns worth dictionary-encoding, judged on a file's first chunk: those whose values
    repeat (at most half distinct: lineage, event types, person ids). Record keys, row hashes and
    times are nearly all distinct; Parquet tried a dictionary for each of them per row group before
    falling back to plain pages (~45% of the write's CPU on an events chunk). The values read back
    are the same; only the file's bytes differ."""
    # (a column of Arrow type null, no value yet, is written as strings: it repeats)
    return [f.name for f in table.schema if pa_arrow.types.is_null(f.type) or pc.count_distinct(table.column(f.name), mode="all").as_py() <= table.num_rows // 2]


class _ParquetBatch:
    """One Parquet file written chunk by chunk (a row group per chunk) under a temporary name and
    renamed into place by `close`, so readers see the old batch or the new one, never half."""

    def __init__(self, path: Path) -> None:
        self.path, self.tmp = path, path.with_suffix(".tmp")
        self.writer: pq.ParquetWriter | None = None
        self.empty: pd.DataFrame | None = None

    def write(self, frame: pd.DataFrame) -> None:
        """Append the frame's rows (an empty frame is kept only to give a file without rows its columns)."""
        if not len(frame):
            self.empty = frame
            return
        table = pa_arrow.Table.from_pandas(frame, preserve_index=False)
        if self.writer is None:
            # A text column with no value in the first chunk has Arrow type null; later chunks hold strings.
            fields = [pa_arrow.field(f.name, pa_arrow.string()) if pa_arrow.types.is_null(f.type) else f for f in table.schema]
            self.schema = pa_arrow.schema(fields, metadata=table.schema.metadata)
            Workspace.ensure(self.path)
            self.writer = pq.ParquetWriter(self.tmp, self.schema, use_dictionary=_dictionary_columns(table))
        if not table.schema.equals(self.schema, check_metadata=False):
            table = table.cast(self.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is None:  # no rows at all: the columns of the last (empty) chunk
            Workspace.ensure(self.path)
            self.empty.to_parquet(self.tmp, index=False)
        else:
            self.writer.close()
        self.tmp.replace(self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


# --- the stage -------------------------------------------------------------------------------
def ingest_file(
    spec: SourceSpec, path: Path, ws: Workspace, cfg: IngestConfig, seen_keys: "_Keys", run_id: str, seen_files: dict[str, str] | None = None,
    append: dict | None = None, track: dict | None = None,
) -> FileReport:
    """Validate one file of a source into the lake and the quarantine; return its counts.

    `seen_keys` (record keys -> where first seen) and `seen_files` (batch id -> file) span the
    source's files in this run: a key seen before, or a file whose bytes were already ingested
    from this source (a re-delivered export under a new name), is quarantined, not doubled.
    The file is read and validated in chunks of `cfg.chunk_rows` rows (memory follows the chunk);
    repeated rows and keys are found across chunks, so the result is the same as in one piece.
    `append` ({"batch_id", "start", "seen_rows"}) validates only the rows after an earlier
    ingest's (the file grew), into their own batch; the counts returned are the tail's.
    `track` receives what the next incremental ingest needs (parse end, row hashes, flags).
    """
    track = {} if track is None else track
    if append is None:
        try:
            digest = _file_digest(path)
        except OSError as exc:
            raise SourceError(f"Source '{spec.name}': cannot read {path} ({exc.strerror}); check the path and its permissions.") from None
        seen_files = {} if seen_files is None else seen_files
        batch_id = digest.hexdigest()[:16]
        track["sha256"] = digest.hexdigest()
        copy_of = seen_files.get(batch_id)
        if copy_of is None:
            seen_files[batch_id] = path.name
        else:  # its own batch (the first file's stays as it is), every row quarantined
            digest.update(b"\0copy:" + path.name.encode("utf-8", "surrogateescape"))
            batch_id = digest.hexdigest()[:16]
    else:
        batch_id, copy_of = append["batch_id"], None
    track["copy"] = copy_of is not None
    fmt = spec.file_format(path)
    chunk_rows = getattr(cfg, "chunk_rows", CHUNK_ROWS)
    info = track.setdefault("read", {})
    start = append["start"] if append else None
    chunks = _read_csv(spec, path, chunk_rows, start, info) if fmt == "csv" else _read_parquet(spec, path, chunk_rows, start, info)
    now = pd.Timestamp(datetime.now(timezone.utc))
    schema = _schema(spec, cfg, now)
    seen_rows = append["seen_rows"] if append else _SeenRows()
    # A Parquet file's last row group's row hashes (what the next append compares) are taken from
    # this pass when it reads that row group whole, instead of reading the rows again afterwards.
    tail: dict | None = None
    if fmt == "parquet":
        try:
            meta = pq.ParquetFile(path).metadata
        except (pa_arrow.ArrowException, OSError):
            meta = None  # not readable: the reader below says so in one sentence
        tail_from = sum(meta.row_group(i).num_rows for i in range(meta.num_row_groups - 1)) if meta is not None else 0
        if meta is not None and (start is None or int(start["rows"]) <= tail_from):
            tail = {"from": tail_from, "hashes": []}
    track["seen_rows"] = seen_rows
    lake = _ParquetBatch(ws.lake / spec.name / f"batch={batch_id}" / "part-0.parquet")
    quarantine = _ParquetBatch(ws.quarantine / spec.name / f"batch={batch_id}" / "part-0.parquet")
    rows_in = accepted_rows = quarantined_rows = 0
    note = ""
    unsettled = False  # a row erased, or quarantined for a time that may stop being in the future: the next run re-ingests
    try:
        for header, raw, rejects in chunks:
            if not header:
                note = "empty file: no header and no rows"
                raw = pd.DataFrame(columns=spec.mapped_columns(), dtype=object)
            spec.require_columns(path, list(raw.columns))
            raw = raw[spec.mapped_columns()]
            accepted, quarantined = _validate_chunk(spec, path, ws, cfg, raw, rejects, batch_id, copy_of, now, schema, seen_rows, seen_keys, tail, info.pop("arrow", None))
            rows_in += len(raw) + len(rejects)
            accepted_rows += len(accepted)
            quarantined_rows += len(quarantined)
            if len(quarantined):
                unsettled = unsettled or bool(quarantined["reason"].str.contains(_UNSETTLED, regex=True).any())
            lake.write(accepted)
            quarantine.write(quarantined)
        assert rows_in == accepted_rows + quarantined_rows, "ingest lost rows"  # invariant, never user input
        lake.close()
        quarantine.close()
    except BaseException:
        lake.abort()
        quarantine.abort()
        raise
    track["unsettled"] = unsettled
    track["tail"] = tail
    return FileReport(file=str(path), batch_id=batch_id, rows_in=rows_in, accepted=accepted_rows, quarantined=quarantined_rows, note=note, batches=[batch_id])


def _file_digest(path: Path):
    """The sha256 hasher fed the file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h


def _validate_chunk(
    spec: SourceSpec, path: Path, ws: Workspace, cfg: IngestConfig, raw: pd.DataFrame, rejects: pd.DataFrame, batch_id: str,
    copy_of: str | None, now: pd.Timestamp, schema: pa.DataFrameSchema, seen_rows: _SeenRows, seen_keys: "_Keys",
    tail: dict | None = None, given: dict | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(accepted canonical rows with lineage, quarantined rows with reasons) of one chunk of a file.
    `given`: the chunk's columns the reader holds as Arrow strings (see _arrow_columns)."""  # fmt: skip
    reasons: dict[int, list[str]] = {}
    if copy_of is not None:
        for idx in raw.index:
            reasons.setdefault(int(idx), []).append(f"the file is a byte-for-byte copy of {copy_of}, already ingested from this source")
    arrow = _arrow_columns(raw, given)
    text_columns = set(spec.text)
    for col in raw.columns:
        if col in text_columns:
            continue  # free text has its own limit (ingest.max_text_chars)
        too_long = _str_mask(raw[col], lambda a: pc.greater(pc.utf8_length(a), MAX_FIELD_CHARS), lambda v: len(v) > MAX_FIELD_CHARS, arrow[col])
        for idx in too_long[too_long].index:
            reasons.setdefault(int(idx), []).append(f"{col} is longer than {MAX_FIELD_CHARS:,} characters")
    bad_bytes = (
        pd.concat([_str_mask(raw[c], lambda a: pc.match_substring(a, "\ufffd"), lambda v: "\ufffd" in v, arrow[c]) for c in raw.columns], axis=1).any(axis=1)
        if len(raw) and len(raw.columns)
        else pd.Series(False, index=raw.index, dtype=bool)
    )
    for idx in bad_bytes[bad_bytes].index:
        reasons.setdefault(int(idx), []).append("holds bytes that are not valid UTF-8 (or NUL)")

    canon, coercion = _canonical(spec, raw, cfg, key_prefix=f"{path.name}:" if spec.path.is_dir() else "", arrow=arrow)
    for idx, msgs in coercion.items():
        reasons.setdefault(idx, []).extend(msgs)
    may = _may_fail(spec, cfg, canon, now)
    for idx, msgs in (_pandera_reasons(schema, canon[may] if not may.all() else canon, spec) if may.any() else {}).items():
        # A value that failed to parse is reported once, not again as "missing".
        already = {m.split(":", 1)[0] for m in reasons.get(idx, [])}
        kept = reasons.setdefault(idx, [])
        # a row-level check fails once per checked column in pandera's report: say it once
        kept.extend(dict.fromkeys(m for m in msgs if m not in kept and not (m.endswith(" is missing") and m[: -len(" is missing")] in already)))

    hashed = _row_hashes(raw)
    if tail is not None:  # the hashes of the rows after tail["from"] (the file's last row group)
        tail["hashes"].append(hashed.to_numpy(dtype=np.uint64)[raw.index.to_numpy(dtype=np.int64) > tail["from"]])
    first = seen_rows.first_rows(hashed.to_numpy(dtype=np.uint64), raw.index.to_numpy(dtype=np.int64))
    for idx, row in zip(raw.index[first > 0], first[first > 0]):
        reasons.setdefault(int(idx), []).append(f"duplicate of row {row}")
    hashes = pd.Series(_hex(hashed.to_numpy(dtype=np.uint64)), index=hashed.index, dtype=object)
    # Keys: rows already rejected and missing keys are skipped; a key seen earlier (this file or an
    # earlier file of the source) is a duplicate. Vectorised; only duplicates are looked at one by one.
    keys = canon["source_key"]
    candidates = keys[keys.notna() & ~keys.index.isin(list(reasons))]
    h1, h2 = _key_hashes(candidates.to_numpy(dtype=object))  # once, for seen and add
    again = candidates.duplicated(keep="first") | seen_keys.seen(candidates, (h1, h2))
    new_key = ~again.to_numpy(dtype=bool)
    seen_keys.add(candidates[new_key], path.name, (h1[new_key], h2[new_key]))
    repeated = candidates[again]
    for idx, key, at in zip(repeated.index, repeated.tolist(), seen_keys.where_all(repeated)):
        reasons.setdefault(int(idx), []).append(f"duplicate key {str(key)[:60]!r} (first at {at})")

    # Erased persons (personaops/erasure.py): rows matching a tombstone are quarantined as
    # 'erased', whatever else is wrong with them, and their raw values are not kept.
    from personaops.erasure import ERASED_REASON, erased_mask

    erased = erased_mask(ws, spec.name, canon, hashes, keyed=bool(spec.key))
    erased_index = set(int(i) for i in erased[erased].index)
    for idx in erased_index:
        reasons[idx] = [ERASED_REASON]
    bad_index = pd.Index(sorted(reasons), dtype=raw.index.dtype)
    accepted = canon.drop(index=bad_index)
    accepted["_source"] = spec.name
    accepted["_batch_id"] = batch_id
    accepted["_file"] = str(path)
    accepted["_row_number"] = accepted.index.astype("int64")
    accepted["_row_hash"] = hashes.reindex(accepted.index).astype(object)
    accepted["_ingested_at"] = now
    accepted = accepted.reset_index(drop=True)

    quarantined = pd.DataFrame(
        {
            "_row_number": bad_index.astype("int64"),
            "reason": ["; ".join(reasons[i]) for i in bad_index],
            "raw": ["{}" if int(i) in erased_index else json.dumps({k: (v[:500] if isinstance(v, str) else v) for k, v in raw.loc[i].items()}, ensure_ascii=False) for i in bad_index],
        }
    )
    quarantined = pd.concat([rejects, quarantined], ignore_index=True) if len(rejects) else quarantined
    quarantined["_source"] = spec.name
    quarantined["_batch_id"] = batch_id
    quarantined["_file"] = str(path)
    quarantined["_row_number"] = quarantined["_row_number"].astype("int64")
    assert len(raw) + len(rejects) == len(accepted) + len(quarantined), "ingest lost rows"  # invariant, never user input
    return accepted, quarantined.sort_values("_row_number", kind="stable")


# --- incremental ingest ------------------------------------------------------------------------
# A source's files usually grow: an export gains rows at its end, earlier bytes unchanged. The
# state of each source's last ingest (lake/<source>/_ingest/) lets the next run validate only the
# added rows: per file its size and SHA-256, how its parse ended, its lake batches and counts, the
# row hashes it saw (for "duplicate of row N"); the record keys seen are the lake's own. Anything
# else -- a changed or shorter file, removed or reordered files, other settings or code, new
# erasure tombstones, a file whose last ingest erased rows or rejected future times -- ingests the
# source in full, as before. Only hashes are kept there, never raw values.
STATE_DIR = "_ingest"
STATE_VERSION = 1
_UNSETTLED = r"in the future|^erased$"


class _Redo(Exception):
    """An append that would not give what a full ingest gives: ingest the source in full."""


# Two independent SipHash keys: a record key is known by its two 64-bit hashes (128 bits).
_KEY_HASH = ("personaops:key:1", "personaops:key:2")


def _key_hashes(keys: np.ndarray, repeated: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes (uint64) of each key (str). `repeated`: values repeat a lot
    (hash each distinct value once; the same hashes)."""
    keys = np.asarray(keys, dtype=object)
    return tuple(pd.util.hash_array(keys, hash_key=k, categorize=repeated) for k in _KEY_HASH)  # type: ignore[return-value]


class _KeyRuns:
    """Record keys seen so far, each as its two 64-bit hashes with a packed position: sorted runs
    merged like a binary counter (as `_SeenRows`), 24 bytes a key. A Python dict of the key
    strings cost about 150 bytes a key: 33M keys at 1,000,000 people were most of ingest's 7 GiB.

    Two keys are taken as the same when both hashes agree. Two different keys agree in 128 bits
    of two independently keyed SipHash-2-4 hashes with odds of about 2**-128 per pair: for 10**9
    keys in one source (5 * 10**17 pairs) about 10**-21, far below a disk's undetected error rate.
    A collision would quarantine one row as a duplicate key; it cannot merge or lose rows silently."""

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(r[0]) for r in self._runs)

    def find(self, h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
        """Per key (its two hashes), the position stored with it, or -1 when not seen."""
        out = np.full(len(h1), -1, dtype=np.int64)
        if not len(h1) or not self._runs:
            return out
        needles = np.argsort(h1, kind="stable")  # sorted needles: each binary search starts near the last
        n1, n2 = h1[needles], h2[needles]
        for r1, r2, pos in self._runs:
            lo = np.searchsorted(r1, n1, side="left")
            hi = np.searchsorted(r1, n1, side="right")
            one = hi - lo == 1
            at = lo[one]
            hit = r2[at] == n2[one]
            out[needles[np.flatnonzero(one)[hit]]] = pos[at[hit]]
            for i in np.flatnonzero(hi - lo > 1):  # the first hash alone repeats: compare the second in that span
                match = np.flatnonzero(r2[lo[i] : hi[i]] == n2[i])
                if len(match):
                    out[needles[i]] = pos[lo[i] + match[0]]
        return out

    def add(self, h1: np.ndarray, h2: np.ndarray, positions: np.ndarray) -> None:
        """Remember keys not seen before (their hashes and positions)."""
        if not len(h1):
            return
        order = np.argsort(h1, kind="stable")
        self._runs.append((h1[order], h2[order], np.asarray(positions, dtype=np.int64)[order]))
        while len(self._runs) > 1 and len(self._runs[-1][0]) >= len(self._runs[-2][0]):
            self._runs.append(_merge_runs(self._runs))  # type: ignore[arg-type]


class _Keys:
    """The record keys of a source seen so far: this run's (their hashes -> where first seen, see
    `_KeyRuns`) and, for an append, the earlier rows' keys as the lake holds them (Arrow, with the
    file each came from). `later` is set when a key was first seen in a file that comes after the
    one being read (a full ingest would keep this row and quarantine the later file's)."""

    def __init__(self) -> None:
        # where each key was first seen this run, as file number * 2**40 + row
        self.run = _KeyRuns()
        self.run_files: list[str] = []
        self.lake: pa_arrow.Array | None = None
        self.lake_order = self.lake_rows = np.empty(0, dtype=np.int64)
        self.names: list[str] = []
        self.order = 0
        self.found: dict[str, str] = {}
        self.later = False

    def load(self, ws: Workspace, source: str, files: list[dict]) -> None:
        keys, order, rows = [], [], []
        for i, entry in enumerate(files):
            for b in entry["batches"]:
                t = pq.read_table(ws.lake / source / f"batch={b}" / "part-0.parquet", columns=["source_key", "_row_number"])
                keys.append(t.column("source_key").cast(pa_arrow.string()))
                order.append(np.full(t.num_rows, i, dtype=np.int64))
                rows.append(t.column("_row_number").to_numpy())
        self.names = [f["name"] for f in files]
        if keys:
            self.lake = pa_arrow.chunked_array(keys).combine_chunks()
            self.lake_order, self.lake_rows = np.concatenate(order), np.concatenate(rows)

    def seen(self, keys: pd.Series, hashes: tuple[np.ndarray, np.ndarray] | None = None) -> pd.Series:
        """Which keys were seen before (this run, or in the earlier rows of an append). `hashes`:
        the keys' _key_hashes, when already made."""
        mask = pd.Series(self.run.find(*(hashes if hashes is not None else _key_hashes(keys.to_numpy(dtype=object)))) >= 0, index=keys.index)
        if self.lake is not None and len(self.lake) and len(keys):
            at = pc.fill_null(pc.index_in(pa_arrow.array(keys.to_numpy(dtype=object), type=pa_arrow.string()), value_set=self.lake), -1).to_numpy()
            hit = at >= 0
            if hit.any():
                if (self.lake_order[at[hit]] > self.order).any():
                    self.later = True
                for key, pos in zip(keys[hit].tolist(), at[hit]):
                    self.found.setdefault(key, f"{self.names[self.lake_order[pos]]} row {self.lake_rows[pos]}")
            mask = mask | pd.Series(hit, index=keys.index)
        return mask

    def add(self, keys: pd.Series, file_name: str, hashes: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Remember keys seen for the first time (not seen before, each once), at their rows of
        `file_name`. `hashes`: the keys' _key_hashes, when already made."""
        if file_name not in self.run_files:
            self.run_files.append(file_name)
        base = self.run_files.index(file_name) << 40
        self.run.add(*(hashes if hashes is not None else _key_hashes(keys.to_numpy(dtype=object))), base + keys.index.to_numpy(dtype=np.int64))

    def where_all(self, keys: pd.Series) -> list[str]:
        """Where each key was first seen ("<file> row <n>"); every key must have been seen."""
        if not len(keys):
            return []
        values = keys.tolist()
        at = self.run.find(*_key_hashes(np.asarray(values, dtype=object)))
        out = []
        for key, pos in zip(values, at.tolist()):
            if key in self.found:
                out.append(self.found[key])
            else:
                assert pos >= 0, "a repeated key was never seen"  # invariant, never user input
                out.append(f"{self.run_files[pos >> 40]} row {pos & ((1 << 40) - 1)}")
        return out

    def where(self, key: str) -> str:
        return self.where_all(pd.Series([key], dtype=object))[0]


def _fingerprint(ws: Workspace, spec: SourceSpec, cfg: IngestConfig) -> str:
    """What an ingest's result depends on besides the files: the source's mapping (not its
    folder: a grown export may be delivered elsewhere), the settings, this code, the tombstones."""
    from personaops import __version__, erasure

    h = hashlib.sha256()
    settings = {k: v for k, v in cfg.model_dump(mode="json").items() if k != "incremental"}
    h.update(json.dumps([spec.model_dump(mode="json", exclude={"path"}), spec.path.is_dir(), settings, __version__, STATE_VERSION], sort_keys=True, default=str).encode())
    for code in (Path(__file__), Path(erasure.__file__)):
        h.update(hashlib.sha256(code.read_bytes()).digest())
    tomb = erasure.tombstone_path(ws)
    h.update(hashlib.sha256(tomb.read_bytes()).digest() if tomb.is_file() else b"-")
    return h.hexdigest()[:32]


def _row_group_digests(path: Path) -> list[list]:
    """(rows, SHA-256 of its bytes) of each row group of a Parquet file."""
    md = pq.ParquetFile(path).metadata
    out = []
    with open(path, "rb") as fh:
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            spans = []
            for j in range(rg.num_columns):
                c = rg.column(j)
                first = c.dictionary_page_offset if c.has_dictionary_page and c.dictionary_page_offset else c.data_page_offset
                spans.append((first, first + c.total_compressed_size))
            lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
            fh.seek(lo)
            out.append([rg.num_rows, hashlib.sha256(fh.read(hi - lo)).hexdigest()])
    return out


def _parquet_row_hashes(spec: SourceSpec, path: Path, first: int, last: int | None = None) -> np.ndarray:
    """Row hashes (as ingest computes them) of rows first+1..last of a Parquet file."""
    out = []
    for _, raw, _ in _read_parquet(spec, path, CHUNK_ROWS, {"rows": first}):
        if last is not None:
            raw = raw[raw.index <= last]
        if len(raw):
            spec.require_columns(path, list(raw.columns))
            out.append(_row_hashes(raw[spec.mapped_columns()]).to_numpy(dtype=np.uint64))
    return np.concatenate(out) if out else np.empty(0, dtype=np.uint64)


def _prefix_digest(path: Path, size: int) -> tuple[str, str]:
    """(SHA-256 of the file's first `size` bytes, SHA-256 of the whole file), in one read."""
    h = hashlib.sha256()
    prefix = None
    done = 0
    with open(path, "rb") as fh:
        while True:
            block = fh.read(min(1 << 20, size - done) if done < size else 1 << 20)
            if not block:
                break
            h.update(block)
            done += len(block)
            if done == size and prefix is None:
                prefix = h.copy().hexdigest()
    if prefix is None:  # an empty prefix
        prefix = hashlib.sha256().hexdigest() if size == 0 else ""
    return prefix, h.hexdigest()


def _state_folder(ws: Workspace, source: str) -> Path:
    return ws.lake / source / STATE_DIR


def _load_state(ws: Workspace, spec: SourceSpec, cfg: IngestConfig) -> tuple[dict | None, str]:
    path = _state_folder(ws, spec.name) / "state.json"
    if not path.is_file():
        return None, "no earlier ingest of this source in the workspace"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, "the earlier ingest's state is unreadable"
    if state.get("fingerprint") != _fingerprint(ws, spec, cfg):
        return None, "the source's mapping, the ingest settings, the code or the erasure tombstones changed"
    return state, ""


def _plan(ws: Workspace, spec: SourceSpec, paths: list[Path], state: dict) -> tuple[list[dict] | None, str]:
    """Per earlier file: {"mode": unchanged|appended, ...}; or (None, why the source is ingested in full)."""
    files = state["files"]
    if [p.name for p in paths[: len(files)]] != [f["name"] for f in files]:
        return None, "files were removed or renamed, or a file sorts before one ingested earlier"
    plans = []
    for path, entry in zip(paths, files):
        if not entry["settled"]:
            return None, f"{path.name}: its last ingest erased rows, quarantined future times or found a copied file"
        for b in entry["batches"]:
            if not (ws.lake / spec.name / f"batch={b}" / "part-0.parquet").is_file() or not (ws.quarantine / spec.name / f"batch={b}" / "part-0.parquet").is_file():
                return None, f"{path.name}: batch {b} is gone from the lake"
        try:
            size = path.stat().st_size
            if size < entry["size"]:
                return None, f"{path.name} is shorter than when it was ingested"
            fmt = spec.file_format(path)
            if fmt != entry["format"]:
                return None, f"{path.name}: its format changed"
            prefix, whole = _prefix_digest(path, entry["size"])
            if whole == entry["sha256"]:
                plans.append({"mode": "unchanged", "sha256": whole})
                continue
            if fmt == "csv":
                if prefix != entry["sha256"]:
                    return None, f"{path.name}: rows ingested earlier changed"
                if not entry["clean_end"]:
                    return None, f"{path.name}: its last line was incomplete when it was ingested"
                plans.append({"mode": "appended", "sha256": whole, "start": {"offset": entry["size"], "header": entry["header"], "rows": entry["rows"], "lines": entry["lines"]}})
                continue
            file = pq.ParquetFile(path)
            if str(file.schema_arrow.remove_metadata()) != entry["schema"] or sorted(_parquet_with_nulls(path, file)) != entry["with_nulls"]:
                return None, f"{path.name}: its columns or their types changed"
            groups, old = _row_group_digests(path), entry["row_groups"]
            if len(old) < 1 or groups[: len(old) - 1] != old[:-1] or file.metadata.num_rows < entry["rows"]:
                return None, f"{path.name}: rows ingested earlier changed"
            tail_from = entry["tail_from"]
            stored = pq.read_table(_state_folder(ws, spec.name) / entry["tail_hashes"]).column("hash").to_numpy()
            if not np.array_equal(_parquet_row_hashes(spec, path, tail_from, entry["rows"]), stored):
                return None, f"{path.name}: rows ingested earlier changed"
            plans.append({"mode": "appended", "sha256": whole, "start": {"rows": entry["rows"]}})
        except (OSError, pa_arrow.ArrowException) as exc:
            return None, f"{path.name}: cannot compare it with its last ingest ({exc.__class__.__name__})"
    return plans, ""


def _file_entry(ws: Workspace, spec: SourceSpec, path: Path, report: FileReport, track: dict, sha256: str, settled: bool, token: str) -> dict:
    """The state of one ingested file, its row hashes (and a Parquet file's last row group's) saved beside."""
    folder = _state_folder(ws, spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    read, seen = track["read"], track["seen_rows"]
    name = f"seen-{token}.parquet"
    pq.write_table(pa_arrow.table({"hash": seen.hashes, "row": seen.rows}), folder / name)
    entry = {
        "name": path.name, "format": spec.file_format(path), "size": path.stat().st_size, "sha256": sha256, "batches": report.batches,
        "rows_in": report.rows_in, "accepted": report.accepted, "quarantined": report.quarantined, "note": report.note,
        "rows": int(read.get("rows", 0)), "seen_rows": name, "settled": settled and report.note == "",
    }  # fmt: skip
    if entry["format"] == "csv":
        entry.update(header=read.get("header", []), lines=int(read.get("lines", 0)), clean_end=bool(read.get("clean_end")))
    else:
        file = pq.ParquetFile(path)
        groups = _row_group_digests(path)
        tail_from = sum(n for n, _ in groups[:-1])
        tail = f"tail-{token}.parquet"
        taken = track.get("tail")
        if taken is not None and taken["from"] == tail_from:  # taken while validating (see ingest_file)
            tail_hashes = np.concatenate(taken["hashes"]) if taken["hashes"] else np.empty(0, dtype=np.uint64)
        else:
            tail_hashes = _parquet_row_hashes(spec, path, tail_from)
        pq.write_table(pa_arrow.table({"hash": tail_hashes}), folder / tail)
        entry.update(schema=str(file.schema_arrow.remove_metadata()), with_nulls=read.get("with_nulls", []), row_groups=groups, tail_from=tail_from, tail_hashes=tail)
    return entry


def _load_seen(ws: Workspace, source: str, entry: dict) -> _SeenRows:
    seen = _SeenRows()
    table = pq.read_table(_state_folder(ws, source) / entry["seen_rows"])
    seen.load(table.column("hash").to_numpy().astype(np.uint64), table.column("row").to_numpy().astype(np.int64))
    return seen


def _save_state(ws: Workspace, spec: SourceSpec, cfg: IngestConfig, entries: list[dict]) -> None:
    from personaops.workspace import atomic_write_text

    folder = _state_folder(ws, spec.name)
    atomic_write_text(folder / "state.json", json.dumps({"version": STATE_VERSION, "fingerprint": _fingerprint(ws, spec, cfg), "files": entries}, indent=1))
    keep = {"state.json"} | {e["seen_rows"] for e in entries} | {e["tail_hashes"] for e in entries if "tail_hashes" in e}
    for old in folder.iterdir():
        if old.name not in keep:
            old.unlink(missing_ok=True)


def _ingest_full(spec: SourceSpec, paths: list[Path], ws: Workspace, cfg: IngestConfig, run_id: str, reason: str) -> SourceReport:
    report = SourceReport(source=spec.name, kind=spec.kind, mode="full", full_reason=reason)
    keys, seen_files, entries = _Keys(), {}, []
    for order, path in enumerate(paths):
        keys.order = order
        _ingest_whole_file(spec, path, ws, cfg, keys, run_id, seen_files, report, entries)
    _save_state(ws, spec, cfg, entries)
    return report


def _ingest_whole_file(spec: SourceSpec, path: Path, ws: Workspace, cfg: IngestConfig, keys: _Keys, run_id: str, seen_files: dict,
                       report: SourceReport, entries: list[dict]) -> None:  # fmt: skip
    """Validate one file whole into its own lake batch; add its report and its state entry."""
    track: dict = {}
    fr = ingest_file(spec, path, ws, cfg, keys, run_id, seen_files, track=track)
    fr.new_rows_in, fr.new_accepted, fr.new_quarantined = fr.rows_in, fr.accepted, fr.quarantined
    report.files.append(fr)
    entries.append(_file_entry(ws, spec, path, fr, track, track["sha256"], not (track["copy"] or track["unsettled"]), fr.batch_id))


def _ingest_incremental(spec: SourceSpec, paths: list[Path], ws: Workspace, cfg: IngestConfig, run_id: str, state: dict, plans: list[dict]) -> SourceReport:
    """Keep the earlier rows of each file as ingested; validate only rows added at the ends of the
    files (and whole files added after the known ones). Raises _Redo when that would differ from a full ingest."""
    report = SourceReport(source=spec.name, kind=spec.kind, mode="incremental")
    keys, entries = _Keys(), []
    keys.load(ws, spec.name, state["files"])
    seen_files = {e["sha256"][:16]: e["name"] for e in state["files"]}
    for order, path in enumerate(paths):
        keys.order = order
        if order < len(plans):
            entry, plan = state["files"][order], plans[order]
            if plan["mode"] == "unchanged":
                report.files.append(FileReport(file=str(path), batch_id=entry["batches"][-1], rows_in=entry["rows_in"], accepted=entry["accepted"],
                                               quarantined=entry["quarantined"], note=entry["note"], batches=list(entry["batches"]), mode="unchanged"))  # fmt: skip
                entries.append(entry)
                continue
            tail_id = hashlib.sha256(f"tail:{plan['sha256']}:{entry['batches'][-1]}".encode()).hexdigest()[:16]
            track: dict = {}
            tail = ingest_file(spec, path, ws, cfg, keys, run_id, append={"batch_id": tail_id, "start": plan["start"], "seen_rows": _load_seen(ws, spec.name, entry)}, track=track)
            if keys.later:
                raise _Redo(f"{path.name}: an added row repeats a key first seen in a later file")
            fr = FileReport(file=str(path), batch_id=tail_id, rows_in=entry["rows_in"] + tail.rows_in, accepted=entry["accepted"] + tail.accepted,
                            quarantined=entry["quarantined"] + tail.quarantined, note=entry["note"], batches=[*entry["batches"], tail_id], mode="appended",
                            new_rows_in=tail.rows_in, new_accepted=tail.accepted, new_quarantined=tail.quarantined)  # fmt: skip
            report.files.append(fr)
            entries.append(_file_entry(ws, spec, path, fr, track, plan["sha256"], not track["unsettled"], tail_id))
        else:  # a file added after the known ones: ingested whole, its keys checked against every earlier row
            _ingest_whole_file(spec, path, ws, cfg, keys, run_id, seen_files, report, entries)
    _save_state(ws, spec, cfg, entries)
    return report


def ingest_sources(specs: list[SourceSpec], ws: Workspace, cfg: IngestConfig, run_id: str, incremental: bool | None = None) -> list[SourceReport]:
    """Ingest every source; return per-source reports (rows in, accepted, quarantined, batches).
    With `incremental` (default: `ingest.incremental`), a source whose files only grew since its
    last ingest in this workspace has only the added rows validated (see _ingest_incremental); the
    lake's content is the same. Either way the state for a later incremental ingest is written."""
    incremental = getattr(cfg, "incremental", False) if incremental is None else incremental
    reports = []
    for spec in specs:
        paths = spec.files()
        state, reason = _load_state(ws, spec, cfg) if incremental else (None, "incremental ingest is off")
        plans = None
        if state is not None:
            plans, reason = _plan(ws, spec, paths, state)
        report = None
        if plans is not None:
            try:
                report = _ingest_incremental(spec, paths, ws, cfg, run_id, state, plans)
            except _Redo as why:
                reason = str(why)
        reports.append(report if report is not None else _ingest_full(spec, paths, ws, cfg, run_id, reason))
    return reports


def read_lake(
    ws: Workspace, source: str, batch_ids: list[str], columns: list[str] | None = None, prefixes: tuple[str, ...] = (), keys: pa_arrow.Array | None = None
) -> pd.DataFrame:
    """The accepted rows of the given batches of one source: every column, or only `columns` and
    the columns starting with one of `prefixes` (a column a batch lacks is left out of it; strings
    repeated across rows share one Python object). `keys` (Arrow strings) keeps only the rows
    with one of those record keys, filtered before the rows become pandas objects."""
    frames = []
    for b in batch_ids:
        path = ws.lake / source / f"batch={b}" / "part-0.parquet"
        if keys is not None:
            names = pq.read_schema(path).names
            wanted = set(names) if columns is None and not prefixes else set(columns or ())
            table = pq.read_table(path, columns=[c for c in names if c in wanted or c == "source_key" or c.startswith(prefixes)])
            table = table.filter(pc.is_in(table["source_key"], value_set=keys))
            if columns is not None and "source_key" not in columns and not any("source_key".startswith(p) for p in prefixes):
                table = table.drop_columns(["source_key"])
            frames.append(table.to_pandas())
            continue
        if columns is None and not prefixes:
            frames.append(pd.read_parquet(path))
            continue
        names = pq.read_schema(path).names
        wanted = set(columns or ())
        frames.append(pd.read_parquet(path, columns=[c for c in names if c in wanted or c.startswith(prefixes)]))
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["source_key", *LINEAGE_COLUMNS])
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def read_quarantine(ws: Workspace, source: str, batch_ids: list[str]) -> pd.DataFrame:
    frames = [pd.read_parquet(ws.quarantine / source / f"batch={b}" / "part-0.parquet") for b in batch_ids]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["_row_number", "reason", "raw"])
