"""The identity graph, its history and the review queue, as files in the workspace.

    identity/record_person.parquet   nodes: one row per source record -> person (the features input)
    identity/edges.parquet           edges: the evidence that joined two records (rule + key, or
                                     Splink probability / weight and the comparisons that agreed)
    identity/history.jsonl           append-only merge / split events (old ids, new ids, evidence, run id)
    identity/review_queue.parquet    the current run's undecided grey-band pairs
    identity/review_decisions.jsonl  append-only reviewer decisions, honoured by every later run
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from personaops.errors import NotFoundError, PipelineStateError
from personaops.identity import LINEAGE, IdentityIndex, IdentityResult
from personaops.workspace import Workspace

DECISIONS = ("accept", "reject")


ROW_GROUP = 1024 * 1024  # pyarrow's default row group: a frame written in slices of it gives the same row groups
LINEAGE_CHUNK = 256 * 1024  # rows of lineage read (and a full resolve's map written) at a time


def _write_parquet(frame, path) -> None:
    """Atomic write of a DataFrame or an Arrow table. A large DataFrame goes to Arrow one row
    group at a time (the map and edges of a 100,000-person resolve: an Arrow copy of the whole
    frame at once was the stage's peak), typed by the whole frame's schema; same rows, same file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = Workspace.ensure(path).with_name(f".{path.name}.tmp")
    from personaops.identity import EdgeList, RecordMap

    if isinstance(frame, (RecordMap, EdgeList)):  # a full resolve's map and edges: written chunk by chunk, never whole
        if len(frame) <= ROW_GROUP:
            frame = frame.to_pandas()
        else:
            _write_chunks(frame.frames(), tmp)
            tmp.replace(path)
            return
    if isinstance(frame, pd.DataFrame) and len(frame) > ROW_GROUP:
        first = pa.Table.from_pandas(frame.iloc[:ROW_GROUP], preserve_index=False)
        schema = first.schema
        if any(pa.types.is_null(f.type) for f in schema):  # a column empty in the first slice: typed by the whole frame
            schema = pa.Schema.from_pandas(frame, preserve_index=False)
            first = pa.Table.from_pandas(frame.iloc[:ROW_GROUP], schema=schema, preserve_index=False)
        with pq.ParquetWriter(tmp, schema) as writer:
            writer.write_table(first)
            del first
            for start in range(ROW_GROUP, len(frame), ROW_GROUP):
                writer.write_table(pa.Table.from_pandas(frame.iloc[start : start + ROW_GROUP], schema=schema, preserve_index=False))
    elif isinstance(frame, pd.DataFrame):
        frame.to_parquet(tmp, index=False)
    else:
        pq.write_table(frame, tmp)
    tmp.replace(path)


def _write_chunks(parts, tmp) -> None:
    """Write DataFrames / Arrow tables (the same columns) as one Parquet file, typed by the first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, schema = None, None
    try:
        for part in parts:
            table = pa.Table.from_pandas(part, schema=schema, preserve_index=False) if isinstance(part, pd.DataFrame) else part
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(table.cast(schema) if table.schema != schema else table)
    finally:
        if writer is not None:
            writer.close()


def lineage_reader(ws: Workspace, batches: dict[str, list[str]]):
    """A callable yielding the lake rows' LINEAGE (source, source_key, _batch_id, _row_number,
    _row_hash; or the given ones of them) as Arrow tables of at most ROW_GROUP rows, in the order `read_lake` gives the rows:
    a full resolve's record map takes its lineage from here when written instead of holding a
    string per record (identity.RecordMap)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def tables(columns=LINEAGE):
        read = [c for c in columns if c != "source"]
        for source, ids in batches.items():
            for b in ids:
                pf = pq.ParquetFile(ws.lake / source / f"batch={b}" / "part-0.parquet")
                for batch in pf.iter_batches(batch_size=LINEAGE_CHUNK, columns=read):
                    t = pa.Table.from_batches([batch]).select(read)
                    arrays = {c: t[c].cast(pa.string()) if c != "_row_number" else t[c] for c in read}
                    arrays["source"] = pa.repeat(pa.scalar(source, pa.string()), t.num_rows)
                    yield pa.Table.from_arrays([arrays[c] for c in columns], names=list(columns))

    return tables


