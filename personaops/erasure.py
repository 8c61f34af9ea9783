"""Erasure: remove one person's rows and everything derived from them from the workspace, and keep
a minimal tombstone so re-ingesting the same source rows does not bring them back.

`erase(ws, cfg, person_id=...)` or `erase(ws, cfg, source=..., key=...)` (resolved through the
identity graph) removes, in this order:

- the online store rows (Feast SQLite tables or Redis hashes; `online_publish.delete_persons`);
- the lake: every batch file of every source is rewritten without the person's records (by
  source key) and without rows carrying their strong identifiers (email, phone, customer id);
- the quarantine: rows whose raw JSON carries one of their strong identifiers or source keys;
- identity tables: record map, edges, review queue, merge/split history, review decisions; the
  incremental-resolve index (identity/index/) is deleted whole, so the next resolve is a full one;
- every Parquet table under features/, texts/, audit/, lake/graph/, lake/insights/ and the local
  MLflow artifact store (reference frames): rows of the person (person id, record id) are dropped;
  cells quoting one of the person's texts (intent examples, persona quotes in profiles.json) are
  replaced by "[erased]";
- cached embeddings of the person's texts (cache/embeddings/*/part-*.parquet, by text hash);
- the person's consent history.

The tombstone (`governance/tombstones.parquet`) holds only SHA-256 hashes: of each erased record
(source + key), of each erased raw row (its ingest row hash) and of each strong identifier (kind +
normalised value). Ingest drops a row matching any of them and counts it as quarantined with reason
`erased` (its raw values are not kept). The audit log gets one `erasure` entry with the person id,
the hash of the request and counts per store — no raw values.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from personaops.errors import NotFoundError, PipelineStateError
from personaops.workspace import Workspace

# Identifier kinds strong enough that a row carrying one belongs to the erased person.
STRONG_KINDS = ("email", "phone", "customer_id")
REDACTED = "[erased]"
ERASED_REASON = "erased"
_SALT = "personaops-tombstone-v1"


def tombstone_path(ws: Workspace) -> Path:
    return ws.root / "governance" / "tombstones.parquet"


def hash_value(kind: str, value: str) -> str:
    return hashlib.sha256(f"{_SALT}\0{kind}\0{value}".encode("utf-8", "surrogateescape")).hexdigest()


def _normalise(kind: str, values: pd.Series) -> pd.Series:
    from personaops.identity import NORMALISERS

    s = values.dropna().astype(str)
    fn = NORMALISERS.get(kind)
    return (fn(s) if fn is not None else s.str.strip().str.lower().str.replace(r"\s+", " ", regex=True)).dropna()


# --- the ingest hook ---------------------------------------------------------------------------
_CACHE: dict[str, tuple[float, set[str]]] = {}


def tombstones(ws: Workspace) -> set[str]:
    """Every tombstone hash of the workspace (cached by file modification time)."""
    path = tombstone_path(ws)
    if not path.is_file():
        return set()
    mtime = path.stat().st_mtime
    hit = _CACHE.get(str(path))
    if hit and hit[0] == mtime:
        return hit[1]
    hashes = set(pq.read_table(path, columns=["hash"]).column("hash").to_pylist())
    _CACHE[str(path)] = (mtime, hashes)
    return hashes


def erased_mask(ws: Workspace, source: str, canon: pd.DataFrame, row_hashes: pd.Series, keyed: bool = True) -> pd.Series:
    """Which canonical ingest rows match a tombstone (by record key, raw row hash or strong
    identifier). All False — cheaply — when nothing was ever erased."""
    mask = pd.Series(False, index=canon.index)
    stones = tombstones(ws)
    if not stones or canon.empty:
        return mask
    if keyed and "source_key" in canon.columns:
        keys = canon["source_key"].dropna().astype(str)
        mask |= keys.map(lambda k: hash_value(f"key:{source}", k) in stones).reindex(canon.index, fill_value=False)
    if len(row_hashes):
        mask |= row_hashes.astype(str).map(lambda h: hash_value(f"row:{source}", h) in stones).reindex(canon.index, fill_value=False)
    for kind in STRONG_KINDS:
        if kind in canon.columns:
            norm = _normalise(kind, canon[kind])
            mask |= norm.map(lambda v, k=kind: hash_value(k, v) in stones).reindex(canon.index, fill_value=False)
    return mask


# --- resolving the person ----------------------------------------------------------------------
def resolve_person(ws: Workspace, person_id: str | None = None, source: str | None = None, key: str | None = None) -> str:
    from personaops import identity_store

    if source or key:
        if not (source and key):
            raise NotFoundError("Give both --source NAME and --key VALUE (or a PERSON_ID) to erase a person.")
        return identity_store.lookup_record(ws, source, key)["person_id"]
    path = ws.identity / "record_person.parquet"
    if not person_id:
        raise NotFoundError("Give a PERSON_ID, or --source NAME and --key VALUE, to erase a person.")
    if not path.is_file():
        raise PipelineStateError(f"No identity map in {ws.root}; run `personas run --sources FILE` first.")
    ids = pd.read_parquet(path, columns=["person_id"])["person_id"]
    if not (ids == person_id).any():
        raise NotFoundError(f"No person {person_id!r} in the identity map of {ws.root}; check the id (`personas persons` / `personas explain`).")
    return person_id


@dataclass
class Subject:
    """What identifies the person's data: ids, record keys, raw values (memory only, never written)."""

    person_id: str
    records: pd.DataFrame  # source, source_key, _row_hash
    record_ids: set[str] = field(default_factory=set)
    strong: dict[str, set[str]] = field(default_factory=dict)  # kind -> normalised values
    names: set[str] = field(default_factory=set)  # normalised names on their records
    raw_values: set[str] = field(default_factory=set)  # raw identifier strings as found in the lake
    texts: set[str] = field(default_factory=set)
    text_hashes: set[str] = field(default_factory=set)
    pair_ids: set[str] = field(default_factory=set)


