"""The `build_personas` Prefect flow: ingest -> resolve -> features -> train -> publish -> monitor.

One task per stage. Tasks exchange small JSON-able summaries; the data itself moves through the
workspace (lake, identity map, feature tables, MLflow, Feast), so each stage is idempotent on its
inputs and records what it read and wrote in `runs/<run_id>.json`. Retries only on I/O errors.
"""

from __future__ import annotations

import hashlib
import json
import resource
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from personaops import __version__
from personaops import features as F
from personaops import progress
from personaops.config import PersonasConfig, load_config
from personaops.errors import PipelineStateError
from personaops.feature_store import MODEL_INPUT_SERVICE, apply_definitions, publish_assignments, write_table
from personaops.identity import resolve_identities
from personaops.ingest import ingest_sources, read_lake
from personaops.sources import load_sources
from personaops.workspace import Workspace, fault_point

IO_ERRORS = (OSError, TimeoutError, ConnectionError)


def _retry_on_io(task, task_run, state) -> bool:
    try:
        state.result()
    except IO_ERRORS:
        return True
    except Exception:
        return False
    return False


def _config(home: str | None) -> tuple[PersonasConfig, Workspace]:
    cfg = load_config()
    if home:
        cfg.home = Path(home).resolve()
    ws = Workspace.from_config(cfg)
    ws.export_environment()
    return cfg, ws


def _lake_frames(
    ws: Workspace, batches: dict[str, list[str]], record_person: pd.DataFrame | None = None, columns: list[str] | None = None, prefixes: tuple[str, ...] = ()
) -> dict[str, pd.DataFrame]:
    """Each source's lake rows (only `columns` and `prefixes` when given), with `source` and, given
    `record_person`, `person_id` (rows of no person dropped)."""
    frames = {}
    for source, ids in batches.items():
        frame = read_lake(ws, source, ids, columns, prefixes)
        frame["source"] = source
        if record_person is not None:
            frame = F._with_person(frame, record_person, source)
        frames[source] = frame
    return frames


# --- stages ----------------------------------------------------------------------------------
@task(name="ingest", retries=2, retry_delay_seconds=2, retry_condition_fn=_retry_on_io)
def ingest(sources: str, home: str | None, run_id: str) -> dict:
    """Validate every source into the lake; bad rows to quarantine with reasons."""
    cfg, ws = _config(home)
    fault_point("ingest")  # crash-test hook (PERSONAS_FAULT_KILL_AT); a no-op in production
    progress.stage_started("ingest", "validating sources")
    specs = load_sources(Path(sources))
    if cfg.compute.engine == "spark":  # the same rules in Spark tasks (personaops/spark_engine.py)
        from personaops import spark_engine

        reports = spark_engine.ingest_sources(specs, ws, cfg, run_id)
    else:
        reports = ingest_sources(specs, ws, cfg.ingest, run_id)
    out = {
        "sources": [r.to_dict() for r in reports],
        "batches": {r.source: r.batch_ids for r in reports},
        "kinds": {s.name: s.kind for s in specs},
    }
    rows_in, accepted, quarantined = (sum(getattr(r, a) for r in reports) for a in ("rows_in", "accepted", "quarantined"))
    progress.stage_finished("ingest", f"{rows_in:,} rows in, {accepted:,} accepted, {quarantined:,} quarantined")
    return out


