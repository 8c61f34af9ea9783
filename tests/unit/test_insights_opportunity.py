"""The opportunity amber flag: conversion labels among exposed people, the calibrated propensity
model judged on held-out people, and the reasons each flagged person carries."""

import numpy as np
import pandas as pd
import pytest

from models import propensity
from personaops import insights
from personaops.errors import NotFoundError
from personaops.workspace import Workspace

T0 = pd.Timestamp("2024-09-01", tz="UTC")


def test_conversion_labels_count_offers_not_the_holdout():
    exposures = pd.DataFrame({
        "person_id": ["A", "A", "B", "C", "D", "E"],
        "campaign": ["upgrade_offer", "upgrade_offer", "upgrade_offer", "upgrade_offer", "spring_promo", "upgrade_offer"],
        "converted": [0.0, 1.0, 0.0, 1.0, 1.0, 0.0],
        "cat__arm": ["exposed", "exposed", "exposed", "holdout", "exposed", None],
    })  # fmt: skip
    labels = propensity.conversion_labels(exposures, "upgrade_offer")
    # A converted on one of two offers; C was held out (a control, not an offer); D saw another campaign
    assert labels.to_dict() == {"A": 1.0, "B": 0.0, "E": 0.0}
    assert propensity.conversion_labels(exposures.iloc[:0], "upgrade_offer").empty


def _planted(n=900, seed=5):
    """Persona 2 converts at 60%, others at 8%; people who invite colleagues (a graph signal)
    convert 30 points more; 55% of people were offered the campaign (the rest are unlabelled)."""
    rng = np.random.default_rng(seed)
    index = pd.Index([f"P{i}" for i in range(n)], name="person_id")
    persona = rng.integers(0, 3, n)
    invites = rng.random(n) < 0.25
    p = np.where(persona == 2, 0.6, 0.08) + np.where(invites, 0.3, 0.0)
    converted = (rng.random(n) < p).astype(float)
    offered = rng.random(n) < 0.55
    inputs = pd.DataFrame({
        "n_events": rng.poisson(30, n).astype(float),
        "persona_0": (persona == 0).astype(float), "persona_1": (persona == 1).astype(float), "persona_2": (persona == 2).astype(float),
        "sig_did:invite_sent": invites.astype(np.uint8), "sig_co:login+page_view": (rng.random(n) < 0.5).astype(np.uint8),
    }, index=index)  # fmt: skip
    return inputs, pd.Series(np.where(offered, converted, np.nan), index=index), persona, invites


def test_propensity_model_is_judged_on_held_out_exposed_people_and_scores_everyone():
    inputs, converted, persona, _ = _planted()
    model = propensity.train_opportunity_model(inputs, converted, test_size=0.3, seed=0)
    labelled = int(converted.notna().sum())
    assert abs(model.metrics["n_test"] - 0.3 * labelled) <= 1
    assert not set(model.test_persons) & set(converted.index[converted.isna()])  # never judged on unlabelled people
    assert model.metrics["roc_auc"] > 0.75 and 0 <= model.metrics["ece"] < 0.15
    p = model.probability(inputs)
    assert p.notna().all() and len(p) == len(inputs)  # the people never offered are scored too
    assert p[persona == 2].mean() > p[persona != 2].mean() + 0.3
    with pytest.raises(ValueError, match="opportunity labels need at least 10 converted"):
        propensity.train_opportunity_model(inputs, converted * 0, seed=0)


def test_flagged_people_carry_the_converting_traits_they_show_as_reasons():
    inputs, converted, persona, invites = _planted()
    effects = propensity.conversion_effects(inputs, converted)
    assert set(effects["column"]) >= {"persona_2", "sig_did:invite_sent"}
    assert "sig_co:login+page_view" not in set(effects["column"]) and "n_events" not in set(effects["column"])  # noise is no reason
    reasons = propensity.opportunity_reasons(inputs, effects, persona_names={"2": "team admins"})
    both = inputs.index[(persona == 2) & invites][0]
    assert set(reasons[both].split("; ")) == {"persona:team admins", "did:invite_sent"}
    neither = inputs.index[(persona == 0) & ~invites][0]
    # being outside a low-converting persona is not a reason; absence of a signal never is
    assert "persona" not in reasons[neither] and "invite" not in reasons[neither]
    model = propensity.train_opportunity_model(inputs, converted, seed=0)
    flags = propensity.opportunity_flags(model.probability(inputs), reasons, 0.4, T0).set_index("person_id")
    amber = flags[flags["opportunity_flag"] == "amber"]
    assert len(amber) and (amber["opportunity_probability"] >= 0.4).all() and (flags.loc[flags["opportunity_flag"] == "none", "opportunity_probability"] < 0.4).all()
    assert (amber["opportunity_reasons"].str.len() > 0).mean() > 0.95  # nearly every flagged person has a reason


def test_opportunity_question_ranks_personas_and_people(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(NotFoundError):
        insights.ask_opportunities(ws)
    folder = ws.lake / "insights" / "run_id=20261127T000000Z-aaaaaa"
    folder.mkdir(parents=True)
    flags = pd.DataFrame({
        "person_id": ["a", "b", "c", "d"], "persona_id": [0, 0, 1, 1], "persona_name": ["x", "x", "y", "y"],
        "opportunity_probability": [0.1, 0.2, 0.7, 0.5], "opportunity_flag": ["none", "none", "amber", "amber"],
        "opportunity_reasons": ["", "", "persona:y", "persona:y"], "risk_flag": ["none"] * 4,
    })  # fmt: skip
    flags.to_parquet(folder / "amber_flags.parquet")
    pd.DataFrame({"person_id": ["a", "c", "d"], "converted": [0.0, 1.0, 0.0]}).to_parquet(folder / "person_opportunity_labels.parquet")
    pd.DataFrame({"persona_id": [0, 1], "persona_name": ["x", "y"]}).to_parquet(folder / "persona_summary.parquet")
    answer = insights.ask_opportunities(ws, top=3)
    assert [p["persona_name"] for p in answer["personas"]] == ["y", "x"]
    assert answer["personas"][0]["amber_share"] == 1.0 and answer["personas"][0]["exposed"] == 2 and answer["personas"][0]["conversion_rate"] == 0.5
    assert [p["person_id"] for p in answer["people"]] == ["c", "d", "b"]
    only_x = insights.ask_opportunities(ws, persona="x")
    assert [p["person_id"] for p in only_x["people"]] == ["b", "a"] and len(only_x["personas"]) == 1


def test_conversion_effects_column_chunks_give_the_same_table():
    rng = np.random.default_rng(3)
    n = 400
    inputs = pd.DataFrame({f"num_{i}": rng.normal(size=n) for i in range(7)}, index=[f"P{i}" for i in range(n)])
    for i in range(9):
        inputs[f"sig_{i}"] = (rng.random(n) < 0.3).astype(np.uint8)
    converted = pd.Series((rng.random(n) < 0.3).astype(float), index=inputs.index)
    converted[inputs["sig_2"] == 1] = 1.0  # one strong effect
    converted.iloc[::5] = np.nan  # unlabelled people
    whole = propensity.conversion_effects(inputs, converted, chunk=10_000)
    assert "sig_2" in set(whole["column"])
    pd.testing.assert_frame_equal(propensity.conversion_effects(inputs, converted, chunk=3), whole)
