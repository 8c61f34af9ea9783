"""The promotion gate and held promotions.

The gate: a challenger becomes champion only when its stability and persona sizes pass absolute
floors and its quality, stability and bias (largest demographic-parity difference of persona
assignment across sensitive groups) are not worse than the champion's beyond a tolerance. Those
checks *block* a promotion.

High-stakes changes wait for a human instead (checks whose `action` is `review`):
- the candidate would move more than `model.review_moved_share` of the champion's persons to
  another persona (persona ids are aligned across versions by continuity matching);
- its bias grew by more than `model.bias_review_increase` but stays within `bias_tolerance`
  (a marginal bias result);
- a rule of the monitoring policy's `bias` section fires on the candidate with `review` (or
  `rollback`).

A held promotion is a record in `governance/promotions.jsonl` (append-only: one line per state
change, the newest line per id is its state) and an audit entry. `approve` resumes it (alias set,
assignments published, audited); `reject` discards it: the MLflow version is tagged
`personas.promotion=rejected` and can never become champion later (`registry.set_alias` refuses).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from personaops.config import ModelConfig
from personaops.errors import NotFoundError, PersonaOpsError, PromotionBlockedError

BLOCK, REVIEW = "block", "review"
PROMOTION_TAG = "personas.promotion"  # on the MLflow model version: "rejected" once rejected
# Ceilings (value must stay at or below the threshold); every other check is a floor.
_CEILINGS = ("bias", "moved_share", "policy:")


@dataclass
class GateCheck:
    name: str
    value: float
    threshold: float
    passed: bool
    action: str = BLOCK  # what a failed check does: block the promotion, or hold it for review

    def __str__(self) -> str:
        upper = self.name.startswith(_CEILINGS)
        sign = ("<=" if self.passed else ">") if upper else (">=" if self.passed else "<")
        return f"{self.name} {self.value:.3f} {sign} {self.threshold:.3f}" + (" (review)" if self.action == REVIEW and not self.passed else "")


def evaluate_gate(candidate: dict[str, float], champion: dict[str, float] | None, cfg: ModelConfig, moved_share: float | None = None) -> list[GateCheck]:
    """Checks on MLflow metrics of the candidate (and the champion, when there is one);
    `moved_share`: share (0-1) of the champion's persons the candidate assigns to another persona."""
    checks = [
        GateCheck("stability", candidate.get("stability", 0.0), cfg.stability_floor, candidate.get("stability", 0.0) >= cfg.stability_floor),
        GateCheck(
            "smallest_persona_share",
            candidate.get("smallest_persona_share", 0.0),
            cfg.min_persona_share,
            candidate.get("smallest_persona_share", 0.0) >= cfg.min_persona_share,
        ),
    ]
    if champion:
        for metric in ("silhouette", "stability"):
            floor = champion.get(metric, float("-inf")) - cfg.promotion_tolerance
            value = candidate.get(metric, float("-inf"))
            checks.append(GateCheck(f"{metric}_vs_champion", value, floor, value >= floor))
        if "bias_max_dp_difference" in candidate and "bias_max_dp_difference" in champion:
            ceiling = champion["bias_max_dp_difference"] + cfg.bias_tolerance
            value = candidate["bias_max_dp_difference"]
            checks.append(GateCheck("bias_max_dp_difference_vs_champion", value, ceiling, value <= ceiling))
            increase = value - champion["bias_max_dp_difference"]
            if value <= ceiling:  # above the ceiling the gate blocks; a marginal increase waits for a human
                checks.append(GateCheck("bias_increase_vs_champion", increase, cfg.bias_review_increase, increase <= cfg.bias_review_increase, REVIEW))
    if moved_share is not None:
        checks.append(GateCheck("moved_share_vs_champion", moved_share, cfg.review_moved_share, moved_share <= cfg.review_moved_share, REVIEW))
    return checks


def policy_checks(candidate: dict[str, float], champion: dict[str, float] | None, policy) -> list[GateCheck]:
    """The monitoring policy's `bias` rules applied to the candidate against the champion: a rule
    whose action is review or rollback and that fires holds the promotion."""
    from monitoring.policy import decide

    if not champion or "bias_max_dp_difference" not in candidate or "bias_max_dp_difference" not in champion:
        return []
    results = {"bias": {"max_dp_difference": candidate["bias_max_dp_difference"],
                        "max_dp_difference_increase": candidate["bias_max_dp_difference"] - champion["bias_max_dp_difference"]}}  # fmt: skip
    rules = [r for r in policy.rules if r.metric.startswith("bias.") and r.action in ("review", "rollback")]
    fired = decide(results, policy.model_copy(update={"rules": rules})).fired
    return [GateCheck(f"policy:{f['rule']}", float(f["value"]), float(f["threshold"]), False, REVIEW) for f in fired]


def gate_passed(checks: list[GateCheck]) -> bool:
    return all(c.passed for c in checks)


