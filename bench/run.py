"""Pipeline benchmark: wall time, throughput and peak memory per stage on generated data.

usage: python bench/run.py [--users 10000 20000] [--repeat 1]
Prints a table and writes bench/results/pipeline.json. Each size runs in a fresh temporary
workspace and a fresh process (so peak RSS is per run), with Prefect's ephemeral API.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["ingest", "resolve", "features", "quality", "train", "publish", "monitor"]

ONE_RUN = r"""
import json, os, sys, time
from personaops.generate import generate
users, out, home = int(sys.argv[1]), sys.argv[2], sys.argv[3]
counts = generate(users, 7, out)
from flows.build_personas import build_personas
t = time.perf_counter()
record = build_personas(sources=out + "/sources.yaml", home=home)
record["total_seconds"] = time.perf_counter() - t
record["counts"] = counts
print("RESULT" + json.dumps(record, default=str))
"""


def one_run(users: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PREFECT_HOME=f"{tmp}/ws/prefect", FEAST_USAGE="False", HF_HUB_OFFLINE="1")
        os.makedirs(env["PREFECT_HOME"], exist_ok=True)
        done = subprocess.run([sys.executable, "-c", ONE_RUN, str(users), f"{tmp}/data", f"{tmp}/ws"], cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
        return json.loads(line[len("RESULT") :])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, nargs="+", default=[2000, 10000])
    args = parser.parse_args()
    results = []
    for users in args.users:
        record = one_run(users)
        rows = sum(s["rows_in"] for s in record["ingest"])
        timings = record["timings"]
        result = {
            "users": users,
            "source_rows": rows,
            "persons": record["resolve"]["persons"],
            "total_seconds": round(record["total_seconds"], 2),
            "stages": {s: timings[s] for s in STAGES},
            "ingest_rows_per_second": round(rows / timings["ingest"]["seconds"]),
            "distinct_texts_embedded": record["features"]["distinct_texts"],
            "publish_rows_per_second": round(record["publish"]["rows"] / timings["publish"]["seconds"]) if timings["publish"]["seconds"] else None,
        }
        results.append(result)
        print(f"\n{users:,} people: {rows:,} source rows -> {result['persons']:,} persons in {result['total_seconds']} s")
        print(f"{'stage':<10}{'seconds':>10}{'peak RSS MiB':>15}")
        for stage, v in result["stages"].items():
            if v["seconds"] is not None:
                print(f"{stage:<10}{v['seconds']:>10.2f}{v['peak_rss_mib']:>15.0f}")
        print(f"ingest {result['ingest_rows_per_second']:,} rows/s; publish (incl. scoring) {result['publish_rows_per_second']:,} rows/s")
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(f"\ngrowth: {b['users'] / a['users']:.1f}x people -> {b['total_seconds'] / a['total_seconds']:.2f}x wall time")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out / 'pipeline.json'}")


if __name__ == "__main__":
    main()
