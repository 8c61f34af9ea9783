"""A downstream model that uses personas as features: a churn classifier.

The working example of "personas become features for downstream models". It reads nothing of
PersonaOps but the Feast SDK: training data is a `get_historical_features` point-in-time join
of the feature service `churn_model_inputs_v1` (behaviour, support and survey features plus the
persona id and confidence) on an entity frame of persons, label times and the CRM `churned`
label; prediction reads the same service from the online store. The run in MLflow records the
cross-validated ROC AUC and log loss with and without the persona features, and registers the
model (with persona features) as `persona-churn-model`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from personaops.config import PersonasConfig
from personaops.errors import NotFoundError, PipelineStateError
from personaops.workspace import Workspace

REGISTERED_NAME = "persona-churn-model"
EXPERIMENT = "persona-churn-model"
FEATURE_SERVICE = "churn_model_inputs_v1"
LABEL = "churned"
LABELS_VIEW = "person_labels"
PERSONA_CATEGORICAL = ["persona_id"]
PERSONA_NUMERIC = ["confidence"]
ALIAS = "champion"
FOLDS = 5
SEED = 7


@dataclass
class DownstreamResult:
    run_id: str
    version: int
    persons: int
    churn_rate: float
    metrics: dict[str, float]

    def to_dict(self) -> dict:
        return {"model": REGISTERED_NAME, "version": self.version, "run_id": self.run_id, "persons": self.persons, "churn_rate": self.churn_rate, "metrics": self.metrics}


def label_entities(ws: Workspace) -> pd.DataFrame:
    """The entity frame: person_id, event_timestamp (when the label was observed), churned (0/1)."""
    path = ws.feature_table(LABELS_VIEW)
    if not path.exists():
        raise NotFoundError(f"No label table in {ws.root}; run `personas run` on sources with a CRM `churned` label first.")
    labels = pd.read_parquet(path)
    if LABEL not in labels.columns:
        raise PipelineStateError(f"The sources in {ws.root} have no `{LABEL}` label; map a CRM column to labels: [{LABEL}] in sources.yaml.")
    labels = labels[labels[LABEL].notna()][["person_id", "event_timestamp", LABEL]].reset_index(drop=True)
    labels[LABEL] = labels[LABEL].astype(int)
    if labels[LABEL].nunique() < 2:
        raise PipelineStateError(f"Every labelled person in {ws.root} has {LABEL}={labels[LABEL].iloc[0] if len(labels) else 'nothing'}; a classifier needs both outcomes.")
    return labels


def training_frame(store, entities: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time join of the feature service onto the entity frame (Feast offline store)."""
    service = store.get_feature_service(FEATURE_SERVICE)
    return store.get_historical_features(entity_df=entities, features=service).to_df()