@task(name="resolve")
def resolve(home: str | None, batches: dict[str, list[str]], run_id: str) -> dict:
    """Identity resolution (rules, then Splink) into a stable record -> person map, the identity
    graph, merge/split history and the review queue."""
    from personaops import identity_store

    cfg, ws = _config(home)
    fault_point("resolve")  # crash-test hook (PERSONAS_FAULT_KILL_AT); a no-op in production
    progress.stage_started("resolve", "linking records into persons")
    digests = identity_store.batch_digests(ws, batches)  # kept in the index: the next run re-reads no unchanged batch
    result, reason = _resolve_incremental(cfg, ws, batches, digests) if cfg.identity.incremental else (None, "identity.incremental is false")
    if result is None:  # a full resolve: the first run, changed or removed records, or new records that change earlier persons
        from personaops.matching import MATCH_ATTRIBUTES

        # only what linking reads: link keys and the attributes Splink compares, as Categoricals
        # (identity_store.lake_records: a code per row, no per-source frames concatenated); the
        # record keys and lineage are read as Arrow from the lake (lineage_reader), not held as a string per record
        columns = list(dict.fromkeys([*cfg.identity.link_keys, *MATCH_ATTRIBUTES]))
        from personaops.spark_engine import identity_config  # compute.engine: spark -> Splink on Spark too

        # the records go straight in (no name here holds them): resolve_identities frees their identifier columns when done with them
        result = resolve_identities(identity_store.lake_records(ws, batches, columns), identity_config(cfg),
                                    identity_store.previous_map(ws), identity_store.decisions(ws),
                                    lineage=identity_store.lineage_reader(ws, batches))  # fmt: skip
    result.stats["mode"] = "full" if reason else "incremental"
    result.stats["full_reason"] = reason
    paths = identity_store.write_identity(ws, result, run_id, identity_store.index_fingerprint(ws, cfg.identity), digests)
    s = result.stats
    progress.stage_finished(
        "resolve",
        f"{s['records']:,} records -> {s['persons']:,} persons ({s['probabilistic_links']:,} Splink links, "
        f"{s['review_queue']:,} pairs to review, {s['merges']} merges, {s['splits']} splits)",
    )
    return {"path": paths["record_person"], "graph": paths["edges"], **s}


def _resolve_incremental(cfg: PersonasConfig, ws: Workspace, batches: dict[str, list[str]], digests: dict | None = None):
    """(result, "") when only records were added and they leave every earlier person as it was,
    else (None, why a full resolve runs). Reads only lineage columns of the known records, none
    when their batches are the same bytes as at the last resolve (`digests`), and the other
    columns of the batches holding new records only."""
    from personaops import identity_store
    from personaops.identity import LINEAGE, resolve_incremental
    from personaops.matching import MATCH_ATTRIBUTES

    index, reason = identity_store.load_index(ws, cfg.identity)
    if index is None:
        return None, reason
    kept, new, previous_ids, how = identity_store.split_known(ws, batches, digests, index.batches)
    if kept is None:
        return None, how
    keys = {src: set(g["source_key"]) for src, g in new.groupby("source")}
    holding = {src: set(g["_batch_id"]) for src, g in new.groupby("source")}  # the batches with a new record
    columns = list(dict.fromkeys([*LINEAGE, *cfg.identity.link_keys, *MATCH_ATTRIBUTES]))
    new_records = identity_store.read_records(ws, {k: [b for b in v if b in holding[k]] for k, v in batches.items() if k in keys}, columns,
                                              keep=lambda src, f: f["source_key"].isin(keys[src]).to_numpy())  # fmt: skip
    result, reason = resolve_incremental(new_records, previous_ids, index, cfg.identity, identity_store.decisions(ws))
    if result is None:
        return None, reason
    result.stats["earlier_records"] = how or "compared with the lake"
    return identity_store.finish_incremental(ws, kept, result, cfg.identity.link_keys), ""


