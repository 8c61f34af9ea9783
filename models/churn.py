"""Amber flags: a calibrated churn classifier, an engagement trend, and the flags per person.

Risk: churn probability from sklearn's HistGradientBoosting calibrated with isotonic regression
(CalibratedClassifierCV), over persona + behavioural + intent-mix + graph-signal features. It is
trained on a stratified share of people and judged on the held-out rest: ROC AUC, Brier score
and expected calibration error (ECE, 10 equal-width bins) on people it never saw. Every person is
then scored by that model (held-out people out of sample).
Engagement: events per day in the last 30 days against the 60 before (ratio; <1 = declining).
Each flag carries its top contributing signals: the churn-associated graph signals the person
shows, strongest association first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

RECENT_DAYS = 30
BASELINE_DAYS = 60


@dataclass
class ChurnModel:
    model: object
    columns: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    test_persons: list[str] = field(default_factory=list)

    def probability(self, inputs: pd.DataFrame) -> pd.Series:
        """Calibrated churn probability (0-1) per row of `inputs`."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="openmp"):
            x = input_columns(inputs, self.columns)
            return pd.Series(self.model.predict_proba(x)[:, 1], index=inputs.index)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |observed rate - mean predicted probability| over equal-width bins, weighted by size (0-1)."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(y[sel].mean() - p[sel].mean())
    return float(ece)


def churn_inputs(model_frame: pd.DataFrame, persona: pd.Series, mix: pd.DataFrame, signals: pd.DataFrame) -> pd.DataFrame:
    """One numeric row per person: model features, persona one-hot, intent mix and 0/1 signals."""
    frame = model_frame.select_dtypes(include=[np.number]).copy()
    frame = frame.join(pd.get_dummies(persona.reindex(frame.index).astype("string"), prefix="persona", dtype=float))
    if len(mix):
        frame = frame.join(mix.set_index("person_id").filter(like="intent_").add_prefix("mix_"))
    if len(signals.columns):
        # 0/1 signals stay uint8: thousands of them x 100k people are GBs per float64 copy.
        frame = frame.join(signals.add_prefix("sig_").astype(np.uint8))
    frame.columns = [str(c) for c in frame.columns]
    # Only columns that can hold a gap (a uint8 signal column has none): a fillna over thousands of
    # signal columns copied each of them for nothing.
    floats = [c for c, dtype in frame.dtypes.items() if c.startswith(("mix_", "sig_", "persona_")) and dtype.kind == "f"]
    gaps = [c for c, gap in frame[floats].isna().any().items() if gap] if floats else []
    return frame.fillna({c: 0.0 for c in gaps}) if gaps else frame


class SparseInputs:
    """churn_inputs' frame with its 0/1 graph signals kept sparse: `base` (the dense non-signal
    columns: model features, persona one-hot, intent mix) and `signals` (a graph.SignalMatrix of
    the same persons; its column `s` is the input column `sig_<s>`). The persons x all-signals
    dense frame (thousands of columns, GBs at a million persons) never exists: `dense(columns)`
    builds only the columns asked for, the cells and dtypes churn_inputs would hold."""

    def __init__(self, base: pd.DataFrame, signals) -> None:
        self.base, self.signals = base, signals
        self.signal_names = [f"sig_{c}" for c in signals.columns]
        self.columns = pd.Index(list(base.columns) + self.signal_names)
        self._signal_at = {c: j for j, c in enumerate(self.signal_names)}

    @property
    def index(self) -> pd.Index:
        return self.base.index

    def __len__(self) -> int:
        return len(self.base)

    def dense(self, columns, rows: np.ndarray | None = None) -> pd.DataFrame:
        """The input columns `columns` (in that order) of the persons at positions `rows` (all if None)."""
        columns = [str(c) for c in columns]
        base = [c for c in columns if c not in self._signal_at]
        frame = self.base.iloc[:, self.base.columns.get_indexer(base)] if rows is None else self.base.iloc[rows, self.base.columns.get_indexer(base)]
        sig = [c for c in columns if c in self._signal_at]
        if sig:
            values = self.signals.values if rows is None else self.signals.values[rows]
            block = values[:, [self._signal_at[c] for c in sig]].toarray().astype(np.uint8, copy=False)
            frame = pd.concat([frame, pd.DataFrame(block, index=frame.index, columns=sig)], axis=1)
        return frame if list(frame.columns) == columns else frame[columns]


def input_columns(inputs, columns, rows: np.ndarray | None = None) -> pd.DataFrame:
    """The input columns `columns` (in that order) of the persons at positions `rows` (all if None),
    of a model-input frame or a SparseInputs (only those signal columns made dense)."""
    if isinstance(inputs, SparseInputs):
        return inputs.dense(columns, rows)
    at = inputs.columns.get_indexer(columns)
    if (at < 0).any():
        raise KeyError(f"not among the model inputs: {[c for c, i in zip(columns, at) if i < 0]}")
    return inputs.iloc[:, at] if rows is None else inputs.iloc[rows, at]


