"""Column drift against reference statistics computed once per model version.

Evidently recomputes the reference side of every test on every report run. Here the reference
side is summarised once per champion version (`ReferenceProfile`, cached in the workspace under
`monitoring/reference/v<version>/`) and each monitoring pass only summarises the current frame.
The tests are Evidently's defaults for a reference of more than 1,000 rows, with its thresholds:

- a column with more than 5 distinct values: Wasserstein distance normed by the reference
  standard deviation (>= 0.1 = drift), computed from quantile functions on a grid of
  `QUANTILES` levels (the reference's stored, the current's from one sort per column);
- 5 or fewer distinct values: Jensen-Shannon distance of the value shares (>= 0.1 = drift).

Missing and infinite values are left out of both sides, as Evidently does. Nothing is sampled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

QUANTILES = 2000
WASSERSTEIN_THRESHOLD = 0.1
JENSEN_SHANNON_THRESHOLD = 0.1
MAX_CATEGORIES = 5


@dataclass
class ReferenceProfile:
    """The reference side of every drift test, per column; built once per model version."""

    model_version: int | None
    rows: int
    columns: list[str]
    quantiles: dict[str, np.ndarray] = field(default_factory=dict)  # continuous columns
    std: dict[str, float] = field(default_factory=dict)
    shares: dict[str, dict[float, float]] = field(default_factory=dict)  # low-cardinality columns
    missing: dict[str, float] = field(default_factory=dict)
    centroids: dict[int, tuple[np.ndarray, float]] = field(default_factory=dict)  # persona -> (mean, spread)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f"q::{c}": q for c, q in self.quantiles.items()}
        arrays.update({f"c::{p}": m for p, (m, _) in self.centroids.items()})
        np.savez(folder / "profile.npz", **arrays)
        meta = {
            "model_version": self.model_version, "rows": self.rows, "columns": self.columns, "std": self.std,
            "shares": {c: [[float(k), v] for k, v in s.items()] for c, s in self.shares.items()},
            "missing": self.missing, "spreads": {str(p): s for p, (_, s) in self.centroids.items()},
        }  # fmt: skip
        (folder / "profile.json").write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "ReferenceProfile":
        meta = json.loads((folder / "profile.json").read_text(encoding="utf-8"))
        with np.load(folder / "profile.npz") as arrays:
            quantiles = {k[3:]: arrays[k] for k in arrays.files if k.startswith("q::")}
            centroids = {int(k[3:]): (arrays[k], meta["spreads"][k[3:]]) for k in arrays.files if k.startswith("c::")}
        return cls(
            model_version=meta["model_version"], rows=meta["rows"], columns=meta["columns"], quantiles=quantiles, std=meta["std"],
            shares={c: {k: v for k, v in pairs} for c, pairs in meta["shares"].items()}, missing=meta["missing"], centroids=centroids,
        )  # fmt: skip


def _levels() -> np.ndarray:
    return (np.arange(QUANTILES) + 0.5) / QUANTILES


def _clean(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def _quantile_function(sorted_values: np.ndarray) -> np.ndarray:
    """The empirical quantile function (lower inverse CDF) at the grid levels."""
    n = len(sorted_values)
    return sorted_values[np.minimum((_levels() * n).astype(np.int64), n - 1)]


def build_profile(frame: pd.DataFrame, columns: list[str], model_version: int | None = None, representation: np.ndarray | None = None, labels: np.ndarray | None = None) -> ReferenceProfile:
    """Summarise the reference frame (and, if given, each persona's mean representation and
    spread) for later drift checks."""
    profile = ReferenceProfile(model_version=model_version, rows=len(frame), columns=list(columns))
    for column in columns:
        raw = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
        values = _clean(raw)
        profile.missing[column] = float(1 - len(values) / max(len(raw), 1))
        uniques, counts = np.unique(values, return_counts=True)
        if len(uniques) <= MAX_CATEGORIES:
            profile.shares[column] = {float(u): float(c) / len(raw) for u, c in zip(uniques, counts)}
        else:
            profile.quantiles[column] = _quantile_function(np.sort(values))
            profile.std[column] = float(np.std(values))
    if representation is not None and labels is not None:
        for persona in sorted(set(labels.tolist())):
            if persona < 0:
                continue
            members = representation[labels == persona]
            mean = members.mean(axis=0)
            profile.centroids[int(persona)] = (mean, float(np.sqrt(((members - mean) ** 2).sum(axis=1).mean())) or 1e-9)
    return profile


def _jensen_shannon(reference: dict[float, float], values: np.ndarray, rows: int) -> float:
    """Jensen-Shannon distance (natural log, shares renormalised) as scipy.spatial.distance computes it."""
    uniques, counts = np.unique(values, return_counts=True)
    current = dict(zip(uniques.tolist(), (counts / max(rows, 1)).tolist()))
    keys = sorted(set(reference) | set(current))
    return _js(np.array([reference.get(k, 0.0) for k in keys]), np.array([current.get(k, 0.0) for k in keys]))


def column_drift(profile: ReferenceProfile, current: pd.DataFrame, drift_share: float = 0.5) -> dict:
    """Per-column drift of `current` against the profile: method, score, threshold, drifted;
    plus the share of drifted columns and whether it reaches `drift_share` (Evidently's rule)."""
    scores: dict[str, dict] = {}
    for column in profile.columns:
        if column not in current.columns:
            continue
        raw = current[column].to_numpy(dtype=np.float64, na_value=np.nan)
        values = _clean(raw)
        if len(values) == 0:
            scores[column] = {"method": "empty", "score": None, "threshold": None, "drifted": True}
            continue
        if column in profile.shares:
            score = _jensen_shannon(profile.shares[column], values, len(raw))
            scores[column] = {"method": "jensenshannon", "score": score, "threshold": JENSEN_SHANNON_THRESHOLD, "drifted": score >= JENSEN_SHANNON_THRESHOLD}
        else:
            cur_q = _quantile_function(np.sort(values))
            score = float(np.abs(profile.quantiles[column] - cur_q).mean() / max(profile.std[column], 0.001))
            scores[column] = {"method": "wasserstein", "score": score, "threshold": WASSERSTEIN_THRESHOLD, "drifted": score >= WASSERSTEIN_THRESHOLD}
    drifted = sorted(c for c, s in scores.items() if s["drifted"])
    share = len(drifted) / len(scores) if scores else 0.0
    return {"drifted_share": share, "drifted_columns": drifted, "drift_detected": share >= drift_share, "column_scores": scores, "rows": len(current)}


def centroid_shift(profile: ReferenceProfile, current_x: np.ndarray, current_labels: np.ndarray) -> dict:
    """Per persona: distance between its training and current mean representation, in units of
    its training spread (root-mean-square distance of members to their mean)."""
    out = {}
    for persona, (mean, spread) in profile.centroids.items():
        members = current_x[current_labels == persona]
        if len(members):
            out[int(persona)] = round(float(np.linalg.norm(mean - members.mean(axis=0)) / spread), 4)
    return {"by_persona": out, "max_shift": max(out.values()) if out else 0.0}


def profile_change(reference: ReferenceProfile, before: ReferenceProfile, now: ReferenceProfile) -> dict[str, float]:
    """Per column: how far the current data moved between two passes, on the drift tests' own
    scales: the Wasserstein distance between the two passes' quantile functions normed by the
    *reference* standard deviation (as `column_drift` norms it), or the Jensen-Shannon distance of
    their value shares; plus the change of the missing share. A column summarised differently in
    the two passes (shares in one, quantiles in the other) or missing from either is `inf`."""
    out: dict[str, float] = {}
    for column in reference.columns:
        if column in before.quantiles and column in now.quantiles:
            scale = max(reference.std.get(column, np.std(before.quantiles[column])), 0.001)
            moved = float(np.abs(before.quantiles[column] - now.quantiles[column]).mean() / scale)
        elif column in before.shares and column in now.shares:
            keys = sorted(set(before.shares[column]) | set(now.shares[column]))
            p = np.array([before.shares[column].get(k, 0.0) for k in keys])
            q = np.array([now.shares[column].get(k, 0.0) for k in keys])
            moved = _js(p, q) if p.sum() > 0 and q.sum() > 0 else (0.0 if p.sum() == q.sum() else float("inf"))
        elif column in before.missing and column in now.missing and before.missing[column] == now.missing[column] == 1.0:
            moved = 0.0  # empty in both
        else:
            moved = float("inf")
        missing = abs(before.missing.get(column, float("nan")) - now.missing.get(column, float("nan")))
        out[column] = max(moved, missing) if np.isfinite(missing) else float("inf")
    return out


def _js(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance of two share vectors (renormalised; natural log), as scipy computes it."""
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log(a[nz] / m[nz])).sum())

    return float(np.sqrt(max((kl(p) + kl(q)) / 2, 0.0)))
