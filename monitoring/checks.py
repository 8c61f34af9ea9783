"""Monitoring checks beyond Evidently's column drift: persona mix, per-persona centroid shift,
text-embedding drift (Evidently's embeddings drift), data quality and bias.

Each function returns a JSON-able dict; the policy (monitoring/policy.py) reads them by name.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def persona_mix(reference: pd.Series, current: pd.Series) -> dict:
    """Persona shares at training vs now: chi-square test on the counts, total variation distance
    (0-1, half the L1 distance between the share vectors) and the shares themselves."""
    from scipy.stats import chi2_contingency

    personas = sorted(set(reference.unique()) | set(current.unique()))
    ref = reference.value_counts().reindex(personas, fill_value=0)
    cur = current.value_counts().reindex(personas, fill_value=0)
    table = np.vstack([ref.to_numpy(), cur.to_numpy()])
    table = table[:, table.sum(axis=0) > 0]
    p_value = float(chi2_contingency(table)[1]) if table.shape[1] > 1 else 1.0
    ref_share, cur_share = ref / max(ref.sum(), 1), cur / max(cur.sum(), 1)
    return {
        "p_value": p_value,
        "total_variation": float(0.5 * (ref_share - cur_share).abs().sum()),
        "reference_share": {int(k): round(float(v), 4) for k, v in ref_share.items()},
        "current_share": {int(k): round(float(v), 4) for k, v in cur_share.items()},
        "smallest_current_share": float(cur_share[[p for p in personas if p >= 0]].min()) if any(p >= 0 for p in personas) else 0.0,
    }


def centroid_shift(reference_x: np.ndarray, reference_labels: np.ndarray, current_x: np.ndarray, current_labels: np.ndarray) -> dict:
    """Per persona: distance between its training and current mean representation, in units of its
    training spread (root-mean-square distance of members to their mean)."""
    out = {}
    for persona in sorted(set(reference_labels.tolist()) & set(current_labels.tolist())):
        if persona < 0:
            continue
        ref, cur = reference_x[reference_labels == persona], current_x[current_labels == persona]
        spread = float(np.sqrt(((ref - ref.mean(axis=0)) ** 2).sum(axis=1).mean())) or 1e-9
        out[int(persona)] = round(float(np.linalg.norm(ref.mean(axis=0) - cur.mean(axis=0)) / spread), 4)
    return {"by_persona": out, "max_shift": max(out.values()) if out else 0.0}


def embedding_drift(reference: np.ndarray, current: np.ndarray, sample: int, seed: int, snapshots: list | None = None, drawn: tuple[int, int] | None = None,
                    report: bool = True) -> dict:  # fmt: skip
    """Evidently's embeddings drift (its default method: a classifier telling the two samples
    apart; score = ROC AUC, 0.5 = indistinguishable) on up to `sample` vectors per side (uniform
    without replacement, seeded). The Evidently snapshot is appended to `snapshots` if given.
    `drawn`: (reference texts, current texts) when `reference` and `current` are already that
    seeded sample (monitoring/monitor.py draws it without stacking every vector).
    `report=False`: the same score from Evidently's drift method alone (`embedding_score`), without
    the report and its t-SNE projection (most of the check's cost); no snapshot."""
    if min(drawn or (len(reference), len(current))) < 20:
        return {"score": None, "reason": "fewer than 20 texts on one side"}
    if drawn is not None:
        ref, cur = reference, current
    else:
        rng = np.random.default_rng(seed)
        ref = reference[rng.choice(len(reference), size=min(sample, len(reference)), replace=False)]
        cur = current[rng.choice(len(current), size=min(sample, len(current)), replace=False)]
    if not report:
        return {"score": embedding_score(ref, cur), "method": "model (ROC AUC)", "reference_texts": len(ref), "current_texts": len(cur)}
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift

    cols = [f"e{i}" for i in range(ref.shape[1])]
    definition = DataDefinition(numerical_columns=cols, embeddings={"text": cols})
    snapshot = Report([EmbeddingsDrift(embeddings_name="text")]).run(
        current_data=Dataset.from_pandas(pd.DataFrame(cur, columns=cols), data_definition=definition),
        reference_data=Dataset.from_pandas(pd.DataFrame(ref, columns=cols), data_definition=definition),
        name="text embedding drift",
        tags=["embedding_drift"],
    )
    if snapshots is not None:
        snapshots.append(snapshot)
    score = next(float(m["value"]) for m in snapshot.dict()["metrics"] if m["config"].get("type", "").endswith("EmbeddingsDrift"))
    return {"score": score, "method": "model (ROC AUC)", "reference_texts": len(ref), "current_texts": len(cur)}


def embedding_score(reference: np.ndarray, current: np.ndarray) -> float:
    """The value Evidently's `EmbeddingsDrift` reports, without its report: the metric's default
    drift method (`ModelDriftMethod`, bootstrap below 1,000 reference rows, as the metric picks it;
    seeded split and classifier) called on the frames the report hands it (`Dataset.from_pandas`
    then `as_dataframe`, as the metric's input). The report computes a t-SNE projection of up to
    2,500 vectors a side for its plot besides; the score does not use it. (A re-implementation of
    the method's steps on the plain frames differed from the report's value by 8e-6 at 100k.)"""
    from evidently import DataDefinition, Dataset
    from evidently.metrics.embeddings import ModelDriftMethod

    cols = [f"e{i}" for i in range(reference.shape[1])]
    definition = DataDefinition(numerical_columns=cols, embeddings={"text": cols})
    ref, cur = (Dataset.from_pandas(pd.DataFrame(x, columns=cols), data_definition=definition).as_dataframe()[cols] for x in (reference, current))
    score, _, _ = ModelDriftMethod(bootstrap=ref.shape[0] < 1000)(cur, ref)
    return float(score)


def data_quality(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], ingest: list[dict], previous_ingest: list[dict] | None, profile: pd.DataFrame | None) -> dict:
    """Missing-value shares (model features, training vs now), new categories of CRM attributes,
    quarantine share and accepted-row change per source vs the previous run.

    Missing shares are measured over the people with any activity (a non-zero value in some feature
    that does not come from the CRM profile): people who left, or joined with nothing yet, are silent,
    and their empty features are population turnover, not a pipeline fault. The silent shares are
    reported beside (`silent_share`); a source that stops delivering shows in `sources`."""
    profile_columns = set(profile.columns) if profile is not None else set()
    activity = [c for c in columns if c not in profile_columns and c.split("__", 1)[0] not in profile_columns]
    silent_ref, silent_cur = (_silent(frame, activity) for frame in (reference, current))
    # fewer than 20 active people on a side (everything silent): measure over everyone
    ref_rows = reference.loc[~silent_ref] if (~silent_ref).sum() >= 20 else reference
    cur_rows = current.loc[~silent_cur] if (~silent_cur).sum() >= 20 else current
    missing_ref = ref_rows[columns].isna().mean()
    missing_cur = cur_rows.reindex(columns=columns).isna().mean()
    increase = (missing_cur - missing_ref).clip(lower=0)
    known = {tuple(c.split("__", 1)) for c in columns if "__" in c}  # (attribute, value slug) seen in training
    new_categories: dict[str, list[str]] = {}
    if profile is not None:
        import re

        for attr in {a for a, _ in known}:
            if attr in profile.columns:
                values = profile[attr].dropna().astype(str).unique()
                slugs = {re.sub(r"[^a-z0-9]+", "_", v.lower()).strip("_") or "blank": v for v in values}
                seen = {v for a, v in known if a == attr}
                fresh = sorted(v for slug, v in slugs.items() if slug not in seen and (profile[attr] == v).mean() >= 0.01)
                if fresh:
                    new_categories[attr] = fresh
    before = {s["source"]: s for s in previous_ingest or []}
    sources = {}
    for s in ingest:
        prev = before.get(s["source"])
        sources[s["source"]] = {
            "rows_in": s["rows_in"],
            "quarantine_share": round(s["quarantined"] / s["rows_in"], 4) if s["rows_in"] else 0.0,
            "accepted_change": round(s["accepted"] / prev["accepted"] - 1, 4) if prev and prev["accepted"] else None,
        }
    return {
        "missing_increase": {c: round(float(v), 4) for c, v in increase[increase > 0.01].items()},
        "max_missing_increase": float(increase.max()) if len(increase) else 0.0,
        "silent_share": {"reference": round(float(silent_ref.mean()), 4) if len(silent_ref) else 0.0,
                         "current": round(float(silent_cur.mean()), 4) if len(silent_cur) else 0.0},  # fmt: skip
        "new_categories": new_categories,
        "sources": sources,
        "max_quarantine_share": max((v["quarantine_share"] for v in sources.values()), default=0.0),
        "max_accepted_change": max((abs(v["accepted_change"]) for v in sources.values() if v["accepted_change"] is not None), default=0.0),
    }