def sparse_inputs(model_frame: pd.DataFrame, persona: pd.Series, mix: pd.DataFrame, signals) -> SparseInputs:
    """churn_inputs(model_frame, persona, mix, signals.to_frame()) without the dense signal block:
    `signals` is a graph.SignalMatrix over model_frame's persons (same index, same order)."""
    base = churn_inputs(model_frame, persona, mix, pd.DataFrame(index=model_frame.index))
    if not base.index.equals(pd.Index(signals.index)):
        raise ValueError("the signal matrix's persons are not the model frame's (same persons, same order)")
    return SparseInputs(base, signals)


def select_columns(x: pd.DataFrame, y: pd.Series, max_signals: int) -> list[str]:
    """Every non-signal column, plus the `max_signals` 0/1 signal columns (`sig_*`) whose churn
    rate differs most between people with and without them (absolute point-biserial correlation)."""
    signals = [c for c in x.columns if c.startswith("sig_")]
    others = [c for c in x.columns if not c.startswith("sig_")]
    if len(signals) <= max_signals:
        return others + signals
    from scipy import sparse

    return others + select_signals(sparse.csc_matrix(x[signals].to_numpy(dtype=np.uint8), dtype=np.float64), signals, y, max_signals)


def select_signals(block, signals: list[str], y: pd.Series, max_signals: int) -> list[str]:
    """The `max_signals` of `signals` (the columns of the sparse 0/1 `block`, one row per value of
    `y`) with the largest absolute point-biserial correlation with `y`, strongest first."""
    from scipy import sparse

    # For a 0/1 column with share p of n people: sum((s - p)^2) = n p (1 - p) and
    # sum((s - p) * yc) = s . yc - p sum(yc): no dense centred float copy of people x signals.
    s = sparse.csc_matrix(block, dtype=np.float64)
    yc = y.to_numpy(dtype=float) - y.mean()
    n = s.shape[0]
    share = np.asarray(s.sum(axis=0)).ravel() / n
    covariance = s.T @ yc - share * yc.sum()
    spread = n * share * (1 - share)
    corr = np.abs(covariance) / np.maximum(np.sqrt(spread * (yc**2).sum()), 1e-12)
    return [signals[j] for j in np.argsort(-corr)[:max_signals]]


def train_churn_model(inputs: pd.DataFrame, churned: pd.Series, test_size: float = 0.3, seed: int = 42, max_signals: int = 60) -> ChurnModel:
    """Fit the calibrated classifier on a stratified (1 - test_size) share of labelled people and
    measure it on the held-out rest (ROC AUC, Brier, ECE, base rate)."""
    return train_calibrated(inputs, churned, test_size, seed, max_signals, what="churn labels", outcomes=("churned", "retained"))