@task(name="features")
def features(home: str | None, batches: dict[str, list[str]], kinds: dict[str, str], resolve_mode: str | None = None) -> dict:
    """Per-person feature tables + text embeddings, written as Feast offline sources and applied.
    After an incremental resolve only the persons with new records are recomputed and merged into
    the last run's tables (features.incremental_tables; the same tables as a full run)."""
    from models.embedder import TextEmbedder, person_embeddings

    cfg, ws = _config(home)
    fault_point("features")  # crash-test hook (PERSONAS_FAULT_KILL_AT); a no-op in production
    progress.stage_started("features", "computing per-person features")
    from personaops.consent import exclude_without_analytics

    embedder = TextEmbedder.from_config(cfg.embedding, ws.embedding_cache)
    fingerprint = F.inputs_fingerprint(ws, cfg.embedding)
    incremental, reason, changed = None, "compute.engine is spark", None
    if cfg.compute.engine != "spark":
        state, reason = F.incremental_plan(ws, fingerprint, batches, kinds, resolve_mode)
        if state is not None:
            progress.stage_started("features", "updating the persons with new records")
            encode = lambda t: embedder.encode(t, progress=lambda d, n: progress.stage_progress("features", d, n))  # noqa: E731
            incremental = F.incremental_tables(ws, state, batches, kinds, encode, cfg.embedding.max_texts_per_person)
            reason = "" if incremental is not None else f"more than {F.MAX_EVENT_TYPES} event types"
    unchanged = False
    if incremental is not None:
        as_of, tables, texts, sensitive, changed, update = incremental
        # no new record, the same as-of time: every table is what the last run wrote; keep the files (same bytes, same snapshot id)
        unchanged = changed == 0 and as_of == pd.Timestamp(state["as_of"]) and all(b == state["batches"].get(s) for s, b in batches.items())
    if not unchanged:
        F.forget_incremental_state(ws)  # written again below once every table is: a run killed in between starts full next time
    if incremental is None:
        if cfg.compute.engine == "spark":  # the same tables by the same functions, in Spark tasks (personaops/spark_engine.py)
            from personaops import spark_engine

            # persons without analytics consent get no features, so no training, graph or serving either
            record_person = exclude_without_analytics(ws, pd.read_parquet(ws.identity / "record_person.parquet", columns=["source", "source_key", "person_id"]))
            as_of, tables, texts, sensitive = spark_engine.feature_tables(ws, cfg, batches, kinds, record_person)
            del record_person
        else:  # the events streamed into per-person aggregates, the other sources whole (features.full_tables; the same tables)
            as_of, tables, texts, sensitive, update = F.full_tables(ws, batches, kinds)
        progress.stage_started("features", f"embedding {texts['text'].nunique():,} distinct texts")
        vectors = embedder.encode_rows(texts["text"].tolist(), progress=lambda d, t: progress.stage_progress("features", d, t))
        emb = person_embeddings(texts, vectors, cfg.embedding.max_texts_per_person)
        emb["event_timestamp"], emb["created"] = as_of, as_of
        tables["person_text_embedding"] = emb
    if not unchanged:  # unchanged: every file is what the last run wrote (same bytes, same snapshot id)
        for view, table in tables.items():
            write_table(ws, view, table)
        texts_path = Workspace.ensure(ws.root / "texts" / "person_texts.parquet")
        texts.to_parquet(texts_path, index=False)
        sensitive.to_parquet(Workspace.ensure(ws.root / "audit" / "person_sensitive.parquet"), index=False)
        if incremental is not None:
            F.save_incremental_update(ws, fingerprint, batches, kinds, update)
        elif cfg.compute.engine != "spark":
            F.save_incremental_state(ws, fingerprint, batches, kinds, as_of, update["events"], update["tickets"])
    views = F.applied_views(ws, F.definitions_fingerprint(ws, cfg))  # the same definitions as the last apply: no `feast apply`
    applied = views is None
    if applied:
        views = apply_definitions(ws, cfg)
        F.remember_apply(ws, F.definitions_fingerprint(ws, cfg), views)
    progress.stage_finished("features", f"{len(tables)} feature tables, {len(texts):,} texts embedded, Feast views: {len(views)}")
    return {
        "as_of": as_of.isoformat(),
        "tables": {v: int(len(t)) for v, t in tables.items()},
        "texts": int(len(texts)),
        "distinct_texts": int(texts["text"].nunique()),
        "feature_views": views,
        "feast_apply": "applied" if applied else "skipped: definitions and table schemas unchanged",
        "mode": "incremental" if incremental is not None else "full",
        "full_reason": reason,
        "changed_persons": changed,
        "encoder": embedder.model_path,
        "embedding": dict(vars(embedder.last_run)),  # texts embedded vs cached, precision, seconds
    }


