import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from models.clustering import assign, fit_personas, stability
from models.continuity import match_personas
from models.promotion import evaluate_gate, gate_passed
from models.fusion import Fusion
from models.persona_model import PersonaScorer
from models.profiles import build_profiles, wilson
from models.train import fit_scorer
from personaops.config import ModelConfig


def _blobs(n_per=150, k=4, dim_text=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(k, 3))
    text_centres = rng.normal(0, 1, size=(k, dim_text))
    rows, texts, truth = [], [], []
    for c in range(k):
        x = centres[c] + rng.normal(0, 0.6, size=(n_per, 3))
        t = text_centres[c] + rng.normal(0, 0.2, size=(n_per, dim_text))
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        rows.append(x)
        texts.extend(list(t.astype(np.float32)))
        truth += [c] * n_per
    frame = pd.DataFrame(np.vstack(rows), columns=["f1", "f2", "f3"])
    frame["text_embedding"] = texts
    frame.index = [f"p{i}" for i in range(len(frame))]
    return frame, np.array(truth)


def test_clustering_recovers_planted_groups_and_picks_k():
    frame, truth = _blobs()
    scorer = fit_scorer(frame, ["f1", "f2", "f3"], 8, ModelConfig(k_min=2, k_max=6, pca_components=6))
    assert scorer.clustering.k == 4
    predicted = scorer.predict(frame)
    assert adjusted_rand_score(truth, predicted["persona_id"]) > 0.95
    assert predicted["confidence"].between(0, 1).all()


def test_scorer_round_trips_through_its_saved_state(tmp_path):
    frame, _ = _blobs()
    scorer = fit_scorer(frame, ["f1", "f2", "f3"], 8, ModelConfig(k_min=4, k_max=4, pca_components=6))
    scorer.persona_names = [f"name {i}" for i in range(4)]
    restored = PersonaScorer.load(scorer.save(tmp_path / "state"))
    pd.testing.assert_frame_equal(scorer.predict(frame), restored.predict(frame))


def test_people_without_behaviour_borrow_it_from_text_neighbours():
    frame, truth = _blobs()
    fusion = Fusion(["f1", "f2", "f3"], pca_components=6).fit(frame, 8)
    x = fusion.transform(frame)
    clustering = fit_personas(x, 4, 4, 5, 30, 0, 1000)
    blind = frame.copy()
    blind[["f1", "f2", "f3"]] = np.nan  # behaviour unknown: only text is left
    ids_full, _ = assign(x, clustering)
    ids_blind, _ = assign(fusion.transform(blind), clustering)
    assert adjusted_rand_score(ids_full, ids_blind) > 0.9
    mute = frame.copy()
    mute["text_embedding"] = None  # no text: the text block comes from behaviour neighbours
    ids_mute, _ = assign(fusion.transform(mute), clustering)
    assert adjusted_rand_score(ids_full, ids_mute) > 0.9


def test_missing_columns_are_imputed_not_rejected():
    frame, _ = _blobs()
    scorer = fit_scorer(frame, ["f1", "f2", "f3"], 8, ModelConfig(k_min=4, k_max=4, pca_components=6))
    partial = frame.drop(columns=["f3"])
    assert len(scorer.predict(partial)) == len(frame)


def test_wilson_interval_brackets_the_rate():
    lo, hi = wilson(30, 100)
    assert 0.2 < lo < 0.3 < hi < 0.4
    assert np.isnan(wilson(0, 0)[0])


def test_profiles_name_traits_kpis_and_quotes():
    frame, truth = _blobs(n_per=60, k=2)
    labels = pd.Series(truth, index=frame.index)
    texts = pd.DataFrame(
        {"person_id": frame.index, "source": "tickets", "source_key": [f"k{i}" for i in range(len(frame))],
         "text": ["slow api export" if t == 0 else "discount coupon price" for t in truth]}
    )  # fmt: skip
    vectors = np.vstack(frame["text_embedding"].to_numpy()).astype(np.float32)
    outcomes = pd.DataFrame({"churned": (truth == 1).astype(float)}, index=frame.index)
    profiles = build_profiles(frame[["f1", "f2", "f3"]], labels, outcomes, texts, vectors)
    assert [p["size"] for p in profiles] == [60, 60]
    assert len({p["name"] for p in profiles}) == 2
    assert profiles[1]["kpis"]["churned_rate"]["value"] == 1.0 and profiles[0]["kpis"]["churned_rate"]["value"] == 0.0
    assert "Churned rate 100%" in profiles[1]["description"]
    assert "engagement_events" not in profiles[0]["kpis"]  # no event counts in these inputs
    assert set(profiles[0]["terms"]) & {"slow", "api", "export"}
    assert profiles[0]["quotes"][0]["text"] == "slow api export"
    assert profiles[0]["traits"][0]["feature"] in {"f1", "f2", "f3"}


