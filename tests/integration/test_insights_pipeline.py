"""Intents, the persona graph, amber flags and the business questions on the shared pipeline run
(1,200 generated people, seed 11, with planted campaign uplift and churn drivers)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from personaops import graph, insights
from personaops.config import load_config
from personaops.workspace import Workspace

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ws(pipeline):
    home, _ = pipeline
    return Workspace(home)


def _names(ws: Workspace, generated) -> dict[int, str]:
    """Discovered persona id -> the true persona most of its people have."""
    records = pd.read_parquet(generated / "truth" / "records.parquet")
    rp = pd.read_parquet(ws.identity / "record_person.parquet")[["source", "source_key", "person_id"]]
    truth = rp.merge(records, on=["source", "source_key"]).groupby("person_id")["true_person"].agg(lambda s: s.value_counts().index[0])
    persona = pd.read_parquet(generated / "truth" / "persons.parquet").set_index("true_person")["true_persona"]
    a = insights._assignments_from_graph(ws)
    a["true"] = a["person_id"].map(truth).map(persona)
    return a.dropna(subset=["true"]).groupby("persona_id")["true"].agg(lambda s: s.value_counts().index[0]).to_dict()


def test_the_run_records_the_new_stages_and_a_churn_model_judged_on_held_out_people(pipeline):
    _, record = pipeline
    assert record["intents"]["intents"] >= 5 and record["graph"]["edges"] > 0
    metrics = record["flags"]["metrics"]
    assert metrics["roc_auc"] >= 0.8, metrics
    assert 0 <= metrics["ece"] < 0.1 and 0 < metrics["brier"] < 0.25 and metrics["n_test"] >= 300
    assert set(record["timings"]) >= {"intents", "graph", "flags"}
    # the opportunity model (conversion on upgrade_offer among people offered it), judged the same way
    opportunity = record["flags"]["opportunity_metrics"]
    assert opportunity["campaign"] == "upgrade_offer" and opportunity["roc_auc"] >= 0.7, opportunity
    assert 0 <= opportunity["ece"] < 0.15 and opportunity["n_test"] >= 100 and record["flags"]["opportunity_amber"] > 0


def test_graph_tables_round_trip_through_duckdb_and_networkx(ws):
    counts = graph.query(ws, "SELECT kind, count(*) AS n FROM edges GROUP BY kind").set_index("kind")["n"]
    assert set(counts.index) >= {"did", "mentions", "exposed_to", "converted", "held_out", "belongs_to", "co_occurs", "next", "filed", "about"}
    kinds = set(graph.query(ws, "SELECT DISTINCT kind FROM nodes")["kind"])
    assert kinds == {"person", "persona", "intent", "event_type", "campaign", "ticket"}
    g = graph.load_networkx(ws)
    assert g.number_of_edges() == int(counts.sum())
    # the planted sequence is a path of `next` edges in the graph
    assert g.has_edge("event_type:error_seen", "event_type:help_center_view", key="next")
    assert g.has_edge("event_type:help_center_view", "event_type:plan_downgrade", key="next")


def test_campaign_question_ranks_the_planted_top_uplift_persona_first(ws, generated):
    planted = json.loads((generated / "truth" / "planted.json").read_text())
    names = _names(ws, generated)
    for campaign, spec in planted["campaigns"].items():
        table = insights.ask_campaign(ws, campaign)
        top = table.iloc[0]
        assert names[int(top["persona_id"])] == spec["top_persona"], (campaign, table[["persona_name", "uplift"]])
        assert top["ci_low"] > 0 and top["exposed"] > 0 and top["holdout"] > 0


def test_churn_question_lists_the_planted_drivers_in_its_top_five(ws, generated):
    planted = json.loads((generated / "truth" / "planted.json").read_text())
    top = insights.ask_churn_signals(ws, top=5)
    for driver, spec in planted["churn_drivers"].items():
        hits = top[[any(re.search(spec["match"], n) for n in [row.signal, *row.same_as.split("; ")] if n) for row in top.itertuples()]]
        assert len(hits), (driver, top[["signal", "odds_ratio", "p_adjusted"]])
        # each planted driver is a significant churn-raising signal, not a chance entry of the top five
        assert hits["p_adjusted"].min() < 0.05 and hits["odds_ratio"].max() > 1.5


def test_intents_and_changes_questions(ws):
    summary = insights.read_insight_table(ws, "persona_summary")
    persona = int(summary.sort_values("persons").iloc[-1]["persona_id"])
    table = insights.ask_intents(ws, str(persona))
    assert len(table) >= 2 and abs(table["share"].sum() - 1) < 1e-9 and table["label"].str.len().gt(0).all()
    by_name = insights.ask_intents(ws, summary.set_index("persona_id").loc[persona, "persona_name"])
    assert by_name.equals(table)
    changes = insights.ask_changes(ws, str(persona))
    assert changes["persona_id"] == persona and changes["previous_run"] is None and "note" in changes


def test_flags_are_online_through_feast_and_match_the_run_table(ws, pipeline):
    from personaops.feature_store import feature_store

    cfg = load_config()
    cfg.home = ws.root
    flags = insights.read_insight_table(ws, "amber_flags")
    sample = flags.dropna(subset=["churn_probability"]).sort_values("churn_probability").iloc[[0, -1]]
    store = feature_store(ws, cfg)
    online = store.get_online_features(
        features=store.get_feature_service("persona_flags_v1"), entity_rows=[{"person_id": p} for p in sample["person_id"]]
    ).to_df()
    assert online["churn_probability"].tolist() == pytest.approx(sample["churn_probability"].tolist())
    assert online["risk_flag"].tolist() == ["none", "amber"]
    assert online["reasons"].iloc[1] != "" and online["intent_centrality"].notna().all()


def test_opportunity_flag_is_online_through_feast_and_its_question_ranks_the_upgrade_persona_first(ws, generated):
    from personaops.feature_store import feature_store

    cfg = load_config()
    cfg.home = ws.root
    flags = insights.read_insight_table(ws, "amber_flags")
    sample = flags.sort_values("opportunity_probability").iloc[[0, -1]]
    store = feature_store(ws, cfg)
    online = store.get_online_features(
        features=store.get_feature_service("persona_flags_v2"), entity_rows=[{"person_id": p} for p in sample["person_id"]]
    ).to_df()
    assert online["opportunity_probability"].tolist() == pytest.approx(sample["opportunity_probability"].tolist())
    assert online["opportunity_flag"].tolist() == ["none", "amber"] and online["opportunity_reasons"].iloc[1] != ""
    assert online["churn_probability"].notna().all()  # v2 still carries the risk flag
    # the planted upgrade_offer persona (team_admin, +45 points) has the highest mean propensity
    answer = insights.ask_opportunities(ws, top=5)
    assert _names(ws, generated)[answer["personas"][0]["persona_id"]] == "team_admin", answer["personas"]
    assert answer["metrics"]["roc_auc"] >= 0.7 and len(answer["people"]) == 5
    assert answer["people"][0]["opportunity_probability"] >= answer["people"][-1]["opportunity_probability"]


def test_business_kpis_per_persona(ws, generated):
    kpis = insights.read_insight_table(ws, "persona_summary").set_index("persona_id")["business_kpis"].map(json.loads)
    lift = {pid: k["conversion_lift"]["upgrade_offer"]["uplift"] for pid, k in kpis.items()}
    assert _names(ws, generated)[max(lift, key=lift.get)] == "team_admin", lift
    assert all(len(k["feature_adoption"]) == 5 and k["nps"]["n"] > 0 and -100 <= k["nps"]["value"] <= 100 for k in kpis)


def test_insight_endpoints_need_the_analyst_role(ws):
    from fastapi.testclient import TestClient

    from personaops.api import create_app

    cfg = load_config()
    cfg.home = ws.root
    client = TestClient(create_app(cfg, environ={"PERSONAS_API_TOKENS": "r:reader,a:analyst"}))
    assert client.get("/insights/churn-signals", headers={"Authorization": "Bearer r"}).status_code == 403
    ok = client.get("/insights/campaigns/spring_promo", headers={"Authorization": "Bearer a"})
    assert ok.status_code == 200 and ok.json()["personas"][0]["uplift"] > 0
    assert client.get("/insights/campaigns/nope", headers={"Authorization": "Bearer a"}).status_code == 404
    signals = client.get("/insights/churn-signals?top=3", headers={"Authorization": "Bearer a"}).json()["signals"]
    assert len(signals) == 3 and signals[0]["rank"] == 1
    persona = signals and insights.read_insight_table(ws, "persona_summary")["persona_id"].iloc[0]
    assert client.get(f"/insights/personas/{persona}/intents", headers={"Authorization": "Bearer a"}).json()["intents"]
    assert client.get(f"/insights/personas/{persona}/changes", headers={"Authorization": "Bearer a"}).status_code == 200
    assert client.get("/insights/opportunities", headers={"Authorization": "Bearer r"}).status_code == 403
    opportunities = client.get(f"/insights/opportunities?persona={persona}&top=2", headers={"Authorization": "Bearer a"}).json()
    assert len(opportunities["people"]) == 2 and {p["persona_id"] for p in opportunities["people"]} == {int(persona)}
    person = insights.read_insight_table(ws, "amber_flags").sort_values("opportunity_probability")["person_id"].iloc[-1]
    served = client.get(f"/persons/{person}/flags", headers={"Authorization": "Bearer a"}).json()
    assert served["opportunity_flag"] == "amber" and served["opportunity_reasons"] and "churn_probability" in served
    assert client.get(f"/persons/{person}/flags", headers={"Authorization": "Bearer r"}).status_code == 403
    assert client.get(f"/persons/{person}/explain", headers={"Authorization": "Bearer a"}).json()["flags"]["opportunity_flag"] == "amber"


def test_ask_commands_answer_in_json_and_fail_in_one_sentence(ws):
    personas = str(Path(sys.executable).parent / "personas")
    env = {**os.environ, "PERSONAS_HOME": str(ws.root)}
    done = subprocess.run([personas, "ask", "campaign", "upgrade_offer", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout)
    assert answer["campaign"] == "upgrade_offer" and answer["personas"][0]["uplift"] >= answer["personas"][-1]["uplift"]
    bad = subprocess.run([personas, "ask", "campaign", "no_such_campaign"], env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "known campaigns" in bad.stderr and "Traceback" not in bad.stderr


def test_flags_rerun_scores_with_the_kept_models_and_equals_a_full_retrain(pipeline, tmp_path):
    """A flags pass whose inputs only gained records (here: none) scores with the last trained
    risk and opportunity models instead of training again; the flag table equals both the first
    run's and a forced retrain's (insights.retrain: always), and so do the held-out metrics."""
    import shutil

    from personaops.sources import load_sources

    home, record = pipeline
    copy = tmp_path / "ws"
    shutil.copytree(home, copy, symlinks=True)
    env = dict(os.environ)  # the stages point Feast and MLflow at the copy; later tests need the original
    try:
        cfg = load_config()
        cfg.home = copy
        w = Workspace.from_config(cfg)
        kinds = {s.name: s.kind for s in load_sources(Path(record["sources"]))}
        args = (record["batches"], kinds, record["features"]["as_of"])
        first = insights.read_insight_table(w, "amber_flags")
        assert record["flags"]["retrained"] is True

        def again(run_id: str) -> tuple[dict, pd.DataFrame]:
            for marker in (w.lake / "insights").glob("run_id=*/_flags.fingerprint"):
                marker.unlink()  # not the whole-stage reuse of unchanged inputs: the flags pass itself
            out = insights.flags_stage(cfg, w, run_id, *args)
            return out, insights.read_insight_table(w, "amber_flags")

        kept, kept_table = again("kept")
        assert kept["retrained"] is False and kept["models_from_run"] == record["flags"]["run_id"]
        assert kept["mlflow_run_id"] == record["flags"]["mlflow_run_id"]
        cfg.insights.retrain = "always"
        full, full_table = again("full")
        assert full["retrained"] is True and full["retrain_reason"] == "insights.retrain is always"
        pd.testing.assert_frame_equal(kept_table, full_table)
        pd.testing.assert_frame_equal(kept_table, first)
        assert kept["metrics"] == full["metrics"] == record["flags"]["metrics"]
        assert kept["opportunity_metrics"] == full["opportunity_metrics"]
        assert (kept_table["risk_flag"] == "amber").sum() > 0
    finally:
        os.environ.clear()
        os.environ.update(env)
