"""The catalogue's amber badge counts people, not flags: a person amber for risk and engagement
is one person flagged (a 399-person persona once showed "466 flags")."""

import pandas as pd
import pytest

from personaops.catalog import Catalog, _amber_counts, _amber_people, render_catalog
from personaops.workspace import Workspace


def _flags(ws: Workspace) -> pd.DataFrame:
    assignments = pd.DataFrame({"person_id": ["a", "b", "c", "d", "e"], "persona_id": [0, 0, 0, 0, 1]})
    folder = ws.lake / "insights" / "run_id=20261127T000000Z-aaaaaa"
    folder.mkdir(parents=True)
    pd.DataFrame(
        {
            "person_id": ["a", "b", "c", "d", "e"],
            "risk_flag": ["amber", "amber", "amber", "none", "none"],
            "engagement_flag": ["amber", "amber", "none", "none", "none"],  # a and b carry both flags
        }
    ).to_parquet(folder / "amber_flags.parquet")
    return assignments


def test_amber_badge_counts_people_with_any_flag_once(tmp_path):
    ws = Workspace(tmp_path)
    assignments = pd.DataFrame({"person_id": ["a"], "persona_id": [0]})
    assert _amber_people(ws, assignments) is None  # no flags yet: "not computed"
    assignments = _flags(ws)
    per_kind, people = _amber_counts(ws, assignments), _amber_people(ws, assignments)
    assert per_kind == {0: {"risk": 3, "engagement": 2}, 1: {}}
    assert people == {0: 3, 1: 0}  # 5 flags in persona 0, but 3 people
    profile = {"persona_id": 0, "name": "Strugglers", "size": 4, "share": 0.8, "traits": [], "terms": [], "kpis": {}, "quotes": [], "description": "4 people."}
    catalog = Catalog(model="persona-model", version=1, run_id="r" * 32, experiment_id="1", profiles=[profile], size_trend={0: [(1, 4)]},
                      mix_over_time=[], map_points=[], monitoring=None, decision=None, amber=per_kind, pipeline_run=None,
                      amber_people=people)  # fmt: skip
    html = render_catalog(catalog, role="reader")
    assert 'data-amber-people="3"' in html and "amber: 3 people flagged · risk 3 · engagement 2" in html


def test_amber_badge_shows_the_opportunity_share_of_the_persona(tmp_path):
    ws = Workspace(tmp_path)
    assignments = _flags(ws)
    table = ws.lake / "insights" / "run_id=20261127T000000Z-aaaaaa" / "amber_flags.parquet"
    flags = pd.read_parquet(table)
    flags["opportunity_flag"] = ["none", "none", "amber", "amber", "amber"]  # c already risk-amber; d only opportunity
    flags.to_parquet(table)
    per_kind, people = _amber_counts(ws, assignments), _amber_people(ws, assignments)
    assert per_kind == {0: {"risk": 3, "engagement": 2, "opportunity": 2}, 1: {"opportunity": 1}} and people == {0: 4, 1: 1}
    profile = {"persona_id": 0, "name": "Admins", "size": 4, "share": 0.8, "traits": [], "terms": [], "kpis": {}, "quotes": [], "description": "4 people."}
    catalog = Catalog(model="persona-model", version=1, run_id="r" * 32, experiment_id="1", profiles=[profile], size_trend={0: [(1, 4)]},
                      mix_over_time=[], map_points=[], monitoring=None, decision=None, amber=per_kind, pipeline_run=None,
                      amber_people=people)  # fmt: skip
    html = render_catalog(catalog, role="reader")
    assert "amber: 4 people flagged · risk 3 · engagement 2 · opportunity 2 (50% of the persona)" in html
    assert 'data-opportunity-share="0.5000"' in html


def test_business_kpis_per_persona_reach_the_catalogue(tmp_path):
    import json

    import numpy as np

    from personaops import insights
    from personaops.catalog import _business_kpis

    rng = np.random.default_rng(0)
    people = [f"P{i}" for i in range(400)]
    assignments = pd.DataFrame({"person_id": people, "persona_id": [i % 2 for i in range(400)], "persona_name": ["admins" if i % 2 else "browsers" for i in range(400)]})
    signals = pd.DataFrame({"person_id": [p for i, p in enumerate(people) if i % 2 or i % 4 == 0], "signal": "did:invite_sent"})
    holdout = rng.random(400) < 0.5
    lift = np.where(np.arange(400) % 2 == 1, 0.4, 0.0)  # admins: +40 points when offered
    exposures = pd.DataFrame({"person_id": people, "campaign": "upgrade_offer", "cat__arm": np.where(holdout, "holdout", "exposed"),
                              "converted": (rng.random(400) < 0.1 + np.where(holdout, 0, lift)).astype(float)})  # fmt: skip
    surveys = pd.DataFrame({"person_id": people[:4], "score": [10, 9, 3, "n/a"]})  # P0, P2 browsers; P1, P3 admins
    table = insights.business_kpis(assignments, signals, exposures, surveys).set_index("persona_id")["business_kpis"].map(json.loads)
    admins, browsers = table[1], table[0]
    assert admins["feature_adoption"]["invite_sent"] == {"share": 1.0, "lift": pytest.approx(1 / 0.75, abs=0.01)}
    assert browsers["feature_adoption"]["invite_sent"]["share"] == 0.5
    up = admins["conversion_lift"]["upgrade_offer"]
    assert up["ci95"][0] < up["uplift"] < up["ci95"][1] and up["ci95"][0] > 0.2 and browsers["conversion_lift"]["upgrade_offer"]["ci95"][0] < 0
    assert browsers["nps"] == {"value": 0.0, "n": 2} and admins["nps"] == {"value": 100.0, "n": 1}  # a text score is no answer
    assert admins["first_contact_resolution"] is None  # the sources carry no resolution status
    ws = Workspace(tmp_path)
    assert _business_kpis(ws) is None
    folder = ws.lake / "insights" / "run_id=20261127T000000Z-aaaaaa"
    folder.mkdir(parents=True)
    table.map(json.dumps).rename("business_kpis").reset_index().to_parquet(folder / "persona_summary.parquet")
    business = _business_kpis(ws)
    profile = {"persona_id": 1, "name": "Admins", "size": 200, "share": 0.5, "traits": [], "terms": [], "kpis": {}, "quotes": [], "description": "200 people."}
    catalog = Catalog(model="persona-model", version=1, run_id="r" * 32, experiment_id="1", profiles=[profile], size_trend={1: [(1, 200)]},
                      mix_over_time=[], map_points=[], monitoring=None, decision=None, amber=None, pipeline_run=None, business=business)  # fmt: skip
    html = render_catalog(catalog, role="reader")
    assert 'data-business-kpi="conversion_lift" data-campaign="upgrade_offer"' in html and "invite_sent 100% (1.3x everyone)" in html
    assert "+100 (% promoters 9-10 minus % detractors 0-6, 1 answers)" in html and "first-contact resolution" in html
