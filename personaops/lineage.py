"""Lineage, run snapshots and replay (docs/governance.md).

- `freeze_run` (called by the build_personas flow after publish) gives each run an immutable
  snapshot: a content hash over its inputs (lake batch ids, the record -> person map, every
  feature table, the published model version) and, under `runs/<run_id>/`, what replay needs:
  the published assignments and a manifest of the model-input feature tables. The tables
  themselves are stored once per content in `runs/_objects/<sha256>.parquet` (content-addressed),
  so a run whose inputs did not change costs only its assignments (a few KB per 1,000 persons).
- `explain` traces one person's served persona to the feature values, the source rows (source,
  batch, row number, row hash; checked against the lake), the identity-graph evidence, the model
  version / MLflow run and the run / snapshot id.
- `replay` re-scores a run's stored scoring input with the model version that run published and
  compares persona_id and confidence bit for bit with what it published.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from personaops import features as F
from personaops.errors import NotFoundError, PipelineStateError
from personaops.workspace import Workspace

SNAPSHOT_SCHEMA = 1
OBJECTS_DIR = "_objects"
# The feature tables the model is scored on (F.model_frame reads these).
SCORING_VIEWS = (*F.MODEL_INPUT_VIEWS, "person_text_embedding")
# Which feature views a source of each kind feeds (features stage in flows/build_personas.py).
KIND_VIEWS = {
    "events": ("person_behaviour",),
    "tickets": ("person_support", "person_text_embedding"),
    "surveys": ("person_survey", "person_text_embedding"),
    "crm": ("person_profile",),
    "campaigns": ("person_campaign", "person_labels"),
}
ASSIGNMENT_COLUMNS = ["person_id", "persona_id", "persona_name", "confidence", "model_version"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_dir(ws: Workspace, run_id: str) -> Path:
    return ws.runs / run_id


# --- snapshot (written by the flow) --------------------------------------------------------------
def freeze_run(ws: Workspace, run_id: str, batches: dict[str, list[str]], kinds: dict[str, str], published: dict) -> dict:
    """The run's snapshot id and inputs; stores the assignments it published and its scoring input
    for `replay`. A run that published nothing (skipped) gets a snapshot id but no replay data."""
    record_map = ws.identity / "record_person.parquet"
    tables = {view: _sha256(ws.feature_table(view)) for view in F.FEATURE_VIEWS if ws.feature_table(view).exists()}
    version = published.get("model_version")
    inputs = {
        "schema": SNAPSHOT_SCHEMA,
        "batches": {s: sorted(ids) for s, ids in sorted(batches.items())},
        "record_map": _sha256(record_map) if record_map.exists() else None,
        "feature_tables": tables,
        "model_version": None if version is None else int(version),
    }
    snapshot_id = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]
    out: dict[str, Any] = {"id": snapshot_id, "inputs": inputs, "kinds": dict(kinds), "replayable": False}
    if "skipped" in published or version is None:
        out["not_replayable"] = f"the run published no assignments ({published.get('skipped', 'no model version')})"
        return out
    directory = run_dir(ws, run_id)
    directory.mkdir(parents=True, exist_ok=True)
    objects = ws.runs / OBJECTS_DIR
    objects.mkdir(parents=True, exist_ok=True)
    scoring = {}
    for view in SCORING_VIEWS:
        digest = tables.get(view)
        if digest is None:
            continue
        target = objects / f"{digest}.parquet"
        if not target.exists():  # content-addressed: unchanged tables are stored once for all runs
            tmp = target.with_suffix(".tmp")
            shutil.copyfile(ws.feature_table(view), tmp)
            tmp.replace(target)
        scoring[view] = digest
    assignments = pd.read_parquet(ws.feature_table("persona_assignment"), columns=ASSIGNMENT_COLUMNS, filters=[("model_version", "==", int(version))])
    tmp = directory / "assignments.parquet.tmp"
    assignments.sort_values("person_id").reset_index(drop=True).to_parquet(tmp, index=False)
    tmp.replace(directory / "assignments.parquet")
    manifest = {"run_id": run_id, "snapshot_id": snapshot_id, "model_version": int(version), "scoring_tables": scoring, "persons": int(len(assignments))}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    out.update(replayable=True, dir=str(directory), assignments_sha256=_sha256(directory / "assignments.parquet"), scoring_tables=scoring)
    return out


# --- explain -----------------------------------------------------------------------------------
def _json(v):
    if isinstance(v, (list, tuple)):
        return [_json(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_json(x) for x in v.tolist()]
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    return v.item() if hasattr(v, "item") else v


def _run_for_version(ws: Workspace, version: int) -> dict | None:
    """The newest run record that published `version` (its snapshot), None when there is none."""
    if not ws.runs.is_dir():
        return None
    for path in sorted(ws.runs.glob("*.json"), reverse=True):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        publish = record.get("publish") or {}
        if publish.get("model_version") == version and "skipped" not in publish:
            return record
    return None


def _online_persona(ws: Workspace, cfg, person_id: str) -> dict | None:
    from personaops.feature_store import read_persona

    row = read_persona(ws, cfg, [person_id]).iloc[0]
    if pd.isna(row.get("model_version")):
        return None
    conf = row.get("confidence")
    return {
        "person_id": person_id,
        "persona_id": int(row["persona_id"]),
        "persona_name": _json(row.get("persona_name")),
        "confidence": None if pd.isna(conf) else float(conf),
        "model_version": int(row["model_version"]),
    }


def _features(ws: Workspace, person_id: str) -> dict[str, dict]:
    out = {}
    for view in F.FEATURE_VIEWS:
        path = ws.feature_table(view)
        if not path.exists():
            continue
        row = pd.read_parquet(path, filters=[("person_id", "==", person_id)])
        values = {}
        if len(row):
            for col, v in row.iloc[0].drop(["person_id", "event_timestamp", "created"], errors="ignore").items():
                if col == "text_embedding":  # 384 floats say nothing to a reader: dimension and norm
                    vec = None if v is None else np.asarray(v, dtype="float64")
                    values[col] = None if vec is None else {"dim": int(vec.size), "norm": round(float(np.linalg.norm(vec)), 6)}
                else:
                    values[col] = _json(v)
        out[view] = {"model_input": view in SCORING_VIEWS, "as_of": _json(row["event_timestamp"].iloc[0]) if len(row) and "event_timestamp" in row else None, "values": values}
    return out


def _verify_rows(ws: Workspace, rows: pd.DataFrame) -> list[bool]:
    """Is each (source, _batch_id, _row_number) in the lake with the same row hash?"""
    found: dict[tuple, str] = {}
    for (source, batch), group in rows.groupby(["source", "_batch_id"]):
        path = ws.lake / source / f"batch={batch}" / "part-0.parquet"
        if not path.exists():
            continue
        lake = pd.read_parquet(path, columns=["_row_number", "_row_hash"], filters=[("_row_number", "in", [int(n) for n in group["_row_number"]])])
        found.update({(source, batch, int(n)): h for n, h in zip(lake["_row_number"], lake["_row_hash"])})
    return [found.get((s, b, int(n))) == h for s, b, n, h in zip(rows["source"], rows["_batch_id"], rows["_row_number"], rows["_row_hash"])]


def _edge(row: dict) -> dict:
    """An identity edge for the lineage document; the shared key (an email, a phone, a name...) is
    a raw identifier, so it is shown as a short SHA-256 digest: equal keys still compare equal."""
    out = {k: _json(v) for k, v in row.items() if k != "key"}
    key = row.get("key")
    out["key_sha256"] = None if key is None or _json(key) is None else hashlib.sha256(str(key).encode()).hexdigest()[:16]
    return out


def explain(cfg, ws: Workspace, person_id: str, persona: dict | None = None) -> dict:
    """The lineage document of one person's served persona (see the module docstring)."""
    from models import registry

    record_map = ws.identity / "record_person.parquet"
    if not record_map.exists():
        raise PipelineStateError(f"No identity map in {ws.root}; run `personas run --sources FILE` first.")
    if persona is None:
        persona = _online_persona(ws, cfg, person_id)
    if persona is None:
        raise NotFoundError(f"Person {person_id!r} has no persona in the online store of {ws.root}; check the id (see `personas assignments`).")
    version = int(persona["model_version"])
    traits_doc = None  # persona_v2's trait features, as published with this model version
    traits_path = ws.feature_table("persona_traits")
    if traits_path.exists():
        traits = pd.read_parquet(traits_path, filters=[("person_id", "==", person_id), ("profile_model_version", "==", version)])
        if len(traits):
            traits_doc = {k: _json(v) for k, v in traits.iloc[-1].drop(["person_id", "event_timestamp", "created"], errors="ignore").items()}
    rows = pd.read_parquet(record_map, filters=[("person_id", "==", person_id)])
    verified = _verify_rows(ws, rows) if len(rows) else []
    record = _run_for_version(ws, version)
    snapshot = (record or {}).get("snapshot") or {}
    kinds = snapshot.get("kinds") or {}
    sources = []
    for (r, ok) in zip(rows.to_dict("records"), verified):
        sources.append({
            "source": r["source"], "source_key": r["source_key"], "batch_id": r["_batch_id"], "row_number": int(r["_row_number"]),
            "row_hash": r["_row_hash"], "linked_by": _json(r.get("linked_by")), "feeds": list(KIND_VIEWS.get(kinds.get(r["source"], ""), ())),
            "in_lake": bool(ok),
        })  # fmt: skip
    ids = [f"{r['source']}:{r['source_key']}" for r in sources]
    edges_path = ws.identity / "edges.parquet"
    edges = []
    if edges_path.exists() and ids:
        e = pd.read_parquet(edges_path, filters=[("record_l", "in", ids)])
        e = pd.concat([e, pd.read_parquet(edges_path, filters=[("record_r", "in", ids)])]).drop_duplicates(subset=["record_l", "record_r"])
        edges = [_edge(r) for r in e.to_dict("records")]
    features = _features(ws, person_id)
    feeding = {v for r in sources for v in r["feeds"]}
    for view, info in features.items():
        info["source_rows"] = [i for i, r in enumerate(sources) if view in r["feeds"]] if view in feeding else []
    try:
        mlflow_run = registry.version_run_id(ws, cfg.model.registered_name, version)
    except Exception:  # noqa: BLE001 - a version missing from the registry is reported, not raised
        mlflow_run = None
    return {
        "person_id": person_id,
        "persona": persona,
        "traits": traits_doc,
        "model": cfg.model.registered_name,
        "model_version": version,
        "run_id": mlflow_run,  # the MLflow run that trained the version (the API's original field)
        "mlflow_run_id": mlflow_run,
        "pipeline_run_id": (record or {}).get("run_id"),  # the `personas run` that published it
        "snapshot_id": snapshot.get("id"),
        "records": [{"source": r["source"], "source_key": r["source_key"], "linked_by": r["linked_by"]} for r in sources],
        "features": features,
        "source_rows": sources,
        "identity": {"linked_by": sorted({str(r["linked_by"]) for r in sources if r["linked_by"]}), "edges": edges},
    }


