"""Answers to the business questions, from the run's persona graph and insight tables.

- campaign_uplift: per persona, exposed count, conversion rate, and uplift against the holdout
  (people of the same persona held out of the campaign, conversion still measured), with a 95%
  Newcombe interval and a two-proportion test; ranked by uplift.
- churn_signals: graph signals (intents, transitions, 3-step sequences, co-occurrences, event
  types) ranked by association with churn within personas: Mantel-Haenszel odds ratio stratified
  by persona, its 95% interval, the Cochran-Mantel-Haenszel p-value, Benjamini-Hochberg adjusted.
  Signals shown by nearly the same people (Jaccard >= 0.8) are reported once, the others as `same_as`;
  a signal that never varies within a persona (a pure persona marker) is not ranked.
- persona_intents: the intents of a persona's tickets and survey answers, with lift vs everyone.
- persona_changes: what changed for a persona between the last two runs' summaries.

Run-level tables live in `lake/insights/run_id=<run>/` beside `lake/graph/run_id=<run>/`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from personaops.errors import NotFoundError
from personaops.workspace import Workspace

SAME_PEOPLE_JACCARD = 0.8


# --- pure statistics ---------------------------------------------------------------------------
def campaign_uplift(outcomes: pd.DataFrame, assignments: pd.DataFrame, campaign: str) -> pd.DataFrame:
    """Per persona for one campaign: exposed, conversion_rate, holdout, holdout_rate, uplift
    (difference of rates, 0-1 points), ci_low/ci_high (95% Newcombe), p_value; ranked by uplift.

    outcomes: person_id, campaign, holdout (bool), converted (0/1) — one row per person and arm;
    assignments: person_id, persona_id, persona_name."""
    from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep

    rows = outcomes[outcomes["campaign"] == campaign]
    if rows.empty:
        known = ", ".join(sorted(outcomes["campaign"].unique())) or "none"
        raise NotFoundError(f"Campaign {campaign!r} has no exposures in the latest run; known campaigns: {known}.")
    rows = rows.merge(assignments[["person_id", "persona_id", "persona_name"]], on="person_id", how="inner")
    out = []
    for (pid, name), g in rows.groupby(["persona_id", "persona_name"]):
        exp, hold = g[~g["holdout"]], g[g["holdout"]]
        n1, c1, n0, c0 = len(exp), int(exp["converted"].sum()), len(hold), int(hold["converted"].sum())
        rec = {"persona_id": int(pid), "persona_name": str(name), "exposed": n1, "conversions": c1,
               "conversion_rate": c1 / n1 if n1 else np.nan, "holdout": n0, "holdout_conversions": c0,
               "holdout_rate": c0 / n0 if n0 else np.nan, "uplift": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan}  # fmt: skip
        if n1 and n0:
            rec["uplift"] = rec["conversion_rate"] - rec["holdout_rate"]
            low, high = confint_proportions_2indep(c1, n1, c0, n0, method="newcomb", compare="diff")
            rec["ci_low"], rec["ci_high"] = float(low), float(high)
            rec["p_value"] = float(test_proportions_2indep(c1, n1, c0, n0, method="score", compare="diff").pvalue)
        out.append(rec)
    table = pd.DataFrame(out)
    # No holdout: rank by conversion rate (uplift unknown), after the personas with an uplift.
    return table.sort_values(["uplift", "conversion_rate"], ascending=False, na_position="last").reset_index(drop=True)


def churn_signals(matrix: pd.DataFrame, churned: pd.Series, persona: pd.Series, direction: str = "risk") -> pd.DataFrame:
    """Signals ranked by association with churn within personas (see module doc). `direction`:
    "risk" lists churn-raising signals (odds ratio > 1) first, "both" ranks by p-value only."""
    from statsmodels.stats.multitest import multipletests

    from personaops.graph import SignalMatrix

    # the 0/1 cells as a sparse matrix (a dense persons x signals frame, and its row copy, were
    # GBs at a million persons); every figure below counts integers, so it is what they gave
    matrix = matrix if isinstance(matrix, SignalMatrix) else SignalMatrix.from_frame(matrix)
    y = churned.reindex(matrix.index)
    keep = y.notna() & persona.reindex(matrix.index).notna()
    x = matrix if keep.all() else matrix.take_rows(keep.to_numpy())  # everyone labelled: no copy of the matrix
    y, strata = y[keep].astype(int).to_numpy(), persona.reindex(matrix.index)[keep].to_numpy()
    if 0 in x.shape or len(np.unique(y)) < 2:
        raise NotFoundError("Churn signals need people with a churn label of both values; the sources carry no usable `churned` label.")
    rows = []
    counts = _strata_counts(x, y, strata)
    stats, informative = _mh_rows(counts)  # statsmodels' StratifiedTable figures, all signals at once
    # persons showing each signal, and churned among them, from the same counts (integers: exact)
    shown = counts[:, :, 0, :].sum(axis=(1, 2))
    churned_with = counts[:, :, 0, 0].sum(axis=1)
    everyone, churned_all = len(y), float(y.sum())
    for j, signal in enumerate(x.columns):
        if not informative[j]:  # no stratum where both the signal and the label vary
            continue
        n_with = int(shown[j])
        rows.append({
            "signal": signal, "kind": signal.split(":", 1)[0], "persons": n_with,
            "churn_rate_with": float(np.float64(churned_with[j]) / n_with) if n_with else np.nan,
            "churn_rate_without": float(np.float64(churned_all - churned_with[j]) / (everyone - n_with)) if everyone > n_with else np.nan,
            "odds_ratio": float(stats[j, 0]), "ci_low": float(stats[j, 1]), "ci_high": float(stats[j, 2]), "p_value": float(stats[j, 3]),
        })  # fmt: skip
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_value"] = table["p_value"].fillna(1.0)
    table["p_adjusted"] = multipletests(table["p_value"], method="fdr_bh")[1]
    table["log_or"] = np.log(table["odds_ratio"].clip(lower=1e-9))
    order = ["p_adjusted", "log_or"]
    if direction == "risk":
        table["_raising"] = table["odds_ratio"] > 1
        table = table.sort_values(["_raising", *order], ascending=[False, True, False]).drop(columns="_raising")
    else:
        table = table.sort_values(order, ascending=[True, False])
    table = _fold_same_people(table.reset_index(drop=True), matrix)
    table = _explain_away(table, x, y, strata)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.drop(columns="log_or").reset_index(drop=True)


def _mh_rows(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For (signals, strata, 2, 2) counts: per signal (pooled odds ratio, its 95% interval low and
    high, CMH p-value with continuity correction) over the strata where both the signal and the
    label vary, each stratum's table with the Haldane-Anscombe 0.5 where it has an empty cell; and
    whether the signal had such a stratum. The same floats as statsmodels' StratifiedTable
    (oddsratio_pooled, oddsratio_pooled_confint, test_null_odds(correction=True)) on those tables:
    its per-stratum arrays and sums for all signals with as many strata at once, then its scalar
    steps on each signal's sums (one StratifiedTable per signal was most of the ranking)."""
    from scipy import stats

    with_signal, churned = counts.sum(axis=3), counts.sum(axis=2)
    informative = (with_signal[..., 0] > 0) & (with_signal[..., 1] > 0) & (churned[..., 0] > 0) & (churned[..., 1] > 0)
    out = np.full((counts.shape[0], 4), np.nan)
    ks = informative.sum(axis=1)
    f = -stats.norm.ppf(0.05 / 2)
    for k in np.unique(ks[ks > 0]):
        sel = np.flatnonzero(ks == k)
        t = counts[sel[:, None], np.nonzero(informative[sel])[1].reshape(len(sel), k)]  # the informative strata, in order
        t = t + 0.5 * (t == 0).any(axis=(2, 3), keepdims=True)
        a, b, c, d = (np.ascontiguousarray(t[:, :, i, j]) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
        apb, apc, bpd, cpd, ad, bc, apd = a + b, a + c, b + d, c + d, a * d, b * c, a + d
        n = (a + c) + (b + d)
        s_diff = np.sum(a - apb * apc / n, axis=1)
        denom = apb * apc * bpd * cpd
        denom /= n**2 * (n - 1)
        s_denom = np.sum(denom, axis=1)
        adns, bcns = np.sum(ad / n, axis=1), np.sum(bc / n, axis=1)
        s_ad = np.sum(apd * ad / n**2, axis=1)
        mid = apd * bc / n**2
        mid += (1 - apd / n) * ad / n
        s_mid = np.sum(mid, axis=1)
        s_bc = np.sum((1 - apd / n) * bc / n, axis=1)
        for i, j in enumerate(sel):  # statsmodels' scalar steps, on numpy scalars (array log/exp may round differently)
            statistic = np.abs(s_diff[i])
            statistic -= 0.5
            statistic = statistic**2
            statistic /= s_denom[i]
            odds = adns[i] / bcns[i]
            variance = s_ad[i] / adns[i] ** 2
            m = s_mid[i]
            m /= adns[i] * bcns[i]
            variance += m
            variance += s_bc[i] / bcns[i] ** 2
            variance /= 2
            se, lor = np.sqrt(variance), np.log(odds)
            out[j] = (odds, np.exp(lor - f * se), np.exp(lor + f * se), 1 - stats.chi2.cdf(statistic, 1))
    return out, ks > 0


def _informative(t: np.ndarray) -> bool:
    """A 2x2 table where both the signal and the label vary (others carry no information)."""
    return bool(t[0].sum() > 0 and t[1].sum() > 0 and t[:, 0].sum() > 0 and t[:, 1].sum() > 0)


def _strata_counts(x: pd.DataFrame, y: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """(signals, strata, 2, 2) float: every signal's 2x2 table (signal yes/no x churned yes/no) in
    each stratum, the same cells `_strata_tables` counts, for all signals at once (sparse products
    instead of one pass over the people per signal and stratum)."""
    from scipy import sparse

    from personaops.graph import SignalMatrix

    m = sparse.csr_matrix(x.values if isinstance(x, SignalMatrix) else x.to_numpy(dtype=np.uint8), dtype=np.float64)
    levels = np.unique(strata)
    out = np.zeros((m.shape[1], len(levels), 2, 2))
    for k, level in enumerate(levels):
        sel = strata == level
        ms, ys = m[sel], y[sel].astype(np.float64)
        churned, stayed = ys.sum(), len(ys) - ys.sum()
        with_churn = ms.T @ ys
        with_signal = np.asarray(ms.sum(axis=0)).ravel()
        out[:, k, 0, 0], out[:, k, 0, 1] = with_churn, with_signal - with_churn
        out[:, k, 1, 0], out[:, k, 1, 1] = churned - with_churn, stayed - (with_signal - with_churn)
    return out


def _strata_tables(s: np.ndarray, y: np.ndarray, strata: np.ndarray) -> list[np.ndarray]:
    """One 2x2 table (signal yes/no x churned yes/no) per stratum where both the signal and the
    label vary; strata without that carry no information for a Mantel-Haenszel test."""
    tables = []
    for level in np.unique(strata):
        sel = strata == level
        t = np.array([[np.sum(s[sel] & (y[sel] == 1)), np.sum(s[sel] & (y[sel] == 0))],
                      [np.sum(~s[sel] & (y[sel] == 1)), np.sum(~s[sel] & (y[sel] == 0))]], dtype=float)  # fmt: skip
        if _informative(t):
            tables.append(t)
    return tables


def _mh_pvalue(s: np.ndarray, y: np.ndarray, strata: np.ndarray) -> float:
    """CMH p-value of signal `s` against churn `y` within `strata` (1.0 when no stratum varies)."""
    from statsmodels.stats.contingency_tables import StratifiedTable

    tables = _strata_tables(s, y, strata)
    return float(StratifiedTable(tables).test_null_odds(correction=True).pvalue) if tables else 1.0


def _mh_pvalue_within(s: np.ndarray, y: np.ndarray, strata: np.ndarray, held: list[np.ndarray]) -> float:
    """`_mh_pvalue` within the strata of persona and the 0/1 `held` signals: the strata the key
    str(persona) + the signals' digits gives, in that key's sorted order, counted on integer codes
    (a string per person and signal, then a pass per stratum, before)."""
    if any(((h != 0) & (h != 1)).any() for h in held):  # not 0/1: the string key itself
        key = pd.Series(strata.astype(str))
        for h in held:
            key = key + h.astype(str)
        return _mh_pvalue(s, y, key.to_numpy())
    levels, code = np.unique(strata, return_inverse=True)
    code = code.astype(np.int64).ravel()
    for h in held:
        code = code * 2 + h.astype(np.int64)
    combos, code = np.unique(code, return_inverse=True)
    width = len(held)
    names = [str(levels.astype(str)[c >> width]) + "".join(str((int(c) >> (width - 1 - i)) & 1) for i in range(width)) for c in combos]
    order = np.argsort(np.asarray(names, dtype=object), kind="stable")  # the string keys' sorted order (np.unique of them)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    cell = rank[code.ravel()] * 4 + (~s).astype(np.int64) * 2 + (y != 1).astype(np.int64)
    tables = [t for t in np.bincount(cell, minlength=4 * len(order)).reshape(-1, 2, 2).astype(float) if _informative(t)]
    from statsmodels.stats.contingency_tables import StratifiedTable

    return float(StratifiedTable(tables).test_null_odds(correction=True).pvalue) if tables else 1.0


def _explain_away(table: pd.DataFrame, x: pd.DataFrame, y: np.ndarray, strata: np.ndarray, depth: int = 25, alpha: float = 0.01) -> pd.DataFrame:
    """Walk the ranking top-down: a signal whose association vanishes (CMH p >= alpha) once persona
    AND the churn-raising signals kept above it are held fixed is an echo of them — it moves below
    the signals that stand on their own, with `explained_by` naming what explains it."""
    kept_rows, echoes, kept_signals = [], [], []
    explained_by = {}
    for i, row in enumerate(table.itertuples(index=False)):
        if i >= depth or row.odds_ratio <= 1 or row.p_adjusted >= 0.05:
            kept_rows.append(i)
            continue
        s = _signal_column(x, row.signal).astype(bool)
        if kept_signals:
            # the strongest few: more strata would leave cells empty
            if _mh_pvalue_within(s, y, strata, [_signal_column(x, k) for k in kept_signals[:4]]) >= alpha:
                echoes.append(i)
                explained_by[i] = "; ".join(kept_signals[:4])
                continue
        kept_rows.append(i)
        kept_signals.append(row.signal)
    order = [i for i in kept_rows if i < depth] + echoes + [i for i in kept_rows if i >= depth]
    out = table.iloc[order].copy()
    out["explained_by"] = [explained_by.get(i, "") for i in order]
    return out


def _signal_column(x, name) -> np.ndarray:
    """One signal's values per person, from a signal frame or a graph.SignalMatrix."""
    from personaops.graph import SignalMatrix

    return x.column(name) if isinstance(x, SignalMatrix) else x[name].to_numpy()


def _fold_same_people(table: pd.DataFrame, matrix: pd.DataFrame) -> pd.DataFrame:
    """Report signals shown by nearly the same people once (the better ranked), the rest as `same_as`."""
    from scipy import sparse

    signals = table["signal"].tolist()
    # Every pair's Jaccard index from one sparse product (a pass over the people per pair was
    # hours at 100k persons and thousands of signals); integer counts, so the same values.
    from personaops.graph import SignalMatrix

    m = sparse.csc_matrix(matrix.select(signals).values if isinstance(matrix, SignalMatrix) else matrix[signals].to_numpy(dtype=np.uint8), dtype=np.float64)
    inter = (m.T @ m).toarray()
    size = np.diag(inter)
    kept: list[int] = []
    kept_at = np.zeros(len(signals), dtype=np.int64)  # kept[] as an array (no list conversion per signal)
    same_as: dict[int, list[str]] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, signal in enumerate(signals):
            # Jaccard against the signals kept so far only (the whole signals x signals matrix, and
            # its temporaries, before): the same integer counts and divisions
            at = kept_at[: len(kept)]
            both = inter[i, at]
            union = size[i] + size[at] - both
            jaccard = np.where(union > 0, both / np.where(union > 0, union, 1), 0.0)
            hits = np.flatnonzero(jaccard >= SAME_PEOPLE_JACCARD) if kept else []
            if len(hits):
                same_as[kept[hits[0]]].append(signal)
            else:
                kept_at[len(kept)] = i
                kept.append(i)
                same_as[i] = []
    out = table.iloc[kept].copy()
    out["same_as"] = ["; ".join(same_as[i]) for i in kept]
    return out


def persona_intents(text_intents: pd.DataFrame, intents: pd.DataFrame, assignments: pd.DataFrame, persona_id: int, source: str | None = None) -> pd.DataFrame:
    """Intents of one persona's texts (default: tickets when there are any, else all texts): texts,
    persons, share of the persona's texts (0-1), lift (share / share among everyone), example."""
    ti = text_intents.merge(assignments[["person_id", "persona_id"]], on="person_id", how="inner")
    if source is None and ti["source"].astype(str).str.contains("ticket").any():
        source = "tickets"
    if source:
        ti = ti[ti["source"].astype(str).str.contains(source)]
    mine = ti[ti["persona_id"] == persona_id]
    if mine.empty:
        raise NotFoundError(f"Persona {persona_id} has no {source or ''} texts in the latest run; see `personas personas` for persona ids.")
    share = mine["intent_id"].value_counts(normalize=True)
    overall = ti["intent_id"].value_counts(normalize=True)
    table = intents.set_index("intent_id")[["label", "terms", "example"]].reindex(share.index)
    table["texts"] = mine["intent_id"].value_counts().reindex(share.index).astype(int)
    table["persons"] = mine.groupby("intent_id")["person_id"].nunique().reindex(share.index).astype(int)
    table["share"] = share
    table["lift"] = share / overall.reindex(share.index)
    return table.rename_axis("intent_id").reset_index().sort_values("share", ascending=False).reset_index(drop=True)


def persona_summary(assignments: pd.DataFrame, labels: pd.DataFrame, text_intents: pd.DataFrame, intents: pd.DataFrame,
                    signals: pd.DataFrame, flags: pd.DataFrame | None, model_version: int | None) -> pd.DataFrame:  # fmt: skip
    """One row per persona for `persona_changes`: size, churn and conversion rates, amber share,
    top intents and top signals (by share of members)."""
    a = assignments.dropna(subset=["persona_id"]).copy()
    a["persona_id"] = a["persona_id"].astype(int)
    lab = labels.set_index("person_id") if len(labels) else pd.DataFrame()
    label_of = intents.set_index("intent_id")["label"] if len(intents) else pd.Series(dtype=str)
    # the signal rows as codes, once: who is a member is asked of each distinct person (not of each
    # of the tens of millions of rows), and the signals are counted on their codes (below)
    person_codes, person_values = _codes(signals["person_id"])
    signal_codes, signal_values = _codes(signals["signal"])
    rows = []
    for (pid, name), g in a.groupby(["persona_id", "persona_name"]):
        members = g["person_id"]
        rec = {"persona_id": int(pid), "persona_name": str(name), "persons": int(len(members)), "model_version": model_version}
        for col in ("churned", "converted"):
            rec[f"{col}_rate"] = float(lab[col].reindex(members).mean()) if col in lab.columns else np.nan
        if flags is not None and len(flags):
            f = flags.set_index("person_id").reindex(members)
            rec["risk_amber_share"] = float((f["risk_flag"] == "amber").mean())
            rec["mean_churn_probability"] = float(f["churn_probability"].mean())
            if "opportunity_flag" in f.columns:
                rec["opportunity_amber_share"] = float((f["opportunity_flag"] == "amber").mean())
                rec["mean_opportunity_probability"] = float(f["opportunity_probability"].mean())
        ti = text_intents[text_intents["person_id"].isin(members)]
        rec["top_intents"] = json.dumps({label_of.get(i, str(i)): round(float(v), 3) for i, v in ti["intent_id"].value_counts(normalize=True).head(5).items()})
        member = np.append(person_values.isin(members), False)[person_codes]  # signals["person_id"].isin(members) (code -1: a missing person, False)
        sig = _value_counts(signal_codes[member], signal_values) / max(len(members), 1)
        rec["top_signals"] = json.dumps({k: round(float(v), 3) for k, v in sig.head(10).items()})
        rows.append(rec)
    return pd.DataFrame(rows)


def _codes(column: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """(code per row, -1 for a missing value; the distinct values) of a categorical or plain column."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.cat.codes.to_numpy(), column.cat.categories
    codes, values = pd.factorize(column)
    return codes, pd.Index(values)


def _value_counts(codes: np.ndarray, values: pd.Index) -> pd.Series:
    """values[codes] (as Python objects) .value_counts(), from the codes: the same keys, counts and
    order. value_counts keys the values in order of first appearance and sorts that Series by count
    (descending, the same sort on the same array, so ties come out alike); a categorical's own
    value_counts would list unseen values too, and `astype(object)` of millions of rows per persona
    was most of persona_summary's time."""
    codes = codes[codes >= 0]
    first = pd.unique(codes)  # order of first appearance
    counts = np.bincount(codes, minlength=len(values))[first].astype(np.int64)
    return pd.Series(counts, index=pd.Index(np.asarray(values, dtype=object)[first], dtype=object)).sort_values(ascending=False)


def business_kpis(assignments: pd.DataFrame, signals: pd.DataFrame, exposures: pd.DataFrame, surveys: pd.DataFrame) -> pd.DataFrame:
    """Per persona, the business KPIs the sources allow (JSON column `business_kpis`):
    feature_adoption (share of members who used each product event type, the 5 most adopted, with
    the lift over everyone's share), conversion_lift per campaign (uplift vs the persona's holdout, 95% Newcombe
    interval), nps (% promoters 9-10 minus % detractors 0-6 over the members' survey answers, with
    n) and first_contact_resolution (None: the ticket sources carry no resolution status)."""
    a = assignments.dropna(subset=["persona_id"])[["person_id", "persona_id", "persona_name"]].copy()
    a["persona_id"] = a["persona_id"].astype(int)
    everyone = max(len(a), 1)
    did = signals[signals["signal"].str.startswith("did:").to_numpy(dtype=bool)].astype(object).merge(a[["person_id", "persona_id"]], on="person_id") if len(signals) else pd.DataFrame(columns=["signal", "persona_id"])
    overall = did.groupby("signal")["person_id"].nunique() / everyone if len(did) else pd.Series(dtype=float)
    lift = {}
    if len(exposures) and {"campaign", "converted"} <= set(exposures.columns):
        ex = exposures.copy()
        arm = ex["cat__arm"].fillna("").astype(str).str.lower() if "cat__arm" in ex.columns else pd.Series("", index=ex.index)
        ex["holdout"] = arm == "holdout"
        ex["converted"] = pd.to_numeric(ex["converted"], errors="coerce").fillna(0.0)
        outcomes = ex.groupby(["person_id", "campaign", "holdout"], as_index=False)["converted"].max()
        for campaign in sorted(outcomes["campaign"].astype(str).unique()):
            with np.errstate(divide="ignore", invalid="ignore"):  # a holdout without conversions: ratios statsmodels also computes
                table = campaign_uplift(outcomes, a, campaign)
            for r in table.itertuples():
                if r.uplift == r.uplift:
                    lift.setdefault(int(r.persona_id), {})[campaign] = {"uplift": round(float(r.uplift), 4), "ci95": [round(float(r.ci_low), 4), round(float(r.ci_high), 4)], "exposed": int(r.exposed), "holdout": int(r.holdout)}
    scores = pd.DataFrame(columns=["person_id", "score"])
    if len(surveys) and "score" in surveys.columns:
        scores = surveys[["person_id"]].assign(score=pd.to_numeric(surveys["score"], errors="coerce")).dropna(subset=["score"])
    rows = []
    for (pid, name), g in a.groupby(["persona_id", "persona_name"]):
        members = max(len(g), 1)
        mine = did[did["persona_id"] == pid].groupby("signal")["person_id"].nunique() / members if len(did) else pd.Series(dtype=float)
        adoption = pd.DataFrame({"share": mine, "lift": mine / overall.reindex(mine.index)}).sort_values("share", ascending=False).head(5)
        s = scores[scores["person_id"].isin(g["person_id"])]["score"]
        nps = None if s.empty else {"value": round(float(100 * ((s >= 9).mean() - (s <= 6).mean())), 1), "n": int(len(s))}
        rows.append({"persona_id": int(pid), "business_kpis": json.dumps({
            "feature_adoption": {k.split(":", 1)[1]: {"share": round(float(v.share), 4), "lift": round(float(v.lift), 2)} for k, v in adoption.iterrows()},
            "conversion_lift": lift.get(int(pid), {}), "nps": nps, "first_contact_resolution": None})})  # fmt: skip
    return pd.DataFrame(rows, columns=["persona_id", "business_kpis"])


def persona_changes(previous: pd.DataFrame | None, current: pd.DataFrame, persona_id: int) -> dict:
    """What changed for a persona between two summaries: numeric deltas and intent/signal shares
    that moved by at least 2 percentage points."""
    cur = current[current["persona_id"] == persona_id]
    if cur.empty:
        raise NotFoundError(f"Persona {persona_id} is not in the latest run; see `personas personas` for persona ids.")
    cur = cur.iloc[0]
    out = {"persona_id": int(persona_id), "persona_name": cur["persona_name"], "previous_run": None, "changes": {}, "intents": {}, "signals": {}}
    if previous is None or previous[previous["persona_id"] == persona_id].empty:
        out["note"] = "no earlier run has this persona; nothing to compare yet"
        return out
    prev = previous[previous["persona_id"] == persona_id].iloc[0]
    for col in ("persons", "churned_rate", "converted_rate", "risk_amber_share", "mean_churn_probability", "opportunity_amber_share", "mean_opportunity_probability", "model_version"):
        if col in cur.index and col in prev.index and pd.notna(cur[col]) and pd.notna(prev[col]):
            out["changes"][col] = {"before": float(prev[col]), "after": float(cur[col]), "delta": float(cur[col]) - float(prev[col])}
    if prev["persona_name"] != cur["persona_name"]:
        out["changes"]["persona_name"] = {"before": prev["persona_name"], "after": cur["persona_name"]}
    for key in ("top_intents", "top_signals"):
        before, after = json.loads(prev[key] or "{}"), json.loads(cur[key] or "{}")
        moved = {k: {"before": before.get(k, 0.0), "after": after.get(k, 0.0)} for k in set(before) | set(after)
                 if abs(after.get(k, 0.0) - before.get(k, 0.0)) >= 0.02}  # fmt: skip
        out["intents" if key == "top_intents" else "signals"] = dict(sorted(moved.items(), key=lambda kv: -abs(kv[1]["after"] - kv[1]["before"])))
    return out


# --- I/O edge: the run's insight tables --------------------------------------------------------
def insights_dir(ws: Workspace, run_id: str) -> Path:
    return ws.lake / "insights" / f"run_id={run_id}"


def write_insight_table(ws: Workspace, run_id: str, name: str, table: pd.DataFrame) -> str:
    folder = insights_dir(ws, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.parquet.tmp"
    table.to_parquet(tmp, index=False)
    tmp.replace(folder / f"{name}.parquet")
    return str(folder / f"{name}.parquet")


def write_string_table(ws: Workspace, run_id: str, name: str, table: pd.DataFrame, rows_per_group: int = 1 << 20) -> str:
    """Like write_insight_table, for a long table with categorical columns: stored as the plain
    string columns an object table writes (same schema and values), converted one row group at a
    time (one Python or Arrow string per cell of the whole table was GBs at 100k people)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = insights_dir(ws, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.parquet.tmp"

    def plain(part: pd.DataFrame) -> pd.DataFrame:
        return part.astype({c: object for c in part.columns if isinstance(part[c].dtype, pd.CategoricalDtype)})

    schema = pa.Schema.from_pandas(plain(table.head(1000)), preserve_index=False)  # types as the whole table infers them (string)

    def arrow(part: pd.DataFrame) -> pa.Table:
        if not all(isinstance(part[c].dtype, pd.CategoricalDtype) and pa.types.is_string(schema.field(c).type) for c in part.columns):
            return pa.Table.from_pandas(plain(part), schema=schema, preserve_index=False)
        # category codes -> strings in Arrow (a Python object per cell on the way was most of the write)
        return pa.Table.from_arrays([pa.DictionaryArray.from_arrays(pa.array(part[c].cat.codes.to_numpy(), mask=part[c].isna().to_numpy()),
                                                                    pa.array(part[c].cat.categories.to_numpy(dtype=object), pa.string())).cast(pa.string())
                                     for c in part.columns], schema=schema)  # fmt: skip

    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, max(len(table), 1), rows_per_group):
            writer.write_table(arrow(table.iloc[start : start + rows_per_group]))
    tmp.replace(folder / f"{name}.parquet")
    return str(folder / f"{name}.parquet")


def read_signals(ws: Workspace, run_id: str | None = None) -> pd.DataFrame:
    """A run's `person_signals` (person_id, signal) with both columns categorical: the same
    values as read_insight_table, in a fraction of the memory (tens of millions of rows at 100k)."""
    import pyarrow.parquet as pq

    runs = insight_runs(ws, "person_signals")
    run_id = run_id or (runs[-1] if runs else None)
    if run_id is None:
        raise NotFoundError(f"No insight table 'person_signals' in {ws.lake / 'insights'}; run `personas run` first.")
    return pq.read_table(insights_dir(ws, run_id) / "person_signals.parquet", read_dictionary=["person_id", "signal"]).to_pandas()


def insight_runs(ws: Workspace, name: str) -> list[str]:
    """Run ids (oldest first) that have the insight table `name`."""
    root = ws.lake / "insights"
    return sorted(p.name.split("=", 1)[1] for p in root.glob("run_id=*") if (p / f"{name}.parquet").exists()) if root.is_dir() else []


def read_insight_table(ws: Workspace, name: str, run_id: str | None = None) -> pd.DataFrame:
    runs = insight_runs(ws, name)
    run_id = run_id or (runs[-1] if runs else None)
    if run_id is None:
        raise NotFoundError(f"No insight table {name!r} in {ws.lake / 'insights'}; run `personas run` first.")
    return pd.read_parquet(insights_dir(ws, run_id) / f"{name}.parquet")


def _persona_id(ws: Workspace, persona: str) -> int:
    """A persona given by id or by name, as the latest run's assignments know it."""
    summary = read_insight_table(ws, "persona_summary")
    if str(persona).lstrip("-").isdigit():
        return int(persona)
    hit = summary[summary["persona_name"].str.lower() == str(persona).lower()]
    if hit.empty:
        raise NotFoundError(f"Persona {persona!r} is unknown; use an id or name from `personas personas`.")
    return int(hit["persona_id"].iloc[0])


def ask_campaign(ws: Workspace, campaign: str) -> pd.DataFrame:
    """The campaign question on the latest run's graph (exposed_to / converted / held_out edges)."""
    from personaops import graph

    outcomes = graph.query(
        ws,
        """SELECT replace(e.src, 'person:', '') AS person_id, replace(e.dst, 'campaign:', '') AS campaign,
                  e.kind = 'held_out' AS holdout,
                  CASE WHEN e.kind = 'held_out' THEN CAST(e.attr = 'converted' AS INTEGER)
                       ELSE CAST(EXISTS (SELECT 1 FROM edges c WHERE c.kind = 'converted' AND c.src = e.src AND c.dst = e.dst) AS INTEGER) END AS converted
           FROM edges e WHERE e.kind IN ('exposed_to', 'held_out')""",
    )
    return campaign_uplift(outcomes, _assignments_from_graph(ws), campaign)


def _assignments_from_graph(ws: Workspace) -> pd.DataFrame:
    from personaops import graph

    return graph.query(
        ws,
        """SELECT replace(e.src, 'person:', '') AS person_id, CAST(replace(e.dst, 'persona:', '') AS BIGINT) AS persona_id,
                  n.name AS persona_name FROM edges e JOIN nodes n ON n.node_id = e.dst WHERE e.kind = 'belongs_to'""",
    )


def signal_inputs(ws: Workspace, run_id: str | None = None, sparse: bool = False) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """(persons x signals 0/1, churned by person, persona by person) of a run; `sparse`: the
    signals as a graph.SignalMatrix (the same cells)."""
    from personaops import graph

    signals = read_signals(ws, run_id)
    labels = read_insight_table(ws, "person_churn_labels", run_id).set_index("person_id")["churned"]
    persona = _assignments_from_graph(ws).set_index("person_id")["persona_id"]
    meta = json.loads((insights_dir(ws, run_id or insight_runs(ws, "person_signals")[-1]) / "meta.json").read_text())
    matrix = (graph.signal_sparse if sparse else graph.signal_matrix)(signals, pd.Index(persona.index, name="person_id"), meta.get("min_signal_persons", 10))
    return matrix, labels, persona


def ask_churn_signals(ws: Workspace, top: int = 20, direction: str = "risk") -> pd.DataFrame:
    matrix, churned, persona = signal_inputs(ws, sparse=True)  # no dense persons x signals frame (churn_signals reads the sparse one)
    return churn_signals(matrix, churned, persona, direction).head(top)


def ask_intents(ws: Workspace, persona: str, source: str | None = None) -> pd.DataFrame:
    pid = _persona_id(ws, persona)
    return persona_intents(read_insight_table(ws, "text_intents"), read_insight_table(ws, "intents"), _assignments_from_graph(ws), pid, source)


def ask_changes(ws: Workspace, persona: str) -> dict:
    pid = _persona_id(ws, persona)
    runs = insight_runs(ws, "persona_summary")
    current = read_insight_table(ws, "persona_summary", runs[-1])
    previous = read_insight_table(ws, "persona_summary", runs[-2]) if len(runs) > 1 else None
    out = persona_changes(previous, current, pid)
    out["run"], out["previous_run"] = runs[-1], runs[-2] if len(runs) > 1 else None
    return out


def opportunity_table(flags: pd.DataFrame, labels: pd.DataFrame | None) -> pd.DataFrame:
    """Per persona: persons, exposed (offered the campaign), conversion_rate among them,
    mean_probability and median of the opportunity probability, amber people and amber_share;
    ranked by mean probability."""
    f = flags.dropna(subset=["persona_id"]).copy()
    if labels is not None and len(labels):
        f = f.merge(labels[["person_id", "converted"]], on="person_id", how="left")
    else:
        f["converted"] = np.nan
    f["amber"] = f["opportunity_flag"] == "amber"
    table = f.groupby(["persona_id", "persona_name"]).agg(
        persons=("person_id", "size"), exposed=("converted", "count"), conversion_rate=("converted", "mean"),
        mean_probability=("opportunity_probability", "mean"), median_probability=("opportunity_probability", "median"), amber=("amber", "sum"),
    ).reset_index()  # fmt: skip
    table["persona_id"] = table["persona_id"].astype(int)
    table["amber"] = table["amber"].astype(int)
    table["amber_share"] = table["amber"] / table["persons"]
    return table.sort_values("mean_probability", ascending=False, na_position="last").reset_index(drop=True)


def ask_opportunities(ws: Workspace, persona: str | None = None, top: int = 20) -> dict:
    """Who is likely to take the expansion offer: personas ranked by mean opportunity probability,
    and the `top` people (of one persona, if given) by probability with their reasons."""
    flags = read_insight_table(ws, "amber_flags")
    if "opportunity_probability" not in flags.columns or flags["opportunity_probability"].isna().all():
        raise NotFoundError("The latest run has no opportunity flags (no exposures to insights.opportunity_campaign, or a run before they existed); run `personas run` on sources with that campaign.")
    run = insight_runs(ws, "amber_flags")[-1]
    meta_path = insights_dir(ws, run) / "opportunity.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    labels = read_insight_table(ws, "person_opportunity_labels", run) if (insights_dir(ws, run) / "person_opportunity_labels.parquet").exists() else None
    personas = opportunity_table(flags, labels)
    people = flags.dropna(subset=["opportunity_probability"])
    out = {"campaign": meta.get("campaign"), "threshold": meta.get("threshold"), "metrics": meta.get("metrics", {}), "run": run}
    if persona is not None:
        pid = _persona_id(ws, persona)
        people = people[people["persona_id"] == pid]
        personas = personas[personas["persona_id"] == pid]
        out["persona_id"] = pid
    people = people.sort_values(["opportunity_probability", "person_id"], ascending=[False, True]).head(max(1, top))
    cols = ["person_id", "persona_id", "persona_name", "opportunity_probability", "opportunity_flag", "opportunity_reasons"]
    out["personas"] = frame_records(personas)
    out["people"] = frame_records(people[cols])
    return out


FLAGS_SERVICE = "persona_flags_v2"  # persona_flags_v1 + the opportunity flag


def online_flags(store, person_id: str) -> dict | None:
    """A person's amber flags as served online through Feast (the `persona_flags_v2` service:
    risk, engagement and opportunity flags with probabilities and reasons, graph features);
    None when the online store has no flags for the person."""
    from feast.errors import FeatureServiceNotFoundException

    try:
        service = store.get_feature_service(FLAGS_SERVICE)
    except FeatureServiceNotFoundException:  # a workspace applied before the opportunity flag existed
        service = store.get_feature_service("persona_flags_v1")
    row = {k: v[0] for k, v in store.get_online_features(features=service, entity_rows=[{"person_id": person_id}]).to_dict().items() if k != "person_id"}
    if all(v is None for v in row.values()):
        return None
    return {k: None if isinstance(v, float) and v != v else v for k, v in row.items()}


def frame_records(table: pd.DataFrame) -> list[dict]:
    """JSON-safe records (NaN -> None)."""
    return json.loads(table.to_json(orient="records", date_format="iso"))


# --- pipeline stages (called by flows/build_personas.py) ----------------------------------------
def _analytics_record_person(ws: Workspace, sources: list[str] | None = None) -> pd.DataFrame:
    """source, source_key, person_id of every record whose person gave analytics consent (of
    `sources` only, when given)."""
    from personaops.consent import exclude_without_analytics

    filters = [("source", "in", list(sources))] if sources is not None else None
    if sources is not None and not sources:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in ("source", "source_key", "person_id")})
    return exclude_without_analytics(ws, pd.read_parquet(ws.identity / "record_person.parquet", columns=["source", "source_key", "person_id"], filters=filters))  # no analytics consent, no graph


def _engagement_trend(ws: Workspace, batches: dict[str, list[str]], kinds: dict[str, str], as_of: pd.Timestamp) -> pd.Series:
    """models.churn.engagement_trend of every consented event record's person: the same ratio of
    the same counts, counted per person code in one pass over each events-lake file
    (_coded_event_files; only `event_time` read). Before, the rows went through the graph's person
    buckets (spill files, then a person-id string per row and a groupby over them): 6.5 s of
    100,000 people's flags, and it grew with the event rows."""
    import tempfile

    import pyarrow.parquet as pq

    from models import churn

    with tempfile.TemporaryDirectory(prefix="flags-trend-", dir=ws.root) as tmp:
        for persons, paths, coded in _coded_event_files(ws, None, batches, kinds, Path(tmp)):
            with_time = [p for p in paths if "event_time" in pq.read_schema(p).names]
            kind = pq.read_schema(with_time[0]).field("event_time").type if with_time else None  # the type the buckets cast every file's times to
            seen = np.zeros(len(persons), dtype=bool)
            recent = np.zeros(len(persons), dtype=np.int64)
            before = np.zeros(len(persons), dtype=np.int64)
            for path, code in coded:
                seen[code[code >= 0]] = True
                if kind is None or path not in with_time:  # rows without a time: their person is in the trend (NaN), counted nowhere
                    continue
                start = 0
                for batch in pq.ParquetFile(path).iter_batches(batch_size=1 << 18, columns=["event_time"]):
                    at = code[start : start + batch.num_rows]
                    start += batch.num_rows
                    # churn.engagement_trend's ages and windows, on the same pandas values
                    is_recent, is_before = churn.trend_windows(churn.event_ages(batch.column("event_time").cast(kind).to_pandas(), as_of).to_numpy())
                    ok = at >= 0
                    recent += np.bincount(at[ok & is_recent], minlength=len(persons))
                    before += np.bincount(at[ok & is_before], minlength=len(persons))
                del code
            index = pd.Index(persons[seen], name="person_id")
            return churn.trend_of_counts(pd.Series(recent[seen], index=index), pd.Series(before[seen], index=index))
    return churn.engagement_trend(pd.DataFrame(columns=["person_id", "event_time"]), as_of)


def _lake_kind(ws: Workspace, batches: dict[str, list[str]], kinds: dict[str, str], kind: str, columns: tuple[str, ...] | None = None,
               record_person: pd.DataFrame | None = None) -> pd.DataFrame:  # fmt: skip
    """One kind's lake rows with their person; only `columns` when given (else what graph, flags and KPIs read).
    `record_person`: _analytics_record_person(ws) when the caller already has it (read here otherwise)."""
    from personaops import features as F
    from personaops.ingest import read_lake

    if record_person is None:
        record_person = _analytics_record_person(ws)
    parts = []
    for source, ids in batches.items():
        if kinds.get(source) != kind:
            continue
        if columns is not None:
            frame = read_lake(ws, source, ids, columns=list(dict.fromkeys(["source_key", *columns])))
        else:
            frame = read_lake(ws, source, ids, columns=list(F.LAKE_COLUMNS), prefixes=F.LAKE_PREFIXES)  # what graph, flags and KPIs read
        ids_of = record_person[record_person["source"] == source][["source_key", "person_id"]]
        frame = frame.merge(ids_of, on="source_key", how="inner")
        frame["source"] = source
        parts.append(frame)
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["person_id", "event_time"])


def _published_assignments(ws: Workspace) -> tuple[pd.DataFrame, int | None]:
    """The assignments of the newest published model version (person_id, persona_id, persona_name, confidence)."""
    path = ws.feature_table("persona_assignment")
    if not path.exists():
        raise NotFoundError(f"No published persona assignments in {ws.features}; the publish stage must run first.")
    table = pd.read_parquet(path)
    latest = table.sort_values("created")["model_version"].iloc[-1] if len(table) else None
    rows = table[table["model_version"] == latest] if latest is not None else table
    return rows[["person_id", "persona_id", "persona_name", "confidence"]].reset_index(drop=True), None if latest is None else int(latest)


def inputs_fingerprint(ws: Workspace, cfg) -> str:
    """Hash of everything the insight stages read: texts, published assignments, labels, lake
    batches, insight and embedding settings. Same inputs -> the previous run's tables are reused."""
    import hashlib

    h = hashlib.sha256()
    for path in (ws.root / "texts" / "person_texts.parquet", ws.feature_table("persona_assignment"), ws.feature_table("person_labels")):
        if path.exists():
            h.update(path.name.encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    for source in sorted(p.name for p in ws.lake.iterdir() if p.is_dir() and not p.name.startswith("_") and p.name not in ("graph", "insights")) if ws.lake.is_dir() else []:
        h.update(",".join(sorted(b.name for b in (ws.lake / source).glob("batch=*"))).encode())
    h.update(cfg.insights.model_dump_json().encode())
    h.update(cfg.embedding.model_dump_json().encode())
    return h.hexdigest()[:24]


def _reusable(ws: Workspace, stage: str, fingerprint: str) -> str | None:
    """The newest run whose `stage` ran on the same inputs (re-running changes and duplicates nothing)."""
    root = ws.lake / "insights"
    for folder in sorted(root.glob("run_id=*"), reverse=True) if root.is_dir() else []:
        marker = folder / f"_{stage}.fingerprint"
        if marker.exists():
            return folder.name.split("=", 1)[1] if marker.read_text() == fingerprint else None
    return None


def _mark(ws: Workspace, run_id: str, stage: str, fingerprint: str) -> None:
    folder = insights_dir(ws, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"_{stage}.fingerprint").write_text(fingerprint)


def intents_stage(cfg, ws: Workspace, run_id: str) -> dict:
    """Mine intents from the run's texts (cached embeddings) and write them with each text's intent."""
    fingerprint = inputs_fingerprint(ws, cfg)
    previous = _reusable(ws, "intents", fingerprint)
    if previous:
        table = read_insight_table(ws, "intents", previous)
        return {"reused": True, "run_id": previous, "intents": int(len(table)), "texts": int(len(read_insight_table(ws, "text_intents", previous))), "labels": table["label"].tolist()}
    from models.embedder import TextEmbedder
    from models.intents import mine_intents

    texts = pd.read_parquet(ws.root / "texts" / "person_texts.parquet")
    embedder = TextEmbedder(cfg.embedding.model_path, ws.embedding_cache, cfg.embedding.batch_size)
    settings = _intent_settings(cfg)
    kept, why = _kept_intents(cfg, ws, texts, settings, embedder.encode)
    if kept is not None:
        mined, earlier, new = kept
    else:
        mined = mine_intents(texts, embedder.encode(texts["text"].astype(str).tolist()), cfg.insights.intent_k, cfg.insights.seed, cfg.insights.intent_k_max)
    write_insight_table(ws, run_id, "intents", mined.table)
    write_insight_table(ws, run_id, "text_intents", mined.text_intents)
    (insights_dir(ws, run_id) / INTENT_SETTINGS).write_text(settings)
    _mark(ws, run_id, "intents", fingerprint)
    out = {"run_id": run_id, "intents": int(len(mined.table)), "texts": int(len(mined.text_intents)), "labels": mined.table["label"].tolist()}
    if kept is not None:
        out.update({"mode": "kept", "kept_from_run": earlier, "new_distinct_texts": new})
    else:
        out.update({"mode": "mined", "mined_reason": why})
    if mined.choice is not None:  # how many intents, and why: the silhouette of the chosen cut
        out["k_method"], out["silhouette"] = mined.choice.method, round(mined.choice.silhouette, 4) if mined.choice.silhouette == mined.choice.silhouette else None
    return out


INTENT_SETTINGS = "_intents.settings"  # in the run's insights folder: what its intents were mined with
INTENT_REMINE_SHARE = 0.1  # more new distinct texts than this share of the mined ones: mine the intents again


def _intent_settings(cfg) -> str:
    s = cfg.insights
    return json.dumps({"k": s.intent_k, "k_max": s.intent_k_max, "seed": s.seed, "model": str(cfg.embedding.model_path)}, sort_keys=True)


def _kept_intents(cfg, ws: Workspace, texts: pd.DataFrame, settings: str, encode):
    """((intents, earlier run, new distinct texts), "") when the last run's intents are kept: the
    same settings and embedding model, `insights.retrain: auto`, and at most INTENT_REMINE_SHARE
    new distinct texts (a run that mostly adds records of known kinds); else (None, why they are
    mined again). Keeping them keeps intent ids and labels, so the graph's intent signals and the
    flag models trained on them stay valid between runs."""
    from models.intents import keep_intents

    if cfg.insights.retrain == "always":
        return None, "insights.retrain is always"
    runs = insight_runs(ws, "text_intents")
    if not runs:
        return None, "no earlier intents"
    earlier = runs[-1]
    marker = insights_dir(ws, earlier) / INTENT_SETTINGS
    if not marker.exists() or marker.read_text() != settings:
        return None, "the intent settings or the embedding model changed"
    table = read_insight_table(ws, "intents", earlier)
    if table.empty:
        return None, "the earlier run found no intents"
    known = read_insight_table(ws, "text_intents", earlier)[["text", "intent_id"]].drop_duplicates("text")
    known = known.set_index(known["text"].astype(str))["intent_id"].astype("int64")
    distinct = texts["text"].astype(str).drop_duplicates()
    new = int((~distinct.isin(known.index)).sum())
    if new > INTENT_REMINE_SHARE * len(known):
        return None, f"{new:,} new distinct texts, more than {INTENT_REMINE_SHARE:.0%} of the {len(known):,} mined"
    intents, new = keep_intents(texts, table, known, encode)
    return (intents, earlier, new), ""


GRAPH_STATE = "_graph_state.json"  # in lake/insights/: what the last graph was built on (no person data)


def _graph_fingerprint(ws: Workspace, cfg) -> str:
    """What the graph's per-person rows depend on besides the records: the graph code (graph.py
    and this stage's functions, not the rest of this module), the insights settings, consent and
    erasures."""
    import hashlib
    import inspect

    from personaops import consent, erasure, graph

    h = hashlib.sha256(Path(graph.__file__).read_bytes())
    for code in (graph_stage, _graph_plan, _kind_rows, _sessions, write_string_table, _behaviour_by_bucket, _event_buckets):
        h.update(inspect.getsource(code).encode())
    h.update(cfg.insights.model_dump_json().encode())
    h.update(consent.default_status().encode())
    for path in (consent.db_path(ws), erasure.tombstone_path(ws)):
        h.update(hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"-")
    return h.hexdigest()[:24]


def _record_digests(records, batches: dict[str, list[str]] | None) -> tuple[str, str]:
    """(every record's, the records in `batches`') order-free digest of (source, source_key,
    person_id): equal digests of the earlier batches mean every earlier record kept its person."""
    import duckdb
    import pyarrow as pa

    old = [(s, b) for s, ids in (batches or {}).items() for b in ids]
    con = duckdb.connect()
    try:
        con.register("rp", records)
        con.register("old", pa.table({"source": pa.array([s for s, _ in old], pa.string()), "_batch_id": pa.array([b for _, b in old], pa.string())}))
        total, part = con.execute(
            "SELECT count(*) || ':' || coalesce(bit_xor(h), 0), count(*) FILTER (WHERE o.source IS NOT NULL) || ':' || coalesce(bit_xor(h) FILTER (WHERE o.source IS NOT NULL), 0) "
            "FROM (SELECT source, _batch_id, hash(source, source_key, person_id) AS h FROM rp) r LEFT JOIN old o USING (source, _batch_id)"
        ).fetchone()  # fmt: skip
        return str(total), str(part)
    finally:
        con.close()


def _graph_plan(ws: Workspace, fingerprint: str, run_id: str, batches: dict[str, list[str]], kinds: dict[str, str], records) -> tuple[dict | None, str, str]:
    """(the last graph's state, "", this map's digest) when this graph can update it for new
    records only, else (None, why not, this map's digest)."""
    from personaops import graph

    path = ws.lake / "insights" / GRAPH_STATE
    state = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    total, earlier = _record_digests(records, state.get("batches") if isinstance(state.get("batches"), dict) else None)
    if not path.is_file():
        return None, "no earlier graph state", total
    if state.get("fingerprint") != fingerprint:
        return None, "the graph or feature code, insights settings, consent or erasures changed", total
    if state.get("kinds") != kinds or set(state.get("batches", {})) != set(batches):
        return None, "the sources changed", total
    for source, ids in state["batches"].items():
        if list(batches[source][: len(ids)]) != list(ids):
            return None, f"source {source}: earlier batches were replaced", total
    previous = state.get("run_id")
    if previous == run_id or not (graph.graph_dir(ws, previous) / "edges.parquet").is_file() or not (insights_dir(ws, previous) / "person_signals.parquet").is_file():
        return None, "the earlier graph's tables are missing", total
    if earlier != state.get("records"):
        return None, "earlier records moved between persons (or were removed)", total
    return state, "", total


def _kind_rows(ws: Workspace, records, batches: dict[str, list[str]], kinds: dict[str, str], kind: str, columns: tuple[str, ...] | None = None, persons=None) -> pd.DataFrame:
    """_lake_kind from an Arrow record -> person map (read once per stage), optionally only the
    records of `persons` (Arrow strings; then with `_batch_id`): the same rows in the same order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from personaops import features as F
    from personaops.consent import exclude_without_analytics
    from personaops.ingest import read_lake

    parts = []
    for source, ids in batches.items():
        if kinds.get(source) != kind:
            continue
        part = records.filter(pc.equal(records["source"], source))
        if persons is not None:
            part = part.filter(pc.is_in(part["person_id"], value_set=persons))
        ids_of = exclude_without_analytics(ws, part.select(["source", "source_key", "person_id"]).to_pandas())[["source_key", "person_id"]]
        keys = pa.array(ids_of["source_key"].tolist(), pa.string()) if persons is not None else None
        if columns is not None:
            frame = read_lake(ws, source, ids, columns=list(dict.fromkeys(["source_key", *columns, *(["_batch_id"] if persons is not None else [])])), keys=keys)
        else:
            frame = read_lake(ws, source, ids, columns=list(F.LAKE_COLUMNS), prefixes=F.LAKE_PREFIXES, keys=keys)
        frame = frame.merge(ids_of, on="source_key", how="inner")
        frame["source"] = source
        parts.append(frame)
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["person_id", "event_time"])


def _sessions(graph, events: pd.DataFrame) -> pd.DataFrame:
    return graph.session_frame(events) if len(events) and "event_type" in events.columns else graph.session_frame(pd.DataFrame())


GRAPH_BUCKET_ROWS = 2_000_000  # event rows per bucket of persons in a full graph build (its memory)


def _coded_event_files(ws: Workspace, records, batches: dict[str, list[str]], kinds: dict[str, str], tmp: Path):
    """(persons, [(path, code)] lazily) for the event sources' lake files: `persons` are the persons
    with a consented event record, sorted by `person|` as text (the order of the sequence signals),
    and each file's `code` holds, for every lake row, its person's position in `persons` (-1: no
    consented record). A DuckDB join gives the codes (memory limit 1 GB, spilling into `tmp`).
    Yields nothing without event files or persons. `records`: an Arrow table (source, source_key,
    person_id), or None to read the record map."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from personaops.consent import exclude_without_analytics

    sources = [s for s, _ in batches.items() if kinds.get(s) == "events"]
    files = [(s, ws.lake / s / f"batch={b}" / "part-0.parquet") for s in sources for b in batches[s]]
    files = [(s, path) for s, path in files if path.is_file()]
    if not files:
        return

    def quoted(path) -> str:
        return "'" + str(path).replace("'", "''") + "'"

    con = duckdb.connect()
    try:
        con.execute(f"SET temp_directory = {quoted(Path(tmp) / 'duckdb')}")
        con.execute("SET memory_limit = '1GB'")
        con.execute("SET threads = 1")
        if records is None:
            con.execute(f"CREATE VIEW rp AS SELECT source, source_key, person_id FROM read_parquet({quoted(ws.identity / 'record_person.parquet')})")
        else:
            con.register("rp", records.select(["source", "source_key", "person_id"]))
        con.register("event_sources", pa.table({"source": pa.array(sources, pa.string())}))
        found = con.execute("SELECT DISTINCT person_id FROM rp WHERE source IN (SELECT source FROM event_sources)").fetchnumpy()["person_id"]
        persons = exclude_without_analytics(ws, pd.DataFrame({"person_id": np.asarray(found, dtype=object)}))["person_id"].to_numpy(dtype=object)
        del found
        persons = persons[np.argsort(np.array([f"{p}|" for p in persons], dtype=object), kind="stable")]  # code = rank in `person|` order
        if not len(persons):
            return
        con.register("codes", pa.table({"person_id": pa.array(persons, pa.string()), "code": pa.array(np.arange(len(persons), dtype=np.int64))}))

        def coded():
            for source, path in files:
                con.register("this_source", pa.table({"source": pa.array([source], pa.string())}))
                joined = con.execute(f"SELECT e.file_row_number AS r, c.code FROM read_parquet({quoted(path)}, file_row_number = true) e "
                                     "JOIN (SELECT source_key, person_id FROM rp WHERE source = (SELECT source FROM this_source)) k ON e.source_key = k.source_key "
                                     "JOIN codes c ON k.person_id = c.person_id").fetchnumpy()  # fmt: skip
                code = np.full(pq.ParquetFile(path).metadata.num_rows, -1, dtype=np.int64)
                code[np.asarray(joined["r"], dtype=np.int64)] = np.asarray(joined["code"], dtype=np.int64)
                del joined
                yield path, code

        yield persons, [path for _, path in files], coded()
    finally:
        con.close()


def _event_buckets(ws: Workspace, records, batches: dict[str, list[str]], kinds: dict[str, str], columns: tuple[str, ...], bucket_rows: int | None = None):
    """The rows `_kind_rows(ws, records, batches, kinds, "events", columns)` gives (consented event
    records' lake rows with their person), as one frame per bucket of persons (person_id, then
    `columns` the lake has), in bucket order; each bucket's rows in the lake's order. The buckets are
    ranges of the persons in `person|` text order (the order of the sequence signals), about
    `bucket_rows` (GRAPH_BUCKET_ROWS) lake rows each. A DuckDB join gives every lake row its person
    (_coded_event_files), and one pass over each lake file writes its rows to their bucket's
    spill file: memory holds one bucket's rows, not every event row with its person and record key.
    `records`: an Arrow table (source, source_key, person_id), or None to read the record map."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    bucket_rows = GRAPH_BUCKET_ROWS if bucket_rows is None else bucket_rows
    with tempfile.TemporaryDirectory(prefix="graph-buckets-", dir=ws.root) as tmp:
        writers: dict[int, pq.ParquetWriter] = {}
        held: dict[int, list] = {}
        n_buckets, persons = 0, None
        try:
            for persons, paths, coded in _coded_event_files(ws, records, batches, kinds, Path(tmp)):
                n_rows = sum(pq.ParquetFile(path).metadata.num_rows for path in paths)
                n_buckets = int(min(max(1, -(-n_rows // max(bucket_rows, 1))), len(persons)))
                names = {c for path in paths for c in pq.read_schema(path).names}
                target = {c: next(pq.read_schema(p).field(c).type for p in paths if c in pq.read_schema(p).names) for c in columns if c in names}
                for path, code in coded:
                    pfile = pq.ParquetFile(path)
                    present = [c for c in target if c in pfile.schema_arrow.names]
                    start = 0
                    for batch in pfile.iter_batches(batch_size=1 << 18, columns=present or None):
                        at = code[start : start + batch.num_rows]
                        start += batch.num_rows
                        cols = {"_code": pa.array(at, pa.int64())}
                        for c, kind in target.items():
                            cols[c] = batch.column(c).cast(kind) if c in present else pa.nulls(batch.num_rows, kind)
                        bucket = np.where(at >= 0, at * n_buckets // len(persons), -1)
                        order = np.argsort(bucket, kind="stable")  # by bucket, each bucket's rows in the lake's order
                        table = pa.table(cols).take(pa.array(order))
                        bounds = np.searchsorted(bucket[order], np.arange(n_buckets + 1))
                        for b in np.flatnonzero(np.diff(bounds)).tolist():  # one slice per bucket present: linear in the rows
                            part = table.slice(bounds[b], bounds[b + 1] - bounds[b])
                            if n_buckets == 1:
                                held.setdefault(b, []).append(part)
                                continue
                            if b not in writers:
                                writers[b] = pq.ParquetWriter(Path(tmp) / f"bucket-{b}.parquet", part.schema)
                            writers[b].write_table(part)
                    del code
        finally:
            for w in writers.values():
                w.close()
        for b in range(n_buckets):
            if b in held:
                table = pa.concat_tables(held.pop(b))
            elif b in writers:
                table = pq.read_table(Path(tmp) / f"bucket-{b}.parquet")
            else:
                continue
            events = table.drop_columns(["_code"]).to_pandas()
            events.insert(0, "person_id", persons[table["_code"].to_numpy()])
            del table
            yield events
            del events


def _behaviour_by_bucket(ws: Workspace, records, batches: dict[str, list[str]], kinds: dict[str, str], bucket_rows: int | None = None):
    """(graph.EventParts, sequence signals) of every consented event record's person: what
    `event_parts` and `sequence_signals(categorical=True)` of `_sessions` over all of
    `_kind_rows(..., "events")` give, computed one bucket of persons at a time (_event_buckets):
    every figure is a sum over persons and a session belongs to one person. Memory: one bucket's
    sessions, not every event row with a `person|session` string (17-19 GiB estimated at 1M people)."""
    from personaops import graph

    parts, sequences = [], []
    for events in _event_buckets(ws, records, batches, kinds, ("event_time", "event_type", "session_id"), bucket_rows):
        sessions = _sessions(graph, events)
        del events
        parts.append(graph.event_parts(sessions))
        sequences.append(graph.sequence_signals(sessions, categorical=True))
        del sessions
    if not parts:
        sessions = _sessions(graph, pd.DataFrame(columns=["person_id", "event_time"]))
        return graph.event_parts(sessions), graph.sequence_signals(sessions, categorical=True)
    return graph.combine_event_parts(parts), graph.concat_sequence_signals(sequences, ordered=True) if len(sequences) > 1 else sequences[0]


def graph_stage(cfg, ws: Workspace, run_id: str, batches: dict[str, list[str]], kinds: dict[str, str], as_of: str) -> dict:
    """Build and store the run's graph; derive per-person signals and graph features (Feast, online).

    After a run that only added records (every earlier record kept its person, same code, settings,
    consent and erasures), the behaviour part (did edges, event-type/next/co-occurrence counts,
    sequence signals) is the last graph's, updated for the persons with a new event record only
    (graph.update_event_parts): the same tables a full build gives. Everything else is rebuilt."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from models.intents import intent_mix
    from personaops import graph
    from personaops.feature_store import feature_store, write_table
    from personaops.online_publish import online_publisher
    from personaops.workspace import atomic_write_text

    fingerprint = inputs_fingerprint(ws, cfg)
    previous = _reusable(ws, "graph", fingerprint)
    if previous:
        nodes, edges = graph.query(ws, "SELECT count(*) FROM nodes", previous), graph.query(ws, "SELECT count(*) FROM edges", previous)
        return {"reused": True, "run_id": previous, "nodes": int(nodes.iloc[0, 0]), "edges": int(edges.iloc[0, 0]), "signals": 0}
    run_id = insight_runs(ws, "intents")[-1]  # the intents this graph is built on (this run's, or reused)
    assignments, version = _published_assignments(ws)
    records = pq.read_table(ws.identity / "record_person.parquet", columns=["source", "source_key", "person_id", "_batch_id"])
    graph_fp = _graph_fingerprint(ws, cfg)
    state, reason, digest = _graph_plan(ws, graph_fp, run_id, batches, kinds, records)
    columns = ("event_time", "event_type", "session_id")  # what the sessions read
    if state is not None:
        old = {s: set(ids) for s, ids in state["batches"].items()}
        added = records.filter(pc.invert(pc.is_in(pc.binary_join_element_wise(records["source"], records["_batch_id"], "\x1f"),
                                                  value_set=pa.array([f"{s}\x1f{b}" for s, ids in old.items() for b in ids], pa.string()))))  # fmt: skip
        added = added.filter(pc.is_in(added["source"], value_set=pa.array([s for s, k in kinds.items() if k == "events"], pa.string())))
        changed = pc.unique(added["person_id"])
        events = _kind_rows(ws, records, batches, kinds, "events", columns, persons=changed)
        changed_index = pd.Index(changed.to_pylist(), dtype=object)
        if len(events):
            was = np.zeros(len(events), dtype=bool)
            for source, ids in old.items():
                was |= (events["source"] == source).to_numpy() & events["_batch_id"].isin(ids).to_numpy()
            then, now = _sessions(graph, events[was].drop(columns="_batch_id")), _sessions(graph, events.drop(columns="_batch_id"))
        else:
            then = now = _sessions(graph, events)
        del events
        old_nodes = pd.read_parquet(graph.graph_dir(ws, state["run_id"]) / "nodes.parquet")
        old_edges = pd.read_parquet(graph.graph_dir(ws, state["run_id"]) / "edges.parquet")
        parts = graph.update_event_parts(graph.parts_from_graph(old_nodes, old_edges), graph.event_parts(then), graph.event_parts(now), changed_index)
        del old_nodes, old_edges
        old_signals = read_signals(ws, state["run_id"])
        if len(old_signals):  # the sequence signals (the intent ones are rebuilt from this run's intents)
            intent = np.asarray(old_signals["signal"].cat.categories.astype(str).str.startswith("intent:"))
            old_signals = old_signals[~intent[old_signals["signal"].cat.codes.to_numpy()]]
        sequence = graph.merge_sequence_signals(old_signals, graph.sequence_signals(now, categorical=True), changed_index)
        del old_signals, then, now
        update = {"mode": "incremental", "persons_recomputed": int(len(changed_index))}
    else:
        # the buckets read the record map in DuckDB; the campaign records are read again after
        # (the Arrow record map of every record was 226 MiB at 100k people, ~2.2 GiB at 1M)
        del records
        parts, sequence = _behaviour_by_bucket(ws, None, batches, kinds)
        campaigns = [s for s in batches if kinds.get(s) == "campaigns"]
        records = pq.read_table(ws.identity / "record_person.parquet", columns=["source", "source_key", "person_id", "_batch_id"], filters=[("source", "in", campaigns)] if campaigns else [("source", "=", "\x00")])
        update = {"mode": "full", "full_reason": reason}
    exposures = _kind_rows(ws, records, batches, kinds, "campaigns")
    del records  # (3 string columns of every record: hundreds of MB at 100k people)
    intents = read_insight_table(ws, "intents", run_id)
    text_intents = read_insight_table(ws, "text_intents", run_id)
    nodes, edges = graph.build_graph(assignments, None, text_intents, intents, exposures, parts=parts)
    paths = graph.write_graph(ws, run_id, nodes, edges)
    n_nodes, n_edges = len(nodes), len(edges)
    del nodes, edges, exposures, parts
    signals = graph.combine_signals([sequence, graph.intent_signals(text_intents, intents)], categorical=True)
    del sequence
    write_string_table(ws, run_id, "person_signals", signals)
    labels_path = ws.feature_table("person_labels")
    labels = pd.read_parquet(labels_path) if labels_path.exists() else pd.DataFrame(columns=["person_id"])
    label = cfg.insights.churn_label
    churned = labels.set_index("person_id")[label] if label in labels.columns else None
    write_insight_table(ws, run_id, "person_churn_labels", labels[["person_id", label]].rename(columns={label: "churned"}) if churned is not None else pd.DataFrame(columns=["person_id", "churned"]))
    persons = pd.Index(assignments["person_id"].astype(str), name="person_id")
    matrix = graph.signal_sparse(signals, persons, cfg.insights.min_signal_persons)  # sparse: no dense persons x signals array
    mix = intent_mix(text_intents, intents)
    write_insight_table(ws, run_id, "person_intent_mix", mix)
    feats = graph.graph_features(matrix, mix, churned, pd.Timestamp(as_of))
    top = mix.set_index("person_id")[["top_intent", "n_intent_texts"]] if len(mix) else pd.DataFrame(columns=["top_intent", "n_intent_texts"])
    feats = feats.join(top, on="person_id")
    feats["top_intent"] = feats["top_intent"].astype("string")
    feats["n_intent_texts"] = feats["n_intent_texts"].fillna(0).astype("int64")
    feats = feats[["person_id", *GRAPH_FEATURES, "event_timestamp", "created"]]
    write_table(ws, "person_graph", feats)
    # Published whole, not changes-only: neighbourhood_churn_rate and intent_centrality are global,
    # so a +1% re-run changes most rows (10k: 11,472 and 8,173 of 11,676), and the row hashes of a
    # changes-only attempt would only add to the rebuild.
    online = online_publisher(feature_store(ws, cfg)).replace("person_graph", feats.reset_index(drop=True))
    (insights_dir(ws, run_id) / "meta.json").write_text(json.dumps({"min_signal_persons": cfg.insights.min_signal_persons, "model_version": version}))
    state = {"fingerprint": graph_fp, "run_id": run_id, "batches": batches, "kinds": kinds, "records": digest}
    atomic_write_text(ws.lake / "insights" / GRAPH_STATE, json.dumps(state, indent=1))
    _mark(ws, run_id, "graph", fingerprint)
    return {"run_id": run_id, **paths, "nodes": int(n_nodes), "edges": int(n_edges), "signals": int(matrix.shape[1]), "online_rows": int(online), "model_version": version, **update}


FLAG_MODELS = "flag_models.joblib"


def record_digest(ws: Workspace) -> np.ndarray | None:
    """Sorted 64-bit hashes of every resolved record (source, source_key, content hash): a later
    run whose records contain all of these only added records (none changed or was removed).
    None when the record map has no content hashes (then the flag models are trained every run)."""
    import duckdb

    path = str(ws.identity / "record_person.parquet").replace("'", "''")  # read_parquet takes no parameter
    con = duckdb.connect()
    try:
        column = con.execute(f"SELECT hash(source, source_key, _row_hash) AS h FROM read_parquet('{path}') ORDER BY h").fetchnumpy()["h"]
    except duckdb.Error:
        return None
    finally:
        con.close()
    return np.asarray(column, dtype=np.uint64)


def _intent_key(intents: pd.DataFrame) -> str:
    """The intents as (id, label) pairs in id order: what the models' intent-mix inputs mean."""
    return json.dumps(sorted((int(i), str(label)) for i, label in zip(intents["intent_id"], intents["label"]))) if len(intents) else "[]"


def _training_settings(cfg) -> str:
    return json.dumps(cfg.insights.model_dump(mode="json", exclude={"retrain"}), sort_keys=True)


def save_flag_models(ws: Workspace, cfg, run_id: str, version: int | None, intents: pd.DataFrame,
                     model, opportunity_model, extra: dict) -> None:  # fmt: skip
    """Keep the run's trained risk and opportunity models with what they were trained on (the
    records' digest, persona model version, insight settings, intents), so a run that only adds records
    can score with them instead of training again."""
    import joblib

    folder = insights_dir(ws, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{FLAG_MODELS}.tmp"
    joblib.dump({"churn": model, "opportunity": opportunity_model, "records": record_digest(ws), "model_version": version, "settings": _training_settings(cfg),
                 "intents": _intent_key(intents), **extra}, tmp)  # fmt: skip
    tmp.replace(folder / FLAG_MODELS)


def kept_flag_models(ws: Workspace, cfg, version: int | None, intents: pd.DataFrame,
                     inputs: pd.DataFrame, signals: pd.DataFrame) -> tuple[dict | None, str]:  # fmt: skip
    """(the last trained flag models, "") when this run only added records to what they were
    trained on: the same persona model version (the champion was kept), the same insight settings
    and intents, every record they were trained on still there unchanged (record_digest), and every
    input they read available; else (None, why they are trained again). `insights.retrain: always`
    trains every run."""
    import joblib

    if getattr(cfg.insights, "retrain", "auto") == "always":
        return None, "insights.retrain is always"
    root = ws.lake / "insights"
    found = sorted((p for p in root.glob(f"run_id=*/{FLAG_MODELS}")), reverse=True) if root.is_dir() else []
    if not found:
        return None, "no earlier flag models"
    try:
        kept = joblib.load(found[0])
    except Exception as exc:  # an unreadable file (other library versions): train again
        return None, f"earlier flag models unreadable ({type(exc).__name__})"
    kept["run_id"] = found[0].parent.name.split("=", 1)[1]
    if kept.get("model_version") != version:
        return None, f"persona model version {version} (the flag models were trained with {kept.get('model_version')})"
    if kept.get("settings") != _training_settings(cfg):
        return None, "insight settings changed"
    if kept.get("records") is None:
        return None, "earlier flag models carry no record digest"
    earlier, now = kept["records"], record_digest(ws)
    if now is None:
        return None, "the record map carries no content hashes"
    at = np.searchsorted(now, earlier)
    if len(earlier) and (at.max() >= len(now) or not np.array_equal(now[at], earlier)):
        return None, "records the flag models were trained on changed or are gone (not only added)"
    if kept.get("intents") != _intent_key(intents):
        return None, "the intents changed"
    names = set(signals["signal"].cat.categories if isinstance(signals["signal"].dtype, pd.CategoricalDtype) else signals["signal"].unique())
    for m in (kept["churn"], kept["opportunity"]):
        missing = [c for c in (m.columns if m is not None else []) if c not in inputs.columns and not (c.startswith("sig_") and c[4:] in names)]
        if missing:
            return None, f"inputs the flag models read are gone ({', '.join(missing[:3])})"
    return kept, ""


FLAG_SCORES = "_flag_scores.parquet"  # per person and flag model: the input row's hash and its probability
SCORE_ROWS = 1 << 17  # persons whose model columns are dense at once while scoring (_scored)


def _scored(model, inputs: pd.DataFrame, name: str, models_run: str, earlier: pd.DataFrame | None, kept: list, rows: int = SCORE_ROWS) -> pd.Series:
    """model.probability(inputs), computed only for the persons whose input row (the model's
    columns, by value, with the person id) differs from the one the same models scored in the last
    run: a calibrated tree ensemble scores each row on its own, so an unchanged row has the same
    probability. Appends this run's (person, row hash, probability) to `kept`.
    `rows` persons at a time: a row's hash and probability depend on that row only, so they are
    the whole table's; the model's columns of every person at once, with predict_proba's float64
    copy of them, were ~0.3 GB per model at 100,000 people (both models score side by side)."""
    from models.churn import input_columns

    n = len(inputs)
    row_hash = np.empty(n, dtype=np.uint64)
    values = np.full(n, np.nan)
    todo = np.ones(n, dtype=bool)
    reuse = earlier is not None and f"{name}_hash" in earlier.columns and (earlier["models_run"] == models_run).all()
    if reuse:
        found_at = pd.Index(earlier["person_id"]).get_indexer(inputs.index)  # by position: a uint64 hash must not pass through NaN
        earlier_hash = earlier[f"{name}_hash"].to_numpy(dtype=np.uint64)
        earlier_probability = earlier[f"{name}_probability"].to_numpy(dtype=float)
    for start in range(0, n, rows):
        at = np.arange(start, min(start + rows, n))
        columns = input_columns(inputs, model.columns, at)  # only the model's columns dense, of these persons
        row_hash[at] = pd.util.hash_pandas_object(columns, index=True).to_numpy()
        if reuse:
            found = found_at[at] >= 0
            same = np.zeros(len(at), dtype=bool)
            same[found] = earlier_hash[found_at[at][found]] == row_hash[at][found]
            values[at[same]] = earlier_probability[found_at[at][same]]
            todo[at] = ~same
        if todo[at].any():
            values[at[todo[at]]] = model.probability(columns if todo[at].all() else columns[todo[at]]).to_numpy()
        del columns
    probability = pd.Series(values, index=inputs.index)
    part = pd.DataFrame({f"{name}_hash": row_hash, f"{name}_probability": probability.to_numpy()}, index=inputs.index)
    part.attrs["scored"] = int(todo.sum())
    kept.append(part)
    return probability


def _earlier_scores(ws: Workspace, models_run: str) -> pd.DataFrame | None:
    """The newest flag scores written with the models of `models_run`, if any."""
    root = ws.lake / "insights"
    for path in sorted(root.glob(f"run_id=*/{FLAG_SCORES}"), reverse=True) if root.is_dir() else []:
        try:
            table = pd.read_parquet(path)
        except Exception:  # an unreadable file: score everyone
            return None
        return table if len(table) and (table["models_run"] == models_run).all() else None
    return None


def _with_signal_columns(inputs: pd.DataFrame, models: list, signals: pd.DataFrame) -> pd.DataFrame:
    """`inputs` plus any 0/1 signal column a kept model reads that this run's signal matrix
    dropped (its support moved across the min/max share): who shows it, from the long table."""
    from models.churn import SparseInputs

    missing = sorted({c for m in models for c in m.columns if c not in inputs.columns})
    if not missing:
        return inputs
    if isinstance(inputs, SparseInputs):  # the same columns appended to the sparse signals (after the matrix's)
        from scipy import sparse

        from personaops.graph import SignalMatrix

        at = {c: j for j, c in enumerate(missing)}
        rows, cols = [], []
        for c in missing:
            who = inputs.index.get_indexer(pd.Index(signals.loc[(signals["signal"] == c[4:]).to_numpy(), "person_id"].astype(object)).unique())
            who = np.unique(who[who >= 0])
            rows.append(who)
            cols.append(np.full(len(who), at[c]))
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        extra = sparse.csr_matrix((np.ones(len(rows), dtype=np.uint8), (rows, cols)), shape=(len(inputs), len(missing)))
        m = inputs.signals
        matrix = SignalMatrix(sparse.hstack([m.values, extra], format="csr", dtype=np.uint8), m.index, m.columns.append(pd.Index([c[4:] for c in missing])))
        matrix.values.sort_indices()
        return SparseInputs(inputs.base, matrix)
    extra = pd.DataFrame(0, index=inputs.index, columns=missing, dtype=np.uint8)
    for c in missing:
        who = signals.loc[(signals["signal"] == c[4:]).to_numpy(), "person_id"].astype(object)
        extra.loc[extra.index.isin(who), c] = 1
    return inputs.join(extra)


def _numeric_model_frame(ws: Workspace) -> pd.DataFrame:
    """features.current_model_frame's model inputs (every resolved person with analytics consent)
    without the text embeddings the flags never read (churn_inputs keeps numeric columns only):
    100k people's 384-float vectors were read and joined for nothing."""
    from personaops import features as F
    from personaops.consent import exclude_without_analytics

    tables = F.read_tables(ws.features, views=F.MODEL_INPUT_VIEWS)
    record_person = exclude_without_analytics(ws, pd.read_parquet(ws.identity / "record_person.parquet", columns=["person_id"]))
    return F.model_input_frame(tables, pd.Index(sorted(record_person["person_id"].unique()), name="person_id"))


GRAPH_FEATURES = ["intent_centrality", "n_sequence_patterns", "n_signals", "neighbourhood_churn_rate", "top_intent", "n_intent_texts"]
FLAG_FEATURES = ["churn_probability", "risk_flag", "engagement_trend", "engagement_flag", "reasons"]


def _side_by_side(*calls) -> list:
    """The results of the independent `calls` (no arguments), in order, each run on a thread of its
    own (an exception of one is raised here). The flags' two models are such calls, when trained
    and when they score everyone: each is single-threaded (models.churn limits its OpenMP threads
    to 1, in its own thread, so each is the same computation as on the main thread, bit for bit),
    and HistGradientBoosting builds histograms, finds splits and predicts without the GIL, so the
    risk and opportunity models use both cores instead of one after the other (their fits and
    scoring were ~3/4 of the flags' CPU seconds at 30,000 people)."""
    from concurrent.futures import ThreadPoolExecutor

    if len(calls) < 2:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="personaops-flags") as pool:
        return [future.result() for future in [pool.submit(call) for call in calls]]


def _fit_or_error(fit):
    """A training call that returns (model, None), or (None, the ValueError of too few labelled people)."""

    def attempt():
        try:
            return fit(), None
        except ValueError as exc:
            return None, exc

    return attempt


def flags_stage(cfg, ws: Workspace, run_id: str, batches: dict[str, list[str]], kinds: dict[str, str], as_of: str) -> dict:
    """Train the calibrated churn model on held-out-evaluated people, flag every person, publish the
    flags to Feast (offline + online), keep an `amber_flags` table per run, log to MLflow."""
    from models import churn
    from personaops import graph
    from personaops.feature_store import feature_store, write_table
    from personaops.online_publish import online_publisher, publishing_changes_only

    fingerprint = inputs_fingerprint(ws, cfg)
    previous = _reusable(ws, "flags", fingerprint)
    if previous:
        table = read_insight_table(ws, "amber_flags", previous)
        reused = {"reused": True, "run_id": previous, "risk_amber": int((table["risk_flag"] == "amber").sum()), "engagement_amber": int((table["engagement_flag"] == "amber").sum())}
        if "opportunity_flag" in table.columns:
            reused["opportunity_amber"] = int((table["opportunity_flag"] == "amber").sum())
        return reused
    from models import propensity

    run_id = insight_runs(ws, "person_signals")[-1]  # the graph these flags are built on
    assignments, version = _published_assignments(ws)
    persona = assignments.set_index("person_id")["persona_id"]
    frame = _numeric_model_frame(ws)
    signals = read_signals(ws, run_id)
    churned = read_insight_table(ws, "person_churn_labels", run_id).set_index("person_id")["churned"]
    mix = read_insight_table(ws, "person_intent_mix", run_id)
    # sparse all through: the models' inputs keep the signals as this matrix (churn.SparseInputs)
    matrix = graph.signal_sparse(signals, pd.Index(frame.index, name="person_id"), cfg.insights.min_signal_persons)
    stamp = pd.Timestamp(as_of)
    trend = _engagement_trend(ws, batches, kinds, stamp)
    # the records of the campaign and survey sources only (every record's key, as Python strings, was GBs at 1M people)
    record_person = _analytics_record_person(ws, [s for s in batches if kinds.get(s) in ("campaigns", "surveys")])
    out: dict = {"model_version": version}
    # The model inputs with the signals sparse: the dense persons x all-signals frame (thousands of
    # columns, GBs at a million persons) never exists; each model, the effects (chunk by chunk) and
    # the reasons make dense only the columns they read (the cells churn_inputs would hold).
    inputs = churn.sparse_inputs(frame, persona, mix, matrix)
    del frame
    intents = read_insight_table(ws, "intents", run_id)
    campaign = cfg.insights.opportunity_campaign
    exposures = _lake_kind(ws, batches, kinds, "campaigns", record_person=record_person)  # read once: the opportunity labels and the KPIs
    surveys = _lake_kind(ws, batches, kinds, "surveys", record_person=record_person)
    del record_person
    converted = propensity.conversion_labels(exposures, campaign).reindex(inputs.index)
    write_insight_table(ws, run_id, "person_opportunity_labels", converted.rename("converted").rename_axis("person_id").reset_index())
    kept, why = kept_flag_models(ws, cfg, version, intents, inputs, signals)
    scores: list[pd.DataFrame] = []  # this run's (row hash, probability) per person and model
    models_run, earlier = (kept["run_id"], _earlier_scores(ws, kept["run_id"])) if kept is not None else (run_id, None)
    if kept is not None:  # only records were added: score everyone with the last trained models
        model, opportunity_model = kept["churn"], kept["opportunity"]
        inputs = _with_signal_columns(inputs, [m for m in (model, opportunity_model) if m is not None], signals)
        out.update({k: kept[k] for k in ("skipped_risk", "skipped_opportunity") if k in kept})
        out["retrained"], out["models_from_run"] = False, kept["run_id"]
    else:
        out["retrained"], out["retrain_reason"] = True, why
        # Risk, and opportunity (propensity to convert on the expansion offer, trained on the people
        # it was offered to): two independent fits, side by side on two threads (_side_by_side).
        (model, risk_error), (opportunity_model, opportunity_error) = _side_by_side(
            _fit_or_error(lambda: churn.train_churn_model(inputs, churned, cfg.insights.test_size, cfg.insights.seed) if churned.notna().any() else None),
            _fit_or_error(lambda: propensity.train_opportunity_model(inputs, converted, cfg.insights.test_size, cfg.insights.seed) if converted.notna().any() else None),
        )  # fmt: skip
        if risk_error is not None:  # too few labelled people of one outcome: no risk model this run
            out["skipped_risk"] = str(risk_error)
        if opportunity_error is not None:  # too few exposed people of one outcome: no opportunity model this run
            out["skipped_opportunity"] = f"campaign {campaign!r}: {opportunity_error}"
    # Both models score everyone side by side too (this run's row hashes and probabilities: churn's, then opportunity's)
    risk_scores: list[pd.DataFrame] = []
    opportunity_scores: list[pd.DataFrame] = []
    probability, opportunity_probability = _side_by_side(
        lambda: _scored(model, inputs, "churn", models_run, earlier, risk_scores) if model is not None else None,
        lambda: _scored(opportunity_model, inputs, "opportunity", models_run, earlier, opportunity_scores) if opportunity_model is not None else None,
    )  # fmt: skip
    scores.extend(risk_scores + opportunity_scores)
    if model is None:
        probability = pd.Series(np.nan, index=inputs.index)
        reasons = pd.Series("", index=inputs.index)
        out.setdefault("skipped_risk", f"no `{cfg.insights.churn_label}` label in the sources")
    else:
        ranked = churn_signals(matrix, churned, persona)
        ranked = ranked[ranked["p_adjusted"] < 0.05] if len(ranked) else ranked
        shown = [c for c in dict.fromkeys(ranked.loc[ranked["odds_ratio"] > 1, "signal"]) if c in matrix.columns] if len(ranked) else []
        reasons = churn.top_reasons(matrix.select(shown).to_frame(), ranked)  # only the columns it reads (the raising ranked signals)
        out["metrics"] = model.metrics
    if opportunity_model is None:
        out.setdefault("skipped_opportunity", f"no exposures to campaign {campaign!r} (insights.opportunity_campaign) in the sources")
        opportunity = propensity.opportunity_flags(pd.Series(np.nan, index=inputs.index), pd.Series("", index=inputs.index), cfg.insights.opportunity_threshold, stamp)
    else:
        effects = propensity.conversion_effects(inputs, converted)
        reasons_of = propensity.opportunity_reasons(
            inputs, effects, persona_names={str(k): v for k, v in assignments.drop_duplicates("persona_id").set_index("persona_id")["persona_name"].items()},
            intent_labels={str(k): v for k, v in intents.set_index("intent_id")["label"].items()} if len(intents) else {},
        )  # fmt: skip
        opportunity = propensity.opportunity_flags(opportunity_probability, reasons_of, cfg.insights.opportunity_threshold, stamp)
        out["opportunity_metrics"] = {**opportunity_model.metrics, "campaign": campaign}
        (insights_dir(ws, run_id) / "opportunity.json").write_text(json.dumps({"campaign": campaign, "threshold": cfg.insights.opportunity_threshold,
                                                                               "metrics": opportunity_model.metrics, "effects": frame_records(effects.head(20))}))  # fmt: skip
    if kept is not None:
        if kept.get("mlflow_run_id"):
            out["mlflow_run_id"] = kept["mlflow_run_id"]  # the run that trained and measured these models
    else:
        if model is not None or opportunity_model is not None:
            out["mlflow_run_id"] = _log_flags_run(ws, cfg, run_id, model.metrics if model is not None else {}, len(inputs.columns),
                                                  opportunity_model.metrics if opportunity_model is not None else None)  # fmt: skip
        save_flag_models(ws, cfg, run_id, version, intents, model, opportunity_model, {k: out[k] for k in ("skipped_risk", "skipped_opportunity", "mlflow_run_id") if k in out})
    if scores:
        table = pd.concat(scores, axis=1).rename_axis("person_id").reset_index()
        table["models_run"] = models_run
        write_insight_table(ws, run_id, FLAG_SCORES.removesuffix(".parquet"), table)
        out["persons_scored"] = {"persons": int(len(table)), **{p.columns[0].removesuffix("_hash"): p.attrs["scored"] for p in scores}}
    del inputs, matrix
    flags = churn.amber_flags(probability, trend, reasons, cfg.insights.risk_threshold, cfg.insights.engagement_threshold, stamp)
    write_table(ws, "person_flags", flags)
    write_table(ws, "person_opportunity", opportunity)
    publisher = online_publisher(feature_store(ws, cfg))
    # Only the persons whose flag row changed since the view's last publish are written online (a
    # re-run that only added people: the newcomers and the people their records changed), or the
    # table is rebuilt when that is not exact or not cheaper (docs/serving.md).
    with publishing_changes_only() as online_publish:
        out["online_rows"] = int(publisher.replace("person_flags", flags.reset_index(drop=True)))
        out["opportunity_online_rows"] = int(publisher.replace("person_opportunity", opportunity.reset_index(drop=True)))
    out["online_publish"] = online_publish
    flags = flags.merge(opportunity.drop(columns=["event_timestamp", "created"]), on="person_id", how="left")
    table = flags.merge(assignments[["person_id", "persona_id", "persona_name"]], on="person_id", how="left").drop(columns=["created"])
    write_insight_table(ws, run_id, "amber_flags", table)
    labels_path = ws.feature_table("person_labels")
    summary = persona_summary(assignments, pd.read_parquet(labels_path) if labels_path.exists() else pd.DataFrame(),
                              read_insight_table(ws, "text_intents", run_id), read_insight_table(ws, "intents", run_id), signals, flags, version)  # fmt: skip
    kpis = business_kpis(assignments, signals, exposures, surveys)
    summary = summary.merge(kpis, on="persona_id", how="left")
    write_insight_table(ws, run_id, "persona_summary", summary)
    _mark(ws, run_id, "flags", fingerprint)
    out["run_id"] = run_id
    out["risk_amber"] = int((flags["risk_flag"] == "amber").sum())
    out["engagement_amber"] = int((flags["engagement_flag"] == "amber").sum())
    out["opportunity_amber"] = int((flags["opportunity_flag"] == "amber").sum())
    return out


def _log_flags_run(ws: Workspace, cfg, run_id: str, metrics: dict, n_features: int, opportunity: dict | None = None) -> str:
    """Log the churn model's held-out metrics, and the opportunity model's as `opportunity_<metric>`,
    to one MLflow run (experiment `<model experiment>-flags`)."""
    import mlflow

    from models import registry

    experiment_id = registry.experiment_id(ws, f"{cfg.model.experiment}-flags")
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"flags-{run_id}") as run:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.log_params({"risk_threshold": cfg.insights.risk_threshold, "test_size": cfg.insights.test_size, "n_features": n_features, "model": "HistGradientBoosting+isotonic"})
        if opportunity is not None:
            mlflow.log_metrics({f"opportunity_{k}": float(v) for k, v in opportunity.items()})
            mlflow.log_params({"opportunity_campaign": cfg.insights.opportunity_campaign, "opportunity_threshold": cfg.insights.opportunity_threshold})
        mlflow.set_tags({"personas.run_id": run_id, "personas.feature_service": "persona_flags_v1"})
    return run.info.run_id