def _lake_sources(ws: Workspace) -> list[Path]:
    return sorted(p for p in ws.lake.iterdir() if p.is_dir() and not p.name.startswith("_") and p.name not in ("graph", "insights")) if ws.lake.is_dir() else []


def _subject(ws: Workspace, person_id: str) -> Subject:
    from models.embedder import text_hash

    nodes = pd.read_parquet(ws.identity / "record_person.parquet")
    mine = nodes[nodes["person_id"] == person_id]
    subject = Subject(person_id, mine[["source", "source_key", "_row_hash"]].reset_index(drop=True))
    subject.record_ids = set(mine["source"].astype(str) + ":" + mine["source_key"].astype(str))
    strong: dict[str, set[str]] = {k: set() for k in STRONG_KINDS}
    ident_cols = set(STRONG_KINDS) | {"name", "device_id", "account_id"}
    for src_dir in _lake_sources(ws):
        keys = set(mine.loc[mine["source"] == src_dir.name, "source_key"].astype(str))
        if not keys:
            continue
        for part in src_dir.glob("batch=*/part-0.parquet"):
            frame = pd.read_parquet(part)
            rows = frame[frame["source_key"].astype(str).isin(keys)]
            if "name" in rows.columns:
                subject.names |= set(_normalise("name", rows["name"]))
            for col in ident_cols & set(rows.columns):
                raw = rows[col].dropna().astype(str)
                subject.raw_values |= {v for v in raw if v.strip()}
                if col in strong:
                    strong[col] |= set(_normalise(col, raw))
            if "text" in rows.columns:
                subject.texts |= {t for t in rows["text"].dropna().astype(str) if t.strip()}
    subject.strong = strong
    texts_path = ws.root / "texts" / "person_texts.parquet"
    if texts_path.is_file():
        t = pd.read_parquet(texts_path, columns=["person_id", "text"])
        subject.texts |= set(t.loc[t["person_id"] == person_id, "text"].dropna().astype(str))
    subject.text_hashes = {text_hash(t) for t in subject.texts}
    queue = ws.identity / "review_queue.parquet"
    if queue.is_file():
        q = pd.read_parquet(queue)
        hit = q["record_l"].isin(subject.record_ids) | q["record_r"].isin(subject.record_ids)
        if "person_l" in q.columns:
            hit |= q["person_l"].eq(person_id) | q["person_r"].eq(person_id)
        subject.pair_ids = set(q.loc[hit, "pair_id"].astype(str))
    return subject


