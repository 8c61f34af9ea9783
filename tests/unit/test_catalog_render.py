"""The catalogue page's rendering on a hand-built catalogue: escaping, roles, charts, links."""

from personaops.catalog import Catalog, render_catalog, report_links


def _catalog(**over) -> Catalog:
    profiles = [
        {
            "persona_id": 0, "name": "High <script>alert(1)</script> pricing", "size": 300, "share": 0.6,
            "traits": [{"feature": "share_pricing_view", "label": "pricing view events", "z": 1.8, "persona_mean": 0.4, "population_mean": 0.1},
                       {"feature": "n_tickets", "label": "support tickets", "z": -0.7, "persona_mean": 0.2, "population_mean": 0.9}],
            "terms": ["price", "discount"],
            "kpis": {"churned_rate": {"value": 0.25, "ci95": [0.2, 0.3], "n": 280}, "engagement_events": {"value": 31.5, "ci95": [29.0, 34.0], "n": 300}},
            "quotes": [{"text": "Too expensive for us", "source": "tickets", "source_key": "T1", "similarity": 0.91}],
            "description": "300 people (60% of everyone).",
        },
        {
            "persona_id": 1, "name": "Low activity", "size": 199, "share": 0.398, "traits": [], "terms": [],
            "kpis": {}, "quotes": [], "description": "199 people (40% of everyone).",
        },
        {"persona_id": -1, "name": "Unassigned (far from every persona)", "size": 1, "share": 0.002, "traits": [], "terms": [], "kpis": {}, "quotes": [], "description": "1 people."},
    ]  # fmt: skip
    monitoring = {
        "run_id": "20261127T000000Z-abc123",
        "results": {
            "model_version": 2,
            "persona_mix": {"reference_share": {"0": 0.6, "1": 0.4}, "current_share": {"0": 0.5, "1": 0.5}},
            "bias": {"by_attribute": {"gender": {"0": {"dp_difference": 0.12, "dp_ratio": 0.8, "rates": {"f": 0.55, "m": 0.67}}}}},
        },
        "decision": {"action": "retrain", "fired": [{"rule": "persona_mix_shift"}]},
    }
    base = dict(
        model="persona-model", version=2, run_id="r" * 32, experiment_id="1", profiles=profiles,
        size_trend={0: [(1, 280), (2, 300)], 1: [(2, 199)]},
        mix_over_time=[{"run_id": "20261126T000000Z-aaaaaa", "model_version": 1, "shares": {0: 0.6, 1: 0.4}}, {"run_id": monitoring["run_id"], "model_version": 2, "shares": {0: 0.5, 1: 0.5}}],
        map_points=[(0.1, 0.2, 0), (0.5, -0.3, 1), (2.0, 2.0, -1)], monitoring=monitoring, decision={"action": "retrain"},
        amber=None, pipeline_run="20261127T000000Z-abc123", mlflow_ui="http://mlflow.example:5000", persons=500,
    )  # fmt: skip
    base.update(over)
    return Catalog(**base)


def test_page_escapes_names_and_draws_every_card_and_chart():
    html = render_catalog(_catalog(), role="reader")
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert html.count('class="persona-card"') == 3
    assert html.count('data-chart="traits"') == 1  # persona 1 has no traits: a sentence instead
    assert html.count('class="trait"') == 2 and 'data-z="-0.7"' in html
    assert 'data-chart="map" data-points="3"' in html and html.count("<circle") >= 3
    assert 'data-chart="mix" data-runs="2"' in html
    assert "25.0%" in html and "20.0%–30.0%" in html and "31.5" in html  # KPI values and intervals
    assert "amber flags: not computed" in html
    assert "share 60.0% at training, 50.0% now" in html and "drift: retrain" in html
    assert "http://mlflow.example:5000/#/experiments/1/runs/" + "r" * 32 in html
    assert "<script" not in html.replace("&lt;script", "")  # no JavaScript at all


def test_sensitive_breakdowns_only_for_analysts_on_the_live_page():
    catalog = _catalog()
    assert "table class=\"sensitive\"" not in render_catalog(catalog, role="reader")
    analyst = render_catalog(catalog, role="analyst")
    assert 'table class="sensitive"' in analyst and "f: 55.0%" in analyst
    assert 'table class="sensitive"' not in render_catalog(catalog, role="admin", static=True)


def test_amber_counts_and_report_links():
    html = render_catalog(_catalog(amber={0: {"risk": 12, "opportunity": 3}}), role="reader")
    assert 'data-amber="15"' in html and "risk 12" in html
    catalog = _catalog()
    assert report_links(catalog)["Evidently drift report"] == "/reports/20261127T000000Z-abc123/drift.html"
    from pathlib import Path

    assert report_links(catalog, Path("/ws/reports/20261127T000000Z-abc123"))["Evidently drift report"] == "drift.html"
    assert report_links(catalog, Path("/ws/reports/other"))["Evidently drift report"] == "../20261127T000000Z-abc123/drift.html"


def test_amber_counts_per_persona_and_flag_kind_from_the_insights_table(tmp_path):
    import pandas as pd

    from personaops.catalog import _amber_counts
    from personaops.workspace import Workspace

    ws = Workspace(tmp_path)
    assignments = pd.DataFrame({"person_id": ["a", "b", "c", "d"], "persona_id": [0, 0, 1, 2]})
    assert _amber_counts(ws, assignments) is None  # no flags yet: "not computed"
    folder = ws.lake / "insights" / "run_id=20261127T000000Z-aaaaaa"
    folder.mkdir(parents=True)
    pd.DataFrame(
        {"person_id": ["a", "b", "c", "z"], "risk_flag": ["amber", "amber", "none", "amber"], "engagement_flag": ["none", "amber", "amber", "amber"], "persona_id": [9, 9, 9, 9]}
    ).to_parquet(folder / "amber_flags.parquet")
    # persona from the champion's assignments (not the table's); people without one are left out
    assert _amber_counts(ws, assignments) == {0: {"risk": 2, "engagement": 1}, 1: {"engagement": 1}, 2: {}}
