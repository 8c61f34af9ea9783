"""The flags' risk and opportunity models trained side by side on two threads
(insights._side_by_side), and score everyone side by side, are the models trained one after the other on the main thread:
the same columns, held-out metrics and probabilities, bit for bit; a fit's ValueError (too few
labelled people) comes back as that fit's error, any other error is raised."""

import numpy as np
import pandas as pd
import pytest

from models import churn, propensity
from personaops import graph, insights
from tests.unit.test_flags_sparse_inputs import _data


def test_two_models_trained_on_two_threads_equal_the_sequential_ones():
    frame, persona, mix, signals, churned, converted = _data(n=3_000, seed=11)
    matrix = graph.signal_sparse(signals, pd.Index(frame.index, name="person_id"), 10)
    inputs = churn.sparse_inputs(frame, persona, mix, matrix)
    sequential = [churn.train_churn_model(inputs, churned, 0.3, 5, max_signals=20), propensity.train_opportunity_model(inputs, converted, 0.3, 5, max_signals=20)]
    together = insights._side_by_side(
        insights._fit_or_error(lambda: churn.train_churn_model(inputs, churned, 0.3, 5, max_signals=20)),
        insights._fit_or_error(lambda: propensity.train_opportunity_model(inputs, converted, 0.3, 5, max_signals=20)),
    )
    for expected, (model, error) in zip(sequential, together):
        assert error is None
        assert model.columns == expected.columns and model.metrics == expected.metrics and model.test_persons == expected.test_persons
        pd.testing.assert_series_equal(model.probability(inputs), expected.probability(inputs), check_exact=True)
    # scored side by side: the same probabilities and row hashes as scored one after the other
    alone: list = []
    expected = [insights._scored(m, inputs, name, "r1", None, alone) for m, name in zip(sequential, ("churn", "opportunity"))]
    first, second = [], []
    both = insights._side_by_side(lambda: insights._scored(sequential[0], inputs, "churn", "r1", None, first),
                                  lambda: insights._scored(sequential[1], inputs, "opportunity", "r1", None, second))
    for a, b in zip(expected, both):
        pd.testing.assert_series_equal(a, b, check_exact=True)
    for a, b in zip(alone, first + second):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert sequential[0].columns != sequential[1].columns  # two different models, not one computed twice


def test_a_fit_that_cannot_train_returns_its_value_error_and_other_errors_are_raised():
    frame, persona, mix, signals, churned, _ = _data(n=400)
    matrix = graph.signal_sparse(signals, pd.Index(frame.index, name="person_id"), 10)
    inputs = churn.sparse_inputs(frame, persona, mix, matrix)
    too_few = pd.Series(np.where(np.arange(len(inputs)) < 5, 1.0, 0.0), index=inputs.index)  # 5 positives: below 10
    (model, error), (nothing, no_error) = insights._side_by_side(insights._fit_or_error(lambda: churn.train_churn_model(inputs, too_few)), insights._fit_or_error(lambda: None))
    assert model is None and isinstance(error, ValueError) and "at least 10" in str(error)
    assert nothing is None and no_error is None
    assert insights._side_by_side(lambda: 3) == [3] and insights._side_by_side(lambda: 1, lambda: 2) == [1, 2]

    def broken():
        raise KeyError("not a training error")

    with pytest.raises(KeyError):
        insights._side_by_side(lambda: 1, broken)