def verdict(checks: list[GateCheck]) -> str:
    """`promote`, `review` (only review checks failed) or `block` (a blocking check failed)."""
    if any(not c.passed and c.action == BLOCK for c in checks):
        return BLOCK
    return REVIEW if any(not c.passed for c in checks) else "promote"


def describe(checks: list[GateCheck]) -> list[dict]:
    return [asdict(c) for c in checks]


# --- the full decision on a registered version ---------------------------------------------------
def moved_share(ws, cfg: ModelConfig, version: int, champion: int) -> float | None:
    """Share (0-1) of the persons the champion published whom `version` assigned to another
    persona at training (its reference frame's persona_id); None when either side is unknown."""
    import pandas as pd

    from models import registry
    from models.train import load_reference

    table = ws.feature_table("persona_assignment")
    if not table.exists():
        return None
    published = pd.read_parquet(table, columns=["person_id", "persona_id", "model_version"], filters=[("model_version", "==", int(champion))])
    if published.empty:
        return None
    try:
        reference = load_reference(ws, registry.version_run_id(ws, cfg.registered_name, version), columns=["person_id", "persona_id"])
    except Exception:  # no reference artifact (an older version): the share is unknown, not zero
        return None
    if "person_id" in reference.columns:
        reference = reference.set_index("person_id")
    before = published.drop_duplicates("person_id", keep="last").set_index("person_id")["persona_id"]
    common = before.index.intersection(reference.index)
    if not len(common):
        return None
    return float((reference.loc[common, "persona_id"].to_numpy() != before.loc[common].to_numpy()).mean())


def promotion_checks(ws, cfg, version: int) -> tuple[list[GateCheck], int | None]:
    """Every check of `version` against the current champion (gate, moved share, policy); returns
    (checks, champion version)."""
    from models import registry
    from monitoring.policy import load_policy

    name = cfg.model.registered_name
    current = registry.alias_version(ws, name, registry.CHAMPION)
    candidate = registry.run_metrics(ws, name, version)
    champion = registry.run_metrics(ws, name, current) if current is not None and current != version else None
    moved = moved_share(ws, cfg.model, version, current) if champion is not None else None
    checks = evaluate_gate(candidate, champion, cfg.model, moved)
    return checks + policy_checks(candidate, champion, load_policy(cfg.monitoring.policy)), current


def is_rejected(ws, name: str, version: int) -> bool:
    from models import registry

    try:
        return registry.client(ws).get_model_version(name, str(version)).tags.get(PROMOTION_TAG) == "rejected"
    except Exception:  # an unknown version is not a rejected one; set_alias reports it
        return False


def promote_or_hold(ws, cfg, version: int, reason: str, actor: str, *, force: bool = False, origin: str = "command", run_id: str | None = None) -> dict:
    """Promote `version` to champion, or hold it for review, or refuse it (gate failed, or it was
    rejected before). `force` (with a reason) overrides the gate and the review. Returns
    {"status": "promoted"|"held"|"unchanged", "checks": [...], "promotion": the held record or None}."""
    from models import registry

    name = cfg.model.registered_name
    known = {v.version for v in registry.versions(ws, name)}
    if version not in known:
        raise NotFoundError(f"Model '{name}' has no version {version} (versions: {sorted(known) or 'none'}); pick one from `personas models list`.")
    if is_rejected(ws, name, version):
        raise PromotionBlockedError(f"Version {version} of '{name}' was rejected in review and can never be champion; train or pick another version.")
    checks, current = promotion_checks(ws, cfg, version)
    if current == version:
        return {"status": "unchanged", "checks": describe(checks), "promotion": None}
    outcome = verdict(checks)
    if outcome == BLOCK and not force:
        failed = "; ".join(str(c) for c in checks if not c.passed)
        raise PromotionBlockedError(f"Version {version} fails the promotion gate ({failed}); keep the champion, or pass --force with --reason to override.")
    if outcome == REVIEW and not force:
        held = hold(ws, name, version, current, checks, actor, origin, reason, run_id)
        return {"status": "held", "checks": describe(checks), "promotion": held}
    label = "forced" if outcome != "promote" else "gate passed"
    registry.set_alias(ws, name, registry.CHAMPION, version, f"{reason} ({label}: {'; '.join(map(str, checks))})", actor=actor)
    return {"status": "promoted", "checks": describe(checks), "promotion": None}


# --- held promotions -------------------------------------------------------------------------------
def store(ws) -> Path:
    return ws.root / "governance" / "promotions.jsonl"


def _append(ws, entry: dict) -> None:
    from personaops.workspace import Workspace

    path = Workspace.ensure(store(ws))
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, default=str) + "\n")


def promotions(ws) -> list[dict]:
    """Every held promotion with its current state (oldest first); `history` lists its changes."""
    path = store(ws)
    if not path.is_file():
        return []
    by_id: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a crashed write
        current = by_id.setdefault(entry["id"], {"history": []})
        current.update({k: v for k, v in entry.items() if k != "history"})
        current["history"].append({k: entry[k] for k in ("status", "at", "actor", "reason") if k in entry})
    return list(by_id.values())


