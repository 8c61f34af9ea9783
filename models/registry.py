"""MLflow registry lifecycle for the persona model: aliases, not deprecated stages.

`champion` is what publish serves; `challenger` is a newer candidate. MLflow keeps no history of
alias moves, so every move is also appended to the workspace audit log (who, when, why).
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path

from personaops.errors import NotFoundError
from personaops.workspace import Workspace

CHAMPION = "champion"
CHALLENGER = "challenger"


def client(ws: Workspace):
    """An MlflowClient on the workspace's tracking store (the local profile's SQLite database)."""
    import mlflow
    from mlflow import MlflowClient

    uri = ws.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(ws: Workspace, name: str) -> str:
    """The id of experiment `name`, created on first use. On the local profile its artifacts live
    in the workspace (never in the current directory); against an MLflow server (production
    profile) the server decides where artifacts go (`--artifacts-destination`)."""
    mlflow_client = client(ws)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None if ws.mlflow_tracking_uri.startswith(("http://", "https://")) else Workspace.ensure(ws.mlflow_artifacts / "x").parent.as_uri()
    return mlflow_client.create_experiment(name, artifact_location=location)


@dataclass
class ModelVersionInfo:
    version: int
    run_id: str
    aliases: list[str]
    created: int
    description: str


def versions(ws: Workspace, name: str) -> list[ModelVersionInfo]:
    from mlflow.exceptions import MlflowException

    c = client(ws)
    try:
        found = c.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    # search results carry no aliases in every store: read them from the registered model
    by_version: dict[int, list[str]] = {}
    if found:
        for alias, version in c.get_registered_model(name).aliases.items():
            by_version.setdefault(int(version), []).append(alias)
    return sorted(
        (ModelVersionInfo(int(v.version), v.run_id, sorted(by_version.get(int(v.version), [])), int(v.creation_timestamp), v.description or "") for v in found),
        key=lambda v: v.version,
    )


def alias_version(ws: Workspace, name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client(ws).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def set_alias(ws: Workspace, name: str, alias: str, version: int, reason: str, actor: str | None = None) -> None:
    """Move `alias` to `version` and record the move in the audit log. A version rejected in
    review (models/promotion.py) never becomes champion."""
    c = client(ws)
    known = {v.version for v in versions(ws, name)}
    if version not in known:
        raise NotFoundError(f"Model '{name}' has no version {version} (versions: {sorted(known) or 'none'}); pick one from `personas models list`.")
    from models.promotion import is_rejected

    if alias == CHAMPION and is_rejected(ws, name, version):
        from personaops.errors import PromotionBlockedError

        raise PromotionBlockedError(f"Version {version} of '{name}' was rejected in review and can never be champion; pick another version from `personas models list`.")
    previous = alias_version(ws, name, alias)
    c.set_registered_model_alias(name, alias, str(version))
    if alias == CHAMPION and alias_version(ws, name, CHALLENGER) == version:
        c.delete_registered_model_alias(name, CHALLENGER)  # a champion is no longer a challenger
    ws.audit("model_alias_moved", model=name, alias=alias, version=version, previous=previous, reason=reason, actor=actor or getpass.getuser())


def load_champion(ws: Workspace, name: str):
    """(version, pyfunc model) of the champion; NotFoundError when there is none."""
    import mlflow.pyfunc

    version = alias_version(ws, name, CHAMPION)
    if version is None:
        raise NotFoundError(f"Model '{name}' has no champion version in {ws.root}; run `personas run` (or `personas demo`) first.")
    client(ws)
    return version, mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")


def score(model, frame):
    """Personas of `frame`'s rows from a loaded persona pyfunc: the scorer is called directly.
    MLflow's input-schema enforcement walks every row's embedding array (55 s of a 100k-person
    publish here); the frames scored come from the feature tables the model was trained on, and
    the result is identical (checked on 5,000 persons)."""
    scorer = getattr(model.unwrap_python_model(), "scorer", None) if hasattr(model, "unwrap_python_model") else None
    if scorer is None:
        return model.predict(frame)
    return scorer.predict(frame).reset_index(drop=True)


def version_run_id(ws: Workspace, name: str, version: int) -> str:
    return client(ws).get_model_version(name, str(version)).run_id


def previous_champion(ws: Workspace, name: str) -> int | None:
    """The version that held `champion` before the current one, from the alias history."""
    moves = [e for e in alias_history(ws, name) if e.get("alias") == CHAMPION]
    return moves[-1].get("previous") if moves else None


def run_metrics(ws: Workspace, name: str, version: int) -> dict[str, float]:
    return client(ws).get_run(version_run_id(ws, name, version)).data.metrics


def promote(ws: Workspace, cfg, version: int, reason: str, force: bool = False, actor: str | None = None) -> list:
    """Move `champion` to `version` if it passes the promotion gate against the current champion
    (or unconditionally with `force`, which needs a reason). Returns the gate checks. (The CLI uses
    models.promotion.promote_or_hold, which also holds high-stakes promotions for review.)"""
    from models.promotion import evaluate_gate, gate_passed
    from personaops.errors import PromotionBlockedError

    known = {v.version for v in versions(ws, cfg.registered_name)}
    if version not in known:
        raise NotFoundError(f"Model '{cfg.registered_name}' has no version {version} (versions: {sorted(known) or 'none'}); pick one from `personas models list`.")
    current = alias_version(ws, cfg.registered_name, CHAMPION)
    champion = run_metrics(ws, cfg.registered_name, current) if current is not None and current != version else None
    checks = evaluate_gate(run_metrics(ws, cfg.registered_name, version), champion, cfg)
    if not gate_passed(checks) and not force:
        failed = "; ".join(str(c) for c in checks if not c.passed)
        raise PromotionBlockedError(
            f"Version {version} fails the promotion gate ({failed}); keep the champion, or pass --force with --reason to override."
        )
    label = "forced" if not gate_passed(checks) else "gate passed"
    set_alias(ws, cfg.registered_name, CHAMPION, version, f"{reason} ({label}: {'; '.join(map(str, checks))})", actor=actor)
    return checks


def alias_history(ws: Workspace, name: str) -> list[dict]:
    """Every alias move of this model, oldest first (from the append-only audit log)."""
    from personaops import audit

    return [e for e in audit.read(ws.audit_log, "model_alias_moved") if e.get("model") == name]
