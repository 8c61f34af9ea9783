"""The flags' model inputs with the graph signals kept sparse (churn.SparseInputs) give the same
models, held-out metrics, scores, row hashes, conversion effects and reasons as the dense frame
churn_inputs builds with every signal column."""

import numpy as np
import pandas as pd

from models import churn, propensity
from personaops import graph, insights


def _data(n=1_200, seed=3):
    rng = np.random.default_rng(seed)
    persons = pd.Index([f"P{i:05d}" for i in range(n)], name="person_id")
    frame = pd.DataFrame({"n_events": rng.poisson(20, n).astype(float), "tenure": rng.random(n), "plan": ["x"] * n}, index=persons)
    persona = pd.Series(rng.integers(0, 3, n), index=persons).where(rng.random(n) > 0.05)
    mix = pd.DataFrame({"person_id": persons[::2], "intent_0": rng.random(n // 2), "intent_1": np.nan})
    # 150 signals with varied support (some below min_persons): a long (person, signal) table
    support = rng.random(150) * 0.3
    shown = rng.random((n, 150)) < support
    churned = pd.Series((rng.random(n) < 0.15 + 0.4 * shown[:, 3] + 0.2 * shown[:, 17]).astype(float), index=persons).where(rng.random(n) > 0.2)
    converted = pd.Series((rng.random(n) < 0.1 + 0.5 * shown[:, 5] + 0.3 * (persona == 2).to_numpy()).astype(float), index=persons).where(rng.random(n) < 0.6)
    r, c = np.nonzero(shown)
    signals = pd.DataFrame({"person_id": persons[r], "signal": pd.Categorical([f"did:s{j:03d}" for j in c])})
    return frame, persona, mix, signals, churned, converted


def test_sparse_inputs_train_score_and_explain_like_the_dense_frame():
    frame, persona, mix, signals, churned, converted = _data()
    matrix = graph.signal_sparse(signals, pd.Index(frame.index, name="person_id"), 10)
    assert 60 < len(matrix.columns) < 150  # some signals dropped, more than max_signals kept: selection runs
    dense = churn.churn_inputs(frame, persona, mix, matrix.to_frame())
    sparse = churn.sparse_inputs(frame, persona, mix, matrix)
    assert list(sparse.columns) == list(dense.columns) and sparse.index.equals(dense.index)
    pd.testing.assert_frame_equal(sparse.dense(sparse.columns), dense)
    rows = np.arange(0, len(dense), 7)
    picked = ["sig_" + str(matrix.columns[4]), "n_events", "sig_" + str(matrix.columns[0]), [c for c in dense.columns if c.startswith("persona_")][1]]
    pd.testing.assert_frame_equal(sparse.dense(picked, rows), dense.iloc[rows][picked])

    for train, label in ((churn.train_churn_model, churned), (propensity.train_opportunity_model, converted)):
        a, b = train(dense, label, 0.3, 7, max_signals=20), train(sparse, label, 0.3, 7, max_signals=20)
        assert a.columns == b.columns and sum(c.startswith("sig_") for c in a.columns) == 20
        assert a.metrics == b.metrics and a.test_persons == b.test_persons
        pd.testing.assert_series_equal(a.probability(dense), b.probability(sparse), check_exact=True)
        kept_a, kept_b = [], []
        pa = insights._scored(a, dense, "churn", "r1", None, kept_a)
        pb = insights._scored(b, sparse, "churn", "r1", None, kept_b)
        pd.testing.assert_series_equal(pa, pb, check_exact=True)
        pd.testing.assert_frame_equal(kept_a[0], kept_b[0], check_exact=True)  # the same row hashes

    effects = propensity.conversion_effects(dense, converted, chunk=50)
    assert (effects["column"].str.startswith("sig_")).any() and (~effects["column"].str.startswith("sig_")).any()
    pd.testing.assert_frame_equal(propensity.conversion_effects(sparse, converted, chunk=50), effects, check_exact=True)
    reasons = propensity.opportunity_reasons(dense, effects, persona_names={"2": "admins"})
    assert (reasons.str.len() > 0).any()
    pd.testing.assert_series_equal(propensity.opportunity_reasons(sparse, effects, persona_names={"2": "admins"}), reasons, check_exact=True)


def test_kept_models_missing_signal_columns_are_added_to_the_sparse_inputs_like_the_dense_ones():
    frame, persona, mix, signals, _, _ = _data(n=400)
    matrix = graph.signal_sparse(signals, pd.Index(frame.index, name="person_id"), 10)
    dropped = sorted(set(signals["signal"].astype(str)) - set(matrix.columns))[:3]  # below min_persons this run
    assert dropped

    class Kept:
        columns = ["n_events"] + [f"sig_{s}" for s in dropped] + ["sig_" + str(matrix.columns[2])]

    dense = insights._with_signal_columns(churn.churn_inputs(frame, persona, mix, matrix.to_frame()), [Kept], signals)
    sparse = insights._with_signal_columns(churn.sparse_inputs(frame, persona, mix, matrix), [Kept], signals)
    assert list(sparse.columns) == list(dense.columns)
    pd.testing.assert_frame_equal(sparse.dense(sparse.columns), dense)
    assert dense[[f"sig_{s}" for s in dropped]].to_numpy().sum() > 0
