"""Data minimisation check (`personas audit minimisation`, docs/governance.md).

Raw identifiers (emails, phones, names) may live only in the lake's source batches, the quarantine
and the identity stage; everything derived from them (feature tables, the online store, MLflow
params and artifacts, reports, graph and insight tables, the catalogue, run snapshots, caches, the
audit log) uses opaque person ids. Sensitive attributes (the sources' `sensitive` columns) may be
held per person only in the bias-audit table `audit/person_sensitive.parquet`; they must not be
model inputs, feature-table columns or online features (the API serves them only to `analyst` and
above, from that table).

The check reads every identifier value of the lake, then scans every other file of the workspace:
Parquet string cells, SQLite cells (text and blobs, e.g. Feast's serialized online values) and the
bytes of every other file (JSON, HTML reports, logs, model files). It reports where and what kind
of identifier it found — never the value.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from personaops.workspace import Workspace

IDENTIFIER_COLUMNS = {"email": "email", "phone": "phone", "name": "name"}
DERIVED_LAKE_FOLDERS = ("graph", "insights")  # lake/graph and lake/insights are derived tables
BIAS_AUDIT_TABLE = Path("audit") / "person_sensitive.parquet"
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
# A North American phone number as people write it; not a run of digits inside a longer number.
PHONE_RE = re.compile(r"(?<![\w.+\-])(?:\+?1[\s.\-]?)?\(?\d{3}\)?[\s.\-]?\d{3}[\s.\-]?\d{4}(?![\w]|\.\d)")
WORD_RE = re.compile(r"[A-Za-z][A-Za-z'\-]*")
QUOTED_RE = re.compile(r'"([^"\n]{2,80})"')


def phone_digits(value: str) -> str | None:
    digits = re.sub(r"\D", "", value)
    if len(digits) == 11 and digits.startswith("1"):
        digits = digits[1:]
    return digits if len(digits) == 10 else None


def _name_key(value: str) -> str:
    return " ".join(value.lower().split())


@dataclass
class Identifiers:
    """The lake's raw identifier values, normalised for matching."""

    emails: set[str] = field(default_factory=set)
    phones: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)

    def counts(self) -> dict[str, int]:
        return {"emails": len(self.emails), "phones": len(self.phones), "names": len(self.names)}

    def in_cell(self, value: str) -> set[str]:
        """Kinds of identifier found in one string value (a whole cell or a whole file's text)."""
        found: set[str] = set()
        if _name_key(value) in self.names:
            found.add("name")
        if "@" in value and any(m.group(0).lower() in self.emails for m in EMAIL_RE.finditer(value)):
            found.add("email")
        if any(phone_digits(m.group(0)) in self.phones for m in PHONE_RE.finditer(value)):
            found.add("phone")
        if "name" not in found and self.names:
            words = [w.lower() for w in WORD_RE.findall(value)]
            for n in (2, 3):
                if any(" ".join(words[i : i + n]) in self.names for i in range(len(words) - n + 1)):
                    found.add("name")
                    break
            if "name" not in found and '"' in value and any(_name_key(q) in self.names for q in QUOTED_RE.findall(value)):
                found.add("name")
        return found


def lake_sources(ws: Workspace) -> list[Path]:
    if not ws.lake.is_dir():
        return []
    return sorted(p for p in ws.lake.iterdir() if p.is_dir() and not p.name.startswith("_") and p.name not in DERIVED_LAKE_FOLDERS)


def lake_identifiers(ws: Workspace) -> tuple[Identifiers, set[str]]:
    """(identifier values, sensitive attribute names) of every lake batch."""
    ids, sensitive = Identifiers(), set()
    for source in lake_sources(ws):
        for part in sorted(source.glob("batch=*/part-0.parquet")):
            names = pq.read_schema(part).names
            sensitive |= {c[len("sensitive__") :] for c in names if c.startswith("sensitive__")}
            cols = [c for c in IDENTIFIER_COLUMNS if c in names]
            if not cols:
                continue
            table = pq.read_table(part, columns=cols)
            for col in cols:
                values = [v for v in table.column(col).to_pylist() if isinstance(v, str) and v.strip()]
                if col == "email":
                    ids.emails |= {v.strip().lower() for v in values}
                elif col == "phone":
                    ids.phones |= {d for d in map(phone_digits, values) if d}
                else:
                    ids.names |= {_name_key(v) for v in values if len(v.strip()) >= 3}
    return ids, sensitive


def allowed_zones(ws: Workspace) -> list[Path]:
    """Where raw identifiers may be: lake source batches, the quarantine, the identity stage, and
    source files the user keeps inside the workspace (the demo's generated sources)."""
    zones = [*lake_sources(ws), ws.quarantine, ws.identity, ws.root / "demo-data"]
    record = ws.latest_run_record()
    if record and record.get("sources"):
        folder = Path(record["sources"]).parent
        if folder.is_relative_to(ws.root):
            zones.append(folder)
    return list(dict.fromkeys(zones))