# --- erasure vs replay: which stored files an erasure rewrote, and to what ------------------------
ERASURE_LEDGER = "erasures.jsonl"


def record_erasure(ws: Workspace, erasure_id: str, changed: list[Path]) -> int:
    """Called by erasure for the run-snapshot files it rewrote: one ledger line with the erasure id
    and each file's new SHA-256 (no person id: the audit log's erasure entry names the person), so
    replay can tell an erasure from tampering. Returns the number of files recorded."""
    if not changed:
        return 0
    entry = {"erasure_id": erasure_id, "files": {str(path.relative_to(ws.runs)): _sha256(path) for path in changed}}
    path = ws.runs / ERASURE_LEDGER
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
    return len(changed)


def _erasure_ledger(ws: Workspace) -> dict[str, dict]:
    """Stored file (relative to runs/) -> {"sha256": after the newest erasure, "erasures": [ids]}."""
    path = ws.runs / ERASURE_LEDGER
    ledger: dict[str, dict] = {}
    if not path.is_file():
        return ledger
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line: that erasure's files will not verify, replay says so
        for name, digest in entry["files"].items():
            known = ledger.setdefault(name, {"erasures": []})
            known["sha256"] = digest
            known["erasures"].append(entry["erasure_id"])
    return ledger


def _stored_file_state(ws: Workspace, path: Path, digest: str | None, ledger: dict[str, dict]) -> list[str] | None:
    """[] when `path` has its original hash, the erasure ids when erasures rewrote it and it has the
    hash the newest left, None when it is missing or changed otherwise."""
    if not path.exists():
        return None
    actual = _sha256(path)
    if actual == digest:
        return []
    known = ledger.get(str(path.relative_to(ws.runs)))
    return list(known["erasures"]) if known and known["sha256"] == actual else None


