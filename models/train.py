"""Train a persona model and track it in MLflow: one run, one registered model version.

The run holds params (clustering range, fusion weights, encoder, feature service), metrics
(silhouette, Davies-Bouldin, stability, size balance, outliers, agreement with the previous
version), artifacts (profiles.json, centroids, feature list, the 2-D persona map, continuity
report, the training reference frame used by monitoring), the input dataset (`mlflow.log_input`,
named after the Feast feature service, digest = the input snapshot hash) and the pyfunc model
with an input example (its signature). New versions get the alias `challenger`; the promotion
gate decides whether they also become `champion`.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from models import registry
from models.bias import persona_parity
from models.clustering import UNASSIGNED, assign, fit_personas
from models.continuity import Continuity, match_personas
from models.embedder import TextRows
from models.fusion import Fusion
from models.persona_model import UNASSIGNED_NAME, PersonaModel, PersonaScorer
from models.plots import persona_kpis, persona_map, persona_profiles
from models.profiles import build_profiles
from models.promotion import describe, evaluate_gate, gate_passed
from personaops import __version__
from personaops.config import ModelConfig
from personaops.errors import PipelineStateError
from personaops.workspace import Workspace, fault_point

REFERENCE_ARTIFACT = "reference/training_frame.parquet"
PROFILES_ARTIFACT = "profiles.json"


@dataclass
class PreviousModel:
    """What the current champion says, for continuity and the gate."""

    version: int
    assignments: pd.Series  # persona_id by person_id
    profiles: list[dict]
    metrics: dict[str, float]


@dataclass
class TrainResult:
    run_id: str
    version: int
    aliases: list[str]
    k: int
    profiles: list[dict]
    assignments: pd.DataFrame  # person_id, persona_id, persona_name, confidence
    metrics: dict[str, float]
    gate: list[dict] = field(default_factory=list)
    continuity: dict = field(default_factory=dict)


def optional_signature(example: pd.DataFrame, output: pd.DataFrame):
    """The model's signature with every input optional: the model imputes missing features and
    text, so a person without (say) texts must not be rejected by MLflow's schema check."""
    from mlflow.models import infer_signature
    from mlflow.types.schema import ColSpec, Schema

    inferred = infer_signature(example, output)
    inputs = Schema([ColSpec(type=c.type, name=c.name, required=False) for c in inferred.inputs.inputs])
    return inferred.__class__(inputs=inputs, outputs=inferred.outputs)


def fit_scorer(frame: pd.DataFrame, feature_columns: list[str], text_dim: int, cfg: ModelConfig) -> PersonaScorer:
    """Fit fusion + clustering (ids 0..k-1 and placeholder names until profiles name them)."""
    return _fit_scorer(frame, feature_columns, text_dim, cfg)[0]


def _fit_scorer(frame: pd.DataFrame, feature_columns: list[str], text_dim: int, cfg: ModelConfig) -> tuple[PersonaScorer, np.ndarray]:
    """(the fitted scorer, its representation of `frame`): the representation is what
    `scorer.represent(frame)` returns, computed once here and reused by training."""
    fusion = Fusion(feature_columns, cfg.behaviour_weight, cfg.text_weight, cfg.pca_components)
    x = fusion.fit_transform(frame, text_dim, seed=cfg.seed)  # = fit(frame) then transform(frame)
    clustering = fit_personas(
        x, cfg.k_min, cfg.k_max, cfg.restarts, cfg.iterations, cfg.seed, cfg.silhouette_sample,
        cfg.min_persona_share, cfg.outlier_mads, cfg.stability_floor, cfg.stability_rounds, cfg.selection_rows,
    )  # fmt: skip
    return PersonaScorer(fusion=fusion, clustering=clustering, persona_names=[f"persona {i}" for i in range(clustering.k)]), x


def partition_metrics(x: np.ndarray, centroid_idx: np.ndarray, confidence: np.ndarray, sample: int, seed: int) -> dict[str, float]:
    """Quality and balance of a partition (silhouette and Davies-Bouldin on a sample of assigned rows)."""
    from sklearn.metrics import davies_bouldin_score, silhouette_score

    assigned = np.flatnonzero(centroid_idx != UNASSIGNED)
    rng = np.random.default_rng(seed)
    idx = rng.choice(assigned, size=min(sample, len(assigned)), replace=False)
    labels = centroid_idx[idx]
    sizes = np.bincount(centroid_idx[assigned])
    sizes = sizes[sizes > 0]
    shares = sizes / len(centroid_idx)
    entropy = float(-(shares / shares.sum() * np.log(shares / shares.sum())).sum() / math.log(len(sizes))) if len(sizes) > 1 else 0.0
    multi = len(set(labels.tolist())) > 1
    return {
        "silhouette": float(silhouette_score(x[idx], labels)) if multi else -1.0,
        "davies_bouldin": float(davies_bouldin_score(x[idx], labels)) if multi else float("nan"),
        "smallest_persona_share": float(shares.min()),
        "largest_persona_share": float(shares.max()),
        "size_balance": entropy,
        "outlier_share": float((centroid_idx == UNASSIGNED).mean()),
        "mean_confidence": float(confidence.mean()),
    }


