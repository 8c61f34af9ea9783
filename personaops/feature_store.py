"""Feast: the feature repo in feature_repo/, pointed at the workspace.

The pipeline applies the repo's own declarations (the same files `feast apply` reads), writes
the offline tables, and pushes persona assignments to the online store. Readers use the stock
Feast SDK on the same repo: `FeatureStore(repo_path="feature_repo")` with PERSONAS_HOME set.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pandas as pd

from personaops.config import PersonasConfig
from personaops.errors import ConfigError, NotFoundError, PipelineStateError
from personaops.online_publish import online_publisher
from personaops.workspace import Workspace

ASSIGNMENT_VIEW = "persona_assignment"
ASSIGNMENT_FEATURES = ["persona_id", "persona_name", "confidence", "model_version"]
SERVING_SERVICE = "persona_v1"
MODEL_INPUT_SERVICE = "persona_model_inputs_v1"


# The Feast config file of each profile, in the feature repo: same objects, other backends.
PROFILE_FEAST_YAML = {"local": "feature_store.yaml", "production": "feature_store.production.yaml"}


def feast_yaml(cfg: PersonasConfig) -> Path:
    """The feature_store.yaml of the configured profile (local: SQLite + file registry;
    production: Redis online store + PostgreSQL SQL registry)."""
    return Path(cfg.feature_repo) / PROFILE_FEAST_YAML[cfg.profile]


def redis_connection_string(url: str) -> str:
    """Feast's Redis `connection_string` (host:port,db=N[,password=..][,ssl=true]) of a redis:// URL."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(f"PERSONAS_REDIS_URL '{url}' is not a redis://host:port/db URL; set it as `infra/services.sh env` prints it.")
    out = [f"{parts.hostname}:{parts.port or 6379}", f"db={int(parts.path.strip('/') or 0)}"]
    if parts.password:
        out.append(f"password={unquote(parts.password)}")
    if parts.scheme == "rediss":
        out.append("ssl=true")
    return ",".join(out)


def _production_environment() -> None:
    """The variables feature_store.production.yaml expands, or a one-line error naming the missing one."""
    if not os.environ.get("PERSONAS_FEAST_REDIS") and os.environ.get("PERSONAS_REDIS_URL"):
        os.environ["PERSONAS_FEAST_REDIS"] = redis_connection_string(os.environ["PERSONAS_REDIS_URL"])
    for name in ("PERSONAS_FEAST_REGISTRY_URL", "PERSONAS_FEAST_REDIS"):
        if not os.environ.get(name):
            shown = "PERSONAS_REDIS_URL" if name == "PERSONAS_FEAST_REDIS" else name
            raise ConfigError(f"The production profile needs {shown} in the environment; start the services with `eval \"$(infra/services.sh start)\"` or set it.")


def feature_store(ws: Workspace, cfg: PersonasConfig):
    """A Feast FeatureStore on the repo, with ${PERSONAS_HOME} expanding to this workspace and
    the backends of the configured profile."""
    ws.export_environment()
    os.environ["PERSONAS_HOME"] = str(ws.root)
    from feast import FeatureStore

    ws.feast.mkdir(parents=True, exist_ok=True)
    if cfg.profile == "production":
        _production_environment()
    if cfg.compute.engine == "spark":  # Feast's Spark offline store over the same tables (docs/scaling.md)
        from personaops.spark_engine import spark_feature_store

        return spark_feature_store(ws, cfg, feast_yaml(cfg))
    os.environ.pop("PERSONAS_FEAST_OFFLINE_STORE", None)  # the repo's sources are FileSources again
    if cfg.profile == "production":
        return FeatureStore(repo_path=str(cfg.feature_repo), fs_yaml_file=feast_yaml(cfg))
    return FeatureStore(repo_path=str(cfg.feature_repo))


def repo_objects(repo: Path) -> list:
    """Every Feast object declared in the repo, imported afresh (so $PERSONAS_HOME is current)."""
    from feast.repo_operations import get_repo_files, parse_repo

    repo = Path(repo).resolve()
    for path in get_repo_files(repo):
        sys.modules.pop(".".join(path.relative_to(repo).with_suffix("").parts), None)
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    # Feast names repo modules relative to the working directory, as `feast apply` runs in the repo.
    with contextlib.chdir(repo):
        contents = parse_repo(repo)
    return [*contents.entities, *contents.data_sources, *contents.feature_views, *contents.feature_services]


