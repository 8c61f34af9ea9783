import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from models.clustering import assign, fit_personas
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
    assert profiles[1]["kpis"]["churn_rate"]["value"] == 1.0 and profiles[0]["kpis"]["churn_rate"]["value"] == 0.0
    assert set(profiles[0]["terms"]) & {"slow", "api", "export"}
    assert profiles[0]["quotes"][0]["text"] == "slow api export"
    assert profiles[0]["traits"][0]["feature"] in {"f1", "f2", "f3"}
