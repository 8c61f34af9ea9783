"""The promotion gate: a challenger becomes champion only when its stability and persona sizes
pass absolute floors and its quality, stability and bias (largest demographic-parity difference
of persona assignment across sensitive groups) are not worse than the champion's beyond a
tolerance."""

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
        upper = self.name.startswith("bias")  # bias checks are ceilings, the others floors
        sign = ("<=" if self.passed else ">") if upper else (">=" if self.passed else "<")
        return f"{self.name} {self.value:.3f} {sign} {self.threshold:.3f}"


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
        if "bias_max_dp_difference" in candidate and "bias_max_dp_difference" in champion:
            ceiling = champion["bias_max_dp_difference"] + cfg.bias_tolerance
            value = candidate["bias_max_dp_difference"]
            checks.append(GateCheck("bias_max_dp_difference_vs_champion", value, ceiling, value <= ceiling))
    return checks


def gate_passed(checks: list[GateCheck]) -> bool:
    return all(c.passed for c in checks)


def describe(checks: list[GateCheck]) -> list[dict]:
    return [asdict(c) for c in checks]