def _text_cells(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        out = list(table.schema.names)
        for column in table.columns:
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_dictionary(column.type):
                out.extend(v for v in column.to_pylist() if isinstance(v, str))
            elif pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
                out.extend(v.decode("utf-8", "replace") for v in column.to_pylist() if isinstance(v, bytes))
            elif pa.types.is_list(column.type) and pa.types.is_string(column.type.value_type):
                out.extend(v for row in column.to_pylist() if row for v in row if isinstance(v, str))
        return out
    with path.open("rb") as fh:
        head = fh.read(16)
    if head == b"SQLite format 3\x00":
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            out = []
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
                for row in conn.execute(f'SELECT * FROM "{name}"'):
                    out.extend(v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in row if isinstance(v, (str, bytes)))
            return out
        finally:
            conn.close()
    return [path.read_bytes().decode("utf-8", "replace")]


def scan_identifiers(paths: list[Path], ids: Identifiers, root: Path) -> tuple[list[dict], int]:
    """(findings, files scanned): one finding per file and identifier kind, with the number of
    cells (or 1 for a whole file) holding it — never the value."""
    findings, scanned = [], 0
    for path in paths:
        scanned += 1
        try:
            cells = _text_cells(path)
        except Exception as exc:  # an unreadable file is reported, never skipped silently
            findings.append({"path": str(path.relative_to(root)), "kind": "unreadable", "cells": 0, "detail": type(exc).__name__})
            continue
        kinds: dict[str, int] = {}
        for cell in dict.fromkeys(cells):  # each distinct value once
            for kind in ids.in_cell(cell):
                kinds[kind] = kinds.get(kind, 0) + 1
        findings.extend({"path": str(path.relative_to(root)), "kind": k, "cells": n} for k, n in sorted(kinds.items()))
    return findings, scanned


def _online_feature_names(ws: Workspace) -> dict[str, set[str]] | None:
    """Feature names per online table of the local SQLite online store (None: no such store)."""
    db = ws.feast / "online_store.db"
    if not db.is_file():
        return None
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out = {}
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
            cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
            if "feature_name" in cols:
                out[table] = {r[0] for r in conn.execute(f'SELECT DISTINCT feature_name FROM "{table}"')}
        return out
    finally:
        conn.close()


def _mentions(column: str, sensitive: set[str]) -> str | None:
    """The sensitive attribute a column name is about (gender, gender_female, cat__gender=f...)."""
    low = column.lower()
    return next((s for s in sorted(sensitive) if re.search(rf"(^|[^a-z]){re.escape(s.lower())}($|[^a-z])", low)), None)


def sensitive_findings(ws: Workspace, sensitive: set[str]) -> tuple[list[dict], dict]:
    """Sensitive attributes outside the bias-audit table: as columns of any derived Parquet table,
    as model inputs (MLflow features.json) or as online features."""
    findings: list[dict] = []
    zones = allowed_zones(ws)
    checked = {"tables": 0, "model_input_lists": 0, "online_tables": 0}
    if not sensitive:
        return findings, checked
    for path in sorted(ws.root.rglob("*.parquet")):
        if any(path.is_relative_to(z) for z in zones) or path == ws.root / BIAS_AUDIT_TABLE:
            continue
        checked["tables"] += 1
        for column in pq.read_schema(path).names:
            attr = _mentions(column, sensitive)
            if attr:
                findings.append({"path": str(path.relative_to(ws.root)), "kind": "sensitive_column", "attribute": attr, "column": column})
    for path in sorted(ws.mlflow_artifacts.rglob("features.json")) if ws.mlflow_artifacts.is_dir() else []:
        import json

        checked["model_input_lists"] += 1
        for column in json.loads(path.read_text(encoding="utf-8")):
            attr = _mentions(str(column), sensitive)
            if attr:
                findings.append({"path": str(path.relative_to(ws.root)), "kind": "sensitive_model_input", "attribute": attr, "column": column})
    online = _online_feature_names(ws) or {}
    for table, names in sorted(online.items()):
        checked["online_tables"] += 1
        for name in sorted(names):
            attr = _mentions(name, sensitive)
            if attr:
                findings.append({"path": f"feast/online_store.db:{table}", "kind": "sensitive_online_feature", "attribute": attr, "column": name})
    return findings, checked


def check(ws: Workspace) -> dict:
    """The whole minimisation check of a workspace; `ok` is False on any finding."""
    ids, sensitive = lake_identifiers(ws)
    zones = allowed_zones(ws)
    paths = sorted(p for p in ws.root.rglob("*") if p.is_file() and not any(p.is_relative_to(z) for z in zones))
    findings, scanned = scan_identifiers(paths, ids, ws.root)
    sensitive_found, checked = sensitive_findings(ws, sensitive)
    return {
        "ok": not findings and not sensitive_found,
        "workspace": str(ws.root),
        "identifiers_from_lake": ids.counts(),
        "allowed_zones": [str(z.relative_to(ws.root)) for z in zones if z.exists()],
        "files_scanned": scanned,
        "identifier_findings": findings,
        "sensitive_attributes": sorted(sensitive),
        "sensitive_checked": checked,
        "sensitive_findings": sensitive_found,
        "online_store": "sqlite online store checked" if _online_feature_names(ws) is not None else "no local SQLite online store (Redis: its features come from the same views, checked through the feature tables)",
    }
