"""Evidently (0.7 API) reports: feature drift and data summary vs the champion's reference.

Each monitoring run writes `reports/<run_id>/drift.html` and `drift.json` (Evidently's own
snapshot) and `summary.json` (what PersonaOps read from it, metric by metric, never by list
position): overall share of drifted columns and per-column drift scores. The snapshots of every
run are also added to an Evidently workspace (`<workspace>/evidently`, one project per registered
model) so `evidently ui --workspace <workspace>/evidently` shows their history.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

DRIFT_COUNT = "evidently:metric_v2:DriftedColumnsCount"
VALUE_DRIFT = "evidently:metric_v2:ValueDrift"


@dataclass
class DriftSummary:
    run_id: str
    model_version: int
    reference_rows: int
    current_rows: int
    drifted_share: float
    drifted_columns: list[str]
    column_scores: dict[str, dict]
    drift_detected: bool
    html: str
    json: str

    def to_dict(self) -> dict:
        return asdict(self)


def _column_drift(metric: dict) -> tuple[str, dict]:
    cfg = metric["config"]
    method, threshold, value = str(cfg.get("method", "")), float(cfg.get("threshold", 0.05)), float(metric["value"])
    # p-value tests drift when small; distance/divergence methods when large.
    drifted = value < threshold if "p_value" in method else value >= threshold
    return cfg["column"], {"method": method, "score": value, "threshold": threshold, "drifted": bool(drifted)}


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    out_dir: Path,
    run_id: str,
    model_version: int,
    drift_share_alert: float,
):
    """Run the drift + summary report on `columns` (numeric) and save HTML and JSON in `out_dir`;
    returns (DriftSummary, Evidently Snapshot)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    columns = [c for c in columns if c in reference.columns and c in current.columns]
    definition = DataDefinition(numerical_columns=columns)
    # Evidently plots against the frame index: give it a plain positional one.
    ref = Dataset.from_pandas(reference[columns].astype(float).reset_index(drop=True), data_definition=definition)
    cur = Dataset.from_pandas(current[columns].astype(float).reset_index(drop=True), data_definition=definition)
    report = Report([DataDriftPreset(drift_share=drift_share_alert), DataSummaryPreset()])
    snapshot = report.run(
        current_data=cur,
        reference_data=ref,
        name=f"feature drift {run_id}",
        metadata={"run_id": run_id, "model_version": model_version},
        tags=[f"model_version={model_version}", "feature_drift"],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    html, js = out_dir / "drift.html", out_dir / "drift.json"
    snapshot.save_html(str(html))
    snapshot.save_json(str(js))
    share = 0.0
    scores: dict[str, dict] = {}
    for metric in snapshot.dict()["metrics"]:
        kind = metric["config"].get("type")
        if kind == DRIFT_COUNT:
            share = float(metric["value"]["share"])
        elif kind == VALUE_DRIFT:
            column, score = _column_drift(metric)
            scores[column] = score
    drifted = sorted(c for c, s in scores.items() if s["drifted"])
    summary = DriftSummary(
        run_id=run_id,
        model_version=model_version,
        reference_rows=len(reference),
        current_rows=len(current),
        drifted_share=share,
        drifted_columns=drifted,
        column_scores=scores,
        drift_detected=share >= drift_share_alert,
        html=str(html),
        json=str(js),
    )
    (out_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2), encoding="utf-8")
    return summary, snapshot


def add_to_evidently_workspace(folder: Path, project_name: str, snapshots: list) -> dict:
    """Add a monitoring run's Evidently snapshots to the local Evidently workspace in `folder`,
    under the project `project_name` (created on first use, then reused)."""
    from evidently.ui.workspace import Workspace as EvidentlyWorkspace

    folder.mkdir(parents=True, exist_ok=True)
    workspace = EvidentlyWorkspace(str(folder))
    # search_project matches parts of names: keep the exact one
    project = next((p for p in workspace.search_project(project_name) if p.name == project_name), None)
    if project is None:
        project = workspace.create_project(project_name, description="PersonaOps monitoring runs: feature drift, data summary and text-embedding drift vs the champion's training reference")
    refs = [workspace.add_run(project.id, snapshot) for snapshot in snapshots]
    return {"workspace": str(folder), "project": project_name, "project_id": str(project.id), "snapshots": [str(r.id) for r in refs]}


def light_report(profile_drift: dict, out_dir: Path, run_id: str, model_version: int, reference_rows: int, current_rows: int, reused: dict) -> DriftSummary:
    """The reports of a pass that reuses the last drawn Evidently report (monitoring/monitor.py
    `reusable_report`): `drift.json` and `summary.json` hold this pass's own column drift (the
    reference-profile check on every row, which the decision used) and what was reused; `drift.html`
    is a short page with the same table and a link to the reused Evidently report."""
    import html as markup
    import os

    out_dir.mkdir(parents=True, exist_ok=True)
    html, js = out_dir / "drift.html", out_dir / "drift.json"
    scores = profile_drift["column_scores"]
    summary = DriftSummary(
        run_id=run_id, model_version=model_version, reference_rows=reference_rows, current_rows=current_rows,
        drifted_share=profile_drift["drifted_share"], drifted_columns=profile_drift["drifted_columns"], column_scores=scores,
        drift_detected=bool(profile_drift["drift_detected"]), html=str(html), json=str(js),
    )  # fmt: skip
    body = {"kind": "reference-profile column drift; Evidently report reused", **summary.to_dict(), "evidently_report": reused}
    js.write_text(json.dumps(body, indent=2, default=str), encoding="utf-8")
    (out_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2), encoding="utf-8")
    moved = reused["moved_since"]
    link = os.path.relpath(reused["html"], out_dir)

    def cell(value) -> str:
        return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    rows = "".join(
        f"<tr><td>{markup.escape(c)}</td><td>{s['method']}</td><td>{cell(s['score'])}</td><td>{cell(s['threshold'])}</td><td>{'drifted' if s['drifted'] else ''}</td></tr>"
        for c, s in sorted(scores.items())
    )
    html.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>feature drift {markup.escape(run_id)}</title></head><body>"
        f"<h1>Feature drift, run {markup.escape(run_id)} (model version {model_version})</h1>"
        f"<p>{current_rows:,} current rows against {reference_rows:,} reference rows; drifted columns: {summary.drifted_share:.1%} "
        f"({markup.escape(', '.join(summary.drifted_columns) or 'none')}). Every row was checked against the champion's reference profile "
        "(normed Wasserstein / Jensen-Shannon distance, Evidently's methods and thresholds); the policy decided on these figures.</p>"
        f"<p>No Evidently report was drawn for this pass: since run {markup.escape(reused['from_run'])}, whose report is "
        f"<a href='{markup.escape(link)}'>{markup.escape(link)}</a>, no column moved by {reused['limits']['column']} or more "
        f"(largest: {markup.escape(str(moved['largest_column']))}, {moved['largest_column_move']}), the persona shares moved by {moved['persona_mix']} "
        f"(total variation), the rows by {moved['rows']:.1%}, the texts by {moved['texts']:.1%} and the text-embedding score by {moved['embedding_score']}.</p>"
        f"<table border='1' cellpadding='3'><tr><th>column</th><th>method</th><th>score</th><th>threshold</th><th></th></tr>{rows}</table></body></html>",
        encoding="utf-8",
    )
    return summary
