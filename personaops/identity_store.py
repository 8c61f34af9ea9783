"""The identity graph, its history and the review queue, as files in the workspace.

    identity/record_person.parquet   nodes: one row per source record -> person (the features input)
    identity/edges.parquet           edges: the evidence that joined two records (rule + key, or
                                     Splink probability / weight and the comparisons that agreed)
    identity/history.jsonl           append-only merge / split events (old ids, new ids, evidence, run id)
    identity/review_queue.parquet    the current run's undecided grey-band pairs
    identity/review_decisions.jsonl  append-only reviewer decisions, honoured by every later run
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pandas as pd

from personaops.errors import NotFoundError, PipelineStateError
from personaops.identity import IdentityResult
from personaops.workspace import Workspace

DECISIONS = ("accept", "reject")


def _write_parquet(frame: pd.DataFrame, path) -> None:
    tmp = Workspace.ensure(path).with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)


def previous_map(ws: Workspace) -> pd.DataFrame | None:
    """The last run's record -> person map, or None on a fresh workspace."""
    path = ws.identity / "record_person.parquet"
    return pd.read_parquet(path, columns=["source", "source_key", "person_id"]) if path.is_file() else None


def write_identity(ws: Workspace, result: IdentityResult, run_id: str) -> dict[str, str]:
    """Persist the record -> person map, the graph's edges, the review queue; append history."""
    paths = {
        "record_person": ws.identity / "record_person.parquet",
        "edges": ws.identity / "edges.parquet",
        "review_queue": ws.identity / "review_queue.parquet",
        "history": ws.identity / "history.jsonl",
    }
    _write_parquet(result.records, paths["record_person"])
    _write_parquet(result.edges, paths["edges"])
    _write_parquet(result.review.assign(run_id=run_id), paths["review_queue"])
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