def test_far_away_people_are_unassigned_and_confidence_is_a_distance_ratio():
    frame, _ = _blobs()
    scorer = fit_scorer(frame, ["f1", "f2", "f3"], 8, ModelConfig(k_min=4, k_max=4, pca_components=6))
    weird = frame.head(3).copy()
    weird[["f1", "f2", "f3"]] = 1e4
    predicted = scorer.predict(pd.concat([frame, weird]))
    assert (predicted["persona_id"].tail(3) == -1).all()
    assert predicted["persona_name"].iloc[-1].startswith("Unassigned")
    assert (predicted["persona_id"].head(len(frame)) >= 0).mean() > 0.99
    assert predicted["confidence"].between(0, 1).all() and predicted["confidence"].head(len(frame)).median() > 0.5


def test_stability_is_high_for_clear_structure_and_k_respects_min_share():
    frame, _ = _blobs()
    cfg = ModelConfig(k_min=2, k_max=8, pca_components=6, min_persona_share=0.2)
    scorer = fit_scorer(frame, ["f1", "f2", "f3"], 8, cfg)
    assert scorer.clustering.k == 4  # five or more would leave a persona under 20% of people
    assert all(scorer.clustering.k_scores[k] is None for k in range(5, 9))
    x = scorer.represent(frame)
    assert scorer.clustering.k_stability[4] > 0.95
    assert stability(x, scorer.clustering.centroids, cfg.restarts, cfg.iterations, 0, rounds=3) > 0.95


def test_continuity_keeps_previous_ids_and_reports_new_and_vanished():
    people = pd.Index([f"p{i}" for i in range(9)])
    previous = pd.Series([5, 5, 5, 7, 7, 7, 9, 9, 9], index=people)
    # the new centroids come out in another order, persona 9 vanished, a new group appears
    new = pd.Series([1, 1, 1, 0, 0, 0, 2, 2, 2], index=people)
    grown = pd.concat([new, pd.Series([3, 3], index=["q1", "q2"])])
    result = match_personas(grown, 4, previous, 0.3)
    assert result.persona_ids[1] == 5 and result.persona_ids[0] == 7 and result.persona_ids[2] == 9
    assert result.persona_ids[3] == 10 and result.new == [10] and result.vanished == []
    shifted = match_personas(pd.Series([0, 0, 0, 0, 0, 0, 1, 1, 1], index=people), 2, previous, 0.3)
    assert shifted.persona_ids[1] == 9 and len(shifted.vanished) == 1  # 6 people of 5 and 7 merged: only one id survives
    assert match_personas(new, 3, None, 0.3).persona_ids == [0, 1, 2]


def test_promotion_gate_blocks_a_worse_challenger_and_passes_a_better_one():
    cfg = ModelConfig(stability_floor=0.9, promotion_tolerance=0.02, min_persona_share=0.03)
    champion = {"silhouette": 0.35, "stability": 0.97, "smallest_persona_share": 0.1}
    worse = {"silhouette": 0.25, "stability": 0.97, "smallest_persona_share": 0.1}
    unstable = {"silhouette": 0.40, "stability": 0.80, "smallest_persona_share": 0.1}
    better = {"silhouette": 0.36, "stability": 0.98, "smallest_persona_share": 0.1}
    assert not gate_passed(evaluate_gate(worse, champion, cfg))
    assert not gate_passed(evaluate_gate(unstable, champion, cfg))
    assert gate_passed(evaluate_gate(better, champion, cfg))
    assert gate_passed(evaluate_gate(better, None, cfg))
    failed = [c.name for c in evaluate_gate(worse, champion, cfg) if not c.passed]
    assert failed == ["silhouette_vs_champion"]


def test_persona_parity_measures_assignment_rates_across_groups():
    from models.bias import persona_parity

    people = [f"p{i}" for i in range(200)]
    sensitive = pd.DataFrame({"gender": ["f"] * 100 + ["m"] * 100, "age": np.arange(200) + 18}, index=people)
    skewed = pd.Series([0] * 100 + [1] * 100, index=people)  # persona 0 is all women
    report = persona_parity(skewed, sensitive)
    assert report["by_attribute"]["gender"][0]["dp_difference"] == 1.0 and report["max_dp_difference"] == 1.0
    assert set(report["by_attribute"]["age"]) == {0, 1}  # numeric age is audited in quartile bands
    rng = np.random.default_rng(0)
    even = pd.Series(rng.integers(0, 2, size=200), index=people)
    assert persona_parity(even, sensitive[["gender"]])["max_dp_difference"] < 0.2