def lake_records(ws: Workspace, batches: dict[str, list[str]], columns: list[str]) -> pd.DataFrame:
    """The lake rows a full resolve links (`source` and the given `columns` a batch has), in the
    order `read_lake` gives them, with text columns as pandas Categoricals.

    Read column by column as Arrow dictionaries (`read_dictionary`: each batch's distinct values
    once, an int32 code per row) and joined without a per-source frame and its `pd.concat` copy:
    the object column of the flow's earlier load held an 8-byte reference per row and column (the
    missing columns of a source as NaN references too) and existed twice while concatenated
    (37.7M rows at 1,000,000 people). The identity code factorizes the columns as before: a
    Categorical factorizes to the same codes and values as its object column. A column that is
    not text in some batch is read as objects, as before."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = [(source, ws.lake / source / f"batch={b}" / "part-0.parquet") for source, ids in batches.items() for b in ids]
    names = [pq.read_schema(p) for _, p in paths]
    rows = np.array([pq.read_metadata(p).num_rows for _, p in paths], dtype=np.int64)
    sources = list(batches)
    per_source = [int(rows[[s == source for s, _ in paths]].sum()) if paths else 0 for source in sources]
    data = {"source": pd.Categorical.from_codes(np.repeat(np.arange(len(sources), dtype=np.int8 if len(sources) < 127 else np.int32), per_source), categories=sources)}
    coded = pa.dictionary(pa.int32(), pa.string())
    for column in columns:
        fields = [s.field(column) if column in s.names else None for s in names]
        if all(f is None for f in fields):
            continue  # no batch has it (pd.concat would not have made the column either)
        if all(f is None or pa.types.is_string(f.type) or pa.types.is_large_string(f.type) for f in fields):
            pieces = []
            for (_, path), f, n in zip(paths, fields, rows):
                if f is None:
                    pieces.append(pa.nulls(int(n), coded))
                    continue
                part = pq.read_table(path, columns=[column], read_dictionary=[column])[column]
                pieces.extend(c if c.type == coded else c.cast(coded) for c in part.chunks)
            data[column] = pa.chunked_array(pieces, type=coded).to_pandas()  # the batches' dictionaries unified: one Categorical
            del pieces
        else:
            parts = [pq.read_table(path, columns=[column])[column].to_pandas() if f is not None else pd.Series(np.full(int(n), np.nan), dtype=object)
                     for (_, path), f, n in zip(paths, fields, rows)]  # fmt: skip
            data[column] = pd.concat([p.astype(object) for p in parts], ignore_index=True)
    return pd.DataFrame(data)


def previous_map(ws: Workspace) -> pd.DataFrame | None:
    """The last run's record -> person map, or None on a fresh workspace."""
    path = ws.identity / "record_person.parquet"
    return pd.read_parquet(path, columns=["source", "source_key", "person_id"]) if path.is_file() else None


def write_identity(ws: Workspace, result: IdentityResult, run_id: str, cfg_fingerprint: str = "", digests: dict | None = None) -> dict[str, str]:
    """Persist the record -> person map, the graph's edges, the review queue, the index the next
    incremental run needs (`cfg_fingerprint`: `index_fingerprint` of this run; `digests`:
    `batch_digests` of the batches this run resolved); append history."""
    paths = {
        "record_person": ws.identity / "record_person.parquet",
        "edges": ws.identity / "edges.parquet",
        "review_queue": ws.identity / "review_queue.parquet",
        "history": ws.identity / "history.jsonl",
    }
    unchanged = (  # an incremental run that added no record: the map stays byte for byte (snapshot ids hash it)
        result.upgrades is not None and not len(result.upgrades) and result.stats.get("new_records") == 0
        and paths["record_person"].is_file() and paths["edges"].is_file()
    )
    if not unchanged:
        _write_parquet(result.records, paths["record_person"])
        _write_parquet(result.edges, paths["edges"])
    review = result.review.assign(run_id=run_id)
    if result.upgrades is not None and paths["review_queue"].is_file():  # incremental: the open pairs stay queued
        earlier = pd.read_parquet(paths["review_queue"]).assign(run_id=run_id)
        if len(earlier):
            review = pd.concat([earlier, review], ignore_index=True).drop_duplicates("pair_id") if len(review) else earlier
    _write_parquet(review, paths["review_queue"])
    if result.index is not None:
        write_index(ws, result.index, cfg_fingerprint, digests)
    at = datetime.now(timezone.utc).isoformat()
    with Workspace.ensure(paths["history"]).open("a", encoding="utf-8") as fh:
        for event in result.events:
            fh.write(json.dumps({"at": at, "run_id": run_id, **event}, default=str) + "\n")
    return {k: str(v) for k, v in paths.items()}


