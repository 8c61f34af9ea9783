"""The catalogue's amber badge counts people, not flags: a person amber for risk and engagement
is one person flagged (a 399-person persona once showed "466 flags")."""

import pandas as pd

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