def test_persona_parity_equals_fairlearn_bit_for_bit():
    """persona_parity counts the selection rates itself (fairlearn's MetricFrame per call was the
    cost): the same differences, ratios and rates as fairlearn's functions, exactly."""
    from fairlearn.metrics import demographic_parity_difference, demographic_parity_ratio

    from models.bias import audit_groups, persona_parity

    rng = np.random.default_rng(4)
    n = 3000
    people = pd.Index([f"p{i}" for i in range(n)], name="person_id")
    personas = pd.Series(rng.integers(-1, 6, n), index=people)
    sensitive = pd.DataFrame(
        {"gender": rng.choice(np.array(["f", "m", "x", None], dtype=object), n, p=[0.48, 0.48, 0.005, 0.035]),
         "age": np.where(rng.random(n) < 0.05, np.nan, rng.integers(18, 80, n).astype(float)),
         "tier": rng.choice([1, 2, 3], n)},
        index=people,
    ).sample(frac=0.9, random_state=1)  # fmt: skip
    report = persona_parity(personas, sensitive)
    assert set(report["by_attribute"]) == {"gender", "age", "tier"}
    worst = 0.0
    for attr, per_persona in report["by_attribute"].items():
        groups = audit_groups(sensitive[attr]).reindex(personas.index)
        sizes = groups.value_counts()
        keep = groups.isin(sizes[sizes >= 30].index)
        g, a = groups[keep], personas[keep]
        assert "x" not in g.to_numpy()  # a group under 30 people is left out
        assert sorted(per_persona) == sorted(p for p in a.unique() if p >= 0)
        for persona, got in per_persona.items():
            y = (a == persona).astype(int).to_numpy()
            diff = float(demographic_parity_difference(y, y, sensitive_features=g.to_numpy()))
            ratio = float(demographic_parity_ratio(y, y, sensitive_features=g.to_numpy()))
            assert got["dp_difference"] == round(diff, 4) and got["dp_ratio"] == round(ratio, 4)
            assert got["rates"] == pd.Series(y, index=g.index).groupby(g).mean().round(4).to_dict()
            assert list(got["rates"]) == sorted(got["rates"])  # groupby's order, for the JSON artifacts
            worst = max(worst, diff)
    assert report["max_dp_difference"] == worst > 0

def test_promotion_gate_blocks_a_challenger_that_is_more_biased():
    cfg = ModelConfig(bias_tolerance=0.05)
    champion = {"silhouette": 0.3, "stability": 0.95, "smallest_persona_share": 0.1, "bias_max_dp_difference": 0.10}
    biased = dict(champion, bias_max_dp_difference=0.30)
    checks = evaluate_gate(biased, champion, cfg)
    assert [c.name for c in checks if not c.passed] == ["bias_max_dp_difference_vs_champion"]
    assert gate_passed(evaluate_gate(dict(champion, bias_max_dp_difference=0.12), champion, cfg))


def test_label_gaps_compare_outcomes_of_groups_within_a_persona():
    from models.bias import label_gaps

    people = [f"p{i}" for i in range(240)]
    persona = pd.Series([0] * 120 + [1] * 120, index=people)
    sensitive = pd.DataFrame({"gender": (["f"] * 60 + ["m"] * 60) * 2}, index=people)
    # in persona 0 women churn far more than men; in persona 1 both groups churn alike
    churned = [1] * 45 + [0] * 15 + [1] * 15 + [0] * 45 + ([1] * 30 + [0] * 30) * 2
    report = label_gaps(persona, sensitive, pd.DataFrame({"churned": churned}, index=people))
    gaps = report["by_label"]["churned"]["gender"]
    assert gaps[0]["gap"] == 0.5 and gaps[1]["gap"] == 0.0 and report["max_gap"] == 0.5


def test_k_is_chosen_on_a_sample_and_fitted_on_everyone(monkeypatch):
    import models.clustering as clustering

    fitted_rows: list[int] = []
    real_kmeans = clustering.kmeans
    monkeypatch.setattr(clustering, "kmeans", lambda x, *a, **kw: fitted_rows.append(len(x)) or real_kmeans(x, *a, **kw))
    rng = np.random.default_rng(3)
    centres = np.eye(6)[:5] * 12  # five well-separated groups
    truth = rng.integers(0, 5, size=6000)
    x = (centres[truth] + rng.normal(0, 1, size=(6000, 6))).astype(np.float32)
    sampled = fit_personas(x, 3, 7, 5, 30, 0, 1000, min_share=0.03, stability_rounds=2, selection_rows=1500)
    assert sampled.k == 5
    assert fitted_rows[-1] == 6000 and fitted_rows.count(6000) == 1  # one fit on everyone, after the choice
    assert max(fitted_rows[:-1]) == 1500  # every fit of the choice (per k and bootstrap refits) on the sample
    ids, _ = assign(x, sampled)
    assert adjusted_rand_score(truth, ids) > 0.99  # and fitted on all 6,000
    assert set(sampled.k_stability) == set(range(3, 8)) - {k for k, s in sampled.k_scores.items() if s is None}
    whole = fit_personas(x, 3, 7, 5, 30, 0, 1000, min_share=0.03, stability_rounds=2)
    assert whole.k == sampled.k
