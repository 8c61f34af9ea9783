"""The monitoring policy: thresholds on monitoring results decide one action per run.

`monitoring/policy.yaml` lists rules (metric, `above`/`below` threshold, action); the decision is
the most severe action among the rules that fire. Every decision is appended, with the results
and report paths that caused it, to `monitoring/decisions.jsonl` in the workspace.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from personaops.errors import ConfigError
from personaops.workspace import Workspace

Action = Literal["none", "retrain", "review", "rollback"]
SEVERITY = {"none": 0, "retrain": 1, "review": 2, "rollback": 3}
DEFAULT_POLICY = Path(__file__).with_name("policy.yaml")


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    metric: str
    above: float | None = None
    below: float | None = None
    action: Action

    @model_validator(mode="after")
    def _one_bound(self) -> "Rule":
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of above / below")
        if self.metric.split(".", 1)[0] not in SECTIONS or "." not in self.metric:
            raise ValueError(f"metric {self.metric!r} is not section.key with a section among {', '.join(SECTIONS)}")
        return self


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[Rule]


@dataclass
class Decision:
    action: str
    fired: list[dict] = field(default_factory=list)
    at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


SECTIONS = ("features", "persona_mix", "centroids", "embeddings", "quality", "bias", "representation")


def load_policy(path: Path | None = None) -> Policy:
    path = DEFAULT_POLICY if path is None or str(path) in ("", ".") else Path(path)
    try:
        return Policy.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ConfigError(f"Monitoring policy {path} does not exist; point monitoring.policy at a policy.yaml.") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"Monitoring policy {path}: {'.'.join(map(str, err['loc']))} {err['msg']}; see docs/monitoring.md.") from None


def lookup(results: dict, metric: str):
    value = results
    for part in metric.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def decide(results: dict, policy: Policy) -> Decision:
    """The most severe action among the rules whose metric crosses its threshold."""
    fired = []
    for rule in policy.rules:
        value = lookup(results, rule.metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue  # not measured in this pass (e.g. no texts), or not a number
        if (rule.above is not None and value > rule.above) or (rule.below is not None and value < rule.below):
            fired.append({"rule": rule.name, "metric": rule.metric, "value": value, "threshold": rule.above if rule.above is not None else rule.below, "action": rule.action})
    action = max((f["action"] for f in fired), key=SEVERITY.__getitem__, default="none")
    return Decision(action=action, fired=fired)


def record(ws: Workspace, decision: Decision, run_id: str, model_version: int | None, reports: dict, outcome: dict) -> None:
    """Append the decision, what caused it and what was done to the workspace's decision log."""
    entry = {"run_id": run_id, "model_version": model_version, **asdict(decision), "reports": reports, "outcome": outcome}
    path = Workspace.ensure(ws.root / "monitoring" / "decisions.jsonl")
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, default=str) + "\n")
    ws.audit("monitoring_decision", run_id=run_id, action=decision.action, rules=[f["rule"] for f in decision.fired])
