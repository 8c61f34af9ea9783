"""persona_summary's top signals counted on the signal table's codes (insights._value_counts) are
the `astype(object).value_counts()` of the member rows: the same keys, counts and order, ties
included, for categorical and plain columns."""

import json

import numpy as np
import pandas as pd

from personaops import insights


def _signals(n_persons=400, n_signals=60, rows=9_000, seed=2):
    rng = np.random.default_rng(seed)
    persons = np.array([f"P{i:04d}" for i in range(n_persons)], dtype=object)
    names = np.array([f"{k}:s{j:02d}" for j, k in zip(range(n_signals), np.resize(["did", "seq", "topic"], n_signals))], dtype=object)
    # few distinct counts: many ties among the signals of a persona
    frame = pd.DataFrame({"person_id": persons[rng.integers(0, n_persons, rows)], "signal": names[rng.integers(0, n_signals, rows) // 3 * 3]})
    frame.loc[rng.random(rows) < 0.01, "person_id"] = None
    frame.loc[rng.random(rows) < 0.01, "signal"] = None
    return persons, frame


def _object_counts(signals, members):
    return signals.loc[signals["person_id"].isin(members).to_numpy(), "signal"].astype(object).value_counts()


def test_value_counts_on_codes_equal_the_object_value_counts():
    persons, plain = _signals()
    categorical = plain.astype("category")
    # categories listing values no row holds, and a persona with no signal rows at all
    categorical["signal"] = categorical["signal"].cat.add_categories(["did:unseen"])
    ties = 0
    for members in (pd.Series(persons[::3]), pd.Series(persons[:7]), pd.Series(["nobody"]), pd.Series(persons)):
        expected = _object_counts(plain, members)
        ties += int(expected.duplicated().sum())
        for signals in (plain, categorical):
            person_codes, person_values = insights._codes(signals["person_id"])
            codes, values = insights._codes(signals["signal"])
            member = np.append(person_values.isin(members), False)[person_codes]
            got = insights._value_counts(codes[member], values)
            assert got.index.tolist() == expected.index.tolist()  # the same order, ties included
            assert got.to_numpy().tolist() == expected.to_numpy().tolist()
    assert ties > 5  # the check above covered tied counts


def test_persona_summary_top_signals_equal_the_per_persona_object_counts():
    persons, plain = _signals(seed=5)
    rng = np.random.default_rng(1)
    assignments = pd.DataFrame({"person_id": persons, "persona_id": rng.integers(0, 4, len(persons)), "persona_name": "p"})
    assignments["persona_name"] = "persona " + assignments["persona_id"].astype(str)
    text_intents = pd.DataFrame({"person_id": persons[:50], "intent_id": rng.integers(0, 3, 50), "source": "tickets"})
    intents = pd.DataFrame({"intent_id": [0, 1, 2], "label": ["a", "b", "c"]})
    for signals in (plain, plain.astype("category")):
        summary = insights.persona_summary(assignments, pd.DataFrame(), text_intents, intents, signals, None, 3)
        for row in summary.itertuples():
            members = assignments.loc[assignments["persona_id"] == row.persona_id, "person_id"]
            expected = _object_counts(plain, members) / len(members)
            assert json.loads(row.top_signals) == {k: round(float(v), 3) for k, v in expected.head(10).items()}
            assert list(json.loads(row.top_signals)) == list(expected.head(10).index)