def train_persona_model(
    ws: Workspace,
    cfg: ModelConfig,
    frame: pd.DataFrame,
    feature_columns: list[str],
    texts: pd.DataFrame,
    text_vectors: "np.ndarray | TextRows",
    outcomes: pd.DataFrame,
    tags: dict[str, str],
    params: dict[str, str],
    previous: PreviousModel | None = None,
    sensitive: pd.DataFrame | None = None,
) -> TrainResult:
    """`frame`: one row per person (index person_id) with `feature_columns` and `text_embedding`;
    `text_vectors`: a row per text of `texts` (`TextEmbedder.encode`, or `encode_rows`: each
    distinct text's vector held once); `sensitive`: sensitive attributes by person_id, for the bias
    audit only."""
    import mlflow

    experiment_id = registry.experiment_id(ws, cfg.experiment)
    text_dim = int(text_vectors.shape[1]) if len(text_vectors) else 0
    # fitting computed the frame's representation: reuse it rather than represent the frame twice more
    scorer, x = _fit_scorer(frame, feature_columns, text_dim, cfg)
    idx, confidence = assign(x, scorer.clustering)
    metrics = partition_metrics(x, idx, confidence, cfg.silhouette_sample, cfg.seed)
    metrics["stability"] = scorer.clustering.k_stability.get(scorer.clustering.k, float("nan"))

    continuity: Continuity = match_personas(pd.Series(idx, index=frame.index), scorer.clustering.k, previous.assignments if previous else None, cfg.continuity_min_jaccard)
    scorer.persona_ids = continuity.persona_ids
    ids = np.array(continuity.persona_ids + [UNASSIGNED], dtype=np.int64)
    labels = pd.Series(ids[np.where(idx == UNASSIGNED, len(continuity.persona_ids), idx)], index=frame.index)
    kept = {p["persona_id"]: p["name"] for p in previous.profiles} if previous else {}
    fixed = {pid: kept[pid] for pid in continuity.matched if pid in kept}
    fixed[UNASSIGNED] = UNASSIGNED_NAME
    profiles = build_profiles(frame[feature_columns], labels, outcomes, texts, text_vectors, cfg.traits_per_persona, cfg.quotes_per_persona, fixed)
    names = {p["persona_id"]: p["name"] for p in profiles}
    scorer.persona_names = [names.get(pid, f"persona {pid}") for pid in continuity.persona_ids]
    # = scorer.predict(frame): the labels and confidences above are those of the same representation
    assignments = scorer.labelled(idx, confidence, frame.index).rename_axis("person_id").reset_index()

    bias = persona_parity(assignments.set_index("person_id")["persona_id"], sensitive) if sensitive is not None and len(sensitive.columns) else None
    if bias is not None and bias["by_attribute"]:
        metrics["bias_max_dp_difference"] = bias["max_dp_difference"]
        metrics["bias_min_dp_ratio"] = bias["min_dp_ratio"]
    metrics.update({"k": float(scorer.clustering.k), "persons": float(len(frame)), "new_personas": float(len(continuity.new)), "vanished_personas": float(len(continuity.vanished))})
    metrics["persons_with_text"] = float(frame["text_embedding"].notna().sum()) if "text_embedding" in frame else 0.0
    if continuity.agreement is not None:
        metrics["agreement_with_previous"] = continuity.agreement
    continuity_report = {"previous_version": previous.version if previous else None, "matched": continuity.matched, "new": continuity.new, "vanished": continuity.vanished}

    with mlflow.start_run(experiment_id=experiment_id, run_name=f"personas-{tags.get('personas.run_id', '')}") as run:
        mlflow.set_tags(tags)
        mlflow.log_params(
            {
                "k_min": cfg.k_min, "k_max": cfg.k_max, "restarts": cfg.restarts, "iterations": cfg.iterations,
                "seed": cfg.seed, "behaviour_weight": cfg.behaviour_weight, "text_weight": cfg.text_weight,
                "pca_components": cfg.pca_components, "min_persona_share": cfg.min_persona_share,
                "outlier_mads": cfg.outlier_mads, "n_features": len(feature_columns), "text_dim": text_dim, **params,
            }
        )  # fmt: skip
        mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})  # NaN is not a metric
        for k, score in scorer.clustering.k_scores.items():
            if score is not None:
                mlflow.log_metric("silhouette_by_k", score, step=k)
                mlflow.log_metric("stability_by_k", scorer.clustering.k_stability[k], step=k)
        # The monitoring reference: model inputs (with text embeddings) and the assignments.
        reference = frame[feature_columns + (["text_embedding"] if "text_embedding" in frame else [])].join(assignments.set_index("person_id")[["persona_id"]])
        mlflow.log_input(
            mlflow.data.from_pandas(reference.drop(columns=["text_embedding"], errors="ignore").reset_index(), name=tags.get("personas.feature_service", "persona_inputs"), digest=tags.get("personas.input_fingerprint")),
            context="training",
        )
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            for name, payload in ((PROFILES_ARTIFACT, profiles), ("features.json", feature_columns), ("continuity.json", continuity_report), ("bias.json", bias)):
                (tmp_path / name).write_text(json.dumps(payload, indent=2), encoding="utf-8")
                mlflow.log_artifact(str(tmp_path / name))
            np.save(tmp_path / "centroids.npy", scorer.clustering.centroids)
            mlflow.log_artifact(str(tmp_path / "centroids.npy"))
            mlflow.log_artifact(str(persona_map(x, labels.to_numpy(), names, tmp_path / "persona_map.png", seed=cfg.seed)))
            mlflow.log_artifact(str(persona_profiles(profiles, tmp_path / "persona_profiles.png")))
            mlflow.log_artifact(str(persona_kpis(profiles, tmp_path / "persona_kpis.png")))
            (tmp_path / "reference").mkdir()
            write_frame(reference.reset_index(), tmp_path / REFERENCE_ARTIFACT)
            mlflow.log_artifact(str(tmp_path / REFERENCE_ARTIFACT), artifact_path="reference")
            state = scorer.save(tmp_path / "state")
            example = frame[feature_columns].head(5).astype("float64").reset_index(drop=True)
            if "text_embedding" in frame:
                example["text_embedding"] = frame["text_embedding"].head(5).map(lambda v: None if v is None or isinstance(v, float) else [float(a) for a in v]).to_numpy()
            info = mlflow.pyfunc.log_model(
                name="persona_model",
                python_model=PersonaModel(),
                artifacts={"state": str(state)},
                input_example=example,
                signature=optional_signature(example, scorer.predict(frame.head(5)).reset_index(drop=True)),
                registered_model_name=cfg.registered_name,
                pip_requirements=[f"personaops=={__version__}"],
            )
        run_id = run.info.run_id
    version = int(info.registered_model_version)
    fault_point("train.registered")  # crash-test hook: a registered version with no alias yet
    checks = evaluate_gate(metrics, previous.metrics if previous else None, cfg)
    registry.set_alias(ws, cfg.registered_name, registry.CHALLENGER, version, reason="newly trained version")
    if gate_passed(checks) and (previous is None or cfg.auto_promote):
        registry.set_alias(ws, cfg.registered_name, registry.CHAMPION, version, reason="promotion gate passed: " + "; ".join(map(str, checks)))
    elif previous is None:
        failed = "; ".join(str(c) for c in checks if not c.passed)
        raise PipelineStateError(
            f"Model version {version} failed the promotion gate ({failed}) and there is no champion to serve; inspect it with `personas models show {version}` and promote it with --force --reason if you accept it."
        )
    aliases = next(v.aliases for v in registry.versions(ws, cfg.registered_name) if v.version == version)
    return TrainResult(run_id, version, aliases, scorer.clustering.k, profiles, assignments, metrics, describe(checks), continuity_report)