def _fingerprint(ws: Workspace, cfg: PersonasConfig) -> str:
    """Hash of everything training reads: feature tables, texts, model config, code version."""
    h = hashlib.sha256()
    # Only the tables training reads: the graph and flags tables are written after training, so
    # hashing them would make every re-run train a new version on unchanged inputs.
    inputs = sorted(p for p in (ws.feature_table(view) for view in F.FEATURE_VIEWS) if p.exists())
    for path in inputs + [ws.root / "texts" / "person_texts.parquet"]:
        h.update(path.name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    h.update(cfg.model.model_dump_json().encode())
    h.update(cfg.embedding.model_dump_json().encode())
    h.update(__version__.encode())
    return h.hexdigest()[:24]


def _previous_model(ws: Workspace, cfg: PersonasConfig):
    """The champion's published assignments, profiles and metrics (None before the first one)."""
    from models import registry
    from models.train import PreviousModel, load_profiles

    version = registry.alias_version(ws, cfg.model.registered_name, registry.CHAMPION)
    table = ws.feature_table("persona_assignment")
    if version is None or not table.exists():
        return None
    published = pd.read_parquet(table, columns=["person_id", "persona_id", "model_version"])
    published = published[published["model_version"] == version].set_index("person_id")["persona_id"]
    run_id = registry.version_run_id(ws, cfg.model.registered_name, version)
    metrics = registry.client(ws).get_run(run_id).data.metrics
    return PreviousModel(version=version, assignments=published, profiles=load_profiles(ws, run_id), metrics=metrics)


def _sensitive(ws: Workspace) -> pd.DataFrame | None:
    """Sensitive attributes by person_id (bias audits only), as the features stage wrote them."""
    path = ws.root / "audit" / "person_sensitive.parquet"
    if not path.exists():
        return None
    table = pd.read_parquet(path)
    return table.set_index("person_id") if "person_id" in table.columns and len(table.columns) > 1 else None


TRAIN_COMPLETE_TAG = "personas.train_complete"


def _train_complete(client, cfg: PersonasConfig, version: int) -> bool:
    """Did the run that trained `version` finish (tag set after its aliases moved)?"""
    try:
        return client.get_model_version(cfg.model.registered_name, str(version)).tags.get(TRAIN_COMPLETE_TAG) == "true"
    except Exception:  # an unreadable version is not a complete one
        return False


@task(name="train")
def train(home: str | None, run_id: str, encoder: str) -> dict:
    """Fit the persona model; log the MLflow run; register a version; apply the promotion gate."""
    from models import registry
    from models.embedder import TextEmbedder
    from models.train import train_persona_model

    cfg, ws = _config(home)
    fault_point("train")  # crash-test hook (PERSONAS_FAULT_KILL_AT); a no-op in production
    progress.stage_started("train", "clustering personas")
    fingerprint = _fingerprint(ws, cfg)
    client = registry.client(ws)
    for v in registry.versions(ws, cfg.model.registered_name):
        # Reuse only a version whose training finished (its alias decisions made): a version left
        # by a run killed mid-train is an orphan, never reused, never promoted.
        if not _train_complete(client, cfg, v.version):
            continue
        if client.get_run(v.run_id).data.tags.get("personas.input_fingerprint") == fingerprint:
            progress.stage_finished("train", f"inputs unchanged: reusing model version {v.version}")
            return {"run_id": v.run_id, "version": v.version, "aliases": v.aliases, "reused": True}
    tables, frame, columns = F.current_model_frame(ws)
    texts = pd.read_parquet(ws.root / "texts" / "person_texts.parquet")
    vectors = TextEmbedder.from_config(cfg.embedding, ws.embedding_cache).encode_rows(texts["text"].tolist())
    previous = _previous_model(ws, cfg)
    result = train_persona_model(
        ws,
        cfg.model.model_copy(update={"auto_promote": False}),  # promoted (or held for review) below
        frame,
        columns,
        texts,
        vectors,
        F.outcome_frame(tables),
        tags={"personas.run_id": run_id, "personas.input_fingerprint": fingerprint, "personas.feature_service": MODEL_INPUT_SERVICE},
        params={"encoder": Path(encoder).name, "feature_service": MODEL_INPUT_SERVICE},
        previous=previous,
        sensitive=_sensitive(ws),
    )
    promotion = None
    if previous is not None and cfg.model.auto_promote:
        # The gate, the share of persons moved and the policy's bias rules: a high-stakes change
        # is held for a human (`personas promotion approve|reject`) instead of promoted.
        from models.promotion import auto_promote

        decided = auto_promote(ws, cfg, result.version, run_id)
        result.gate = decided.checks
        result.aliases = next(v.aliases for v in registry.versions(ws, cfg.model.registered_name) if v.version == result.version)
        promotion = {"status": decided.status, "id": decided.promotion["id"] if decided.promotion else None}
    client.set_model_version_tag(cfg.model.registered_name, str(result.version), TRAIN_COMPLETE_TAG, "true")  # committed last
    progress.stage_finished(
        "train",
        f"k={result.k}, stability {result.metrics['stability']:.2f}, model version {result.version} ({', '.join(result.aliases)}), MLflow run {result.run_id[:8]}",
    )
    return {
        "run_id": result.run_id, "version": result.version, "aliases": result.aliases, "k": result.k,
        "metrics": result.metrics, "gate": result.gate, "continuity": result.continuity, "reused": False, "promotion": promotion,
    }  # fmt: skip


def publish_champion(cfg: PersonasConfig, ws: Workspace, as_of: str) -> dict:
    """Score every resolved person with the current champion and publish to Feast (offline +
    online). Used by the flow and by `personas models promote/rollback`."""
    from models import registry

    version, model = registry.load_champion(ws, cfg.model.registered_name)
    _, frame, _ = F.current_model_frame(ws)
    if cfg.compute.engine == "spark":  # batch scoring in Spark tasks
        from personaops import spark_engine

        predicted = spark_engine.score_persons(cfg, model, frame.reset_index(drop=True))
    else:
        predicted = registry.score(model, frame.reset_index(drop=True))
    assignments = pd.concat([pd.Series(frame.index, name="person_id"), predicted], axis=1)
    from models.train import load_profiles
    from personaops.online_publish import publishing_changes_only
    from personaops.serving import publish_online_views

    # Each view's online table gets only the persons whose row changed since its last publish (an
    # incremental run: the new and changed persons), or is rebuilt when that is not exact or not
    # cheaper (a new model version, a pushed event since, the first publish): docs/serving.md.
    with publishing_changes_only() as online_publish:
        rows = publish_assignments(ws, cfg, assignments, version, pd.Timestamp(as_of))
        # The rest of the serving contract (docs/serving.md): input views and persona traits online.
        profiles = load_profiles(ws, registry.version_run_id(ws, cfg.model.registered_name, version))
        online = publish_online_views(ws, cfg, assignments, profiles, version, pd.Timestamp(as_of))
    return {"model_version": version, "rows": rows, "personas": int(assignments["persona_id"].nunique()), "online_views": online, "online_publish": online_publish}


@task(name="publish", retries=2, retry_delay_seconds=2, retry_condition_fn=_retry_on_io)
def publish(home: str | None, as_of: str) -> dict:
    """Score every person with the champion and write assignments to Feast (offline + online)."""
    cfg, ws = _config(home)
    fault_point("publish")  # crash-test hook (PERSONAS_FAULT_KILL_AT); a no-op in production
    progress.stage_started("publish", "scoring and publishing the champion's personas")
    out = publish_champion(cfg, ws, as_of)
    progress.stage_finished("publish", f"{out['rows']:,} persons published online for model version {out['model_version']}")
    return out


@task(name="quality")
def quality(home: str | None, ingest_report: list[dict]) -> dict:
    """Data-quality checks before training: broken data must not train or promote a model."""
    from monitoring.monitor import quality_only

    cfg, ws = _config(home)
    fault_point("quality")  # crash-test hook (PERSONAS_FAULT_KILL_AT); a no-op in production
    progress.stage_started("quality", "checking data quality")
    results, decision = quality_only(cfg, ws, ingest_report, ws.last_healthy_ingest())
    verdict = "ok" if decision.action == "none" else f"{decision.action}: " + ", ".join(f["rule"] for f in decision.fired)
    progress.stage_finished("quality", f"data quality {verdict}")
    return {"results": results, "action": decision.action, "fired": decision.fired}


@task(name="monitor")
def monitor(home: str | None, run_id: str, ingest_report: list[dict], as_of: str, trained_this_run: bool) -> dict:
    """All monitoring checks vs the champion's reference, the policy's decision, and its action."""
    from flows.monitor_personas import act
    from monitoring.monitor import report_paths, run_checks
    from monitoring.policy import record as record_decision

    cfg, ws = _config(home)
    fault_point("monitor")  # crash-test hook (PERSONAS_FAULT_KILL_AT); a no-op in production
    progress.stage_started("monitor", "drift, quality and bias reports")
    results, decision = run_checks(cfg, ws, run_id, ingest_report, ws.last_healthy_ingest())
    outcome = act(cfg, ws, decision, run_id, as_of, trained_this_run)
    reports = report_paths(ws, run_id)
    record_decision(ws, decision, run_id, results["model_version"], reports, outcome)
    progress.stage_finished("monitor", f"drifted columns {results['features']['drifted_share']:.0%}; action: {decision.action}; reports in {ws.reports / run_id}")
    return {**reports, "drifted_share": results["features"]["drifted_share"], "action": decision.action, "fired": decision.fired, "outcome": outcome}


def catalogue(home: str | None, run_id: str) -> dict:
    """The static persona catalogue page of this run (reports/<run_id>/catalog.html). A plain
    step of the flow, not a task: it only renders what the tasks wrote."""
    from personaops.catalog import write_catalog

    cfg, ws = _config(home)
    progress.stage_started("catalogue", "writing the persona catalogue page")
    path = write_catalog(cfg, ws, run_id)
    progress.stage_finished("catalogue", f"persona catalogue page {path}")
    return {"path": str(path)}


@task(name="intents")
def intents(home: str | None, run_id: str) -> dict:
    """Intents mined from ticket and survey texts (clusters of their cached embeddings)."""
    from personaops.insights import intents_stage

    cfg, ws = _config(home)
    progress.stage_started("intents", "mining intents from ticket and survey texts")
    out = intents_stage(cfg, ws, run_id)
    progress.stage_finished("intents", f"{out['intents']} intents over {out['texts']:,} texts")
    return out


@task(name="graph")
def graph(home: str | None, run_id: str, batches: dict[str, list[str]], kinds: dict[str, str], as_of: str) -> dict:
    """The persona graph of this run (node/edge tables in the lake) and per-person graph features (Feast)."""
    from personaops.insights import graph_stage

    cfg, ws = _config(home)
    progress.stage_started("graph", "building the persona graph")
    out = graph_stage(cfg, ws, run_id, batches, kinds, as_of)
    progress.stage_finished("graph", f"{out['nodes']:,} nodes, {out['edges']:,} edges, {out['signals']} signals")
    return out


@task(name="flags")
def flags(home: str | None, run_id: str, batches: dict[str, list[str]], kinds: dict[str, str], as_of: str) -> dict:
    """Amber flags: calibrated churn risk (held-out AUC and calibration in MLflow) and engagement, online in Feast."""
    from personaops.insights import flags_stage

    cfg, ws = _config(home)
    progress.stage_started("flags", "scoring churn risk and engagement")
    out = flags_stage(cfg, ws, run_id, batches, kinds, as_of)
    auc = out.get("metrics", {}).get("roc_auc")
    progress.stage_finished("flags", f"{out['risk_amber']:,} amber risk flags" + (f", held-out ROC AUC {auc:.3f}" if auc is not None else ""))
    return out


def _keep_champion(cfg: PersonasConfig, ws: Workspace, resolved: dict, checked: dict) -> int | None:
    """The champion version when this run needs no training, else None. No training when the
    resolve only linked added records (incremental), no quality rule fired, `model.retrain` is
    `auto` and a champion whose training finished exists; a first run, changed or removed
    records, a quality rule, or `model.retrain: always` train (and so does monitoring's `retrain`
    decision later in the run, which carries it out itself)."""
    from models import registry

    if cfg.model.retrain != "auto" or resolved.get("mode") != "incremental" or checked["action"] != "none":
        return None
    if not resolved.get("new_records"):  # nothing added: train() finds the version with the same inputs and reuses it
        return None
    version = registry.alias_version(ws, cfg.model.registered_name, registry.CHAMPION)
    if version is None or not _train_complete(registry.client(ws), cfg, version):
        return None
    return version


def registry_champion(cfg: PersonasConfig, ws: Workspace) -> int:
    """The champion version; a clear error when broken data arrives before any model exists."""
    from models import registry

    version = registry.alias_version(ws, cfg.model.registered_name, registry.CHAMPION)
    if version is None:
        raise PipelineStateError(f"The data failed its quality checks and there is no champion yet in {ws.root}; see the quarantine and fix the sources first.")
    return version


def _reset_peak_rss() -> bool:
    """Start a new peak-RSS window: on Linux, writing 5 to /proc/self/clear_refs resets the
    process's high-water mark (ru_maxrss). False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _release_memory() -> None:
    """Hand what a stage freed back to the operating system, so the next stage starts from the
    process's baseline rather than on top of the last stage's peak: a garbage collection (frames
    in reference cycles; survivors frozen), pyarrow's memory pool (it keeps freed buffers for reuse) and glibc's
    malloc_trim (free pages inside the heap and arenas). Linux/glibc only where it must be; a no-op
    elsewhere."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    # What survives is long-lived (imported libraries: ~900,000 objects once Feast, MLflow, torch and
    # Evidently are in, ~0.8 s per full collection): move it out of the collector's view, so this and
    # every automatic collection afterwards scans only what later stages create.
    gc.freeze()
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except Exception:  # an old pyarrow without release_unused: nothing to give back
        pass
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): no malloc_trim
        pass