def lookup_record(ws: Workspace, source: str, key: str) -> dict:
    """The person a source record belongs to in the latest identity graph: {source, source_key,
    person_id, linked_by}. The key matches exactly, else after trimming, else case-insensitively
    when that names one record (ingest trims keys; users retype them)."""
    path = ws.identity / "record_person.parquet"
    if not path.is_file():
        raise PipelineStateError(f"No identity map in {ws.root}; run `personas run --sources FILE` first.")
    nodes = pd.read_parquet(path, columns=["source", "source_key", "person_id", "linked_by"])
    sources = sorted(nodes["source"].unique())
    if source not in sources:
        raise NotFoundError(f"Source {source!r} is not in the identity map of {ws.root} (sources: {', '.join(sources) or 'none'}); check the --source name.")
    keys = nodes[nodes["source"] == source]
    hit = keys[keys["source_key"] == key]
    if hit.empty:
        hit = keys[keys["source_key"] == key.strip()]
    if hit.empty:
        hit = keys[keys["source_key"].str.casefold() == key.strip().casefold()]
        if len(hit) > 1:
            raise NotFoundError(f"Key {key!r} matches {len(hit)} records of source {source!r} only when case is ignored; give the key exactly as written in the source.")
    if hit.empty:
        raise NotFoundError(
            f"No record with key {key!r} in source {source!r} of {ws.root}; check the key (the source's `key` column; quarantined rows have no person)."
        )
    return {k: str(v) for k, v in hit.iloc[0][["source", "source_key", "person_id", "linked_by"]].items()}


def history(ws: Workspace, person_id: str) -> list[dict]:
    """Every merge / split event that involves `person_id` (as an old or a new id), oldest first."""
    path = ws.identity / "history.jsonl"
    events = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []
    found = [e for e in events if person_id in e["old_ids"] or person_id in e["new_ids"]]
    if not found:
        mapping = previous_map(ws)
        if mapping is None:
            raise PipelineStateError(f"No identity map in {ws.root}; run `personas run --sources FILE` first.")
        if person_id not in set(mapping["person_id"]):
            raise NotFoundError(f"Person {person_id} is not in the identity map of {ws.root}; check the id with `personas assignments`.")
    return found


def review_queue(ws: Workspace) -> pd.DataFrame:
    """The undecided pairs of the latest run (decisions taken since are left out)."""
    path = ws.identity / "review_queue.parquet"
    if not path.is_file():
        raise PipelineStateError(f"No review queue in {ws.root}; run `personas run --sources FILE` first.")
    queue = pd.read_parquet(path)
    decided = set(decisions(ws)["pair_id"])
    return queue[~queue["pair_id"].isin(decided)].reset_index(drop=True)


def decisions(ws: Workspace) -> pd.DataFrame:
    """Every review decision taken, oldest first (pair_id, record_l, record_r, decision, at)."""
    path = ws.identity / "review_decisions.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []
    return pd.DataFrame(rows, columns=["pair_id", "record_l", "record_r", "decision", "match_probability", "at"])


