"""The opportunity reasons computed a few persons and columns at a time (propensity.opportunity_reasons'
`rows` and `chunk`) are the reasons of the whole persons x effect-columns frame, exactly."""

import numpy as np
import pandas as pd

from models import churn, propensity
from personaops import graph

from tests.unit.test_flags_sparse_inputs import _data


def _whole_frame_reasons(inputs, effects, n=3, persona_names=None, intent_labels=None):
    """The reasons as session 9 computed them: one float frame of every person and effect column."""
    cols = [c for c in effects["column"] if c in inputs.columns]
    x = inputs[cols].astype(float)
    sd = x.std(ddof=0).replace(0, np.nan)
    z = ((x - x.mean()) / sd).fillna(0.0).to_numpy()
    effect = effects.set_index("column").loc[cols, "effect"].to_numpy()
    contribution = z * effect
    absent_only = np.asarray([c.startswith(("persona_", "sig_")) and e < 0 for c, e in zip(cols, effect)])
    contribution[:, absent_only] = 0.0
    names = np.asarray([propensity.reason_name(c, persona_names, intent_labels, np.sign(e)) for c, e in zip(cols, effect)], dtype=object)
    order = np.argsort(-contribution, axis=1)[:, :n]
    out = ["; ".join(names[j] for j in idx if row[j] >= propensity.MIN_CONTRIBUTION) for row, idx in zip(contribution, order)]
    return pd.Series(out, index=inputs.index, dtype="string")


def test_reasons_by_person_and_column_chunks_equal_the_whole_frame():
    frame, persona, mix, signals, _, converted = _data(n=1_500, seed=11)
    matrix = graph.signal_sparse(signals, pd.Index(frame.index, name="person_id"), 10)
    dense = churn.churn_inputs(frame, persona, mix, matrix.to_frame())
    sparse = churn.sparse_inputs(frame, persona, mix, matrix)
    effects = propensity.conversion_effects(dense, converted)
    assert len(effects) >= 4 and effects["column"].str.startswith("sig_").any() and (~effects["column"].str.startswith("sig_")).any()
    # more effect columns, of both signs (a negative 0/1 column is never a reason)
    rng = np.random.default_rng(5)
    more = [c for c in dense.columns if c not in set(effects["column"])][:40]
    effects = pd.concat([effects, pd.DataFrame({"column": more, "effect": rng.choice([-1, 1], len(more)) * (0.2 + rng.random(len(more)))})], ignore_index=True)
    # a constant effect column (sd 0: z-score 0) and one the inputs lack
    dense["flat"] = 1.0
    effects = pd.concat([effects, pd.DataFrame({"column": ["flat", "gone"], "effect": [0.5, 0.4]})], ignore_index=True)
    expected = _whole_frame_reasons(dense, effects, persona_names={"2": "admins"})
    assert (expected.str.len() > 0).mean() > 0.2 and expected.str.contains(";").any()
    for rows, chunk in ((97, 3), (1_500, 256), (1 << 16, 1)):
        got = propensity.opportunity_reasons(dense, effects, persona_names={"2": "admins"}, rows=rows, chunk=chunk)
        pd.testing.assert_series_equal(got, expected, check_exact=True)
    sparse_effects = effects[effects["column"] != "flat"]
    pd.testing.assert_series_equal(
        propensity.opportunity_reasons(sparse, sparse_effects, persona_names={"2": "admins"}, rows=101, chunk=4),
        _whole_frame_reasons(dense, sparse_effects, persona_names={"2": "admins"}),
        check_exact=True,
    )


def _whole_frame_scored(model, inputs, name, models_run, earlier):
    """_scored as session 9 computed it: every person's model columns dense at once."""
    columns = inputs.dense(model.columns)
    row_hash = pd.util.hash_pandas_object(columns, index=True).to_numpy()
    values = np.full(len(inputs), np.nan)
    todo = np.ones(len(inputs), dtype=bool)
    if earlier is not None:
        at = pd.Index(earlier["person_id"]).get_indexer(inputs.index)
        found = at >= 0
        same = np.zeros(len(inputs), dtype=bool)
        same[found] = earlier[f"{name}_hash"].to_numpy(dtype=np.uint64)[at[found]] == row_hash[found]
        values[same] = earlier[f"{name}_probability"].to_numpy(dtype=float)[at[same]]
        todo = ~same
    values[todo] = model.probability(columns[todo]).to_numpy()
    return pd.Series(values, index=inputs.index), row_hash, int(todo.sum())


def test_scoring_by_person_chunks_equals_scoring_everyone_at_once():
    from personaops import insights

    frame, persona, mix, signals, churned, _ = _data(n=900, seed=4)
    matrix = graph.signal_sparse(signals, pd.Index(frame.index, name="person_id"), 10)
    sparse = churn.sparse_inputs(frame, persona, mix, matrix)
    dense = churn.churn_inputs(frame, persona, mix, matrix.to_frame())
    model = churn.train_churn_model(sparse, churned, 0.3, 7, max_signals=20)
    expected, hashes, _ = _whole_frame_scored(model, sparse, "churn", "r1", None)
    for inputs in (sparse, dense):
        for rows in (64, 899, 1 << 17):
            kept = []
            got = insights._scored(model, inputs, "churn", "r1", None, kept, rows=rows)
            pd.testing.assert_series_equal(got, expected, check_exact=True)
            assert np.array_equal(kept[0]["churn_hash"].to_numpy(), hashes) and kept[0].attrs["scored"] == 900
    # a re-run: earlier scores of 600 persons, 50 of whose rows changed (a stale probability of -1
    # is kept exactly when the row is unchanged), and 300 persons new
    earlier = pd.DataFrame({"person_id": sparse.index[:600], "churn_hash": hashes[:600], "churn_probability": -1.0, "models_run": "r1"})
    earlier.loc[np.arange(0, 600, 12), "churn_hash"] += np.uint64(1)
    expected, _, scored = _whole_frame_scored(model, sparse, "churn", "r1", earlier)
    assert scored == 350 and (expected == -1.0).sum() == 550
    for rows in (64, 1 << 17):
        kept = []
        pd.testing.assert_series_equal(insights._scored(model, sparse, "churn", "r1", earlier, kept, rows=rows), expected, check_exact=True)
        assert kept[0].attrs["scored"] == 350