def _silent(frame: pd.DataFrame, activity: list[str]) -> pd.Series:
    """People with nothing but missing values and zeros in the activity features (no events,
    tickets or surveys: counts are 0, recencies and means missing)."""
    if not activity:
        return pd.Series(False, index=frame.index)
    values = frame.reindex(columns=activity).apply(pd.to_numeric, errors="coerce")
    return (values.isna() | (values == 0)).all(axis=1)


def group_representation(before: pd.DataFrame, now: pd.DataFrame, groups: pd.DataFrame, z_alert: float = 3.5, min_rows: int = 100) -> dict:
    """Biased sampling: has any group's share of a source's rows moved since the earlier batches?

    `before`/`now`: one row per source row with columns `source`, `person_id` (the earlier batches
    in the lake and this run's); `groups`: group attributes by person_id (sensitive attributes and
    CRM segments such as region). For each (source, attribute, group) the share of the source's
    rows that belong to the group is compared; rows cluster by person, so the standard error of a
    share is the person-level (ratio-estimator) one, and a shift counts only when it is both
    practically large and |z| >= `z_alert` (about a 5% family-wise false-alarm rate over 60 cells).
    `max_shift` is the largest counted absolute shift (0 when none counts)."""

    def cells(rows: pd.DataFrame) -> dict:
        out = {}
        for source, part in rows.groupby("source"):
            counts = part.groupby("person_id").size()
            total = counts.sum()
            if total < min_rows:
                continue
            values = counts.to_numpy(float)
            for attr in groups.columns:
                labels = groups[attr].reindex(counts.index).astype("string")
                for group in labels.dropna().unique():
                    member = (labels == group).to_numpy(dtype=bool, na_value=False)  # a person without this attribute is in no group of it
                    share = values[member].sum() / total
                    var = float(((values * (member - share)) ** 2).sum() / total**2)
                    out[(source, attr, str(group))] = (float(share), var)
        return out

    if before is None or now is None or not len(before) or not len(now) or groups is None or not len(groups.columns):
        return {"max_shift": 0.0, "shifts": [], "cells": 0, "z_alert": z_alert, "note": "no earlier batches to compare with"}
    c_before, c_now = cells(before), cells(now)
    shifts = []
    for key in sorted(c_before.keys() & c_now.keys()):
        (p0, v0), (p1, v1) = c_before[key], c_now[key]
        z = (p1 - p0) / float(np.sqrt(v0 + v1)) if v0 + v1 > 0 else 0.0
        shifts.append({"source": key[0], "attribute": key[1], "group": key[2], "share_before": round(p0, 4), "share_now": round(p1, 4),
                       "shift": round(p1 - p0, 4), "z": round(z, 2)})  # fmt: skip
    counted = [s for s in shifts if abs(s["z"]) >= z_alert]
    counted.sort(key=lambda s: -abs(s["shift"]))
    return {
        "max_shift": abs(counted[0]["shift"]) if counted else 0.0,
        "shifts": counted[:10],
        "largest_z": max((abs(s["z"]) for s in shifts), default=0.0),
        "cells": len(shifts),
        "z_alert": z_alert,
    }