def decide(ws: Workspace, pair_id: str, decision: str) -> dict:
    """Record `accept` (always merge) or `reject` (never merge) for a queued pair; the next run applies it."""
    if decision not in DECISIONS:
        raise ValueError(decision)
    queue = review_queue(ws)
    match = queue[queue["pair_id"] == pair_id]
    if match.empty:
        raise NotFoundError(f"Pair {pair_id} is not in the review queue of {ws.root}; list open pairs with `personas review list`.")
    row = match.iloc[0]
    entry = {
        "pair_id": pair_id,
        "record_l": row["record_l"],
        "record_r": row["record_r"],
        "decision": decision,
        "match_probability": float(row["match_probability"]),
        "at": datetime.now(timezone.utc).isoformat(),
    }
    with Workspace.ensure(ws.identity / "review_decisions.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
    ws.audit("review_decision", pair_id=pair_id, decision=decision)
    return entry


# --- the incremental index -----------------------------------------------------------------------
# identity/index/: keys, device pairs and entities of the last run plus the Splink model and the
# fingerprint of what the index is valid for. Deleting it only makes the next resolve a full one.
# Key values are kept as 64-bit hashes; the entity table holds the attribute values Splink compares
# (names, e-mails...), so the index lives in the identity stage's zone, where raw identifiers may be
# (personaops/minimisation.py), and an erasure deletes it whole (personaops/erasure.py).


def index_dir(ws: Workspace):
    return ws.identity / "index"


def index_fingerprint(ws: Workspace, identity_cfg) -> str:
    """What an index is valid for: the identity settings (but `incremental`), the review
    decisions and the erasure tombstones. Any change makes the next resolve a full one."""
    from personaops.erasure import tombstone_path

    h = hashlib.sha256(identity_cfg.model_dump_json(exclude={"incremental"}).encode())
    for path in (ws.identity / "review_decisions.jsonl", tombstone_path(ws)):
        h.update(hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"-")
    return h.hexdigest()[:24]


def write_index(ws: Workspace, index: IdentityIndex, fingerprint: str, digests: dict | None = None) -> None:
    folder = index_dir(ws)
    state = folder / "state.json"
    state.unlink(missing_ok=True)  # written last: a half-written index is never used
    _write_parquet(index.keys, folder / "keys.parquet")
    _write_parquet(index.devices, folder / "devices.parquet")
    _write_parquet(index.entities, folder / "entities.parquet")
    Workspace.ensure(state).write_text(json.dumps({"fingerprint": fingerprint, "model": index.model, "batches": digests}), encoding="utf-8")


def load_index(ws: Workspace, identity_cfg) -> tuple[IdentityIndex | None, str]:
    """The last run's index, or None and why it cannot be used."""
    folder = index_dir(ws)
    if not (folder / "state.json").is_file() or not (ws.identity / "record_person.parquet").is_file():
        return None, "no identity index from an earlier run"
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    if state.get("fingerprint") != index_fingerprint(ws, identity_cfg):
        return None, "identity settings, review decisions or erasures changed since the last run"
    return IdentityIndex(
        keys=pd.read_parquet(folder / "keys.parquet"),
        devices=pd.read_parquet(folder / "devices.parquet"),
        entities=pd.read_parquet(folder / "entities.parquet"),
        model=state.get("model"),
        batches=state.get("batches"),
    ), ""


def read_records(ws: Workspace, batches: dict[str, list[str]], columns: list[str] | None = None, keep=None) -> pd.DataFrame:
    """Lake rows of the given batches with only `columns` (those a source has) plus `source`;
    `keep(source, frame)` -> boolean mask filters each batch as it is read."""
    import pyarrow.parquet as pq

    parts = []
    for source, ids in batches.items():
        for b in ids:
            path = ws.lake / source / f"batch={b}" / "part-0.parquet"
            names = pq.read_schema(path).names
            frame = pd.read_parquet(path, columns=[c for c in columns if c in names] if columns else None)
            frame["source"] = source
            if keep is not None:
                frame = frame[keep(source, frame)]
            if len(frame):
                parts.append(frame)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=LINEAGE)