def train_calibrated(inputs: pd.DataFrame, label: pd.Series, test_size: float = 0.3, seed: int = 42, max_signals: int = 60,
                     what: str = "labels", outcomes: tuple[str, str] = ("positive", "negative")) -> ChurnModel:  # fmt: skip
    """The calibrated classifier of any 0/1 `label` (NaN = unlabelled, not trained on): fitted on a
    stratified (1 - test_size) share of labelled people, measured on the held-out rest."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import brier_score_loss, roc_auc_score
    from sklearn.model_selection import train_test_split
    from threadpoolctl import threadpool_limits

    y = label.reindex(inputs.index)
    labelled = y.notna()
    rows, y = np.flatnonzero(labelled.to_numpy()), y[labelled].astype(int)
    if y.nunique() < 2 or y.value_counts().min() < 10:
        raise ValueError(f"{what} need at least 10 {outcomes[0]} and 10 {outcomes[1]} people to train the model")
    # The split of positions is the split train_test_split makes of the rows themselves (one
    # permutation for every array): the people's rows are then copied once, only in the columns
    # trained on (a copy of every input for the labelled, training and held-out people before).
    at_tr, at_te, y_tr, y_te = train_test_split(np.arange(len(rows)), y, test_size=test_size, stratify=y, random_state=seed)
    is_signal = np.array([str(c).startswith("sig_") for c in inputs.columns], dtype=bool)
    # Hundreds of graph signals: keep the ones most associated with churn among training people only.
    if isinstance(inputs, SparseInputs):  # the signals stay sparse: only the kept ones are made dense
        names = list(inputs.columns[is_signal])
        kept = names if len(names) <= max_signals else select_signals(inputs.signals.values[rows[at_tr]], names, y_tr, max_signals)
        columns = list(inputs.columns[~is_signal]) + kept
        x_tr, x_te = inputs.dense(columns, rows[at_tr]), inputs.dense(columns, rows[at_te])
    else:
        columns = select_columns(inputs.iloc[rows[at_tr], np.flatnonzero(is_signal)], y_tr, max_signals)
        columns = list(inputs.columns[~is_signal]) + columns
        at = inputs.columns.get_indexer(columns)
        x_tr, x_te = inputs.iloc[rows[at_tr], at], inputs.iloc[rows[at_te], at]
    base = HistGradientBoostingClassifier(max_iter=150, learning_rate=0.06, max_leaf_nodes=15, l2_regularization=1.0, random_state=seed)
    # One OpenMP thread: on a few thousand people threads only add contention (minutes on a busy machine).
    with threadpool_limits(limits=1, user_api="openmp"):
        model = CalibratedClassifierCV(base, method="isotonic", cv=3).fit(x_tr, y_tr)
        p = model.predict_proba(x_te)[:, 1]
    metrics = {
        "roc_auc": float(roc_auc_score(y_te, p)),
        "brier": float(brier_score_loss(y_te, p)),
        "ece": expected_calibration_error(y_te.to_numpy(), p),
        "base_rate": float(y.mean()),
        "n_train": int(len(y_tr)),
        "n_test": int(len(y_te)),
    }
    return ChurnModel(model, columns, metrics, [str(i) for i in x_te.index])


def engagement_trend(events: pd.DataFrame, as_of: pd.Timestamp) -> pd.Series:
    """Per person: events per day in the last RECENT_DAYS over events per day in the BASELINE_DAYS
    before (1 = steady, <1 = declining; NaN without baseline activity)."""
    if events.empty:
        return pd.Series(dtype=float, name="engagement_trend")
    is_recent, is_before = trend_windows(event_ages(events["event_time"], as_of))
    persons = events["person_id"].unique()
    recent = events[is_recent].groupby("person_id").size().reindex(persons, fill_value=0)
    before = events[is_before].groupby("person_id").size().reindex(persons, fill_value=0)
    return trend_of_counts(recent, before)


def event_ages(times: pd.Series, as_of: pd.Timestamp) -> pd.Series:
    """Each event's age at `as_of`, in days."""
    return (as_of - times).dt.total_seconds() / 86400.0


def trend_windows(age):
    """(in the last RECENT_DAYS, in the BASELINE_DAYS before) of event ages in days."""
    return age <= RECENT_DAYS, (age > RECENT_DAYS) & (age <= RECENT_DAYS + BASELINE_DAYS)


def trend_of_counts(recent: pd.Series, before: pd.Series) -> pd.Series:
    """engagement_trend from each person's event counts in the two windows (same index)."""
    recent, before = recent / RECENT_DAYS, before / BASELINE_DAYS
    return (recent / before.where(before > 0)).rename("engagement_trend")


def top_reasons(signals: pd.DataFrame, ranked: pd.DataFrame, n: int = 3) -> pd.Series:
    """Per person: up to `n` churn-raising signals they show ("; "-joined), strongest first."""
    if ranked.empty or not len(signals.columns):
        return pd.Series("", index=signals.index, dtype="string")
    raising = [s for s in ranked.loc[ranked["odds_ratio"] > 1, "signal"] if s in signals.columns]
    if not raising:
        return pd.Series("", index=signals.index, dtype="string")
    m = signals[raising].to_numpy(dtype=bool)
    names = np.asarray(raising, dtype=object)
    return pd.Series(["; ".join(names[row][:n]) for row in m], index=signals.index, dtype="string")


def amber_flags(
    probability: pd.Series, trend: pd.Series, reasons: pd.Series, risk_threshold: float, engagement_threshold: float, as_of: pd.Timestamp
) -> pd.DataFrame:
    """The flag table per person: churn_probability (0-1), risk_flag, engagement_trend,
    engagement_flag ("amber" or "none"), reasons."""
    out = pd.DataFrame({"churn_probability": probability.astype(float)})
    out["risk_flag"] = np.where(out["churn_probability"] >= risk_threshold, "amber", "none")
    out["engagement_trend"] = trend.reindex(out.index).astype(float)
    out["engagement_flag"] = np.where(out["engagement_trend"] < engagement_threshold, "amber", "none")
    reason = reasons.reindex(out.index).fillna("").astype(str)
    declining = np.where(out["engagement_flag"] == "amber", "activity down to " + (out["engagement_trend"] * 100).round().astype("Int64").astype(str) + "% of its baseline", "")
    out["reasons"] = [("; ".join(x for x in (r, d) if x)) for r, d in zip(reason, declining)]
    for col in ("risk_flag", "engagement_flag", "reasons"):
        out[col] = out[col].astype("string")
    out["event_timestamp"] = as_of
    out["created"] = as_of
    return out.rename_axis("person_id").reset_index()