def feature_columns(frame: pd.DataFrame, with_persona: bool) -> tuple[list[str], list[str]]:
    """(numeric, categorical) model inputs of a joined frame."""
    skip = {"person_id", "event_timestamp", LABEL, *PERSONA_CATEGORICAL, *PERSONA_NUMERIC}
    numeric = [c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
    if with_persona:
        return numeric + PERSONA_NUMERIC, list(PERSONA_CATEGORICAL)
    return numeric, []


def classifier(numeric: list[str], categorical: list[str]):
    """Impute + scale numbers, one-hot personas, logistic regression (probabilities 0-1)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    parts = [("numeric", make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler()), numeric)]
    if categorical:
        parts.append(("persona", OneHotEncoder(handle_unknown="ignore"), categorical))
    return Pipeline([("features", ColumnTransformer(parts)), ("model", LogisticRegression(max_iter=2000, C=1.0))])


def _inputs(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    x = frame.reindex(columns=numeric + categorical).copy()
    x[numeric] = x[numeric].astype(float)
    counts = [c for c in numeric if c.startswith("n_")]
    x[counts] = x[counts].fillna(0.0)  # no row in a count view: zero of those things (as the persona model)
    for c in categorical:
        x[c] = x[c].astype("Int64").astype(str)  # persona ids as categories ("<NA>": none)
    return x


def evaluate(frame: pd.DataFrame, with_persona: bool) -> dict[str, float]:
    """Out-of-fold (stratified 5-fold) ROC AUC and log loss of the classifier."""
    from sklearn.metrics import log_loss, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    numeric, categorical = feature_columns(frame, with_persona)
    x, y = _inputs(frame, numeric, categorical), frame[LABEL].to_numpy()
    folds = StratifiedKFold(n_splits=min(FOLDS, int(np.bincount(y).min())), shuffle=True, random_state=SEED)
    proba = cross_val_predict(classifier(numeric, categorical), x, y, cv=folds, method="predict_proba")[:, 1]
    return {"roc_auc": float(roc_auc_score(y, proba)), "log_loss": float(log_loss(y, proba))}


def train(ws: Workspace, cfg: PersonasConfig) -> DownstreamResult:
    """Train, compare with and without persona features, log to MLflow, register the model."""
    import mlflow
    import mlflow.sklearn

    from models import registry
    from personaops.feature_store import feature_store

    store = feature_store(ws, cfg)
    entities = label_entities(ws)
    frame = training_frame(store, entities)
    if frame["persona_id"].isna().all():
        raise PipelineStateError(f"No persona assignment joins the labels in {ws.root}; publish personas (`personas run`) before training the churn model.")
    with_persona, without = evaluate(frame, True), evaluate(frame, False)
    metrics = {
        "roc_auc_with_persona": with_persona["roc_auc"], "roc_auc_without_persona": without["roc_auc"],
        "log_loss_with_persona": with_persona["log_loss"], "log_loss_without_persona": without["log_loss"],
    }  # fmt: skip
    metrics["roc_auc_persona_lift"] = metrics["roc_auc_with_persona"] - metrics["roc_auc_without_persona"]
    numeric, categorical = feature_columns(frame, True)
    x = _inputs(frame, numeric, categorical)
    model = classifier(numeric, categorical).fit(x, frame[LABEL].to_numpy())
    client = registry.client(ws)
    with mlflow.start_run(experiment_id=registry.experiment_id(ws, EXPERIMENT), run_name="churn-with-personas") as run:
        mlflow.set_tags({"personas.feature_service": FEATURE_SERVICE, "personas.label": LABEL})
        mlflow.log_params({"feature_service": FEATURE_SERVICE, "label": LABEL, "folds": FOLDS, "persons": len(frame),
                           "numeric_features": len(numeric), "persona_features": ",".join(categorical + PERSONA_NUMERIC)})  # fmt: skip
        mlflow.log_metrics(metrics | {"churn_rate": float(frame[LABEL].mean())})
        mlflow.log_dict({"numeric": numeric, "categorical": categorical, "feature_service": FEATURE_SERVICE}, "features.json")
        # skops (MLflow's safe default format) must be told numpy.dtype is fine: the one-hot encoder keeps one.
        info = mlflow.sklearn.log_model(model, name="churn_model", input_example=x.head(5), registered_model_name=REGISTERED_NAME, skops_trusted_types=["numpy.dtype"])
    version = int(info.registered_model_version)
    client.set_registered_model_alias(REGISTERED_NAME, ALIAS, str(version))
    return DownstreamResult(run.info.run_id, version, len(frame), round(float(frame[LABEL].mean()), 4), {k: round(v, 4) for k, v in metrics.items()})


def predict(ws: Workspace, cfg: PersonasConfig, person_ids: list[str]) -> pd.DataFrame:
    """Churn probability (0-1) of each person, from features read online through Feast at call
    time (person_id, churn_probability, persona_id; NaN probability where nothing is online)."""
    import mlflow
    import mlflow.sklearn

    from models import registry
    from personaops.feature_store import feature_store

    if registry.alias_version(ws, REGISTERED_NAME, ALIAS) is None:
        raise NotFoundError(f"No trained churn model in {ws.root}; run `personas downstream train` first.")
    registry.client(ws)
    uri = f"models:/{REGISTERED_NAME}@{ALIAS}"
    model = mlflow.sklearn.load_model(uri)
    run_id = registry.client(ws).get_model_version_by_alias(REGISTERED_NAME, ALIAS).run_id
    columns = json.loads(open(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="features.json")).read())
    store = feature_store(ws, cfg)
    online = store.get_online_features(features=store.get_feature_service(FEATURE_SERVICE), entity_rows=[{"person_id": p} for p in person_ids]).to_df()
    x = _inputs(online, columns["numeric"], columns["categorical"])
    found = online["persona_id"].notna().to_numpy()
    proba = np.full(len(online), np.nan)
    if found.any():
        proba[found] = model.predict_proba(x[found])[:, 1]
    return pd.DataFrame({"person_id": online["person_id"], "churn_probability": proba, "persona_id": online["persona_id"]})
