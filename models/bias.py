"""Bias audit of persona assignments across sensitive attributes (fairlearn).

For each sensitive attribute and each persona: the demographic-parity difference and ratio of
"assigned to this persona" across the attribute's groups. Numeric attributes with many values
are cut into quartile bands; groups smaller than `min_group` people are left out (their rates
are noise). Sensitive attributes are read for this audit only, never as model inputs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def audit_groups(values: pd.Series) -> pd.Series:
    """Group labels of one sensitive attribute (numeric with > 10 values -> quartile bands)."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().mean() > 0.9 and numeric.nunique() > 10:
        return pd.qcut(numeric, 4, duplicates="drop").astype(str).where(numeric.notna())
    return values.astype(object).where(values.notna())


def persona_parity(assignments: pd.Series, sensitive: pd.DataFrame, min_group: int = 30) -> dict:
    """`assignments`: persona_id by person_id; `sensitive`: attributes by person_id.
    Returns {"max_dp_difference", "min_dp_ratio", "by_attribute": {attr: {persona: {...}}}}.

    The figures are fairlearn's `demographic_parity_difference` / `demographic_parity_ratio` of
    "assigned to this persona" (`selection_rate` per group: selected / group size; the largest rate
    minus the smallest, the smallest over the largest), counted here with one `bincount` per persona
    over the attribute's group codes: fairlearn builds a `MetricFrame` (a pandas groupby) per call,
    two calls per persona and attribute, 6.6 s of a 35,000-person training and growing with the
    persons. The counts are integers, so each rate is the same float64 division and the results
    are equal bit for bit (tests/unit/test_models.py checks them against fairlearn)."""
    report: dict = {"by_attribute": {}, "max_dp_difference": 0.0, "min_dp_ratio": 1.0}
    for attr in sensitive.columns:
        groups = audit_groups(sensitive[attr]).reindex(assignments.index)
        sizes = groups.value_counts()
        keep = groups.isin(sizes[sizes >= min_group].index)
        if keep.sum() == 0 or groups[keep].nunique() < 2:
            continue
        g, a = groups[keep], assignments[keep].to_numpy()
        codes, labels = pd.factorize(g, sort=True)  # the groups in the order groupby gives them
        members = np.bincount(codes, minlength=len(labels)).astype(np.float64)
        per_persona = {}
        for persona in sorted(p for p in pd.unique(a) if p >= 0):
            rates = np.bincount(codes[a == persona], minlength=len(labels)) / members  # selection rate per group
            diff = float(rates.max() - rates.min())
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = float(rates.min() / rates.max())
            per_persona[int(persona)] = {
                "dp_difference": round(diff, 4), "dp_ratio": round(ratio, 4) if np.isfinite(ratio) else None,
                "rates": dict(zip(labels.tolist(), np.round(rates, 4).tolist())),
            }  # fmt: skip
            report["max_dp_difference"] = max(report["max_dp_difference"], diff)
            if np.isfinite(ratio):
                report["min_dp_ratio"] = min(report["min_dp_ratio"], ratio)
        report["by_attribute"][attr] = per_persona
    return report


def label_gaps(assignments: pd.Series, sensitive: pd.DataFrame, labels: pd.DataFrame, min_group: int = 30) -> dict:
    """Within each persona, each label's rate per sensitive group and the largest gap between
    groups (0-1): do people of one persona fare differently by group? Groups under `min_group`
    people within the persona are left out."""
    report: dict = {"by_label": {}, "max_gap": 0.0}
    for label in labels.columns:
        known = labels[label].dropna()
        per_attr = {}
        for attr in sensitive.columns:
            groups = audit_groups(sensitive[attr]).reindex(known.index)
            persona = assignments.reindex(known.index)
            frame = pd.DataFrame({"y": known.astype(float), "g": groups, "p": persona}).dropna()
            per_persona = {}
            for p, part in frame[frame["p"] >= 0].groupby("p"):
                sizes = part["g"].value_counts()
                part = part[part["g"].isin(sizes[sizes >= min_group].index)]
                if part["g"].nunique() < 2:
                    continue
                rates = part.groupby("g")["y"].mean()
                gap = float(rates.max() - rates.min())
                per_persona[int(p)] = {"rates": rates.round(4).to_dict(), "gap": round(gap, 4)}
                report["max_gap"] = max(report["max_gap"], gap)
            if per_persona:
                per_attr[attr] = per_persona
        if per_attr:
            report["by_label"][label] = per_attr
    return report
