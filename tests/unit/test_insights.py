"""The business questions' statistics, the intents and the amber flags, on small inline data."""

import numpy as np
import pandas as pd
import pytest

from models import churn
from models.intents import cluster_texts, ctfidf_terms, intent_mix
from personaops import insights
from personaops.errors import NotFoundError

T0 = pd.Timestamp("2024-09-01", tz="UTC")


def _campaign_data(seed=0):
    rng = np.random.default_rng(seed)
    rows, people = [], []
    # persona 0: +40 points of uplift; persona 1: none; persona 2: +10 points
    for persona, (base, lift) in enumerate([(0.10, 0.40), (0.20, 0.0), (0.05, 0.10)]):
        for i in range(400):
            pid = f"P{persona}-{i}"
            people.append({"person_id": pid, "persona_id": persona, "persona_name": f"persona {persona}"})
            holdout = i % 2 == 0
            rows.append({"person_id": pid, "campaign": "promo", "holdout": holdout, "converted": int(rng.random() < base + (0 if holdout else lift))})
    return pd.DataFrame(rows), pd.DataFrame(people)


def test_campaign_uplift_ranks_the_planted_persona_first_with_an_interval_around_it():
    outcomes, assignments = _campaign_data()
    table = insights.campaign_uplift(outcomes, assignments, "promo")
    assert list(table["persona_id"]) == [0, 2, 1]
    top = table.iloc[0]
    assert top["exposed"] == 200 and top["holdout"] == 200
    assert top["ci_low"] < 0.40 < top["ci_high"] and top["ci_low"] > 0.2 and top["p_value"] < 1e-6
    null = table[table["persona_id"] == 1].iloc[0]
    assert null["ci_low"] < 0 < null["ci_high"]
    with pytest.raises(NotFoundError, match="known campaigns: promo"):
        insights.campaign_uplift(outcomes, assignments, "no_such_campaign")


def test_churn_signals_rank_the_planted_driver_not_the_persona_proxy_and_fold_duplicates():
    rng = np.random.default_rng(1)
    n = 1500
    persona = pd.Series(rng.integers(0, 3, n), index=[f"P{i}" for i in range(n)])
    driver = rng.random(n) < 0.15
    base = np.array([0.05, 0.2, 0.5])[persona.to_numpy()]
    churned = pd.Series((rng.random(n) < np.where(driver, 0.8, base)).astype(float), index=persona.index)
    matrix = pd.DataFrame({
        "seq:error>help>downgrade": driver.astype("uint8"),
        "did:downgrade": driver.astype("uint8"),  # the same people: folded into the first
        "intent:persona_two_talk": (persona.to_numpy() == 2).astype("uint8"),  # churny persona's marker, no effect within it
        "co:noise+noise": (rng.random(n) < 0.3).astype("uint8"),
    }, index=persona.index)  # fmt: skip
    table = insights.churn_signals(matrix, churned, persona)
    first = table.iloc[0]
    assert first["signal"] in ("seq:error>help>downgrade", "did:downgrade") and "downgrade" in first["same_as"]
    assert first["odds_ratio"] > 3 and first["ci_low"] > 1 and first["p_adjusted"] < 1e-6
    # a pure persona marker never varies within a persona: it cannot be credited with its persona's churn
    assert list(table["signal"]) == [first["signal"], "co:noise+noise"] and list(table["rank"]) == [1, 2]
    assert table.iloc[1]["p_adjusted"] > 0.05
    with pytest.raises(NotFoundError):
        insights.churn_signals(matrix, churned * 0, persona)


def test_mantel_haenszel_figures_for_all_signals_at_once_are_statsmodels_own():
    """_mh_rows gives bit for bit the floats of one StratifiedTable per signal (informative
    strata only, 0.5 added to a stratum with an empty cell), for 1 to 12 strata and empty cells."""
    from statsmodels.stats.contingency_tables import StratifiedTable

    rng = np.random.default_rng(3)
    for strata in (1, 3, 7, 12):
        counts = rng.integers(0, 25, size=(400, strata, 2, 2)).astype(float)
        counts[rng.random(counts.shape) < 0.25] = 0
        got, informative = insights._mh_rows(counts)
        seen = 0
        for j in range(len(counts)):
            tables = [t + 0.5 * (t == 0).any() for t in counts[j] if insights._informative(t)]
            assert informative[j] == bool(tables)
            if not tables:
                continue
            st = StratifiedTable(tables)
            low, high = st.oddsratio_pooled_confint()
            assert got[j].tolist() == [st.oddsratio_pooled, low, high, st.test_null_odds(correction=True).pvalue]
            seen += 1
        assert seen > 300