def batch_digests(ws: Workspace, batches: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """source -> batch id -> sha256 of its lake file: what a resolve read, kept in the index so
    the next incremental run knows which batches are still byte for byte the same."""
    out: dict[str, dict[str, str]] = {}
    for source, ids in batches.items():
        for b in ids:
            with open(ws.lake / source / f"batch={b}" / "part-0.parquet", "rb") as fh:
                out.setdefault(source, {})[b] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


def _split_by_digests(ws: Workspace, batches: dict[str, list[str]], digests: dict, known: dict):
    """split_known's result without reading the earlier records from the lake, when every batch
    the last resolve read is still here with the same bytes (its records are then the last map's,
    lineage included): only the new batches' lineage is read. None when that does not hold (a
    batch changed or is gone, a map row names a batch the index does not know, a new record
    repeats an earlier key): the caller compares record by record."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from personaops.identity import RECORD_COLUMNS

    if any(digests.get(s, {}).get(b) != h for s, d in known.items() for b, h in d.items()):
        return None
    prev = pq.read_table(ws.identity / "record_person.parquet", columns=RECORD_COLUMNS).replace_schema_metadata(None)
    # the lake's order (source, then batch as listed): every row of a batch is contiguous and in
    # its file's order in the map, so a stable sort by (source, batch) restores a full resolve's order
    rank = np.full(prev.num_rows, -1, dtype=np.int64)
    new_parts, offset = [], 0
    for source, ids in batches.items():
        rows = pc.equal(prev["source"], source).to_numpy(zero_copy_only=False)
        at = pc.index_in(pc.filter(prev["_batch_id"], rows), value_set=pa.array(ids, pa.string())).to_numpy(zero_copy_only=False)
        if pd.isna(at).any():  # a map row of a batch not listed this run
            return None
        rank[rows] = offset + at.astype(np.int64)
        offset += len(ids)
        for b in ids:
            if b in known.get(source, {}):
                continue
            t = pq.read_table(ws.lake / source / f"batch={b}" / "part-0.parquet", columns=["source_key", "_batch_id"])
            keys = t["source_key"].cast(pa.string())
            if t.num_rows and pc.any(pc.and_(pc.equal(prev["source"], source), pc.is_in(prev["source_key"], value_set=keys))).as_py():
                return None
            new_parts.append(pd.DataFrame({"source": source, "source_key": keys.to_pandas(), "_batch_id": b}))
    if (rank < 0).any():  # a map row of a source not listed this run
        return None
    if len(rank) > 1 and (np.diff(rank) < 0).any():
        prev = prev.take(pa.array(np.argsort(rank, kind="stable")))
    new = pd.concat(new_parts, ignore_index=True) if new_parts else pd.DataFrame({"source": pd.Series(dtype=object), "source_key": pd.Series(dtype=object), "_batch_id": pd.Series(dtype=object)})
    return prev, new, set(pc.unique(prev["person_id"]).to_pylist()), "unchanged batches, not re-read"


def split_known(ws: Workspace, batches: dict[str, list[str]], digests: dict | None = None, known_digests: dict | None = None):
    """(the last run's map restricted to this run's records, with this run's lineage, as an Arrow
    table; the keys (source, source_key, _batch_id) of the records added since; the last run's
    person ids; "" or how the earlier records were known) — or (None, None, None, why) when a
    record of the last run changed or is gone.
    Given this run's `digests` and the last resolve's (`known_digests`, both `batch_digests`), unchanged
    batches are not re-read (_split_by_digests)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from personaops.identity import RECORD_COLUMNS

    if digests is not None and known_digests:
        fast = _split_by_digests(ws, batches, digests, known_digests)
        if fast is not None:
            return fast
    prev = pq.read_table(ws.identity / "record_person.parquet", columns=RECORD_COLUMNS)
    parts = []
    for source, ids in batches.items():
        for b in ids:
            t = pq.read_table(ws.lake / source / f"batch={b}" / "part-0.parquet", columns=["source_key", "_batch_id", "_row_number", "_row_hash"])
            parts.append(t.append_column("source", pa.array([source] * t.num_rows, pa.string())).cast(
                pa.schema([("source_key", pa.string()), ("_batch_id", pa.string()), ("_row_number", prev.schema.field("_row_number").type),
                           ("_row_hash", pa.string()), ("source", pa.string())])))  # fmt: skip
    cur = pa.concat_tables(parts) if parts else None
    if cur is None:
        return None, None, None, "no records"
    cur = cur.append_column("_pos", pa.array(np.arange(cur.num_rows, dtype=np.int64)))  # the join's output order is arbitrary: restored below
    earlier = prev.select(["source", "source_key", "_row_hash", "person_id", "linked_by"]).rename_columns(["source", "source_key", "_prev_hash", "person_id", "linked_by"])
    earlier = earlier.cast(pa.schema([("source", pa.string()), ("source_key", pa.string()), ("_prev_hash", pa.string()), ("person_id", pa.string()), ("linked_by", pa.string())]))
    joined = cur.join(earlier, keys=["source", "source_key"], join_type="left outer")
    known = pc.is_valid(joined["_prev_hash"])
    n_known = pc.sum(known).as_py() or 0
    if joined.num_rows != cur.num_rows or n_known != prev.num_rows:
        return None, None, None, f"{prev.num_rows - n_known:,} records of the previous run are gone or repeated"
    changed = pc.sum(pc.and_(known, pc.not_equal(joined["_row_hash"], joined["_prev_hash"]))).as_py() or 0
    if changed:
        return None, None, None, f"{changed:,} records changed since the previous run"
    new = joined.filter(pc.invert(known)).select(["source", "source_key", "_batch_id"]).to_pandas()
    rows = pc.indices_nonzero(known)
    rows = pc.take(rows, pc.sort_indices(pc.take(joined["_pos"], rows)))  # the lake's order, as a full resolve writes it
    kept = joined.select(RECORD_COLUMNS).take(rows)  # one copy, as the filter alone made
    return kept, new, set(pc.unique(prev["person_id"]).to_pylist()), ""


def finish_incremental(ws: Workspace, kept, result: IdentityResult, link_keys: list[str]) -> IdentityResult:
    """The whole map and graph of an incremental run: the earlier records (`kept`, Arrow) with any
    evidence upgrades, then the new records; the earlier edges, then the new ones; totals in stats."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from personaops.identity import EDGE_COLUMNS, RECORD_COLUMNS

    if result.upgrades is not None and len(result.upgrades):
        rank = {**{k: i for i, k in enumerate(link_keys)}, "review": len(link_keys), "splink": len(link_keys) + 1, "unlinked": len(link_keys) + 2}
        up = result.upgrades.assign(source=result.upgrades["record"].str.split(":", n=1).str[0], source_key=result.upgrades["record"].str.split(":", n=1).str[1])
        mask = pc.is_in(kept["source_key"], value_set=pa.array(up["source_key"].astype(str).unique(), pa.string()))
        hit = kept.filter(mask).to_pandas().merge(up[["source", "source_key", "by"]], on=["source", "source_key"], how="left")
        better = hit["by"].notna() & (hit["by"].map(rank) < hit["linked_by"].map(rank).fillna(len(rank)))
        hit.loc[better, "linked_by"] = hit.loc[better, "by"]
        kept = pa.concat_tables([kept.filter(pc.invert(mask)), pa.Table.from_pandas(hit[RECORD_COLUMNS], schema=kept.schema, preserve_index=False)])
    new = pa.Table.from_pandas(result.records[RECORD_COLUMNS].astype({"source_key": str}), schema=kept.schema, preserve_index=False)
    records = pa.concat_tables([kept, new])
    edges = result.edges
    path = ws.identity / "edges.parquet"
    if path.is_file():
        old = pq.read_table(path)
        added = pa.Table.from_pandas(edges[EDGE_COLUMNS].astype({"match_probability": float, "match_weight": float}), preserve_index=False)
        edges = pa.concat_tables([old.select(EDGE_COLUMNS), added.select(EDGE_COLUMNS).cast(old.select(EDGE_COLUMNS).schema)])
    result.records, result.edges = records, edges
    result.stats.update(records=records.num_rows, persons=pc.count_distinct(records["person_id"]).as_py(),
                        unlinked_records=pc.sum(pc.equal(records["linked_by"], "unlinked")).as_py() or 0)  # fmt: skip
    return result
