"""The `monitor_personas` Prefect flow: optionally bring in new source data (ingest, resolve,
features — no training), run every monitoring check against the champion, let the policy decide
one action and carry it out:

- `none`: nothing;
- `retrain`: train a new version on the current features; it becomes `challenger` and only
  becomes `champion` through the promotion gate (then its assignments are published);
- `rollback`: `champion` goes back to the previous champion and its assignments are re-published;
- `review`: a review item is queued for a human (`governance/review_queue.jsonl`).

Each pass emits a Prefect event `personaops.monitor.<action>` (monitoring/events.py). Scheduled
deployments run with `retrain_via_event=True`: the pass then leaves retraining to the
`retrain_personas` flow, which the trigger in `flows/prefect.yaml` starts on the drift event.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from flows.build_personas import _config, features, ingest, publish, publish_champion, resolve, train
from monitoring.policy import Decision
from personaops.config import PersonasConfig
from personaops.errors import NotFoundError
from personaops.workspace import Workspace


def queue_review(ws: Workspace, run_id: str, decision: Decision) -> dict:
    item = {"run_id": run_id, "at": datetime.now(timezone.utc).isoformat(), "status": "open", "reasons": decision.fired}
    path = Workspace.ensure(ws.root / "governance" / "review_queue.jsonl")
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(item, default=str) + "\n")
    return {"review": "queued", "queue": str(path)}


def act(cfg: PersonasConfig, ws: Workspace, decision: Decision, run_id: str, as_of: str, trained_this_run: bool) -> dict:
    """Carry out the policy's action; return what was done."""
    from models import registry

    name = cfg.model.registered_name
    if decision.action == "review":
        return queue_review(ws, run_id, decision)
    if decision.action == "rollback":
        previous = registry.previous_champion(ws, name)
        if previous is None:
            return {"rollback": "no earlier champion", **queue_review(ws, run_id, decision)}
        current = registry.alias_version(ws, name, registry.CHAMPION)
        registry.set_alias(ws, name, registry.CHAMPION, previous, "rollback by monitoring policy: " + ", ".join(f["rule"] for f in decision.fired))
        published = publish_champion(cfg, ws, as_of)
        return {"rollback": {"from": current, "to": previous}, "published": published["rows"]}
    if decision.action == "retrain":
        if trained_this_run:
            return {"retrain": "this run already trained a version on these data; the promotion gate decided"}
        before = registry.alias_version(ws, name, registry.CHAMPION)
        trained = train(str(ws.root), run_id, cfg.embedding.model_path or "all-MiniLM-L6-v2")
        after = registry.alias_version(ws, name, registry.CHAMPION)
        outcome = {"retrain": {"version": trained["version"], "aliases": trained["aliases"], "gate": trained.get("gate", []), "champion_before": before, "champion_after": after,
                               "promotion": trained.get("promotion")}}  # held for review: `personas promotion list`
        if after != before:
            outcome["published"] = publish(str(ws.root), as_of)["rows"]
        return outcome
    return {}


@flow(name="monitor_personas")
def monitor_personas(sources: str | None = None, home: str | None = None, retrain_via_event: bool = False) -> dict:
    """Monitor the champion on the workspace's current data (or on new `sources`) and act.
    With `retrain_via_event`, a `retrain` decision is only emitted as the drift event (an
    automation starts `retrain_personas`); otherwise this run retrains itself."""
    from monitoring.events import DRIFT_EVENT, emit_decision
    from monitoring.monitor import report_paths, run_checks
    from monitoring.policy import record

    cfg, ws = _config(home)
    run_id = ws.new_run_id()
    previous_run = ws.latest_run_record()
    if sources:
        ingested = ingest(sources, home, run_id)
        resolve(home, ingested["batches"], run_id)
        featured = features(home, ingested["batches"], ingested["kinds"])
        ingest_report, as_of = ingested["sources"], featured["as_of"]
    else:
        if previous_run is None:
            raise NotFoundError(f"No run in {ws.root} to monitor; run `personas run` (or `personas demo`) first.")
        ingest_report, as_of = previous_run["ingest"], previous_run["features"]["as_of"]
    previous_ingest = ws.last_healthy_ingest() if sources else None
    results, decision = run_checks(cfg, ws, run_id, ingest_report, previous_ingest)
    if decision.action == "retrain" and retrain_via_event:
        outcome = {"retrain": f"left to the automation on the {DRIFT_EVENT} event"}
    else:
        outcome = act(cfg, ws, decision, run_id, as_of, trained_this_run=False)
    if sources and decision.action in ("none", "retrain") and "published" not in outcome:
        # healthy new data: the champion serves everyone in it, newcomers included
        outcome["published"] = publish(home, as_of)["rows"]
    reports = report_paths(ws, run_id)
    record(ws, decision, run_id, results["model_version"], reports, outcome)
    event = emit_decision(cfg.model.registered_name, str(ws.root), run_id, results["model_version"], decision.action, decision.fired, reports)
    summary = {
        "run_id": run_id,
        "flow_run_id": str(flow_run.get_id()),
        "sources": str(Path(sources).resolve()) if sources else None,
        "model_version": results["model_version"],
        "action": decision.action,
        "fired": decision.fired,
        "outcome": outcome,
        "results": results,
        "reports": reports,
        "event": {"name": event.event, "id": str(event.id)} if event is not None else None,
    }
    if sources:  # new data came in: this is a run of the workspace too
        ws.write_run_record(run_id, {"run_id": run_id, "kind": "monitor", "ingest": ingest_report, "features": {"as_of": as_of}, "monitor": {**reports, "action": decision.action}})
    return json.loads(json.dumps(summary, default=str))


@flow(name="retrain_personas")
def retrain_personas(home: str | None = None, monitoring_run: str | None = None, report: str | None = None) -> dict:
    """Retrain on the workspace's current features because monitoring found drift (started by the
    automation on the drift event, or by hand): the new version becomes `challenger` and only
    becomes `champion` through the promotion gate; the outcome is recorded with the report."""
    from monitoring.policy import record

    cfg, ws = _config(home)
    latest = ws.latest_run_record()
    if latest is None:
        raise NotFoundError(f"No run in {ws.root} to retrain on; run `personas run` (or `personas demo`) first.")
    run_id = ws.new_run_id()
    decision = Decision(action="retrain", fired=[{"rule": "drift_event", "monitoring_run": monitoring_run, "report": report}])
    outcome = act(cfg, ws, decision, run_id, latest["features"]["as_of"], trained_this_run=False)
    record(ws, decision, run_id, outcome.get("retrain", {}).get("champion_before"), {"monitoring": report}, outcome)
    return json.loads(json.dumps({"run_id": run_id, "monitoring_run": monitoring_run, "outcome": outcome}, default=str))