def pending(ws) -> list[dict]:
    return [p for p in promotions(ws) if p["status"] == "pending"]


def get(ws, promotion_id: str) -> dict:
    for p in promotions(ws):
        if p["id"] == promotion_id:
            return p
    known = [p["id"] for p in pending(ws)]
    raise NotFoundError(f"No held promotion {promotion_id!r} in {store(ws)}; pending: {', '.join(known) or 'none'} (see `personas promotion list`).")


def hold(ws, name: str, version: int, champion: int | None, checks: list[GateCheck], actor: str, origin: str, reason: str = "", run_id: str | None = None) -> dict:
    """Record a promotion waiting for review (one per version: holding it again returns the open one)."""
    for p in pending(ws):
        if p["model"] == name and p["version"] == version:
            return p
    entry = {
        "id": "PR-" + uuid.uuid4().hex[:10], "status": "pending", "model": name, "version": int(version),
        "champion": champion, "requested_by": actor, "origin": origin, "request_reason": reason, "run_id": run_id,
        "why": [str(c) for c in checks if not c.passed], "checks": describe(checks),
        "at": datetime.now(timezone.utc).isoformat(), "actor": actor,
    }  # fmt: skip
    _append(ws, entry)
    ws.audit("promotion_held", promotion=entry["id"], model=name, version=int(version), champion=champion, why=entry["why"], actor=actor, origin=origin, outcome="held")
    return {**entry, "history": [{"status": "pending", "at": entry["at"], "actor": actor}]}


def _decided(ws, promotion_id: str) -> dict:
    found = get(ws, promotion_id)
    if found["status"] != "pending":
        raise PersonaOpsError(f"Promotion {promotion_id} was already {found['status']}; see `personas promotion list --all`.")
    return found


def approve(ws, cfg, promotion_id: str, actor: str, reason: str, publish: Callable[[], dict] | None = None) -> dict:
    """Resume a held promotion: the version becomes champion, `publish()` publishes its
    assignments, and the decision is recorded and audited. A failed publish leaves it pending (the
    alias move is idempotent: approve again)."""
    from models import registry

    found = _decided(ws, promotion_id)
    if is_rejected(ws, found["model"], found["version"]):
        raise PromotionBlockedError(f"Version {found['version']} was rejected in review and can never be champion.")
    if not reason:
        raise PersonaOpsError("Approving a held promotion needs a --reason (kept in the audit log).")
    registry.set_alias(ws, found["model"], registry.CHAMPION, found["version"], f"approved {promotion_id}: {reason}", actor=actor)
    published = publish() if publish is not None else {}
    entry = {"id": promotion_id, "status": "approved", "at": datetime.now(timezone.utc).isoformat(), "actor": actor, "reason": reason, "published": published.get("rows")}
    _append(ws, entry)
    ws.audit("promotion_approved", promotion=promotion_id, model=found["model"], version=found["version"], actor=actor, reason=reason, published=published.get("rows"), outcome="approved")
    return {**found, **entry}


def reject(ws, promotion_id: str, actor: str, reason: str) -> dict:
    """Discard a held promotion: the version is tagged rejected in MLflow (never champion later),
    loses its challenger alias, and the decision is recorded and audited."""
    from models import registry

    found = _decided(ws, promotion_id)
    if not reason:
        raise PersonaOpsError("Rejecting a held promotion needs a --reason (kept in the audit log).")
    client = registry.client(ws)
    client.set_model_version_tag(found["model"], str(found["version"]), PROMOTION_TAG, "rejected")
    client.set_model_version_tag(found["model"], str(found["version"]), "personas.rejected_by", f"{promotion_id}: {actor}")
    if registry.alias_version(ws, found["model"], registry.CHALLENGER) == found["version"]:
        client.delete_registered_model_alias(found["model"], registry.CHALLENGER)
    entry = {"id": promotion_id, "status": "rejected", "at": datetime.now(timezone.utc).isoformat(), "actor": actor, "reason": reason}
    _append(ws, entry)
    ws.audit("promotion_rejected", promotion=promotion_id, model=found["model"], version=found["version"], actor=actor, reason=reason, outcome="rejected")
    return {**found, **entry}


@dataclass
class AutoPromotion:
    """What the pipeline decided for a newly trained version (flows/build_personas.py train)."""

    status: str  # promoted, held, kept (gate failed or rejected), unchanged
    checks: list[dict] = field(default_factory=list)
    promotion: dict | None = None


def auto_promote(ws, cfg, version: int, run_id: str) -> AutoPromotion:
    """The pipeline's promotion of a version it trained (with a champion already serving): promote
    when everything passes, hold when only review checks fail, keep the champion otherwise."""
    try:
        out = promote_or_hold(ws, cfg, version, "promotion gate passed", "pipeline", origin=f"run {run_id}", run_id=run_id)
    except PromotionBlockedError:
        checks, _ = promotion_checks(ws, cfg, version)
        return AutoPromotion("kept", describe(checks))
    return AutoPromotion(out["status"], out["checks"], out["promotion"])