def write_table(ws: Workspace, view: str, frame: pd.DataFrame) -> Path:
    """Write a feature view's offline table atomically."""
    path = Workspace.ensure(ws.feature_table(view))
    tmp = path.with_name(f".{path.name}.tmp")
    frame = frame.copy()
    for col in frame.columns:
        # Text columns must be typed as strings even when empty or all-missing: Feast infers
        # feature types from the Parquet schema and cannot type a null column.
        if frame[col].dtype == object and frame[col].map(lambda v: v is None or isinstance(v, str) or (isinstance(v, float) and v != v)).all():
            frame[col] = frame[col].astype("string")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def apply_definitions(ws: Workspace, cfg: PersonasConfig) -> list[str]:
    """`feast apply` of feature_repo/ against this workspace; returns the feature view names."""
    store = feature_store(ws, cfg)
    objects = repo_objects(cfg.feature_repo)
    # Views without a declared schema are inferred from their tables, which must exist by now.
    missing = [
        o.batch_source.path
        for o in objects
        if hasattr(o, "batch_source") and o.batch_source is not None and not o.features and not Path(o.batch_source.path).exists()
    ]
    if missing:
        raise PipelineStateError(f"Feature table {missing[0]} does not exist yet; run the features stage (`personas run`) before applying the Feast repo.")
    store.apply(without_empty_views(objects))
    return sorted(fv.name for fv in store.list_feature_views())


def without_empty_views(objects: list) -> list:
    """Drop inferred feature views whose table has no feature column for these sources (e.g. no
    labels, or a CRM table with no descriptive column) — Feast cannot infer a view with no
    features — and drop them from the feature services that list them."""
    import pyarrow.parquet as pq
    from feast import FeatureService, FeatureView

    empty = {
        o.name
        for o in objects
        if isinstance(o, FeatureView) and not o.features and o.batch_source is not None
        and not set(pq.read_schema(o.batch_source.path).names) - {"person_id", "event_timestamp", "created"}
    }  # fmt: skip
    if not empty:
        return objects
    views = {o.name: o for o in objects if isinstance(o, FeatureView)}
    kept = []
    for o in objects:
        if isinstance(o, FeatureView) and o.name in empty:
            continue
        if isinstance(o, FeatureService) and any(p.name in empty for p in o.feature_view_projections):
            remaining = [views[p.name] for p in o.feature_view_projections if p.name not in empty]
            if not remaining:
                continue
            o = FeatureService(name=o.name, features=remaining, description=o.description, tags=o.tags)
        kept.append(o)
    return kept


def publish_assignments(ws: Workspace, cfg: PersonasConfig, assignments: pd.DataFrame, model_version: int, published_at: pd.Timestamp) -> int:
    """Write assignments (person_id, persona_id, persona_name, confidence) of one model version to
    the offline table (history kept per version) and the online store, whose content for the view
    this publish replaces atomically; return rows written online."""
    rows = assignments[["person_id", "persona_id", "persona_name", "confidence"]].copy()
    rows["model_version"] = int(model_version)
    rows["event_timestamp"] = published_at
    rows["created"] = published_at
    path = ws.feature_table(ASSIGNMENT_VIEW)
    if path.exists():
        history = pd.read_parquet(path)
        rows_all = pd.concat([history[history["model_version"] != int(model_version)], rows], ignore_index=True)
    else:
        rows_all = rows
    write_table(ws, ASSIGNMENT_VIEW, rows_all)
    # One transaction replaces the view's online rows (SQLite): no reader sees two versions mixed.
    return online_publisher(feature_store(ws, cfg)).replace(ASSIGNMENT_VIEW, rows.reset_index(drop=True))


def local_registry_missing(ws: Workspace, cfg: PersonasConfig) -> bool:
    """The local profile's file registry is not there yet (no `personas run` has applied the repo);
    the production profile's registry is in PostgreSQL, with no file to look for."""
    return cfg.profile == "local" and not (ws.feast / "registry.db").exists()


def read_persona(ws: Workspace, cfg: PersonasConfig, person_ids: list[str]) -> pd.DataFrame:
    """Online persona features of these persons (NaN where the store has none)."""
    store = feature_store(ws, cfg)
    if store.config.registry.registry_type == "file" and not (ws.feast / "registry.db").exists():
        raise NotFoundError(f"No Feast registry in {ws.root}; run `personas run` (or `personas demo`) first.")
    result = store.get_online_features(
        features=[f"{ASSIGNMENT_VIEW}:{f}" for f in ASSIGNMENT_FEATURES],
        entity_rows=[{"person_id": p} for p in person_ids],
    ).to_df()
    return result
