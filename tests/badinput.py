"""A generated corpus of bad input, per source kind (crm, events, tickets, surveys, campaigns).

Good rows come from `personaops.generate` (a few people); each defect is applied to them by a
mutation, so every kind gets every defect that applies to its columns. A `Case` says what the
ingest must do with the result: either a file-level `SourceError` whose one sentence contains
`error`, or row by row — `bad` rows quarantined with a reason containing the given text, `good`
rows accepted — with rows in = accepted + quarantined. `check` adds case-specific assertions on
the accepted rows (e.g. injection strings stored verbatim, time zones normalised to UTC).

    from tests.badinput import build_corpus
    for case in build_corpus(tmp_path): ...

`corrupt_source_set(folder)` applies row-level defects to a whole generated source set in place
(the CLI-level test runs `personas run` on it).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from personaops.generate import generate
from personaops.sources import SourceSpec, load_sources

KINDS = ("crm", "events", "tickets", "surveys", "campaigns")
GOOD_ROWS = 6
TEN_MB = 10 * 1024 * 1024
INJECTIONS = [
    "<script>alert('pwned')</script>",
    "<img src=x onerror=alert(1)>",
    "'; DROP TABLE persons; --",
    "1' OR '1'='1",
    "$(rm -rf ~)",
    "`reboot`; cat /etc/passwd",
    "{{7*7}} ${7*7} %s%s%n",
    '=HYPERLINK("http://evil.test","click")',
    "../../../../etc/passwd",
    "Robert'); DROP TABLE students;--",
]


@dataclass
class Case:
    name: str  # "<kind>/<defect>"
    kind: str
    spec: SourceSpec
    error: str | None = None  # file-level: the SourceError message contains this
    bad: dict[int, str] = field(default_factory=dict)  # row number -> reason substring
    good: set[int] = field(default_factory=set)  # row numbers that must be accepted
    rows_in: int | None = None
    check: Callable[[pd.DataFrame], None] | None = None  # on the accepted (lake) rows

    @property
    def id(self) -> str:
        return self.name


# --- base rows -------------------------------------------------------------------------------
def base_sources(folder: Path, users: int = 30, seed: int = 3) -> dict[str, tuple[SourceSpec, pd.DataFrame]]:
    """kind -> (spec, the first GOOD_ROWS rows as strings) from a small generated source set."""
    generate(users, seed, folder)
    out = {}
    for spec in load_sources(folder / "sources.yaml"):
        if spec.path.suffix == ".parquet":
            frame = pd.read_parquet(spec.path)
            frame = frame.astype(object).where(frame.notna(), "").map(lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v))
        else:
            frame = pd.read_csv(spec.path, dtype=str, keep_default_na=False)
        # rows with every identifier filled, so a mutation is the only thing wrong with a row
        ids = list(spec.identifiers.values())
        frame = frame[(frame[ids] != "").all(axis=1)] if len(frame[(frame[ids] != "").all(axis=1)]) >= GOOD_ROWS else frame
        out[spec.kind] = (spec, frame.head(GOOD_ROWS).reset_index(drop=True))
    return out


def to_csv_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(frame.columns)
    writer.writerows(frame.itertuples(index=False, name=None))
    return buf.getvalue().encode("utf-8")


def _with(spec: SourceSpec, path: Path) -> SourceSpec:
    return spec.model_copy(update={"path": path, "format": None})


def _typed_column(spec: SourceSpec) -> tuple[str, str, str] | None:
    """A column with a type other than text: (column, bad value, reason)."""
    if "score" in spec.fields:
        return spec.fields["score"], "ten", "is not a number"
    if "converted" in spec.fields:
        return spec.fields["converted"], "maybe", "is not a yes/no value"
    if spec.labels:
        return spec.labels[0], "perhaps", "is not a yes/no label"
    if spec.numeric:
        return spec.numeric[0], "12,5kg", "is not a number"
    return None


def _free_columns(spec: SourceSpec) -> list[str]:
    """Columns holding free-form strings that are stored as given (text, names, categories)."""
    cols = list(spec.text) + [spec.identifiers[k] for k in ("name",) if k in spec.identifiers]
    cols += list(spec.categorical) + [c for r, c in spec.fields.items() if r in ("event_type", "session_id", "campaign")]
    return list(dict.fromkeys(cols))


# --- the corpus ------------------------------------------------------------------------------
def build_corpus(folder: Path) -> list[Case]:
    """Write every case's file(s) under `folder`; return the cases (5 kinds x ~20 defects)."""
    folder = Path(folder)
    cases: list[Case] = []
    for kind, (spec, base) in base_sources(folder / "_base").items():
        out = folder / kind
        out.mkdir(parents=True, exist_ok=True)
        cases.extend(_cases_for(kind, spec, base, out))
    return cases


