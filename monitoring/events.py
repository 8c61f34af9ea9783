"""Prefect events for monitoring decisions, so automations can act on them.

Every monitoring pass emits one event `personaops.monitor.<action>` (`none`, `retrain`, `review`,
`rollback`) about the resource `personaops.model.<registered model name>`; its payload carries the
decision, the rules that fired and the report paths. `personaops.monitor.retrain` is the drift
event: the `retrain-personas-on-drift` deployment in `flows/prefect.yaml` has a trigger on it.
"""

from __future__ import annotations

EVENT_PREFIX = "personaops.monitor."
DRIFT_EVENT = EVENT_PREFIX + "retrain"


def model_resource_id(registered_name: str) -> str:
    """The Prefect resource id of a registered persona model."""
    return f"personaops.model.{registered_name}"


def decision_event(registered_name: str, home: str, run_id: str, model_version: int | None, action: str, fired: list[dict], reports: dict) -> dict:
    """The event (name, resource, payload) that reports one monitoring decision."""
    return {
        "event": EVENT_PREFIX + action,
        "resource": {
            "prefect.resource.id": model_resource_id(registered_name),
            "prefect.resource.name": registered_name,
            "personaops.model-version": str(model_version),
        },
        "payload": {
            "run_id": run_id,
            "home": home,
            "model_version": model_version,
            "action": action,
            "fired": fired,
            "report": reports.get("monitoring"),
            "reports": reports,
        },
    }


def emit_decision(registered_name: str, home: str, run_id: str, model_version: int | None, action: str, fired: list[dict], reports: dict):
    """Emit the decision event to the Prefect API in use (the flow run is attached as a related
    resource by Prefect); returns the Event, or None where events are switched off."""
    import json

    from prefect.events import emit_event

    event = decision_event(registered_name, home, run_id, model_version, action, fired, reports)
    event["payload"] = json.loads(json.dumps(event["payload"], default=str))  # numpy scalars, paths
    return emit_event(**event)
