"""One monitoring pass over a workspace: every check of the current features and the champion's
assignments against the champion's training reference, the policy's decision, and the reports.

Writes `reports/<run_id>/drift.html|json` (Evidently column drift + data summary) and
`reports/<run_id>/monitoring.json` (all results, the decision and the rules that fired), and adds
the Evidently snapshots to the workspace's Evidently workspace (`evidently/`).

Cost: the champion's reference (its training frame, downloaded from MLflow once) and its
reference statistics (monitoring/drift.py `ReferenceProfile`) are computed once per model version
and cached under `monitoring/reference/v<version>/`. Above `FULL_REPORT_ROWS` rows a side, the
feature-drift decision comes from the profile check on every row and the Evidently report runs on
a uniform sample without replacement of `FULL_REPORT_ROWS` rows per side (seeded by model.seed).

Every check runs with OpenMP and BLAS limited to one thread (`ONE_THREAD`): Evidently's embedding
drift report computes a t-SNE projection for its plot, and scikit-learn's t-SNE spreads its
gradient over OpenMP threads that spin while they wait. On this 2-CPU machine under load that cost
3-4x the CPU time and wall time of one thread (profile in docs/monitoring.md), for the same result.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.clustering import UNASSIGNED, assign
from monitoring.checks import data_quality, embedding_drift, group_representation, persona_mix
from monitoring.drift import ReferenceProfile, build_profile, centroid_shift, column_drift, profile_change
from monitoring.policy import Decision, decide, load_policy
from monitoring.reports import DriftSummary, add_to_evidently_workspace, drift_report, light_report
from personaops import features as F
from personaops.config import PersonasConfig
from personaops.errors import NotFoundError
from personaops.workspace import Workspace


def _vectors(column: pd.Series) -> np.ndarray:
    rows = [np.asarray(v, dtype=np.float32) for v in column if v is not None and not isinstance(v, float)]
    return np.vstack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def _with_vector(column: pd.Series) -> np.ndarray:
    """Positions of the rows of `column` that hold a vector (the rows `_vectors` stacks)."""
    return np.flatnonzero([v is not None and not isinstance(v, float) for v in column])


def _draw(n: int, sample: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(n, size=min(sample, n), replace=False)


def _reference_draw(column: pd.Series, sample: int, seed: int) -> tuple[np.ndarray, int]:
    """(positions drawn, rows with a vector) on the reference side."""
    rows = _with_vector(column)
    return (rows[_draw(len(rows), sample, np.random.default_rng(seed))] if len(rows) else rows), len(rows)


def reference_embeddings(column: pd.Series, sample: int, seed: int) -> tuple[np.ndarray, int]:
    """(the reference side's text-embedding sample, its texts): what `checks.embedding_drift`
    draws from `_vectors(column)` (seeded, the reference first), stacking only the drawn rows."""
    picked, texts = _reference_draw(column, sample, seed)
    return _vectors(column.iloc[picked]), texts


def current_embeddings(column: pd.Series, reference_texts: int, sample: int, seed: int) -> tuple[np.ndarray, int]:
    """(the current side's sample, its texts): the same generator replays the reference's draw of
    `reference_texts` first, so the sample is the one `checks.embedding_drift` would draw."""
    rows = _with_vector(column)
    rng = np.random.default_rng(seed)
    if reference_texts:
        _draw(reference_texts, sample, rng)
    if not len(rows):
        return np.zeros((0, 0), dtype=np.float32), 0
    return _vectors(column.iloc[rows[_draw(len(rows), sample, rng)]]), len(rows)


def quality_only(cfg: PersonasConfig, ws: Workspace, ingest_report: list[dict], previous_ingest: list[dict] | None) -> tuple[dict, Decision]:
    """The data-quality checks alone (before training): results and what the policy says of them."""
    from models import registry
    from models.train import load_reference

    tables, current, columns = F.current_model_frame(ws)
    version = registry.alias_version(ws, cfg.model.registered_name, registry.CHAMPION)
    if version is None:
        reference = current
    elif (reference_folder(ws, version) / "training_frame.parquet").exists():
        import pyarrow.parquet as pq

        path = reference_folder(ws, version) / "training_frame.parquet"  # all but the embeddings: the checks read the features
        reference = pd.read_parquet(path, columns=[c for c in pq.read_schema(path).names if c != EMBEDDING and not c.startswith("__index_level_")])
    else:
        reference = load_reference(ws, registry.version_run_id(ws, cfg.model.registered_name, version), without=(EMBEDDING,))  # the checks read the features
    quality = data_quality(reference, current, columns, ingest_report, previous_ingest, tables.get("person_profile"))
    return quality, decide({"quality": quality}, load_policy(cfg.monitoring.policy))


FULL_REPORT_ROWS = 50_000


def report_paths(ws: Workspace, run_id: str) -> dict[str, str]:
    """Where a monitoring pass writes its reports."""
    folder = ws.reports / run_id
    return {"html": str(folder / "drift.html"), "json": str(folder / "drift.json"), "monitoring": str(folder / "monitoring.json"), "evidently_workspace": str(evidently_folder(ws))}


def evidently_folder(ws: Workspace) -> Path:
    """The workspace's Evidently workspace: `evidently ui --workspace <this>` shows the history."""
    return ws.root / "evidently"


def reference_folder(ws: Workspace, version: int) -> Path:
    return ws.root / "monitoring" / "reference" / f"v{version}"


EMBEDDING = "text_embedding"


def _frame_fingerprint(path: Path) -> str:
    """Rows and bytes of a cached reference frame: an erasure rewrites it with fewer rows."""
    import pyarrow.parquet as pq

    return f"{pq.ParquetFile(path).metadata.num_rows}:{path.stat().st_size}"


def _embedding_cache(folder: Path, sample: int, seed: int) -> tuple[Path, Path]:
    stem = f"embedding_sample-{sample}-{seed}"
    return folder / f"{stem}.parquet", folder / f"{stem}.json"


def _load_reference_embeddings(folder: Path, sample: int, seed: int) -> tuple[np.ndarray, int] | None:
    """The cached reference embedding sample, if it was drawn from the frame as it is now."""
    vectors, meta = _embedding_cache(folder, sample, seed)
    if not (vectors.exists() and meta.exists()):
        return None
    info = json.loads(meta.read_text(encoding="utf-8"))
    if info.get("fingerprint") != _frame_fingerprint(folder / "training_frame.parquet"):
        return None
    table = pd.read_parquet(vectors)
    if len(table) != min(sample, info["reference_texts"]):  # rows erased since: draw again
        return None
    ref = _vectors(table["vector"])
    return (ref if len(ref) else np.zeros((0, 0), dtype=np.float32)), int(info["reference_texts"])


def _cached_reference_embeddings(folder: Path, sample: int, seed: int, reference: pd.DataFrame, stored=None) -> tuple[np.ndarray, int]:
    """Draw the reference sample and cache it with its person ids (an erasure drops their rows)
    and the fingerprint of the frame it was drawn from. `stored`: the frame's embeddings in its
    file (`models.fusion.ParquetVectors`) when `reference` comes without them: the same rows
    drawn (a row with a list, as `_with_vector` counts them) and the same vectors stacked."""
    if stored is None:
        picked, texts = _reference_draw(reference[EMBEDDING], sample, seed)
        ref = _vectors(reference[EMBEDDING].iloc[picked])
    else:
        lengths = stored.lengths()
        rows = np.flatnonzero(lengths >= 0)  # not null
        picked, texts = (rows[_draw(len(rows), sample, np.random.default_rng(seed))] if len(rows) else rows), len(rows)
        dims = {int(d) for d in lengths[picked]}
        if len(dims) > 1:
            raise ValueError(f"text vectors of {sorted(dims)} values in {stored.path}")  # as _vectors' vstack would
        ref = stored.take(picked, dims.pop()) if len(picked) else np.zeros((0, 0), dtype=np.float32)
    ids = reference["person_id"].iloc[picked] if "person_id" in reference.columns else reference.index[picked].to_series()
    vectors, meta = _embedding_cache(folder, sample, seed)
    pd.DataFrame({"person_id": ids.astype(str).tolist(), "vector": list(ref)}).to_parquet(vectors, index=False)
    meta.write_text(json.dumps({"reference_texts": texts, "fingerprint": _frame_fingerprint(folder / "training_frame.parquet")}), encoding="utf-8")
    return ref, texts


def champion_reference(ws: Workspace, name: str, version: int, scorer, columns: list[str], embedding_sample: int | None = None,
                       seed: int = 0) -> tuple[pd.DataFrame, ReferenceProfile, bool, tuple[np.ndarray, int] | None]:  # fmt: skip
    """(reference frame, reference profile, built now?, embedding sample) of one model version:
    built on first use, then read back from the workspace cache. With `embedding_sample`, the
    last item is the reference side of the text-embedding check (vectors, texts), drawn once per
    version and frame (seeded by `seed`) and cached beside the frame, and the frame comes without
    its embedding column (its largest, which nothing else reads); else it is None."""
    import shutil

    from models import registry
    from models.train import reference_path

    folder = reference_folder(ws, version)
    frame_path = folder / "training_frame.parquet"
    if frame_path.exists() and (folder / "profile.json").exists():
        profile, built = ReferenceProfile.load(folder), False
        cached = _load_reference_embeddings(folder, embedding_sample, seed) if embedding_sample else None
        if cached is not None:
            import pyarrow.parquet as pq

            keep = [c for c in pq.read_schema(frame_path).names if c != EMBEDDING and not c.startswith("__index_level_")]
            return pd.read_parquet(frame_path, columns=keep), profile, built, cached
        reference = pd.read_parquet(frame_path)
    else:
        import pyarrow.parquet as pq

        from models.fusion import ParquetVectors

        source = reference_path(ws, registry.version_run_id(ws, name, version))
        names = pq.read_schema(source).names
        # With the embedding check, the frame is read without its embeddings (returned without them
        # anyway): the fusion and the check's draw read them from the file (ParquetVectors), so
        # they are never a numpy array per person beside the current frame's (~2.6 KB a person).
        texts = ParquetVectors(source, EMBEDDING) if embedding_sample and EMBEDDING in names else None
        reference = pd.read_parquet(source, columns=[c for c in names if c != EMBEDDING and not c.startswith("__index_level_")]) if texts else pd.read_parquet(source)
        x = scorer.represent(reference, texts)  # once: centroid_labels would represent the frame again
        ref_idx, _ = assign(x, scorer.clustering)
        profile, built = build_profile(reference, [c for c in columns if c in reference.columns], version, x, ref_idx), True
        del x
        profile.save(folder)
        tmp = frame_path.with_suffix(".tmp")
        shutil.copyfile(source, tmp)  # the frame as read (no second, arrow copy of it to write it again)
        tmp.replace(frame_path)  # written last: its presence means the cache is complete
        if texts is not None:
            return reference, profile, built, _cached_reference_embeddings(folder, embedding_sample, seed, reference, texts)
    if not embedding_sample:
        return reference, profile, built, None
    if EMBEDDING not in reference.columns:
        return reference, profile, built, None  # no text check, as before
    drawn = _cached_reference_embeddings(folder, embedding_sample, seed, reference)
    return reference.drop(columns=[EMBEDDING]), profile, built, drawn


def _sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """Uniform sample without replacement of at most `rows` rows (seeded)."""
    if len(frame) <= rows:
        return frame
    return frame.iloc[np.sort(np.random.default_rng(seed).choice(len(frame), size=rows, replace=False))]


@dataclass
class Champion:
    """What a monitoring pass compares against: the model version, its scorer, its training
    reference frame (with `persona_id`), the reference profile and its bias at training."""

    version: int
    scorer: object
    reference: pd.DataFrame
    profile: ReferenceProfile
    baseline_dp_difference: float | None = None
    reference_built_now: bool = False
    # the reference side of the text-embedding check, (sample, texts), when it was drawn (and
    # cached) beforehand: `reference` may then lack its `text_embedding` column
    reference_embeddings: tuple[np.ndarray, int] | None = None


ONE_THREAD = 1  # OpenMP / BLAS threads while the checks run (see the module docstring)


def compare(cfg: PersonasConfig, champion: Champion, current: pd.DataFrame, columns: list[str], out_dir: Path, run_id: str, **kwargs) -> tuple[dict, list, object]:
    """Every check of `current` (model frame by person_id) against the champion; returns
    (results, Evidently snapshots, DriftSummary) and writes the Evidently drift report.
    Keyword arguments: see `_compare`."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=ONE_THREAD):
        return _compare(cfg, champion, current, columns, out_dir, run_id, **kwargs)


def _compare(cfg: PersonasConfig, champion: Champion, current: pd.DataFrame, columns: list[str], out_dir: Path, run_id: str, *,
             person_profile: pd.DataFrame | None = None, ingest_report: list[dict] | None = None, previous_ingest: list[dict] | None = None,
             sensitive: pd.DataFrame | None = None, labels: pd.DataFrame | None = None,
             source_rows: tuple[pd.DataFrame, pd.DataFrame] | None = None, report_state: Path | None = None) -> tuple[dict, list, object]:  # fmt: skip
    """`report_state`: the folder of the last drawn Evidently report's state (`last_report_folder`);
    given it, a pass above `FULL_REPORT_ROWS` rows draws the Evidently reports only when the data
    moved enough since that report (`reusable_report`), else it writes the light report."""
    from models.bias import label_gaps, persona_parity

    reference, profile, scorer, seed = champion.reference, champion.profile, champion.scorer, cfg.model.seed
    # above FULL_REPORT_ROWS rows a side the decision comes from the profile check on every row and
    # the Evidently report is drawn on a sample; then it may also be reused (see `reusable_report`)
    large = max(len(reference), len(current)) > FULL_REPORT_ROWS
    may_reuse = large and report_state is not None
    features: dict = {}
    if large:
        full = column_drift(profile, current, cfg.monitoring.drift_share_alert)
        features = {"drifted_share": full["drifted_share"], "drifted_columns": full["drifted_columns"], "method": "reference profile"}
    else:
        drift, snapshot = _feature_report(cfg, reference, current, columns, out_dir, run_id, champion.version)
        features = {"drifted_share": drift.drifted_share, "drifted_columns": drift.drifted_columns, "method": "evidently"}
    features["reference_built_now"] = champion.reference_built_now

    # one representation of the current frame for the personas and the centroid shift (the
    # scorer's predict, centroid_labels and represent would each compute it again)
    current_x = scorer.represent(current)
    cur_idx, _ = assign(current_x, scorer.clustering)
    ids = np.array(list(scorer.persona_ids) + [UNASSIGNED], dtype=np.int64)
    now = pd.Series(ids[np.where(cur_idx == UNASSIGNED, len(scorer.persona_ids), cur_idx)], index=current.index, name="persona_id")
    results: dict = {
        "model_version": champion.version,
        "features": features,
        "persona_mix": persona_mix(reference["persona_id"], now),
        "centroids": centroid_shift(profile, current_x, cur_idx),
        "quality": data_quality(reference, current, columns, ingest_report or [], previous_ingest, person_profile),
    }
    del current_x
    snapshots = [] if large else [snapshot]
    texts = None
    if champion.reference_embeddings is not None or EMBEDDING in reference.columns:
        sample = cfg.monitoring.embedding_sample
        ref, ref_texts = champion.reference_embeddings or reference_embeddings(reference[EMBEDDING], sample, seed)
        cur, cur_texts = current_embeddings(current[EMBEDDING], ref_texts, sample, seed)
        texts = (ref, cur, sample, (ref_texts, cur_texts))
        # the score alone first when the report may be reused: the same value, without Evidently's t-SNE
        results["embeddings"] = embedding_drift(ref, cur, sample, seed, snapshots, drawn=texts[3], report=not may_reuse)
    if sensitive is not None and len(sensitive.columns):
        bias = persona_parity(now, sensitive)
        baseline = champion.baseline_dp_difference
        bias["max_dp_difference_increase"] = bias["max_dp_difference"] - baseline if baseline is not None else 0.0
        if labels is not None and len(labels):
            bias["label_gaps"] = label_gaps(now, sensitive, labels)
            bias["max_label_gap"] = bias["label_gaps"]["max_gap"]
        results["bias"] = bias
    if source_rows is not None:
        results["representation"] = group_representation(*source_rows, _group_attributes(sensitive, person_profile))
    if not large:
        return results, snapshots, drift

    # the Evidently reports of a large population: reused when nothing moved enough, else drawn
    now_profile = build_profile(current, [c for c in profile.columns if c in current.columns]) if may_reuse else None
    texts_total = texts[3][1] if texts is not None else None
    action = decide(results, load_policy(cfg.monitoring.policy)).action if may_reuse else None
    reused = reusable_report(report_state, profile, now_profile, results, action, texts_total) if may_reuse else None
    if reused is not None:
        features["evidently_report"] = {"drawn": False, **reused}
        drift = light_report(full, out_dir, run_id, champion.version, len(reference), len(current), reused)
        return results, snapshots, drift
    drift, snapshot = _feature_report(cfg, reference, current, columns, out_dir, run_id, champion.version)
    snapshots.insert(0, snapshot)
    features["evidently_sample_drifted_share"] = drift.drifted_share
    if may_reuse:
        features["evidently_report"] = {"drawn": True, "run_id": run_id}
        if texts is not None:  # the embedding report for the snapshot: the same score as the one decided on
            drawn = embedding_drift(*texts[:2], texts[2], seed, snapshots, drawn=texts[3])
            results["embeddings"]["report_score"] = drawn["score"]
        _save_report_state(report_state, now_profile, results, texts_total, run_id, drift)
    return results, snapshots, drift


def _feature_report(cfg: PersonasConfig, reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], out_dir: Path, run_id: str, version: int):
    """Evidently's feature drift + data summary report, on a seeded sample of `FULL_REPORT_ROWS`
    rows a side above that size."""
    seed = cfg.model.seed
    return drift_report(_sample(reference, FULL_REPORT_ROWS, seed), _sample(current, FULL_REPORT_ROWS, seed + 1), columns, out_dir, run_id, version, cfg.monitoring.drift_share_alert)


# A pass above FULL_REPORT_ROWS rows reuses the last drawn Evidently report (and adds no Evidently
# snapshot) when the policy decides `none` and, since that report, for the same champion version and
# reference frame: no feature column moved by REUSE_MOVE or more (the drift tests' own scales:
# normed Wasserstein / Jensen-Shannon distance between the two passes' current data, or the
# missing share), the persona shares moved by under REUSE_MIX (total variation), the rows and the
# texts changed by under REUSE_ROWS, and the text-embedding score by under REUSE_SCORE.
# The decision itself never comes from a reused report: every check runs on this pass's data.
REUSE_MOVE = 0.02  # a fifth of the drift tests' thresholds (0.1)
REUSE_MIX = 0.01
REUSE_ROWS = 0.05
REUSE_SCORE = 0.05


def last_report_folder(ws: Workspace, version: int) -> Path:
    """The state of the last pass that drew the Evidently reports against this version."""
    return reference_folder(ws, version) / "last_report"


def _save_report_state(folder: Path, now_profile: ReferenceProfile, results: dict, texts: int | None, run_id: str, drift: DriftSummary) -> None:
    embeddings = results.get("embeddings") or {}
    frame = folder.parent / "training_frame.parquet"
    info = {
        # the report's paths relative to this folder: a copied or moved workspace still finds it
        "run_id": run_id, "html": os.path.relpath(drift.html, folder), "json": os.path.relpath(drift.json, folder), "rows": now_profile.rows, "columns": now_profile.columns,
        "persona_share": results["persona_mix"]["current_share"], "embedding_score": embeddings.get("score"), "texts": texts,
        "reference_fingerprint": _frame_fingerprint(frame) if frame.exists() else None,
    }  # fmt: skip
    (folder / "report.json").unlink(missing_ok=True)  # no state pairs an old report with a new profile
    now_profile.save(folder)
    (folder / "report.json").write_text(json.dumps(info), encoding="utf-8")  # written last: the state is complete


def reusable_report(folder: Path, reference: ReferenceProfile, now_profile: ReferenceProfile, results: dict, action: str, texts: int | None) -> dict | None:
    """What the pass reuses (the last drawn report, and how far the data moved since), or None
    when the Evidently reports must be drawn: no state, another reference, a decision other than
    `none`, or a move at or over the REUSE_* limits."""
    meta = folder / "report.json"
    if action != "none" or not meta.exists():
        return None
    info = json.loads(meta.read_text(encoding="utf-8"))
    frame = folder.parent / "training_frame.parquet"
    if info.get("reference_fingerprint") != (_frame_fingerprint(frame) if frame.exists() else None) or info["columns"] != now_profile.columns:
        return None
    moves = profile_change(reference, ReferenceProfile.load(folder), now_profile)
    column, move = max(moves.items(), key=lambda kv: kv[1]) if moves else (None, 0.0)
    before_share = {int(k): v for k, v in info["persona_share"].items()}
    now_share = results["persona_mix"]["current_share"]
    mix = 0.5 * sum(abs(before_share.get(p, 0.0) - now_share.get(p, 0.0)) for p in set(before_share) | set(now_share))
    rows = abs(now_profile.rows / max(info["rows"], 1) - 1)
    embeddings = results.get("embeddings") or {}
    score = embeddings.get("score")
    if (score is None) != (info["embedding_score"] is None):
        return None
    score_move = abs(score - info["embedding_score"]) if score is not None else 0.0
    texts_move = abs(texts / max(info["texts"], 1) - 1) if texts is not None and info["texts"] is not None else 0.0
    if move >= REUSE_MOVE or mix >= REUSE_MIX or rows >= REUSE_ROWS or texts_move >= REUSE_ROWS or score_move >= REUSE_SCORE:
        return None
    return {
        "from_run": info["run_id"], "html": os.path.normpath(folder / info["html"]), "json": os.path.normpath(folder / info["json"]),
        "moved_since": {"largest_column": column, "largest_column_move": round(move, 4), "persona_mix": round(mix, 4), "rows": round(rows, 4),
                        "texts": round(texts_move, 4), "embedding_score": round(score_move, 4)},
        "limits": {"column": REUSE_MOVE, "persona_mix": REUSE_MIX, "rows": REUSE_ROWS, "texts": REUSE_ROWS, "embedding_score": REUSE_SCORE},
    }  # fmt: skip


def _group_attributes(sensitive: pd.DataFrame | None, person_profile: pd.DataFrame | None) -> pd.DataFrame:
    """Groups whose representation is watched, by person_id: the sensitive attributes and the CRM
    segments (text columns of the profile view, e.g. region and plan)."""
    parts = [sensitive] if sensitive is not None else []
    if person_profile is not None and len(person_profile):
        profile = person_profile.set_index("person_id") if "person_id" in person_profile.columns else person_profile
        segments = [c for c in profile.columns if c not in ("event_timestamp", "created") and (profile[c].dtype == object or str(profile[c].dtype) in ("string", "category"))]
        parts.append(profile[segments])
    return pd.concat(parts, axis=1) if parts else pd.DataFrame()


def source_rows_by_run(ws: Workspace, ingest_report: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(rows of earlier batches, rows of this run's batches), each as (source, person_id), from the
    identity stage's record map; None when the lake holds nothing but this run's batches."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = ws.identity / "record_person.parquet"
    if not path.exists():
        return None
    current = {f["batch_id"] for s in ingest_report for f in s.get("files", [])}
    # the batch ids alone first, dictionary-encoded (a few distinct values for millions of records):
    # a run whose records are all new (or all old) has nothing to compare and reads no more
    batch = pq.read_table(path, columns=["_batch_id"], read_dictionary=["_batch_id"]).column("_batch_id").combine_chunks()
    member = np.array([v in current for v in batch.dictionary.to_pylist()] + [False], dtype=bool)  # last: a missing batch id
    now = member[pc.fill_null(batch.indices, -1).to_numpy(zero_copy_only=False)]
    del batch
    if not now.any() or now.all():
        return None
    records = pd.read_parquet(path, columns=["source", "_batch_id", "person_id"])
    is_now = records["_batch_id"].isin(current)
    return records.loc[~is_now, ["source", "person_id"]], records.loc[is_now, ["source", "person_id"]]


def run_checks(cfg: PersonasConfig, ws: Workspace, run_id: str, ingest_report: list[dict], previous_ingest: list[dict] | None) -> tuple[dict, Decision]:
    """Every check against the champion; returns (results, decision) and writes the reports."""
    from models import registry

    name = cfg.model.registered_name
    version = registry.alias_version(ws, name, registry.CHAMPION)
    if version is None:
        raise NotFoundError(f"No champion persona model in {ws.root} to monitor against; run `personas run` first.")
    champion_metrics = registry.run_metrics(ws, name, version)
    _, model = registry.load_champion(ws, name)
    scorer = model.unwrap_python_model().scorer
    tables, current, columns = F.current_model_frame(ws)
    reference, profile, built, embeddings = champion_reference(ws, name, version, scorer, columns, cfg.monitoring.embedding_sample, cfg.model.seed)
    champion = Champion(version, scorer, reference, profile, champion_metrics.get("bias_max_dp_difference"), built, embeddings)
    sensitive_path = ws.root / "audit" / "person_sensitive.parquet"
    sensitive = pd.read_parquet(sensitive_path).set_index("person_id") if sensitive_path.exists() else None
    labels = tables.get("person_labels")
    if labels is not None:
        labels = labels.set_index("person_id").drop(columns=["event_timestamp", "created"], errors="ignore")
    out_dir = ws.reports / run_id
    results, snapshots, drift = compare(cfg, champion, current, columns, out_dir, run_id, person_profile=tables.get("person_profile"),
                                        ingest_report=ingest_report, previous_ingest=previous_ingest, sensitive=sensitive, labels=labels,
                                        source_rows=source_rows_by_run(ws, ingest_report), report_state=last_report_folder(ws, version))  # fmt: skip
    decision = decide(results, load_policy(cfg.monitoring.policy))
    if snapshots:
        evidently = add_to_evidently_workspace(evidently_folder(ws), f"PersonaOps {name}", snapshots)
    else:  # the pass reused the last drawn report (see `reusable_report`): nothing new to add
        evidently = {"workspace": str(evidently_folder(ws)), "project": f"PersonaOps {name}", "snapshots": [], "reused_from": results["features"]["evidently_report"]["from_run"]}
    summary = {"run_id": run_id, "results": results, "decision": {"action": decision.action, "fired": decision.fired}, "html": drift.html, "json": drift.json, "evidently": evidently}
    (out_dir / "monitoring.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    results["evidently"] = evidently
    return results, decision