# --- rewriting files ---------------------------------------------------------------------------
def _write_table(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.erase.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def _string_columns(table: pa.Table) -> list[str]:
    return [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_dictionary(f.type)]


def _rewrite(path: Path, drop: np.ndarray, redact: dict[str, np.ndarray] | None = None) -> tuple[int, int]:
    """Rewrite a Parquet file without rows `drop` and with cells `redact[col]` set to "[erased]"."""
    table = pq.read_table(path)
    redacted = 0
    for col, mask in (redact or {}).items():
        if mask.any():
            values = table.column(col).to_pylist()
            values = [REDACTED if m else v for v, m in zip(values, mask)]
            table = table.set_column(table.schema.get_field_index(col), table.schema.field(col), pa.array(values, table.schema.field(col).type))
            redacted += int(mask.sum())
    if drop.any():
        table = table.filter(pa.array(~drop))
    if drop.any() or redacted:
        _write_table(table, path)
    return int(drop.sum()), redacted


def _derived_masks(table: pa.Table, subject: Subject) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rows of a derived table that belong to the person (an id column names them), and cells
    quoting one of their texts."""
    keys = set(subject.records["source_key"].astype(str))
    # graph nodes name records "<kind>:<source>/<key>" (e.g. ticket:tickets/K0-1)
    slashed = {f"{s}/{k}" for s, k in zip(subject.records["source"].astype(str), subject.records["source_key"].astype(str))}
    ids = {subject.person_id, f"person:{subject.person_id}"} | subject.record_ids | subject.pair_ids | keys
    drop = np.zeros(table.num_rows, dtype=bool)
    redact: dict[str, np.ndarray] = {}
    # Per-person tables lose the person's rows; only tables without a person column (aggregates
    # such as intent examples) get quoted texts redacted — others' rows with the same text stay.
    aggregate = "person_id" not in table.column_names
    for col in _string_columns(table):
        values = pd.Series(table.column(col).to_pylist(), dtype=object)
        as_str = values.astype(str)
        drop |= as_str.isin(ids).to_numpy() | as_str.str.rsplit(":", n=1).str[-1].isin(slashed).to_numpy()
        if subject.texts and aggregate:
            quoted = as_str.isin(subject.texts).to_numpy()
            if quoted.any():
                redact[col] = quoted
    for col in [f.name for f in table.schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)]:
        if subject.texts and aggregate and pa.types.is_string(table.schema.field(col).type.value_type):
            hits = np.array([bool(v) and any(x in subject.texts for x in v) for v in table.column(col).to_pylist()], dtype=bool)
            if hits.any():
                redact[col] = hits
    for col, mask in list(redact.items()):
        redact[col] = mask & ~drop
    return drop, redact


def _rewrite_list_cells(path: Path, col: str, texts: set[str]) -> None:
    table = pq.read_table(path)
    values = [[REDACTED if x in texts else x for x in v] if v else v for v in table.column(col).to_pylist()]
    table = table.set_column(table.schema.get_field_index(col), table.schema.field(col), pa.array(values, table.schema.field(col).type))
    _write_table(table, path)


def _sweep_derived(path: Path, subject: Subject) -> tuple[int, int]:
    table = pq.read_table(path)
    drop, redact = _derived_masks(table, subject)
    lists = {c: m for c, m in redact.items() if pa.types.is_list(table.schema.field(c).type) or pa.types.is_large_list(table.schema.field(c).type)}
    scalar = {c: m for c, m in redact.items() if c not in lists}
    dropped, redacted = _rewrite(path, drop, scalar)
    for col, mask in lists.items():
        if (mask & ~drop).any():
            _rewrite_list_cells(path, col, subject.texts)
            redacted += int(mask.sum())
    return dropped, redacted


def _lake_drop(frame: pd.DataFrame, source: str, subject: Subject) -> np.ndarray:
    """Lake rows of the person: their records (by key), rows carrying one of their strong
    identifiers, and rows carrying their exact name whose strong identifiers (if any) are all
    theirs (a name-only survey answer, say; a namesake with their own email is kept)."""
    keys = set(subject.records.loc[subject.records["source"] == source, "source_key"].astype(str))
    drop = frame["source_key"].astype(str).isin(keys).to_numpy() if "source_key" in frame.columns else np.zeros(len(frame), dtype=bool)
    foreign = np.zeros(len(frame), dtype=bool)
    for kind, values in subject.strong.items():
        if kind in frame.columns:
            norm = _normalise(kind, frame[kind]).reindex(frame.index)
            mine = norm.isin(values).to_numpy() if values else np.zeros(len(frame), dtype=bool)
            drop |= mine
            foreign |= norm.notna().to_numpy() & ~mine
    if subject.names and "name" in frame.columns:
        named = _normalise("name", frame["name"]).reindex(frame.index).isin(subject.names).to_numpy()
        drop |= named & ~foreign
    return drop


def _quarantine_drop(frame: pd.DataFrame, subject: Subject) -> np.ndarray:
    """Quarantined rows (raw JSON) carrying one of the person's strong identifiers or keys."""
    if "raw" not in frame.columns or frame.empty:
        return np.zeros(len(frame), dtype=bool)
    keys = set(subject.records["source_key"].astype(str))
    raw_strong = {v.strip() for v in subject.raw_values if len(v.strip()) >= 6}  # raw identifier strings of their records

    def hit(raw) -> bool:
        try:
            obj = json.loads(raw) if isinstance(raw, str) else {}
        except ValueError:
            obj = {}
        values = pd.Series([str(v).strip() for v in (obj.values() if isinstance(obj, dict) else [])], dtype=object)
        if values.isin(keys).any() or values.isin(raw_strong).any():
            return True
        for kind, norm in subject.strong.items():
            if norm and _normalise(kind, values).isin(norm).any():
                return True
        text = raw.lower() if isinstance(raw, str) else ""
        return any(e in text for e in subject.strong.get("email", ()) if e)

    return frame["raw"].map(hit).to_numpy(dtype=bool)


def _jsonl_filter(path: Path, needles: set[str]) -> int:
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if not any(n in line for n in needles)]
    if len(kept) != len(lines):
        tmp = path.with_name(f".{path.name}.erase.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)
    return len(lines) - len(kept)


def _redact_json_file(path: Path, texts: set[str]) -> int:
    """Replace every string of a JSON file equal to one of `texts` (persona quotes) by "[erased]"."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    count = 0

    def walk(o):
        nonlocal count
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        if isinstance(o, str) and o in texts:
            count += 1
            return REDACTED
        return o

    new = walk(obj)
    if count:
        tmp = path.with_name(f".{path.name}.erase.tmp")
        tmp.write_text(json.dumps(new, indent=2), encoding="utf-8")
        tmp.replace(path)
    return count


def _write_tombstone(ws: Workspace, subject: Subject, erasure_id: str) -> int:
    hashes = [hash_value(f"key:{s}", str(k)) for s, k in zip(subject.records["source"], subject.records["source_key"])]
    hashes += [hash_value(f"row:{s}", str(h)) for s, h in zip(subject.records["source"], subject.records["_row_hash"]) if isinstance(h, str) and h]
    for kind, values in subject.strong.items():
        hashes += [hash_value(kind, v) for v in values]
    new = pd.DataFrame({"hash": sorted(set(hashes))})
    new["erasure_id"] = erasure_id
    new["erased_at"] = datetime.now(timezone.utc).isoformat()
    path = Workspace.ensure(tombstone_path(ws))
    old = pd.read_parquet(path) if path.is_file() else None
    table = pd.concat([old, new], ignore_index=True) if old is not None else new
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(path)
    return len(new)


# --- the command -------------------------------------------------------------------------------
def erase(ws: Workspace, cfg, person_id: str | None = None, source: str | None = None, key: str | None = None, actor: str = "", reason: str = "") -> dict:
    """Erase one person (by id, or by one of their source records); return counts per store."""
    with ws.lock("erase"):
        pid = resolve_person(ws, person_id, source, key)
        subject = _subject(ws, pid)
        erasure_id = "E" + uuid.uuid4().hex[:12]
        counts: dict[str, int] = {}
        # 1. online store first: serving stops at once
        from personaops.consent import remove_online

        online = remove_online(ws, cfg, [pid])
        counts["online_rows"] = int(sum(online.values()))
        # 2. which lake rows go (read-only pass), then the tombstone of all of them — written
        # before any data goes, so a crash part-way still keeps the rows out of the next ingest
        drops, gone = [], [subject.records[["source", "source_key", "_row_hash"]]]
        for src_dir in _lake_sources(ws):
            for part in sorted(src_dir.glob("batch=*/part-0.parquet")):
                frame = pd.read_parquet(part)
                drop = _lake_drop(frame, src_dir.name, subject)
                if drop.any():
                    drops.append((part, drop))
                    gone.append(frame.loc[drop, ["source_key", "_row_hash"]].assign(source=src_dir.name))
        subject.records = pd.concat(gone, ignore_index=True).drop_duplicates(["source", "source_key"])
        subject.record_ids |= set(subject.records["source"].astype(str) + ":" + subject.records["source_key"].astype(str))
        counts["tombstone_hashes"] = _write_tombstone(ws, subject, erasure_id)
        # 3. lake batches and quarantine
        counts["lake_rows"] = sum(_rewrite(part, drop)[0] for part, drop in drops)
        counts["quarantine_rows"] = 0
        for part in sorted(ws.quarantine.glob("*/batch=*/part-0.parquet")) if ws.quarantine.is_dir() else []:
            frame = pd.read_parquet(part)
            counts["quarantine_rows"] += _rewrite(part, _quarantine_drop(frame, subject))[0]
        # 4. identity tables
        counts["identity_rows"] = 0
        for name in ("record_person.parquet", "edges.parquet", "review_queue.parquet"):
            path = ws.identity / name
            if path.is_file():
                counts["identity_rows"] += _sweep_derived(path, subject)[0]
        needles = {pid} | subject.record_ids | subject.pair_ids
        counts["identity_rows"] += _jsonl_filter(ws.identity / "history.jsonl", needles)
        counts["identity_rows"] += _jsonl_filter(ws.identity / "review_decisions.jsonl", needles)
        from personaops.identity_store import index_dir

        shutil.rmtree(index_dir(ws), ignore_errors=True)  # it holds the attributes Splink compares
        # 5. derived tables: features, texts, sensitive attributes, graph, insights, MLflow reference frames
        counts["derived_rows"], counts["redacted_cells"] = 0, 0
        # every other Parquet table of the workspace (run snapshots, reports' frames included)
        handled = {ws.identity, ws.quarantine, ws.embedding_cache, *(_lake_sources(ws))}
        run_files = []  # run snapshots rewritten: recorded so that replay tells erasure from tampering
        for path in sorted(ws.root.rglob("*.parquet")):
            if any(path.is_relative_to(h) for h in handled) or path == tombstone_path(ws) or path.name.startswith("."):
                continue
            dropped, redacted = _sweep_derived(path, subject)
            counts["derived_rows"] += dropped
            counts["redacted_cells"] += redacted
            if (dropped or redacted) and path.is_relative_to(ws.runs):
                run_files.append(path)
        from personaops.lineage import record_erasure

        record_erasure(ws, erasure_id, run_files)
        for path in sorted(ws.mlflow_artifacts.rglob("*.json")) if ws.mlflow_artifacts.is_dir() and subject.texts else []:
            counts["redacted_cells"] += _redact_json_file(path, subject.texts)  # persona quotes in profiles.json
        # 6. cached embeddings of their texts
        counts["cached_embeddings"] = 0
        for part in sorted(ws.embedding_cache.rglob("part-*.parquet")) if ws.embedding_cache.is_dir() else []:
            hashes = pq.read_table(part, columns=["text_hash"]).column("text_hash").to_pylist()
            drop = np.array([h in subject.text_hashes for h in hashes], dtype=bool)
            counts["cached_embeddings"] += _rewrite(part, drop)[0]
        # 7. consent history
        counts["consent_rows"] = _erase_consent(ws, pid)
        ws.audit(
            "erasure",
            erasure_id=erasure_id,
            person_id=pid,
            request=({"source": source, "key_sha256": hash_value(f"key:{source}", str(key))} if source else {"person_id": pid}),
            actor=actor or os.environ.get("USER", ""),
            reason=reason,
            counts=counts,
        )
        return {"erasure_id": erasure_id, "person_id": pid, "records": int(len(subject.records)), **counts}


def _erase_consent(ws: Workspace, person_id: str) -> int:
    from personaops.consent import db_path

    path = db_path(ws)
    if not path.is_file():
        return 0
    conn = sqlite3.connect(path, timeout=30)
    try:
        with conn:
            return conn.execute("DELETE FROM consent_history WHERE person_id = ?", (person_id,)).rowcount
    finally:
        conn.close()


# --- verification: search every file for raw values ----------------------------------------------
def scan(root: Path, needles: list[str]) -> list[str]:
    """Every place under `root` where one of `needles` (case-insensitive) occurs: Parquet cells,
    SQLite cells (text and blobs) and the raw bytes of every other file. Returns 'path: needle'."""
    lowered = [n.lower() for n in needles if n]
    found: list[str] = []
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        try:
            if path.suffix == ".parquet":
                table = pq.read_table(path)
                blob = "\n".join(str(v) for c in table.columns for v in c.to_pylist()).lower()
            elif path.read_bytes()[:16] == b"SQLite format 3\x00":
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                try:
                    parts = []
                    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"):
                        for row in conn.execute(f'SELECT * FROM "{name}"'):
                            parts.extend(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row)
                finally:
                    conn.close()
                blob = "\n".join(parts).lower() + path.read_bytes().decode("utf-8", "replace").lower()
            else:
                blob = path.read_bytes().decode("utf-8", "replace").lower()
        except Exception as exc:  # an unreadable file is reported, never skipped silently
            found.append(f"{path}: unreadable ({type(exc).__name__})")
            continue
        found.extend(f"{path}: {n}" for n in lowered if n in blob)
    return found