def test_the_explain_away_strata_on_integer_codes_are_the_string_keys_strata():
    """_mh_pvalue_within (persona and held signals as integer codes) equals _mh_pvalue on the
    string key str(persona) + the signals' digits, with persona ids of 1 and 2 digits."""
    rng = np.random.default_rng(4)
    n = 3000
    strata = rng.choice([1, 2, 10, 11, 23], n)
    y = (rng.random(n) < 0.3).astype(int)
    s = rng.random(n) < 0.2
    held = [(rng.random(n) < p).astype("uint8") for p in (0.5, 0.3, 0.1, 0.6)]
    for k in range(1, 5):
        key = pd.Series(strata.astype(str))
        for h in held[:k]:
            key = key + h.astype(str)
        assert insights._mh_pvalue_within(s, y, strata, held[:k]) == insights._mh_pvalue(s, y, key.to_numpy())


def test_persona_intents_and_changes():
    assignments = pd.DataFrame({"person_id": ["A", "B", "C"], "persona_id": [0, 0, 1], "persona_name": ["x", "x", "y"]})
    intents = pd.DataFrame({"intent_id": [0, 1], "label": ["cancel/refund", "api/export"], "terms": ["", ""], "example": ["cancel", "api"]})
    ti = pd.DataFrame({"person_id": ["A", "A", "B", "C"], "source": ["tickets"] * 4, "intent_id": [0, 0, 1, 1], "text": ["c", "c", "a", "a"]})
    table = insights.persona_intents(ti, intents, assignments, 0)
    assert list(table["label"]) == ["cancel/refund", "api/export"]
    assert table["share"].tolist() == pytest.approx([2 / 3, 1 / 3]) and table["lift"].iloc[0] == pytest.approx((2 / 3) / 0.5)
    prev = pd.DataFrame([{"persona_id": 0, "persona_name": "x", "persons": 10, "churned_rate": 0.2, "top_intents": '{"cancel/refund": 0.1}', "top_signals": "{}"}])
    cur = pd.DataFrame([{"persona_id": 0, "persona_name": "x", "persons": 12, "churned_rate": 0.3, "top_intents": '{"cancel/refund": 0.4}', "top_signals": "{}"}])
    changes = insights.persona_changes(prev, cur, 0)
    assert changes["changes"]["persons"]["delta"] == 2 and changes["changes"]["churned_rate"]["delta"] == pytest.approx(0.1)
    assert changes["intents"]["cancel/refund"] == {"before": 0.1, "after": 0.4}
    assert "note" in insights.persona_changes(None, cur, 0)
    with pytest.raises(NotFoundError):
        insights.persona_changes(prev, cur, 7)


