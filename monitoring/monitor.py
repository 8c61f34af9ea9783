"""One monitoring pass over a workspace: every check of the current features and the champion's
assignments against the champion's training reference, the policy's decision, and the reports.

Writes `reports/<run_id>/drift.html|json` (Evidently column drift + data summary) and
`reports/<run_id>/monitoring.json` (all results, the decision and the rules that fired).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from monitoring.checks import centroid_shift, data_quality, embedding_drift, persona_mix
from monitoring.policy import Decision, decide, load_policy
from monitoring.reports import drift_report
from personaops import features as F
from personaops.config import PersonasConfig
from personaops.errors import NotFoundError
from personaops.workspace import Workspace


def _vectors(column: pd.Series) -> np.ndarray:
    rows = [np.asarray(v, dtype=np.float32) for v in column if v is not None and not isinstance(v, float)]
    return np.vstack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def quality_only(cfg: PersonasConfig, ws: Workspace, ingest_report: list[dict], previous_ingest: list[dict] | None) -> tuple[dict, Decision]:
    """The data-quality checks alone (before training): results and what the policy says of them."""
    from models import registry
    from models.train import load_reference

    tables, current, columns = F.current_model_frame(ws)
    version = registry.alias_version(ws, cfg.model.registered_name, registry.CHAMPION)
    reference = load_reference(ws, registry.version_run_id(ws, cfg.model.registered_name, version)) if version is not None else current
    quality = data_quality(reference, current, columns, ingest_report, previous_ingest, tables.get("person_profile"))
    return quality, decide({"quality": quality}, load_policy(cfg.monitoring.policy))


def report_paths(ws: Workspace, run_id: str) -> dict[str, str]:
    """Where a monitoring pass writes its reports."""
    folder = ws.reports / run_id
    return {"html": str(folder / "drift.html"), "json": str(folder / "drift.json"), "monitoring": str(folder / "monitoring.json")}


def run_checks(cfg: PersonasConfig, ws: Workspace, run_id: str, ingest_report: list[dict], previous_ingest: list[dict] | None) -> tuple[dict, Decision]:
    """Every check against the champion; returns (results, decision) and writes the reports."""
    from models import registry
    from models.bias import label_gaps, persona_parity
    from models.train import load_reference

    name = cfg.model.registered_name
    version = registry.alias_version(ws, name, registry.CHAMPION)
    if version is None:
        raise NotFoundError(f"No champion persona model in {ws.root} to monitor against; run `personas run` first.")
    run = registry.version_run_id(ws, name, version)
    reference = load_reference(ws, run)
    champion_metrics = registry.run_metrics(ws, name, version)
    _, model = registry.load_champion(ws, name)
    scorer = model.unwrap_python_model().scorer
    tables, current, columns = F.current_model_frame(ws)
    out_dir = ws.reports / run_id
    drift = drift_report(reference, current, columns, out_dir, run_id, version, cfg.monitoring.drift_share_alert)

    now = scorer.predict(current)["persona_id"]
    ref_idx, _ = scorer.centroid_labels(reference)
    cur_idx, _ = scorer.centroid_labels(current)
    results: dict = {
        "model_version": version,
        "features": {"drifted_share": drift.drifted_share, "drifted_columns": drift.drifted_columns},
        "persona_mix": persona_mix(reference["persona_id"], now),
        "centroids": centroid_shift(scorer.represent(reference), ref_idx, scorer.represent(current), cur_idx),
        "quality": data_quality(reference, current, columns, ingest_report, previous_ingest, tables.get("person_profile")),
    }
    if "text_embedding" in reference.columns:
        results["embeddings"] = embedding_drift(_vectors(reference["text_embedding"]), _vectors(current["text_embedding"]), cfg.monitoring.embedding_sample, cfg.model.seed)
    sensitive_path = ws.root / "audit" / "person_sensitive.parquet"
    if sensitive_path.exists():
        sensitive = pd.read_parquet(sensitive_path).set_index("person_id")
        if len(sensitive.columns):
            bias = persona_parity(now, sensitive)
            baseline = champion_metrics.get("bias_max_dp_difference")
            bias["max_dp_difference_increase"] = bias["max_dp_difference"] - baseline if baseline is not None else 0.0
            labels = tables.get("person_labels")
            if labels is not None and len(labels):
                outcome_labels = labels.set_index("person_id").drop(columns=["event_timestamp", "created"], errors="ignore")
                bias["label_gaps"] = label_gaps(now, sensitive, outcome_labels)
                bias["max_label_gap"] = bias["label_gaps"]["max_gap"]
            results["bias"] = bias
    decision = decide(results, load_policy(cfg.monitoring.policy))
    summary = {"run_id": run_id, "results": results, "decision": {"action": decision.action, "fired": decision.fired}, "html": drift.html, "json": drift.json}
    (out_dir / "monitoring.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return results, decision
