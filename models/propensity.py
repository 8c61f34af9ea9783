"""The opportunity amber flag: who is likely to take an expansion offer.

Label: conversion on one campaign (`insights.opportunity_campaign`, default `upgrade_offer`) among
the people actually exposed to it (holdout rows are a control group, not offers; people never
offered are unlabelled: they are scored, not trained on). The generated data has no plan-change
history, so conversion on the upgrade offer is the expansion outcome it honestly supports.
Model: the risk flag's calibrated classifier (HistGradientBoosting + isotonic, models/churn.py)
over the same inputs (persona model features, persona, intent mix, graph signals), trained on a
stratified share of the exposed people and judged on the held-out rest (ROC AUC, Brier, ECE).
Every person gets a probability: "if offered, how likely they are to convert".
Reasons: the inputs associated with converting among exposed people (standardised mean
difference, Welch t-test, Benjamini-Hochberg adjusted p < 0.05); for each person, those on which
they sit on the converting side, by contribution (effect x the person's standardised value).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.churn import ChurnModel, SparseInputs, input_columns, train_calibrated

MIN_EFFECT = 0.2  # |standardised mean difference| below this is not a reason, however significant
MIN_CONTRIBUTION = 0.1


def conversion_labels(exposures: pd.DataFrame, campaign: str) -> pd.Series:
    """Per person exposed to `campaign`: 1.0 if they converted on any exposure, else 0.0 (holdout
    rows left out). `exposures`: person_id, campaign, converted (0/1), optional cat__arm."""
    from personaops.features import exposed_only

    if exposures.empty or "campaign" not in exposures.columns:
        return pd.Series(dtype=float, name="converted")
    rows = exposed_only(exposures)
    rows = rows[rows["campaign"].astype(str) == campaign]
    converted = pd.to_numeric(rows["converted"], errors="coerce").fillna(0.0).clip(0, 1)
    return converted.groupby(rows["person_id"].astype(str)).max().rename("converted").rename_axis("person_id")


def train_opportunity_model(inputs: pd.DataFrame, converted: pd.Series, test_size: float = 0.3, seed: int = 42, max_signals: int = 60) -> ChurnModel:
    """The calibrated propensity model, trained on exposed people (see module doc)."""
    return train_calibrated(inputs, converted, test_size, seed, max_signals, what="opportunity labels", outcomes=("converted", "not converted"))


def conversion_effects(inputs: pd.DataFrame, converted: pd.Series, alpha: float = 0.05, chunk: int = 64) -> pd.DataFrame:
    """Per input column, over the labelled people: mean among converters and others, the
    standardised mean difference `effect` (pooled sd), Welch t-test p-value and its BH-adjusted
    `p_adjusted`; only columns with |effect| >= MIN_EFFECT and p_adjusted < alpha, strongest first.
    Computed `chunk` columns at a time (every statistic is per column): a float64 copy of all
    inputs was GBs at 100k people with thousands of graph signals. `inputs` may be a
    churn.SparseInputs (the signals sparse): the same table, its labelled persons' rows taken once
    (a row selection of the whole sparse matrix per chunk before). 64 columns a chunk (256 before):
    a chunk's float copies (labelled rows, converters, others) were ~0.4 GB at 100,000 people."""
    from scipy import stats
    from statsmodels.stats.multitest import multipletests

    y = converted.reindex(inputs.index)
    labelled = y.notna().to_numpy()
    yes = y[labelled].to_numpy() > 0.5
    empty = pd.DataFrame(columns=["column", "mean_converted", "mean_other", "effect", "p_value", "p_adjusted"])
    if yes.sum() < 2 or (~yes).sum() < 2 or not labelled.any() or not len(inputs.columns):
        return empty
    rows = np.flatnonzero(labelled)
    if isinstance(inputs, SparseInputs):  # the labelled persons' rows, taken once
        inputs = SparseInputs(inputs.base.iloc[rows], inputs.signals.take_rows(labelled))
        rows = None
    parts = []
    for start in range(0, len(inputs.columns), chunk):
        # SparseInputs: only this chunk's signal columns are made dense (the same cells)
        x = input_columns(inputs, list(inputs.columns[start : start + chunk]), rows).astype(float)
        a, b = x[yes], x[~yes]
        ma, mb = a.mean(), b.mean()
        pooled = np.sqrt((a.var(ddof=1).fillna(0) * (len(a) - 1) + b.var(ddof=1).fillna(0) * (len(b) - 1)) / (len(a) + len(b) - 2))
        effect = (ma - mb) / pooled.where(pooled > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = stats.ttest_ind(a.to_numpy(), b.to_numpy(), equal_var=False, nan_policy="omit").pvalue
        parts.append(pd.DataFrame({"column": x.columns, "mean_converted": ma.to_numpy(), "mean_other": mb.to_numpy(), "effect": effect.to_numpy(),
                                   "p_value": np.asarray(p, dtype=float)}))  # fmt: skip
        del x, a, b
    table = pd.concat(parts, ignore_index=True).dropna(subset=["effect"])
    if table.empty:
        return empty
    table["p_value"] = table["p_value"].fillna(1.0)
    table["p_adjusted"] = multipletests(table["p_value"], method="fdr_bh")[1]
    table = table[(table["effect"].abs() >= MIN_EFFECT) & (table["p_adjusted"] < alpha)]
    return table.reindex(table["effect"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def reason_name(column: str, persona_names: dict | None = None, intent_labels: dict | None = None, direction: float = 1.0) -> str:
    """A readable name for an input column: `persona:<name>`, the graph signal, `intent mix:<label>`,
    or `<feature> high|low`."""
    if column.startswith("persona_"):
        key = column[len("persona_") :]
        return f"persona:{(persona_names or {}).get(key, key)}"
    if column.startswith("sig_"):
        return column[len("sig_") :]
    if column.startswith("mix_intent_"):
        key = column[len("mix_intent_") :]
        return f"intent mix:{(intent_labels or {}).get(key, key)} {'high' if direction > 0 else 'low'}"
    return f"{column.removeprefix('mix_')} {'high' if direction > 0 else 'low'}"


def opportunity_reasons(inputs: pd.DataFrame, effects: pd.DataFrame, n: int = 3, persona_names: dict | None = None,
                        intent_labels: dict | None = None, rows: int = 1 << 16, chunk: int = 32) -> pd.Series:  # fmt: skip
    """Per person: up to `n` conversion-associated inputs on which they sit on the converting side
    ("; "-joined), largest contribution first (effect x the person's standardised value).
    The column means and standard deviations come `chunk` columns of every person at a time (256
    columns were +0.66 GB for std's temporaries at 300,000 people), the z-scores,
    contributions and their ranking `rows` persons at a time: every one is per column or per
    person, so the same floats and order as on the whole persons x effect-columns frame, which
    with its float copies and argsort was the flags' peak (~0.8 GB at 100,000 people, ~180 columns;
    the columns grow with the people)."""
    if effects.empty:
        return pd.Series("", index=inputs.index, dtype="string")
    cols = [c for c in effects["column"] if c in inputs.columns]

    means, sds = [], []
    for start in range(0, len(cols), chunk):
        x = input_columns(inputs, cols[start : start + chunk]).astype(float)
        means.append(x.mean())
        sds.append(x.std(ddof=0))
        del x
    mean = pd.concat(means) if means else pd.Series(dtype=float)
    sd = (pd.concat(sds) if sds else pd.Series(dtype=float)).replace(0, np.nan)
    effect = effects.set_index("column").loc[cols, "effect"].to_numpy()
    # a 0/1 column (persona, graph signal) is a reason when shown, never by its absence
    absent_only = np.asarray([c.startswith(("persona_", "sig_")) and e < 0 for c, e in zip(cols, effect)])
    names = np.asarray([reason_name(c, persona_names, intent_labels, np.sign(e)) for c, e in zip(cols, effect)], dtype=object)
    out = []
    for start in range(0, len(inputs), rows):
        at = np.arange(start, min(start + rows, len(inputs)))
        x = input_columns(inputs, cols, at).astype(float)
        z = ((x - mean) / sd).fillna(0.0).to_numpy()
        del x
        contribution = z * effect  # > 0: the person's value points towards converting
        del z
        contribution[:, absent_only] = 0.0
        order = np.argsort(-contribution, axis=1)[:, :n]
        for row, idx in zip(contribution, order):
            out.append("; ".join(names[j] for j in idx if row[j] >= MIN_CONTRIBUTION))
        del contribution, order
    return pd.Series(out, index=inputs.index, dtype="string")


def opportunity_flags(probability: pd.Series, reasons: pd.Series, threshold: float, as_of: pd.Timestamp) -> pd.DataFrame:
    """The opportunity table per person: opportunity_probability (0-1), opportunity_flag ("amber"
    at or above `threshold`, else "none"), opportunity_reasons (like the risk reasons, for everyone
    who shows a converting trait)."""
    out = pd.DataFrame({"opportunity_probability": probability.astype(float)})
    amber = out["opportunity_probability"] >= threshold
    out["opportunity_flag"] = pd.Series(np.where(amber, "amber", "none"), index=out.index, dtype="string")
    out["opportunity_reasons"] = reasons.reindex(out.index).fillna("").astype("string")
    out["event_timestamp"] = as_of
    out["created"] = as_of
    return out.rename_axis("person_id").reset_index()