def _erased_persons(ws: Workspace, erasure_ids: list[str]) -> list[str]:
    from personaops import audit

    wanted = set(erasure_ids)
    return sorted({e["person_id"] for e in audit.read(ws.audit_log, "erasure") if e.get("erasure_id") in wanted and e.get("person_id")})


# --- replay ------------------------------------------------------------------------------------
def run_record(ws: Workspace, run_id: str) -> dict:
    path = ws.runs / f"{run_id}.json"
    if not path.is_file() or "/" in run_id:
        known = sorted(p.stem for p in ws.runs.glob("*.json")) if ws.runs.is_dir() else []
        raise NotFoundError(f"Run {run_id!r} has no run record in {ws.runs}; pick one of: {', '.join(known[-5:]) or 'none (run `personas run` first)'}.")
    return json.loads(path.read_text(encoding="utf-8"))


def replay(cfg, ws: Workspace, run_id: str) -> dict:
    """Re-score a run's stored scoring input with the model version it published; compare bit for
    bit (persona_id, confidence) with the assignments it published."""
    import mlflow.pyfunc

    from models import registry

    record = run_record(ws, run_id)
    snapshot = record.get("snapshot")
    if not snapshot:
        raise PipelineStateError(f"Run {run_id} predates run snapshots (no `snapshot` in its record); only later runs can be replayed.")
    if not snapshot.get("replayable"):
        raise PipelineStateError(f"Run {run_id} cannot be replayed: {snapshot.get('not_replayable', 'no stored scoring input')}.")
    directory = run_dir(ws, run_id)
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    # An erasure rewrites stored files without the erased persons (recorded in the erasure ledger);
    # any other change is tampering and stops the replay.
    ledger = _erasure_ledger(ws)
    erased_here = _stored_file_state(ws, directory / "assignments.parquet", snapshot.get("assignments_sha256"), ledger)
    if erased_here is None:
        raise PipelineStateError(f"The stored assignments of run {run_id} in {directory} were changed after the run (hash mismatch); restore them from a backup.")
    published = pd.read_parquet(directory / "assignments.parquet")
    tables = {}
    for view, digest in manifest["scoring_tables"].items():
        path = ws.runs / OBJECTS_DIR / f"{digest}.parquet"
        if _stored_file_state(ws, path, digest, ledger) is None:
            raise PipelineStateError(f"The stored feature table {view} of run {run_id} ({path}) is missing or changed; replay needs it unchanged.")
        tables[view] = pd.read_parquet(path)
    erased = _erased_persons(ws, erased_here)
    if "persons" in manifest and len(published) + len(erased) != manifest["persons"]:
        raise PipelineStateError(f"Run {run_id} published {manifest['persons']:,} assignments; {len(published):,} are stored and {len(erased)} were erased, so rows are missing; restore {directory} from a backup.")
    version = int(manifest["model_version"])
    registry.client(ws)
    model = mlflow.pyfunc.load_model(f"models:/{cfg.model.registered_name}/{version}")
    persons = pd.Index(published["person_id"].tolist(), name="person_id")
    frame, _ = F.model_frame(tables, persons)
    predicted = registry.score(model, frame.reset_index(drop=True))
    replayed = pd.concat([pd.Series(frame.index, name="person_id"), predicted.reset_index(drop=True)], axis=1)
    # Erased persons cannot be reproduced (their inputs are gone, by design); everyone else must be.
    return {"run_id": run_id, "snapshot_id": snapshot["id"], "model_version": version, **compare(published, replayed),
            "erased_persons": erased, "erasures": erased_here, "persons_at_run": manifest.get("persons")}  # fmt: skip


def compare(published: pd.DataFrame, replayed: pd.DataFrame) -> dict:
    """persona_id equal and confidence equal bit for bit (float64 bits; NaN equals only the same
    NaN), person by person; persons missing from either side count as differences."""
    a, b = published.set_index("person_id"), replayed.set_index("person_id")
    b = b.reindex(a.index)
    missing = b["persona_id"].isna().to_numpy() | (len(replayed) != len(published))
    same_persona = (a["persona_id"].to_numpy() == b["persona_id"].to_numpy()) & ~b["persona_id"].isna().to_numpy()
    ca, cb = a["confidence"].to_numpy("float64"), b["confidence"].to_numpy("float64")
    same_conf = ca.view("uint64") == cb.view("uint64")
    diff = ~(same_persona & same_conf)
    return {
        "persons": int(len(a)),
        "identical": int((~diff).sum()),
        "persona_differences": int((~same_persona).sum()),
        "confidence_differences": int((~same_conf).sum()),
        "differing_persons": a.index[diff].tolist()[:20],
        "reproduced": not bool(diff.any()) and not bool(missing.any()),
    }
