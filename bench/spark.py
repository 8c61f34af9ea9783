"""Spark engine vs the embedded (pandas) path, stage by stage, on generated people.

    python bench/spark.py [--users 10000] [--master local[*]] [--quick] [--json]

Stages timed on the same sources: ingest (validate into the lake), resolve (rules + Splink on
DuckDB vs on Spark), feature tables (personaops/features.py in-process vs in Spark tasks; text
embeddings are not part of it: they stay on the embedder either way) and batch scoring (a
persona scorer fitted on the feature tables; registry.score vs spark_engine.score_persons).
Spark's session start-up is timed on its own. Each side's results are compared (same counts,
persons, tables, personas) so a figure is never reported for a path that gave other answers.
--quick: 1,000 people.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, figure, load_average, offline_env, scratch  # noqa: E402


def _scorer(frame, columns):
    """A small persona scorer fitted on the feature frame (no text), as training would build one."""
    from models.clustering import Clustering, kmeans, outlier_threshold
    from models.fusion import Fusion
    from models.persona_model import PersonaScorer

    fusion = Fusion(feature_columns=columns).fit(frame, text_dim=0, seed=0)
    x = fusion.transform(frame)
    centroids = kmeans(x, 6, 2, 20, 0)
    clustering = Clustering(centroids=centroids, outlier_threshold=outlier_threshold(x, centroids, 8.0))
    return PersonaScorer(fusion=fusion, clustering=clustering, persona_names=[f"persona {i}" for i in range(6)])


class _Model:
    """What registry.score and spark_engine.score_persons unwrap from a loaded pyfunc."""

    def __init__(self, scorer):
        self.scorer = scorer

    def unwrap_python_model(self):
        return self


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    users = 1_000 if args.quick else args.users
    offline_env()
    import pandas as pd

    from flows.build_personas import _lake_frames
    from models import registry
    from personaops import features as F
    from personaops import spark_engine
    from personaops.config import load_config
    from personaops.generate import generate
    from personaops.identity import resolve_identities
    from personaops.ingest import ingest_sources
    from personaops.sources import load_sources
    from personaops.workspace import Workspace

    load_start = load_average()
    tmp = scratch("bench-spark-")  # lakes and workspaces of both engines: removed when the process exits
    generate(users, 7, tmp / "src")
    specs = load_sources(tmp / "src" / "sources.yaml")
    base = load_config(environ={})
    timings: dict[str, dict[str, float]] = {}
    results: dict[str, dict] = {}

    def clock(engine: str, stage: str, fn):
        started = time.perf_counter()
        out = fn()
        timings.setdefault(stage, {})[engine] = round(time.perf_counter() - started, 2)
        print(f"{engine:>6} {stage:<9} {timings[stage][engine]:8.2f} s  (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
        return out

    spark_cfg = base.model_copy(deep=True)
    spark_cfg.compute.engine, spark_cfg.compute.spark_master, spark_cfg.compute.spark_shuffle_partitions = "spark", args.master, args.partitions
    session_seconds = time.perf_counter()
    spark_engine.session(spark_cfg)
    session_seconds = round(time.perf_counter() - session_seconds, 2)
    for engine in ("pandas", "spark"):
        cfg = (spark_cfg if engine == "spark" else base).model_copy(deep=True)
        cfg.home = tmp / f"ws-{engine}"
        ws = Workspace.from_config(cfg)
        if engine == "spark":
            reports = clock(engine, "ingest", lambda: spark_engine.ingest_sources(specs, ws, cfg, "bench"))
        else:
            reports = clock(engine, "ingest", lambda: ingest_sources(specs, ws, cfg.ingest, "bench"))
        batches, kinds = {r.source: r.batch_ids for r in reports}, {s.name: s.kind for s in specs}
        records = pd.concat(_lake_frames(ws, batches).values(), ignore_index=True)
        resolved = clock(engine, "resolve", lambda: resolve_identities(records, spark_engine.identity_config(cfg)))
        record_person = resolved.records[["source", "source_key", "person_id"]]
        if engine == "spark":
            as_of, tables, texts, _ = clock(engine, "features", lambda: spark_engine.feature_tables(ws, cfg, batches, kinds, record_person))
        else:

            def embedded_tables():
                frames = _lake_frames(ws, batches, record_person)
                stamps = [f["event_time"].max() for f in frames.values() if "event_time" in f.columns and f["event_time"].notna().any()]
                as_of = max(stamps)

                def of_kind(kind):
                    parts = [frames[s] for s, k in kinds.items() if k == kind and s in frames and len(frames[s])]
                    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

                campaigns = of_kind("campaigns")
                tables = {
                    "person_behaviour": F.behaviour_features(of_kind("events"), as_of), "person_support": F.support_features(of_kind("tickets"), as_of),
                    "person_survey": F.survey_features(of_kind("surveys"), as_of), "person_campaign": F.campaign_features(campaigns, as_of),
                    "person_profile": F.profile_features(of_kind("crm"), as_of), "person_labels": F.label_table(frames, campaigns, as_of),
                }  # fmt: skip
                return as_of, tables, F.person_texts(frames), F.sensitive_table(frames)

            as_of, tables, texts, _ = clock(engine, "features", embedded_tables)
        persons = pd.Index(sorted(record_person["person_id"].unique()), name="person_id")
        frame, columns = F.model_frame(tables, persons)
        if engine == "pandas":
            model = _Model(_scorer(frame, columns))
            scored = clock(engine, "score", lambda: registry.score(model, frame.reset_index(drop=True)))
        else:
            scored = clock(engine, "score", lambda: spark_engine.score_persons(cfg, model, frame.reset_index(drop=True)))
        results[engine] = {
            "counts": [(r.source, r.rows_in, r.accepted, r.quarantined) for r in reports],
            "persons": resolved.records[["source", "source_key", "person_id"]].sort_values(["source", "source_key"]).reset_index(drop=True),
            "tables": {v: t.sort_values("person_id").reset_index(drop=True) for v, t in tables.items()},
            "personas": scored["persona_id"].to_numpy(),
        }
    a, b = results["pandas"], results["spark"]
    same = {
        "ingest_counts": a["counts"] == b["counts"],
        "person_ids": a["persons"].equals(b["persons"]),
        "feature_tables": all(
            a["tables"][v].shape == b["tables"][v].shape and bool(((a["tables"][v].select_dtypes("number") - b["tables"][v][a["tables"][v].select_dtypes("number").columns]).abs().fillna(0) < 1e-9).all().all())
            for v in a["tables"]
        ),
        "persona_assignments": bool((a["personas"] == b["personas"]).all()),
    }
    rows = sum(r[1] for r in a["counts"])
    figures = [
        figure(f"{stage} on Spark ({args.master})", t["spark"], "s", baseline="embedded (pandas/DuckDB)", baseline_value=t["pandas"], higher_is_better=False)
        for stage, t in timings.items()
    ]
    figures.append(figure("Spark session start", session_seconds, "s", higher_is_better=False))
    emit(
        {
            "benchmark": "spark", "users": users, "source_rows": rows, "master": args.master, "shuffle_partitions": args.partitions,
            "seconds": timings, "spark_session_seconds": session_seconds, "same_results": same, "figures": figures, "load_average_start": load_start,
        },
        args.json,
    )  # fmt: skip


if __name__ == "__main__":
    main()