def _cases_for(kind: str, spec: SourceSpec, base: pd.DataFrame, out: Path) -> list[Case]:
    n = len(base)
    ids = list(spec.identifiers.values())
    ts = spec.timestamp
    key = spec.key
    cases: list[Case] = []

    def write(name: str, frame: pd.DataFrame | None = None, data: bytes | None = None, suffix: str = ".csv") -> SourceSpec:
        path = out / f"{name}{suffix}"
        path.write_bytes(to_csv_bytes(frame) if data is None else data)
        return _with(spec, path)

    def case(defect: str, s: SourceSpec, **kw) -> None:
        cases.append(Case(f"{kind}/{defect}", kind, s, **kw))

    everyone = set(range(1, n + 1))
    case("clean", write("clean", base), good=everyone, rows_in=n)

    # wrong types: an unparsable timestamp, a word where a number or yes/no belongs
    df = base.copy()
    bad = {}
    if ts:
        df.loc[0, ts] = "the day before yesterday"
        bad[1] = "is not a date-time"
    typed = _typed_column(spec)
    if typed:
        df.loc[1, typed[0]] = typed[1]
        bad[2] = typed[2]
    case("wrong_types", write("wrong_types", df), bad=bad, good=everyone - set(bad), rows_in=n)

    # timestamps that are words, or zone abbreviations dateutil would silently drop
    if ts:
        df = base.copy()
        df.loc[0, ts], df.loc[1, ts], df.loc[2, ts] = "now", "today", "2024-03-01T10:00:00 EST"
        case("relative_or_ambiguous_times", write("relative_times", df), bad={1: "is not a date-time", 2: "is not a date-time", 3: "time zone by abbreviation"}, good=everyone - {1, 2, 3})

    # a required (mapped) column missing: a file-level error naming the column
    for col in [ts or ids[0], ids[0]]:
        df = base.drop(columns=[col])
        case(f"missing_column_{col}", write(f"missing_{col}", df), error=f"column '{col}' of the mapping is not in")

    # missing or malformed identifiers and keys
    df = base.copy()
    df.loc[0, ids] = ""
    bad = {1: "no identifier"}
    if key and key not in ids:
        df.loc[1, key] = ""
        bad[2] = f"{key} is missing"
    df.loc[2, ids[0]] = "   "  # whitespace only: missing, but other identifiers remain (or none)
    case("missing_identifiers", write("missing_ids", df), bad=bad, good=(everyone - set(bad) - {3}) if len(ids) > 1 else everyone - set(bad) - {3}, rows_in=n)

    df = base.copy()
    bad = {}
    if "email" in spec.identifiers:
        df.loc[0, spec.identifiers["email"]] = "carl-at-example.com"
        bad[1] = "is not an e-mail address"
    if "phone" in spec.identifiers:
        df.loc[1, spec.identifiers["phone"]] = "12"
        bad[2] = "does not hold 7-15 digits"
    df.loc[3, ids[-1]] = "X" * 600  # an identifier longer than any real one
    bad[4] = "longer than"
    case("malformed_identifiers", write("malformed_ids", df), bad=bad, good=everyone - set(bad), rows_in=n)

    # duplicate rows and duplicate keys
    df = pd.concat([base, base.iloc[[0, 1]]], ignore_index=True)
    case("duplicate_rows", write("duplicate_rows", df), bad={n + 1: "duplicate of row 1", n + 2: "duplicate of row 2"}, good=everyone, rows_in=n + 2)
    if key:
        df = base.copy()
        extra = base.iloc[[4]].copy()
        extra[key] = base.loc[0, key]
        df = pd.concat([df, extra], ignore_index=True)
        case("duplicate_keys", write("duplicate_keys", df), bad={n + 1: "duplicate key"}, good=everyone, rows_in=n + 1)

    # a duplicate file: the same export delivered twice under two names in a folder source
    folder = out / "redelivered"
    folder.mkdir(exist_ok=True)
    (folder / "export-1.csv").write_bytes(to_csv_bytes(base))
    (folder / "export-2.csv").write_bytes(to_csv_bytes(base))
    case("duplicate_file", _with(spec, folder), rows_in=2 * n, check=_expect_rows(n))

    # timestamps in the future, before 1970, far out of range; mixed time zones
    if ts:
        df = base.copy()
        for i, value in enumerate(["2999-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "0001-01-01", "1900-02-30"]):
            df.loc[i, ts] = value
        case("time_range", write("time_range", df), bad={1: "in the future", 2: "before 1970", 3: "before 1970", 4: "is not a date-time"}, good={5, 6}, rows_in=n)
        df = base.copy()
        zones = ["2024-03-01T10:00:00+02:00", "2024-03-01T08:00:00Z", "2024-03-01T03:00:00-05:00", "2024-03-01 08:00:00", "2024-03-01T13:30:00+0530", "2024-03-01T08:00:00 UTC"]
        df[ts] = zones[:n]
        case("mixed_time_zones", write("mixed_zones", df), good=everyone, rows_in=n, check=_expect_times(pd.Timestamp("2024-03-01T08:00:00Z")))

    # bytes that are not UTF-8 (Latin-1), NUL bytes
    free = _free_columns(spec) or ids
    df = base.copy()
    df.loc[1, free[0]] = "MARKER_LATIN1"
    df.loc[2, free[0]] = "MARKER_NUL"
    data = to_csv_bytes(df).replace(b"MARKER_LATIN1", b"Jos\xe9 M\xfcller").replace(b"MARKER_NUL", b"nul\x00byte")
    case("non_utf8_bytes", write("non_utf8", data=data), bad={2: "not valid UTF-8", 3: "not valid UTF-8"}, good=everyone - {2, 3}, rows_in=n)
    data = to_csv_bytes(base)
    data = data.replace(ids[0].encode(), ids[0].encode()[:-1] + b"\xff", 1)  # the header itself
    case("non_utf8_header", write("non_utf8_header", data=data), error=f"column '{ids[0]}' of the mapping is not in")

    # a 10 MB field: in free text (over max_text_chars) and in a non-text column
    df = base.copy()
    df.loc[0, free[0]] = "A" * TEN_MB
    bad = {1: "too long" if free[0] in spec.text else "longer than"}
    df.loc[1, ids[0]] = "B" * (TEN_MB // 10)  # 1 MB in an identifier column
    bad[2] = "longer than"
    case("ten_mb_field", write("ten_mb", df), bad=bad, good=everyone - set(bad), rows_in=n)

    # injection strings in free-form columns: stored verbatim as data, never interpreted
    df = base.copy()
    planted = {}
    for i in range(n):
        col = free[i % len(free)]
        value = INJECTIONS[i % len(INJECTIONS)][:150]
        df.loc[i, col] = value
        planted[i + 1] = value
    case("injection_strings", write("injection", df), good=everyone, rows_in=n, check=_expect_values(planted))

    # empty, header-only, blank lines, BOM + CRLF, semicolons, UTF-16
    case("empty_file", write("empty", data=b""), rows_in=0)
    case("whitespace_file", write("whitespace", data=b"\n\n   \n"), rows_in=0)
    case("header_only", write("header_only", data=to_csv_bytes(base.head(0))), rows_in=0)
    case("header_only_no_newline", write("header_only_nonl", data=to_csv_bytes(base.head(0)).rstrip(b"\n")), rows_in=0)
    case("blank_lines_around", write("blank_lines", data=b"\n\n" + to_csv_bytes(base).replace(b"\n", b"\n\n", 2) + b"\n  \n"), good=everyone, rows_in=n)
    case("bom_and_crlf", write("bom_crlf", data=b"\xef\xbb\xbf" + to_csv_bytes(base).replace(b"\n", b"\r\n")), good=everyone, rows_in=n)
    case("semicolon_delimited", write("semicolons", data=to_csv_bytes(base).replace(b",", b";")), error="of the mapping is not in")
    case("utf16_file", write("utf16", data=to_csv_bytes(base).decode().encode("utf-16")), error="UTF-16")
    dup_header = to_csv_bytes(base).split(b"\n", 1)
    case("duplicate_header_column", write("dup_header", data=dup_header[0] + b"," + ids[0].encode() + b"\n" + dup_header[1]), error=f"column '{ids[0]}' appears 2 times")

    # truncated last line: cut before its last delimiter, inside an open quote, or at a field end
    full = to_csv_bytes(base)
    last_start = full.rstrip(b"\n").rfind(b"\n") + 1
    last = full[last_start:].rstrip(b"\n")
    case("truncated_last_line", write("truncated", data=full[: last_start + last.rfind(b",")]), bad={n: "malformed line"}, good=everyone - {n}, rows_in=n)
    quoted = base.copy()
    quoted.loc[n - 1, free[0]] = "a value, with a comma"
    data = to_csv_bytes(quoted)
    cut = data.rfind(b"with a")
    case("truncated_in_quotes", write("truncated_quote", data=data[:cut]), bad={n: "malformed CSV line"}, good=everyone - {n}, rows_in=n)
    case("no_final_newline", write("no_final_newline", data=full.rstrip(b"\n")), good=everyone, rows_in=n)

    # Parquet: wrong physical types, a corrupt file, an empty one
    df = base.copy()
    if ts:
        df[ts] = pd.to_datetime(df[ts], utc=True, format="mixed")
    df[ids[0]] = range(1000, 1000 + n) if not spec.identifiers.get("email") == ids[0] else df[ids[0]]
    path = out / "typed.parquet"
    df.to_parquet(path, index=False)
    case("parquet_typed_columns", _with(spec, path), good=everyone, rows_in=n)
    path = out / "corrupt.parquet"
    path.write_bytes(b"PAR1" + b"\x00garbage" * 20)
    case("parquet_corrupt", _with(spec, path), error="is not a readable Parquet file")
    path = out / "empty.parquet"
    base.head(0).to_parquet(path, index=False)
    case("parquet_empty", _with(spec, path), rows_in=0)
    return cases


# --- case checks -----------------------------------------------------------------------------
def _expect_rows(count: int) -> Callable[[pd.DataFrame], None]:
    def check(lake: pd.DataFrame) -> None:
        assert len(lake) == count, f"{len(lake)} rows in the lake, expected {count}"
        assert lake["source_key"].is_unique

    return check


def _expect_times(when: pd.Timestamp) -> Callable[[pd.DataFrame], None]:
    def check(lake: pd.DataFrame) -> None:
        assert (lake["event_time"] == when).all(), lake["event_time"].tolist()

    return check


def _expect_values(planted: dict[int, str]) -> Callable[[pd.DataFrame], None]:
    def check(lake: pd.DataFrame) -> None:
        stored = lake.set_index("_row_number")
        for row, value in planted.items():
            cells = [v for v in stored.loc[row].tolist() if isinstance(v, str)]
            assert any(value in c for c in cells), (row, value, cells)

    return check


# --- a whole source set with bad rows (for the CLI-level run) -------------------------------
def corrupt_source_set(folder: Path, ten_mb_in: tuple[str, ...] = ("tickets",), max_share: float = 0.045) -> dict[str, int]:
    """Append bad rows to every CSV source of a generated source set in place (wrong types, no
    identifier, future time, injection, non-UTF-8, a 10 MB field, a duplicate row, a truncated
    last line); return the number of rows added per source (each must be quarantined, except the
    injection row, which is accepted). A source whose bad rows would exceed `max_share` of its
    rows is left alone: the quality gate (broken_source: over 5% quarantined) would rightly stop
    the run."""
    added = {}
    for spec in load_sources(Path(folder) / "sources.yaml"):
        if spec.path.suffix != ".csv":
            continue
        frame = pd.read_csv(spec.path, dtype=str, keep_default_na=False)
        ids = list(spec.identifiers.values())
        free = _free_columns(spec) or ids
        rows = []

        def row(**values) -> dict:
            r = frame.iloc[0].to_dict()
            if spec.key:
                r[spec.key] = f"BAD-{len(rows)}-{spec.key}"
            r.update(values)
            rows.append(r)
            return r

        if spec.timestamp:
            row(**{spec.timestamp: "not a date"})
            row(**{spec.timestamp: "2999-01-01T00:00:00Z"})
        row(**{c: "" for c in ids})
        row(**{free[0]: "MARKER_LATIN1"})
        if spec.name in ten_mb_in:
            row(**{free[0]: "Z" * TEN_MB})
        dup = frame.iloc[[1]].to_dict("records")[0]
        rows.append(dup)
        row(**{free[0]: INJECTIONS[0]})  # accepted as data
        if len(rows) / (len(frame) + len(rows) + 1) > max_share:  # all but the injection row, plus the cut line
            continue
        extra = pd.DataFrame(rows, columns=frame.columns)
        body = to_csv_bytes(extra).split(b"\n", 1)[1].replace(b"MARKER_LATIN1", b"Fran\xe7ois")
        truncated = b"TRUNC-1,only-two-fields"
        with spec.path.open("ab") as fh:
            fh.write(body + truncated)
        added[spec.name] = len(rows) + 1
    return added