def _rss_mib() -> float | None:
    """The process's resident set now (MiB), from /proc (None elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _timed(stage, *args) -> dict:
    """Run a stage task; add its wall time (seconds) and its peak RSS (MiB): the stage's own peak
    where the high-water mark can be reset (Linux), else the process's peak so far; then release
    the memory the stage freed and record the resident set left (`rss_after_mib`)."""
    per_stage = _reset_peak_rss()
    started = time.perf_counter()
    out = stage(*args)
    out["seconds"] = round(time.perf_counter() - started, 3)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["peak_rss_scope"] = "stage" if per_stage else "process"
    _release_memory()
    out["rss_after_mib"] = _rss_mib()
    return out


@flow(name="build_personas")
def build_personas(sources: str, home: str | None = None) -> dict:
    """The whole persona pipeline on the sources a sources.yaml describes."""
    cfg, ws = _config(home)
    from personaops.retry import check_services

    check_services(cfg)  # production profile: each service answers (bounded retries) or one clear line
    with ws.lock("build_personas"):  # one run per workspace at a time (re-entrant: the CLI holds it too)
        return _build(cfg, ws, sources, home)


def _build(cfg: PersonasConfig, ws: Workspace, sources: str, home: str | None) -> dict:
    run_id = ws.new_run_id()
    started = datetime.now(timezone.utc)
    logger = get_run_logger()
    logger.info("PersonaOps run %s on %s (workspace %s)", run_id, sources, ws.root)
    ingested = _timed(ingest, sources, home, run_id)
    resolved = _timed(resolve, home, ingested["batches"], run_id)
    featured = _timed(features, home, ingested["batches"], ingested["kinds"], resolved.get("mode"))
    checked = _timed(quality, home, ingested["sources"])
    if checked["action"] in ("none", "retrain"):
        champion = _keep_champion(cfg, ws, resolved, checked)
        if champion is not None:  # only records were added and nothing fired: score them with the champion; monitoring may still retrain
            trained = {"skipped": f"incremental run: only new records, no quality rule fired; scored with champion v{champion} (model.retrain: {cfg.model.retrain})",
                       "model_version": champion, "seconds": 0.0, "peak_rss_mib": None}  # fmt: skip
        else:
            trained = _timed(train, home, run_id, featured["encoder"])
        published = _timed(publish, home, featured["as_of"])
    else:  # data calling for review or rollback trains and publishes nothing; the champion keeps serving
        trained = {"skipped": f"data quality: {checked['action']}", "fired": checked["fired"]}
        published = {"skipped": trained["skipped"], "model_version": registry_champion(cfg, ws)}
    from personaops.lineage import freeze_run

    snapshot = freeze_run(ws, run_id, ingested["batches"], ingested["kinds"], published)  # immutable snapshot id; what `personas replay` needs
    intented = _timed(intents, home, run_id)
    graphed = _timed(graph, home, run_id, ingested["batches"], ingested["kinds"], featured["as_of"])
    flagged = _timed(flags, home, run_id, ingested["batches"], ingested["kinds"], featured["as_of"])
    monitored = _timed(monitor, home, run_id, ingested["sources"], featured["as_of"], "skipped" not in trained)
    catalogued = _timed(catalogue, home, run_id)
    record = {
        "run_id": run_id,
        "flow_run_id": str(flow_run.get_id()),
        "sources": str(Path(sources).resolve()),
        "started": started.isoformat(),
        "finished": datetime.now(timezone.utc).isoformat(),
        "version": __version__,
        "ingest": ingested["sources"],
        "batches": ingested["batches"],
        "resolve": resolved,
        "features": featured,
        "quality": checked,
        "timings": {
            stage: {"seconds": out.get("seconds"), "peak_rss_mib": out.get("peak_rss_mib"), "peak_rss_scope": out.get("peak_rss_scope"), "rss_after_mib": out.get("rss_after_mib")}
            for stage, out in (("ingest", ingested), ("resolve", resolved), ("features", featured), ("quality", checked), ("train", trained), ("publish", published), ("intents", intented), ("graph", graphed), ("flags", flagged), ("monitor", monitored))
        },
        "train": trained,
        "publish": published,
        "monitor": monitored,
        "intents": intented,
        "graph": graphed,
        "flags": flagged,
        "catalogue": catalogued,
        "snapshot": snapshot,
    }
    ws.write_run_record(run_id, record)
    ws.audit("run_finished", run_id=run_id, model_version=published["model_version"])
    return json.loads(json.dumps(record, default=str))
