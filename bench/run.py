"""End-to-end pipeline benchmark: wall time and peak RSS per stage on generated people, and growth.

usage: python bench/run.py [--users 10000 100000] [--no-rerun] [--quick] [--json]
(`BENCH_RUN_USERS="10000 100000"` sets the sizes from the environment; --quick = 300 and 3,000 people, so the
quick summary has a growth ratio for 10x people too.)
Each size runs in a fresh temporary workspace and a fresh process (so peak RSS is per run), with
Prefect's ephemeral API: `personas generate` data, then the whole flow cold, then (unless
--no-rerun) the flow again in the same workspace on the same people plus 1% new people (every
earlier source row byte-identical: `personas generate --join-rate 0.01`) -- the incremental re-run,
which must embed only the new texts. Peak RSS per stage is that stage's own peak: the flow resets
the kernel's high-water mark as each stage starts (Linux /proc/self/clear_refs; elsewhere it is
the process's peak so far, monotone, and the table says so). The run's peak RSS is the largest
stage peak, and the summary names the stage. Growth = wall-time ratio between the largest and the
smallest size, against the people ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import emit, figure, load_average, offline_env

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["ingest", "resolve", "features", "quality", "train", "publish", "intents", "graph", "flags", "monitor"]

ONE_RUN = r"""
import json, os, sys, time
from personaops.generate import generate
users, out, home, rerun = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1"
t = time.perf_counter()
counts = generate(users, 7, out)
generate_seconds = time.perf_counter() - t
from flows.build_personas import build_personas
t = time.perf_counter()
record = build_personas(sources=out + "/sources.yaml", home=home)
record["total_seconds"] = time.perf_counter() - t
record["generate_seconds"] = generate_seconds
record["counts"] = counts
if rerun:
    # The incremental re-run: the exports grow in place, as a daily export does: the same people (every
    # source row byte-identical, at the start of each file) plus 1% new people's rows after them.
    grown = generate(users, 7, out, join_rate=0.01)
    t = time.perf_counter()
    again = build_personas(sources=out + "/sources.yaml", home=home)
    record["rerun"] = {"total_seconds": time.perf_counter() - t, "timings": again.get("timings"), "features": again.get("features"),
                       "new_rows": sum(grown.values()) - sum(counts.values()), "persons": again["resolve"]["persons"],
                       "ingest_modes": {s["source"]: s.get("mode", "full") for s in again.get("ingest", [])},
                       "resolve_mode": again["resolve"].get("mode"), "train": again.get("train", {}).get("skipped", "trained")}
