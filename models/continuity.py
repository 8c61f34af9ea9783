"""Persona continuity: a new model version keeps the previous version's persona ids (and names)
for the personas that are still there, by Hungarian matching on membership overlap."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class Continuity:
    persona_ids: list[int]  # per new centroid
    matched: dict[int, float] = field(default_factory=dict)  # kept persona id -> Jaccard overlap
    new: list[int] = field(default_factory=list)  # ids given to personas with no predecessor
    vanished: list[int] = field(default_factory=list)  # previous ids with no successor
    agreement: float | None = None  # ARI between old and new assignments on common people


def match_personas(new_labels: pd.Series, k: int, previous: pd.Series | None, min_jaccard: float) -> Continuity:
    """`new_labels`: centroid index per person (-1 = unassigned); `previous`: persona id per person
    under the previous version. Returns the persona id for each new centroid."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score

    if previous is None or previous.empty:
        return Continuity(persona_ids=list(range(k)), new=list(range(k)))
    common = new_labels.index.intersection(previous.index)
    a, b = new_labels.loc[common], previous.loc[common]
    old_ids = sorted(int(i) for i in previous.unique() if i >= 0)
    jaccard = np.zeros((k, len(old_ids)))
    for i in range(k):
        members = set(a.index[a == i])
        for j, old in enumerate(old_ids):
            before = set(b.index[b == old])
            union = len(members | before)
            jaccard[i, j] = len(members & before) / union if union else 0.0
    rows, cols = linear_sum_assignment(-jaccard) if len(old_ids) else (np.array([], int), np.array([], int))
    ids: list[int | None] = [None] * k
    matched = {}
    for i, j in zip(rows, cols):
        if jaccard[i, j] >= min_jaccard:
            ids[i] = old_ids[j]
            matched[old_ids[j]] = round(float(jaccard[i, j]), 4)
    next_id = max([int(previous.max()), -1]) + 1
    new = []
    for i in range(k):
        if ids[i] is None:
            ids[i] = next_id
            new.append(next_id)
            next_id += 1
    vanished = [o for o in old_ids if o not in matched]
    agreement = float(adjusted_rand_score(b, a)) if len(common) > 1 else None
    return Continuity(persona_ids=[int(i) for i in ids], matched=matched, new=new, vanished=vanished, agreement=agreement)
