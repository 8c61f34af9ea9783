"""Train a persona model and track it in MLflow: one run, one registered model version.

The run holds params (clustering range, fusion weights, encoder, feature service), metrics
(silhouette per k, persona sizes), artifacts (profiles.json, the training reference frame used
by monitoring) and the pyfunc model logged with an input example (its signature). The first
version of the registered model becomes `champion`; later ones become `challenger`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models import registry
from models.clustering import assign, fit_personas
from models.fusion import Fusion
from models.persona_model import PersonaModel, PersonaScorer
from models.profiles import build_profiles
from personaops import __version__
from personaops.config import ModelConfig
from personaops.workspace import Workspace

REFERENCE_ARTIFACT = "reference/training_frame.parquet"
PROFILES_ARTIFACT = "profiles.json"


@dataclass
class TrainResult:
    run_id: str
    version: int
    alias: str
    k: int
    profiles: list[dict]
    assignments: pd.DataFrame  # person_id, persona_id, persona_name, confidence
    metrics: dict[str, float]


def fit_scorer(frame: pd.DataFrame, feature_columns: list[str], text_dim: int, cfg: ModelConfig) -> PersonaScorer:
    """Fit fusion + clustering (names are filled in from profiles afterwards)."""
    fusion = Fusion(feature_columns, cfg.behaviour_weight, cfg.text_weight, cfg.pca_components).fit(frame, text_dim, seed=cfg.seed)
    x = fusion.transform(frame)
    clustering = fit_personas(x, cfg.k_min, cfg.k_max, cfg.restarts, cfg.iterations, cfg.seed, cfg.silhouette_sample)
    return PersonaScorer(fusion=fusion, clustering=clustering, persona_names=[f"persona {i}" for i in range(clustering.k)])


def train_persona_model(
    ws: Workspace,
    cfg: ModelConfig,
    frame: pd.DataFrame,
    feature_columns: list[str],
    texts: pd.DataFrame,
    text_vectors: np.ndarray,
    outcomes: pd.DataFrame,
    tags: dict[str, str],
    params: dict[str, str],
) -> TrainResult:
    """`frame`: one row per person (index person_id) with `feature_columns` and `text_embedding`."""
    import mlflow

    client = registry.client(ws)
    experiment = client.get_experiment_by_name(cfg.experiment)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(cfg.experiment, artifact_location=Workspace.ensure(ws.mlflow_artifacts / "x").parent.as_uri())
    )
    text_dim = int(text_vectors.shape[1]) if len(text_vectors) else 0
    scorer = fit_scorer(frame, feature_columns, text_dim, cfg)
    raw = scorer.predict(frame)
    labels = raw["persona_id"]
    profiles = build_profiles(frame[feature_columns], labels, outcomes, texts, text_vectors, cfg.traits_per_persona, cfg.quotes_per_persona)
    scorer.persona_names = [next(p["name"] for p in profiles if p["persona_id"] == i) if i in set(labels) else f"persona {i}" for i in range(scorer.clustering.k)]
    assignments = scorer.predict(frame).rename_axis("person_id").reset_index()

    sizes = assignments["persona_id"].value_counts()
    metrics = {
        "k": float(scorer.clustering.k),
        "silhouette": float(scorer.clustering.k_scores[scorer.clustering.k]),
        "persons": float(len(frame)),
        "persons_with_text": float(frame["text_embedding"].notna().sum()) if "text_embedding" in frame else 0.0,
        "smallest_persona_share": float(sizes.min() / len(frame)),
        "largest_persona_share": float(sizes.max() / len(frame)),
        "mean_confidence": float(assignments["confidence"].mean()),
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"personas-{tags.get('personas.run_id', '')}") as run:
        mlflow.set_tags(tags)
        mlflow.log_params(
            {
                "k_min": cfg.k_min, "k_max": cfg.k_max, "restarts": cfg.restarts, "iterations": cfg.iterations,
                "seed": cfg.seed, "behaviour_weight": cfg.behaviour_weight, "text_weight": cfg.text_weight,
                "pca_components": cfg.pca_components, "n_features": len(feature_columns), "text_dim": text_dim, **params,
            }
        )  # fmt: skip
        mlflow.log_metrics(metrics)
        for k, score in scorer.clustering.k_scores.items():
            mlflow.log_metric("silhouette_by_k", score, step=k)
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            (tmp_path / PROFILES_ARTIFACT).write_text(json.dumps(profiles, indent=2), encoding="utf-8")
            mlflow.log_artifact(str(tmp_path / PROFILES_ARTIFACT))
            reference = frame[feature_columns].join(assignments.set_index("person_id")[["persona_id"]])
            (tmp_path / "reference").mkdir()
            reference.reset_index().to_parquet(tmp_path / REFERENCE_ARTIFACT, index=False)
            mlflow.log_artifact(str(tmp_path / REFERENCE_ARTIFACT), artifact_path="reference")
            state = scorer.save(tmp_path / "state")
            example = frame[feature_columns + (["text_embedding"] if "text_embedding" in frame else [])].head(5).reset_index(drop=True)
            example["text_embedding"] = example["text_embedding"].map(lambda v: None if v is None or (isinstance(v, float)) else [float(a) for a in v])
            info = mlflow.pyfunc.log_model(
                name="persona_model",
                python_model=PersonaModel(),
                artifacts={"state": str(state)},
                input_example=example,
                registered_model_name=cfg.registered_name,
                pip_requirements=[f"personaops=={__version__}"],
            )
        run_id = run.info.run_id
    version = int(info.registered_model_version)
    alias = registry.CHAMPION if registry.alias_version(ws, cfg.registered_name, registry.CHAMPION) is None else registry.CHALLENGER
    registry.set_alias(ws, cfg.registered_name, alias, version, reason="first trained version" if alias == registry.CHAMPION else "newly trained candidate")
    return TrainResult(run_id=run_id, version=version, alias=alias, k=scorer.clustering.k, profiles=profiles, assignments=assignments, metrics=metrics)


def load_profiles(ws: Workspace, run_id: str) -> list[dict]:
    import mlflow

    registry.client(ws)
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=PROFILES_ARTIFACT)
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load_reference(ws: Workspace, run_id: str) -> pd.DataFrame:
    import mlflow

    registry.client(ws)
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REFERENCE_ARTIFACT)
    return pd.read_parquet(path)
