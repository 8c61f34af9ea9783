"""Do the business questions find what the generator planted? Across seeds.

usage: python bench/insights.py [--seeds 1 2 3] [--users 1200] [--pipeline] [--quick] [--json]

For each seed: `personas generate` data with planted campaign uplift and churn drivers
(truth/planted.json), then the insight code path on it:
  default     people and personas from the generator's truth (no identity resolution or persona
              model), the real intents (all-MiniLM-L6-v2 + faiss), graph (written to a temporary
              lake, queried with DuckDB), campaign uplift, churn-signal ranking and churn model
  --pipeline  the whole `personas run` (ingest, identity, persona model, Feast, the new stages) in
              a temporary workspace; discovered personas are named by their majority true persona
Reports per seed: the top-uplift persona per campaign vs the planted one, the rank of each planted
churn driver among the churn signals (found = in the top five), held-out ROC AUC, Brier and ECE of
the churn probability, and the opportunity model's held-out ROC AUC and ECE with the persona of
highest mean propensity vs the planted top-uplift persona of the expansion offer. --quick = 600 people, seeds 1 2 3. With --json, one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def truth_frames(data: Path) -> dict[str, pd.DataFrame]:
    """The generated sources keyed by true person (what a perfect identity resolution would give)."""
    records = pd.read_parquet(data / "truth" / "records.parquet")
    key = records.set_index(["source", "source_key"])["true_person"]

    def person(source: str, ids: pd.Series) -> pd.Series:
        return pd.Series(key.reindex(pd.MultiIndex.from_arrays([[source] * len(ids), ids.astype(str)])).to_numpy(), index=ids.index)

    ev = pd.read_parquet(data / "events.parquet")
    ev = pd.DataFrame({"person_id": person("events", ev["event_id"]), "event_type": ev["event_type"], "session_id": ev["session_id"],
                       "event_time": pd.to_datetime(ev["ts"], utc=True, format="mixed")})  # fmt: skip
    tk, sv = pd.read_csv(data / "tickets.csv"), pd.read_csv(data / "surveys.csv")
    texts = pd.concat([
        pd.DataFrame({"person_id": person("tickets", tk["ticket_id"]), "source": "tickets", "source_key": tk["ticket_id"],
                      "event_time": pd.to_datetime(tk["created_at"], utc=True, format="mixed"), "text": tk["body"].fillna("")}),
        pd.DataFrame({"person_id": person("surveys", sv["response_id"]), "source": "surveys", "source_key": sv["response_id"],
                      "event_time": pd.to_datetime(sv["submitted_at"], utc=True, format="mixed"), "text": sv["answer"].fillna("")}),
    ], ignore_index=True)  # fmt: skip
    ex = pd.read_csv(data / "campaigns.csv")
    ex = pd.DataFrame({"person_id": person("campaigns", ex["exposure_id"]), "campaign": ex["campaign"], "converted": (ex["converted"] == "yes").astype(float),
                       "event_time": pd.to_datetime(ex["sent_at"], utc=True, format="mixed"), "cat__arm": ex["arm"]})  # fmt: skip
    persons = pd.read_parquet(data / "truth" / "persons.parquet")
    return {"events": ev, "texts": texts[texts["text"] != ""], "exposures": ex, "persons": persons}


def driver_ranks(ranked: pd.DataFrame, planted: dict) -> dict[str, int | None]:
    """Rank (1-based) of the best signal matching each planted driver (its own name or a `same_as`)."""
    out = {}
    for name, spec in planted["churn_drivers"].items():
        pattern = re.compile(spec["match"])
        hits = [int(r.rank) for r in ranked.itertuples() if pattern.search(r.signal) or any(pattern.search(s) for s in str(r.same_as).split("; ") if s)]
        out[name] = min(hits) if hits else None
    return out


def truth_seed(seed: int, users: int, work: Path) -> dict:
    from models import churn
    from models.embedder import TextEmbedder
    from models.intents import intent_mix, mine_intents
    from personaops import features as F
    from personaops import graph, insights
    from personaops.config import InsightsConfig
    from personaops.generate import generate
    from personaops.workspace import Workspace

    data = work / f"data-{seed}"
    generate(users, seed, data)
    planted = json.loads((data / "truth" / "planted.json").read_text())
    frames = truth_frames(data)
    persons = frames["persons"]
    assignments = pd.DataFrame({"person_id": persons["true_person"], "persona_id": persons["true_persona_id"], "persona_name": persons["true_persona"], "confidence": 1.0})
    vectors = TextEmbedder("", work / "embedding-cache").encode(frames["texts"]["text"].tolist())
    cfg = InsightsConfig()  # the pipeline's defaults: the number of intents chosen from the data
    mined = mine_intents(frames["texts"], vectors, cfg.intent_k, cfg.seed, cfg.intent_k_max)
    nodes, edges = graph.build_graph(assignments, frames["events"], mined.text_intents, mined.table, frames["exposures"])
    ws = Workspace(work / f"ws-{seed}")
    run_id = f"20240101T000000Z-seed{seed}"
    graph.write_graph(ws, run_id, nodes, edges)
    out = {"seed": seed, "campaigns": {}, "intents": int(len(mined.table)), "intent_silhouette": round(mined.choice.silhouette, 3)}
    for campaign, spec in planted["campaigns"].items():
        table = insights.ask_campaign(ws, campaign)
        out["campaigns"][campaign] = {"top": table["persona_name"].iloc[0], "planted": spec["top_persona"], "top_uplift": float(table["uplift"].iloc[0])}
    signals = graph.person_signals(graph.session_frame(frames["events"]), mined.text_intents, mined.table)
    index = pd.Index(persons["true_person"], name="person_id")
    matrix = graph.signal_matrix(signals, index, 10)
    churned = persons.set_index("true_person")["churned"].astype(float)
    persona = assignments.set_index("person_id")["persona_id"]
    ranked = insights.churn_signals(matrix, churned, persona)
    out["drivers"] = driver_ranks(ranked, planted)
    out["top5"] = ranked["signal"].head(5).tolist()
    as_of = frames["events"]["event_time"].max()
    behaviour = F.behaviour_features(frames["events"], as_of).set_index("person_id").drop(columns=["event_timestamp", "created"]).reindex(index)
    inputs = churn.churn_inputs(behaviour.fillna({"n_events": 0, "n_sessions": 0}), persona, intent_mix(mined.text_intents, mined.table), matrix)
    out["churn_model"] = churn.train_churn_model(inputs, churned).metrics
    # the opportunity flag: conversion on the expansion offer among the people offered it
    from models import propensity

    campaign = InsightsConfig().opportunity_campaign
    converted = propensity.conversion_labels(frames["exposures"], campaign).reindex(index)
    opportunity = propensity.train_opportunity_model(inputs, converted)
    out["opportunity_model"] = opportunity.metrics
    mean_p = opportunity.probability(inputs).groupby(assignments.set_index("person_id")["persona_name"]).mean()
    out["opportunity_top"] = {"top": mean_p.idxmax(), "planted": planted["campaigns"][campaign]["top_persona"]}
    return out


def pipeline_seed(seed: int, users: int, work: Path) -> dict:
    from personaops import insights
    from personaops.generate import generate
    from personaops.workspace import Workspace

    data, home = work / f"data-{seed}", work / f"ws-{seed}"
    generate(users, seed, data)
    planted = json.loads((data / "truth" / "planted.json").read_text())
    env = {**os.environ, "PERSONAS_HOME": str(home), "FEAST_USAGE": "False", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env = {k: v for k, v in env.items() if not k.startswith(("PREFECT_API", "MLFLOW_"))}
    # Prefect's ephemeral API may take minutes to start on a loaded machine (seed 3 timed out at 120 s, load 26)
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    done = subprocess.run([str(Path(sys.executable).parent / "personas"), "run", "--sources", str(data / "sources.yaml")], env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        return {"seed": seed, "error": done.stderr[-500:]}
    os.environ["PERSONAS_HOME"] = str(home)
    ws = Workspace(home)
    record = ws.latest_run_record()
    names = majority_names(ws, data)
    out = {"seed": seed, "campaigns": {}, "ari": record.get("train", {}).get("metrics", {}).get("ari"),
           "intents": record.get("intents", {}).get("intents"), "intent_silhouette": record.get("intents", {}).get("silhouette")}  # fmt: skip
    for campaign, spec in planted["campaigns"].items():
        table = insights.ask_campaign(ws, campaign)
        out["campaigns"][campaign] = {"top": names.get(int(table["persona_id"].iloc[0])), "planted": spec["top_persona"], "top_uplift": float(table["uplift"].iloc[0])}
    ranked = insights.ask_churn_signals(ws, top=50)
    out["drivers"] = driver_ranks(ranked, planted)
    out["top5"] = ranked["signal"].head(5).tolist()
    out["churn_model"] = record["flags"].get("metrics")
    out["opportunity_model"] = record["flags"].get("opportunity_metrics")
    if out["opportunity_model"]:
        top = insights.ask_opportunities(ws, top=1)["personas"][0]["persona_id"]
        campaign = out["opportunity_model"]["campaign"]
        out["opportunity_top"] = {"top": names.get(int(top)), "planted": planted["campaigns"][campaign]["top_persona"]}
    out["stage_seconds"] = {k: v["seconds"] for k, v in record["timings"].items() if k in ("intents", "graph", "flags")}
    return out


def majority_names(ws, data: Path) -> dict[int, str]:
    """Discovered persona id -> the true persona most of its people have."""
    from personaops.insights import _published_assignments

    records = pd.read_parquet(data / "truth" / "records.parquet")
    rp = pd.read_parquet(ws.identity / "record_person.parquet")[["source", "source_key", "person_id"]]
    truth = rp.merge(records, on=["source", "source_key"]).groupby("person_id")["true_person"].agg(lambda s: s.value_counts().index[0])
    persons = pd.read_parquet(data / "truth" / "persons.parquet").set_index("true_person")["true_persona"]
    a, _ = _published_assignments(ws)
    a["true_persona"] = a["person_id"].map(truth).map(persons)
    return a.dropna(subset=["persona_id"]).groupby("persona_id")["true_persona"].agg(lambda s: s.value_counts().index[0]).to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--users", type=int, default=1200)
    parser.add_argument("--pipeline", action="store_true", help="the whole `personas run` per seed")
    parser.add_argument("--quick", action="store_true", help="600 people")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    users = 600 if args.quick else args.users
    os.environ.setdefault("FEAST_USAGE", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-insights-") as tmp:
        for seed in args.seeds:
            t = time.perf_counter()
            res = (pipeline_seed if args.pipeline else truth_seed)(seed, users, Path(tmp))
            res["seconds"] = round(time.perf_counter() - t, 1)
            results.append(res)
            if not args.json:
                print(json.dumps(res, default=str))
    ok = [r for r in results if "error" not in r]
    summary = {
        "bench": "insights", "mode": "pipeline" if args.pipeline else "truth", "users": users, "seeds": args.seeds,
        "campaign_top_correct": sum(c["top"] == c["planted"] for r in ok for c in r["campaigns"].values()),
        "campaign_questions": sum(len(r["campaigns"]) for r in ok),
        "drivers_in_top5": sum(v is not None and v <= 5 for r in ok for v in r["drivers"].values()),
        "driver_questions": sum(len(r["drivers"]) for r in ok),
        "roc_auc": [round(r["churn_model"]["roc_auc"], 3) for r in ok if r.get("churn_model")],
        "ece": [round(r["churn_model"]["ece"], 3) for r in ok if r.get("churn_model")],
        "brier": [round(r["churn_model"]["brier"], 3) for r in ok if r.get("churn_model")],
        "opportunity_roc_auc": [round(r["opportunity_model"]["roc_auc"], 3) for r in ok if r.get("opportunity_model")],
        "opportunity_ece": [round(r["opportunity_model"]["ece"], 3) for r in ok if r.get("opportunity_model")],
        "opportunity_top_correct": sum(r["opportunity_top"]["top"] == r["opportunity_top"]["planted"] for r in ok if r.get("opportunity_top")),
        "per_seed": results, "seconds": round(time.perf_counter() - started, 1), "load_average": list(os.getloadavg()),
    }  # fmt: skip
    print(json.dumps(summary, default=str) if args.json else json.dumps({k: v for k, v in summary.items() if k != "per_seed"}, default=str))


if __name__ == "__main__":
    main()