WRITE_ROWS = 65_536


def write_frame(frame: pd.DataFrame, path: Path, rows: int = WRITE_ROWS) -> None:
    """`frame.to_parquet(path, index=False)`, converted to Arrow `rows` rows at a time (one row
    group each): pyarrow otherwise holds an Arrow copy of every row (the embeddings' lists) at
    once. The schema is the one pandas would infer for the whole frame (from a sample of rows
    with a value in every column where there is one), so the file reads back as the same frame."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if len(frame) <= rows:
        frame.to_parquet(path, index=False)
        return
    sample = sorted({int(frame[c].notna().to_numpy().argmax()) for c in frame.columns} | {0})
    schema = pa.Schema.from_pandas(frame.iloc[sample], preserve_index=False)
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(frame), rows):
            writer.write_table(pa.Table.from_pandas(frame.iloc[start : start + rows], schema=schema, preserve_index=False))


def load_profiles(ws: Workspace, run_id: str) -> list[dict]:
    import mlflow

    registry.client(ws)
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=PROFILES_ARTIFACT)
    return json.loads(Path(path).read_text(encoding="utf-8"))


def reference_path(ws: Workspace, run_id: str) -> str:
    """A local copy of the training reference frame of `run_id` (a parquet file)."""
    import mlflow

    registry.client(ws)
    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REFERENCE_ARTIFACT)


def load_reference(ws: Workspace, run_id: str, columns: list[str] | None = None, without: tuple[str, ...] = ()) -> pd.DataFrame:
    """The training reference frame of `run_id`: all its columns, or those of `columns` it holds,
    less those in `without` (e.g. `text_embedding`, its largest, for readers of the features)."""
    import pyarrow.parquet as pq

    path = reference_path(ws, run_id)
    if columns is None and not without:
        return pd.read_parquet(path)
    names = pq.read_schema(path).names
    keep = [c for c in (names if columns is None else columns) if c in names and c not in without and not c.startswith("__index_level_")]
    return pd.read_parquet(path, columns=keep)
