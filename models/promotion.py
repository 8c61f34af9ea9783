"""The promotion gate: a challenger becomes champion only when its quality and stability pass
absolute floors and are not worse than the champion's beyond a tolerance."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from personaops.config import ModelConfig


@dataclass
class GateCheck:
    name: str
    value: float
    threshold: float
    passed: bool

    def __str__(self) -> str:
        return f"{self.name} {self.value:.3f} {'>=' if self.passed else '<'} {self.threshold:.3f}"


def evaluate_gate(candidate: dict[str, float], champion: dict[str, float] | None, cfg: ModelConfig) -> list[GateCheck]:
    """Checks on MLflow metrics of the candidate (and the champion, when there is one)."""
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
    return checks


def gate_passed(checks: list[GateCheck]) -> bool:
    return all(c.passed for c in checks)


def describe(checks: list[GateCheck]) -> list[dict]:
    return [asdict(c) for c in checks]