def test_intents_cluster_and_are_labelled_by_distinctive_terms():
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:2]
    vectors = np.vstack([centres[i % 2] + 0.05 * rng.standard_normal(8).astype(np.float32) for i in range(20)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels, _ = cluster_texts(vectors, 2)
    assert len(set(labels[0::2])) == 1 and len(set(labels[1::2])) == 1 and labels[0] != labels[1]
    docs = pd.Series(["cancel my subscription refund", "please cancel refund now", "api rate limit export", "export api query"])
    terms = ctfidf_terms(docs, pd.Series([0, 0, 1, 1]))
    assert set(terms[0][:2]) == {"cancel", "refund"} and set(terms[1][:2]) == {"api", "export"}
    mix = intent_mix(pd.DataFrame({"person_id": ["A", "A", "B"], "intent_id": [0, 1, 1]}), pd.DataFrame({"intent_id": [0, 1], "label": ["c", "a"]}))
    assert mix.set_index("person_id").loc["A", "intent_0"] == 0.5 and mix.set_index("person_id").loc["B", "top_intent"] == "a"


def _topics(sizes, dim=32, spread=0.03, seed=0):
    """Unit vectors around len(sizes) orthogonal topic centres; topic 1 sits near topic 0."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[: len(sizes)]
    centres[1] = 0.5 * centres[0] + np.sqrt(0.75) * centres[1]  # a small, sharp topic beside a broad one (cosine 0.5)
    rows = np.vstack([centres[t] + spread * rng.standard_normal((n, dim)) for t, n in enumerate(sizes)])
    truth = np.repeat(np.arange(len(sizes)), sizes)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True), truth


def test_the_number_of_intents_is_chosen_from_the_data_and_keeps_a_small_sharp_topic_apart():
    from sklearn.metrics import adjusted_rand_score

    from models import intents

    vectors, truth = _topics([60, 5, 40, 40, 30, 30])
    labels, choice = intents.cluster_texts(vectors)  # k = 0: chosen by silhouette
    assert choice.method == "silhouette" and choice.k == 6 and round(choice.silhouette, 4) == max(choice.scores.values())
    assert adjusted_rand_score(truth, labels) == 1.0
    assert len(set(labels[truth == 1])) == 1 and not set(labels[truth == 1]) & set(labels[truth == 0])
    fixed, how = intents.cluster_texts(vectors, k=3)
    assert how.method == "fixed" and len(set(fixed)) == 3
    assert list(intents.cluster_texts(vectors[:2])[0]) == [0, 0]  # two texts: one intent, nothing to compare
    # more distinct texts than the tree takes: a sample builds it, every text joins its nearest intent
    big, big_truth = _topics([300, 25, 200, 200, 150, 150], seed=1)
    old = intents.TREE_MAX
    intents.TREE_MAX = 300
    try:
        big_labels, big_choice = intents.cluster_texts(big)
    finally:
        intents.TREE_MAX = old
    assert big_choice.k == 6 and adjusted_rand_score(big_truth, big_labels) > 0.99


def test_calibration_error_and_flags():
    y = np.array([0, 0, 1, 1])
    assert churn.expected_calibration_error(y, np.array([0.0, 0.0, 1.0, 1.0])) == 0.0
    assert churn.expected_calibration_error(y, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5 - 0.5)  # one bin, rates match
    assert churn.expected_calibration_error(y, np.array([0.9, 0.9, 0.1, 0.1])) == pytest.approx(0.9)
    persons = pd.Index(["A", "B"], name="person_id")
    flags = churn.amber_flags(pd.Series([0.7, 0.2], index=persons), pd.Series([1.0, 0.25], index=persons),
                              pd.Series(["intent:cancel/refund", ""], index=persons), 0.5, 0.5, T0).set_index("person_id")  # fmt: skip
    assert flags.loc["A", "risk_flag"] == "amber" and flags.loc["B", "risk_flag"] == "none"
    assert flags.loc["A", "engagement_flag"] == "none" and flags.loc["B", "engagement_flag"] == "amber"
    assert flags.loc["A", "reasons"] == "intent:cancel/refund" and "25%" in flags.loc["B", "reasons"]


def test_engagement_trend_sees_a_fading_person():
    as_of = T0 + pd.Timedelta(days=90)
    steady = [as_of - pd.Timedelta(days=d) for d in range(0, 90, 3)]
    fading = [as_of - pd.Timedelta(days=d) for d in range(40, 90, 2)]
    events = pd.DataFrame({"person_id": ["S"] * len(steady) + ["F"] * len(fading), "event_time": steady + fading})
    trend = churn.engagement_trend(events, as_of)
    assert trend["S"] == pytest.approx(1.0, abs=0.2) and trend["F"] == 0.0


def test_churn_model_learns_a_planted_signal_and_is_measured_on_held_out_people():
    rng = np.random.default_rng(3)
    n = 600
    index = pd.Index([f"P{i}" for i in range(n)], name="person_id")
    driver = rng.random(n) < 0.3
    churned = pd.Series((rng.random(n) < np.where(driver, 0.85, 0.1)).astype(float), index=index)
    inputs = pd.DataFrame({"n_events": rng.poisson(20, n).astype(float), "sig_driver": driver.astype(float), "sig_noise": (rng.random(n) < 0.5).astype(float)}, index=index)
    model = churn.train_churn_model(inputs, churned, test_size=0.3, seed=0, max_signals=1)
    assert model.columns == ["n_events", "sig_driver"]  # the signal chosen on training people
    assert model.metrics["roc_auc"] > 0.8 and model.metrics["n_test"] == 180 and 0 <= model.metrics["ece"] < 0.15
    assert not set(model.test_persons) & set(index[:0])


def test_a_later_run_keeps_the_mined_intents_and_new_texts_join_the_nearest():
    from models import intents

    vectors, truth = _topics([30, 10, 30], seed=3)
    words = {0: "login password reset", 1: "cancel refund now", 2: "api export limit"}
    texts = pd.DataFrame({"person_id": [f"P{i % 25}" for i in range(70)], "text": [f"{words[t]} {i}" for i, t in enumerate(truth)]})
    mined = intents.mine_intents(texts, vectors, k=3)
    vec_of = dict(zip(texts["text"], vectors))
    # a later run: every earlier text again (one twice more), and two new distinct texts near topics 2 and 1
    rng = np.random.default_rng(9)
    new = {"api export new": vectors[truth == 2].mean(axis=0) + 0.01 * rng.standard_normal(32), "cancel refund new": vectors[truth == 1].mean(axis=0)}
    vec_of.update(new)
    later = pd.concat([texts, texts.iloc[[0, 0]], pd.DataFrame({"person_id": ["Q1", "Q2"], "text": list(new)})], ignore_index=True)
    known = mined.text_intents.drop_duplicates("text").set_index("text")["intent_id"]
    kept, n_new = intents.keep_intents(later, mined.table, known, lambda ts: np.vstack([vec_of[t] for t in ts]))
    assert n_new == 2 and kept.choice is None
    got = kept.text_intents.drop_duplicates("text").set_index("text")["intent_id"]
    # earlier texts keep their intent; the new ones join the intent of their topic
    assert (got.loc[texts["text"]].to_numpy() == mined.text_intents["intent_id"].to_numpy()).all()
    of_topic = {t: int(mined.text_intents["intent_id"][truth == t].iloc[0]) for t in (1, 2)}
    assert got.loc["api export new"] == of_topic[2] and got.loc["cancel refund new"] == of_topic[1]
    # ids, labels and terms are the earlier ones; counts are recounted over every occurrence
    before, after = mined.table.set_index("intent_id"), kept.table.set_index("intent_id")
    assert after[["label", "terms"]].sort_index().equals(before[["label", "terms"]].sort_index())
    assert after["n_texts"].sum() == len(later) and after.loc[of_topic[1], "n_texts"] == before.loc[of_topic[1], "n_texts"] + 1
    assert (kept.text_intents["intent_label"] == kept.text_intents["intent_id"].map(after["label"])).all()


def test_churn_inputs_under_copy_on_write_equal_the_plain_call():
    """The flags stage builds the model inputs with copy-on-write on (the signal block joins
    without copies): the same frame as the plain call, and the inputs do not write through to
    the model frame."""
    from models import churn

    rng = np.random.default_rng(4)
    persons = pd.Index([f"P{i}" for i in range(300)], name="person_id")
    frame = pd.DataFrame({"a": rng.random(300), "b": rng.integers(0, 5, 300), "c": ["x"] * 300}, index=persons)
    persona = pd.Series(rng.integers(0, 3, 300), index=persons).where(rng.random(300) > 0.1)
    mix = pd.DataFrame({"person_id": persons[::2], "intent_0": rng.random(150), "intent_1": np.nan})
    signals = pd.DataFrame((rng.random((300, 40)) < 0.2).astype("uint8"), index=persons, columns=pd.Index([f"s{i}" for i in range(40)], name="signal"))
    plain = churn.churn_inputs(frame, persona, mix, signals.copy())
    with pd.option_context("mode.copy_on_write", True):
        cow = churn.churn_inputs(frame, persona, mix, signals.copy())
    pd.testing.assert_frame_equal(cow, plain)
    cow.iloc[0, 0] = -1.0
    assert frame.iloc[0, 0] != -1.0