print("RESULT" + json.dumps(record, default=str))
"""


def one_run(users: int, rerun: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        env = dict(os.environ, PREFECT_HOME=f"{tmp}/ws/prefect", PERSONAS_HOME=f"{tmp}/ws")
        # Prefect's ephemeral API gets 20 s to start by default: too little on a loaded machine.
        env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
        os.makedirs(env["PREFECT_HOME"], exist_ok=True)
        done = subprocess.run([sys.executable, "-c", ONE_RUN, str(users), f"{tmp}/data", f"{tmp}/ws", "1" if rerun else "0"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the pipeline at {users:,} people failed: " + done.stderr.strip()[-1500:])
        line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
        return json.loads(line[len("RESULT") :])


def _stage_names(timings: dict) -> list[str]:
    """Stages in the flow's order: the ones the flow timed (dict order), then any known stage it skipped."""
    return list(timings) + [s for s in STAGES if s not in timings]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_users = [int(u) for u in os.environ.get("BENCH_RUN_USERS", "10000 100000").split()]
    parser.add_argument("--users", type=int, nargs="+", default=default_users)
    parser.add_argument("--no-rerun", action="store_true", help="skip the incremental re-run (+1% people)")
    parser.add_argument("--quick", action="store_true", help="300 and 3,000 people")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    if args.quick:
        args.users = [300, 3000]
    offline_env()
    load_start = load_average()
    results, figures, table = [], [], []
    for users in args.users:
        load_before = load_average()
        record = one_run(users, not args.no_rerun)
        rows = sum(s["rows_in"] for s in record["ingest"])
        timings = record["timings"]
        feats = record.get("features", {})
        result = {
            "users": users,
            "source_rows": rows,
            "persons": record["resolve"]["persons"],
            "texts": feats.get("texts"),
            "distinct_texts": feats.get("distinct_texts"),
            "generate_seconds": round(record["generate_seconds"], 2),
            "total_seconds": round(record["total_seconds"], 2),
            # the flow's own stage order; STAGES only orders names the flow does not report
            "stages": {s: timings.get(s, {"seconds": None, "peak_rss_mib": None}) for s in _stage_names(timings)},
            "embedding": feats.get("embedding"),
            "load_before": load_before,
            "load_after": load_average(),
        }
        if "rerun" in record:
            rerun = record["rerun"]
            result["rerun"] = {"total_seconds": round(rerun["total_seconds"], 2),
                               "stages": {s: (rerun.get("timings") or {}).get(s) for s in _stage_names(timings)},
                               "embedding": (rerun.get("features") or {}).get("embedding"),
                               "texts": (rerun.get("features") or {}).get("texts"), "new_rows": rerun.get("new_rows"), "persons": rerun.get("persons"),
                               "ingest_modes": rerun.get("ingest_modes"), "resolve_mode": rerun.get("resolve_mode"),
                               "features_mode": (rerun.get("features") or {}).get("mode"), "train": rerun.get("train")}
        peak = max((v["peak_rss_mib"] or 0) for v in result["stages"].values())
        result["peak_rss_mib"] = peak
        result["peak_rss_stage"] = max(result["stages"], key=lambda st: result["stages"][st]["peak_rss_mib"] or 0)
        scopes = {v.get("peak_rss_scope") for v in result["stages"].values() if v.get("peak_rss_mib")}
        result["peak_rss_scope"] = "stage" if scopes == {"stage"} else "process so far"
        results.append(result)
        print(f"\n{users:,} people: {rows:,} source rows -> {result['persons']:,} persons, {result['texts']:,} texts "
              f"({result['distinct_texts']:,} distinct) in {result['total_seconds']} s; load {load_before} -> {result['load_after']}", flush=True)
        table += [f"{users:,} people ({rows:,} source rows, {result['texts']:,} texts), load {load_before} -> {result['load_after']}:", "",
                  f"| stage | cold seconds | cold peak RSS MiB ({result['peak_rss_scope']}) | RSS after the stage MiB | incremental re-run seconds | re-run peak RSS MiB |",
                  "|---|---:|---:|---:|---:|---:|"]
        for stage, v in result["stages"].items():
            again = (result.get("rerun", {}).get("stages") or {}).get(stage) or {}
            print(f"  {stage:<10}{v['seconds'] if v['seconds'] is not None else '-':>10}{v['peak_rss_mib'] or '-':>12}  re-run {again.get('seconds', '-')}"
                  f" {again.get('peak_rss_mib') or '-'}", flush=True)
            table.append(f"| {stage} | {v['seconds'] if v['seconds'] is not None else '-'} | {v['peak_rss_mib'] or '-'} | {v.get('rss_after_mib') or '-'} | "
                         f"{again.get('seconds', '-')} | {again.get('peak_rss_mib') or '-'} |")
        rerun_peak = max(((v or {}).get("peak_rss_mib") or 0 for v in (result.get("rerun", {}).get("stages") or {}).values()), default=0) or None
        table.append(f"| **total** | {result['total_seconds']} | {peak} | | {result.get('rerun', {}).get('total_seconds', '-')} | {rerun_peak or '-'} |")
        table.append("")
        cold_target = 900.0 if users >= 100_000 else None
        figures.append(figure(f"end to end, {users:,} people, cold", result["total_seconds"], "s", higher_is_better=False, target=cold_target,
                              note="target < 15 min at 100k" if cold_target else ""))
        figures.append(figure(f"peak RSS, {users:,} people", peak, "MiB", higher_is_better=False, target=4096.0 if users >= 100_000 else None,
                              note=f"largest in the {result['peak_rss_stage']} stage"))
        if "rerun" in result:
            emb = result["rerun"].get("embedding") or {}
            figures.append(figure(f"incremental re-run, {users:,} people + 1% new", result["rerun"]["total_seconds"], "s", higher_is_better=False,
                                  target=180.0 if users >= 100_000 else None, baseline="cold run", baseline_value=result["total_seconds"],
                                  note=f"{result['rerun']['new_rows']:,} new source rows"))
            again_stages = result["rerun"].get("stages") or {}
            if rerun_peak:
                figures.append(figure(f"peak RSS, {users:,} people, incremental re-run", rerun_peak, "MiB", higher_is_better=False, target=4096.0 if users >= 100_000 else None,
                                      note="largest in the " + max(again_stages, key=lambda st: (again_stages[st] or {}).get("peak_rss_mib") or 0) + " stage"))
            figures.append(figure(f"incremental re-run, {users:,} people + 1% new: texts embedded", emb.get("encoded"), "texts", higher_is_better=False,
                                  note=f"of {(result['rerun'].get('texts') or 0):,} texts; the cold run embedded {((result.get('embedding') or {}).get('encoded') or 0):,}"))
    growth = None
    if len(results) > 1:
        a, b = results[0], results[-1]
        growth = {"people_ratio": b["users"] / a["users"], "time_ratio": round(b["total_seconds"] / a["total_seconds"], 2),
                  "rss_ratio": round(b["peak_rss_mib"] / a["peak_rss_mib"], 2)}
        figures.append(figure(f"growth {b['users']:,}/{a['users']:,} people: wall-time ratio", growth["time_ratio"], "x", higher_is_better=False,
                              target=11.0 if growth["people_ratio"] == 10 else None, note=f"{growth['people_ratio']:.0f}x people; peak RSS ratio {growth['rss_ratio']}"))
        print(f"\ngrowth: {growth['people_ratio']:.1f}x people -> {growth['time_ratio']:.2f}x wall time, {growth['rss_ratio']:.2f}x peak RSS")
    out = {"benchmark": "run", "sizes": results, "growth": growth, "load_average_start": load_start, "figures": figures, "stages_table": table}
    emit(out, args.json)


if __name__ == "__main__":
    main()
