"""Production-profile benchmark: generated people end to end on Redis, the PostgreSQL Feast registry,
the MLflow server and the Prefect server; wall time per stage, peak RSS, and the issue's targets.

usage: python bench/production.py [--users 100000 1000000] [--quick] [--json]
(`BENCH_PRODUCTION_USERS="100000 1000000"` sets the sizes from the environment; --quick = 2,000 people.)

The services are the ones `infra/services.sh start --with mlflow --with prefect` exported
(PERSONAS_REDIS_URL, PERSONAS_PG_URL, PERSONAS_FEAST_REGISTRY_URL, PERSONAS_MLFLOW_TRACKING_URI,
PERSONAS_PREFECT_API_URL, PERSONAS_INFRA_DIR), or started here through that script (and stopped at
the end). Each size gets a fresh workspace, a Feast registry database and a Redis database number of
its own (dropped / flushed afterwards), and a registered model name of its own on the MLflow server,
so no earlier champion takes part in its promotion gate. The data is generated first, in a process
of its own (not timed as pipeline, not in the peak); the pipeline (`build_personas`, reporting to the
Prefect server) then runs cold in a fresh process: its wall time is the figure, its peak RSS comes
from wait4() (the process and anything it waited for). Targets (issue #9): 1,000,000 people in under
60 minutes with peak RSS under 16 GB, and wall-time ratio 1M/100k <= 11.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, figure, load_average, offline_env
from run import STAGES, _stage_names

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS_1M = 3600.0
TARGET_RSS_MIB_1M = 16 * 1024.0
TARGET_GROWTH = 11.0

GENERATE = r"""
import json, sys, time
from personaops.generate import generate
t = time.perf_counter()
counts = generate(int(sys.argv[1]), 7, sys.argv[2])
print("RESULT" + json.dumps({"counts": counts, "seconds": time.perf_counter() - t}))
"""

PIPELINE = r"""
import json, sys, time
t0 = time.perf_counter()
from flows.build_personas import build_personas
imported = time.perf_counter() - t0
t = time.perf_counter()
state = build_personas(sources=sys.argv[1], home=sys.argv[2], return_state=True)
record = state.result()
record["total_seconds"] = time.perf_counter() - t
record["import_seconds"] = imported
record["flow_run_id"] = str(state.state_details.flow_run_id)
print("RESULT" + json.dumps(record, default=str))
"""


def _child(code: str, args: list[str], env: dict, what: str) -> tuple[dict, float, float]:
    """Run `python -c code args`: (its RESULT json, wall seconds, peak RSS MiB from wait4)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=out, stderr=errors, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        errors.seek(0)
        stdout, stderr = out.read(), errors.read()
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode}): " + stderr.strip()[-1500:])
    line = next(x for x in stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT") :]), wall, round(usage.ru_maxrss / 1024, 1)


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def services() -> tuple[dict[str, str], bool]:
    """The services' variables and whether this call started them (then `stop_services` at the end)."""
    from tests.services import service_environment

    try:
        return service_environment("mlflow", "prefect")
    except AssertionError as exc:
        raise SystemExit(f"the production services are not available: {exc}") from None


def one_size(users: int, env: dict[str, str]) -> dict:
    import redis

    from tests.services import isolated_backends

    with tempfile.TemporaryDirectory(prefix="bench-production-") as tmp, isolated_backends(env) as isolated:
        tag = f"{users}-{Path(tmp).name[-8:]}"
        run_env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        run_env.update(isolated)
        run_env.update(
            PERSONAS_PROFILE="production", PERSONAS_HOME=f"{tmp}/ws",
            PERSONAS_MLFLOW_TRACKING_URI=env["PERSONAS_MLFLOW_TRACKING_URI"], PREFECT_API_URL=env["PERSONAS_PREFECT_API_URL"],
            PERSONAS_MODEL__REGISTERED_NAME=f"persona-model-bench-{tag}", PERSONAS_MODEL__EXPERIMENT=f"personas-bench-{tag}",
        )  # fmt: skip
        generated, generate_wall, generate_rss = _child(GENERATE, [str(users), f"{tmp}/data"], run_env, f"generating {users:,} people")
        load_before = load_average()
        record, wall, peak = _child(PIPELINE, [f"{tmp}/data/sources.yaml", f"{tmp}/ws"], run_env, f"the production pipeline at {users:,} people")
        client = redis.Redis.from_url(isolated["PERSONAS_REDIS_URL"])
        try:
            redis_keys, redis_memory = client.dbsize(), client.info("memory")["used_memory"]
        finally:
            client.close()
        timings = record["timings"]
        return {
            "users": users,
            "source_rows": sum(s["rows_in"] for s in record["ingest"]),
            "persons": record["resolve"]["persons"],
            "generate_seconds": round(generated["seconds"], 2),
            "generate_peak_rss_mib": generate_rss,
            "total_seconds": round(record["total_seconds"], 2),
            "process_seconds": round(wall, 2),
            "import_seconds": round(record["import_seconds"], 2),
            "stages": {s: timings.get(s, {"seconds": None, "peak_rss_mib": None}) for s in _stage_names(timings)},
            "peak_rss_mib": peak,
            "model_version": record["publish"].get("model_version"),
            "flow_run_id": record["flow_run_id"],
            "redis_keys": redis_keys,
            "redis_used_memory_mib": round(redis_memory / 2**20, 1),
            "workspace_mib": round(_tree_bytes(Path(tmp) / "ws") / 2**20, 1),
            "load_before": load_before,
            "load_after": load_average(),
        }


def _target(name: str, value, unit: str, target: float, note: str) -> dict:
    if value is None:  # no "target" key: judged only when the size ran (emit would print a miss)
        out = figure(name, None, unit, higher_is_better=False, note=f"{note}; not run at the sizes given")
        out["status"] = "not run"
        return out
    return figure(name, value, unit, higher_is_better=False, target=target, note=note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_users = [int(u) for u in os.environ.get("BENCH_PRODUCTION_USERS", "100000 1000000").split()]
    parser.add_argument("--users", type=int, nargs="+", default=default_users)
    parser.add_argument("--quick", action="store_true", help="2,000 people only")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    if args.quick:
        args.users = [2000]
    offline_env()
    load_start = load_average()
    env, started = services()
    results, figures, table = [], [], []
    try:
        for users in args.users:
            result = one_size(users, env)
            results.append(result)
            print(f"\n{users:,} people on the production profile: {result['source_rows']:,} source rows -> {result['persons']:,} persons "
                  f"in {result['total_seconds']} s (process {result['process_seconds']} s), peak RSS {result['peak_rss_mib']} MiB; "
                  f"generated in {result['generate_seconds']} s; Redis {result['redis_keys']:,} keys, {result['redis_used_memory_mib']} MiB; "
                  f"load {result['load_before']} -> {result['load_after']}", flush=True)
            table += [f"{users:,} people ({result['source_rows']:,} source rows), load {result['load_before']} -> {result['load_after']}:", "",
                      "| stage | seconds | peak RSS MiB (process so far) |", "|---|---:|---:|"]
            for stage, v in result["stages"].items():
                print(f"  {stage:<10}{v['seconds'] if v['seconds'] is not None else '-':>10}{v['peak_rss_mib'] or '-':>12}", flush=True)
                table.append(f"| {stage} | {v['seconds'] if v['seconds'] is not None else '-'} | {v['peak_rss_mib'] or '-'} |")
            table += [f"| **pipeline** | {result['total_seconds']} | {result['peak_rss_mib']} (wait4) |", ""]
            figures.append(figure(f"production end to end, {users:,} people", result["total_seconds"], "s", higher_is_better=False))
            figures.append(figure(f"production peak RSS, {users:,} people", result["peak_rss_mib"], "MiB", higher_is_better=False))
    finally:
        if started:
            from tests.services import stop_services

            stop_services()
    by_users = {r["users"]: r for r in results}
    big, small = by_users.get(1_000_000), by_users.get(100_000)
    figures.append(_target("1,000,000 people end to end", big and big["total_seconds"], "s", TARGET_SECONDS_1M, "target < 60 min on this 2-core machine"))
    figures.append(_target("1,000,000 people peak RSS", big and big["peak_rss_mib"], "MiB", TARGET_RSS_MIB_1M, "target < 16 GB"))
    growth = None
    if big and small:
        growth = {"people_ratio": 10.0, "time_ratio": round(big["total_seconds"] / small["total_seconds"], 2),
                  "rss_ratio": round(big["peak_rss_mib"] / small["peak_rss_mib"], 2)}
    figures.append(_target("growth 1M/100k people: wall-time ratio", growth and growth["time_ratio"], "x", TARGET_GROWTH,
                           "no worse than linear" + (f"; peak RSS ratio {growth['rss_ratio']}" if growth else "")))
    if len(results) > 1 and not growth:
        a, b = results[0], results[-1]
        growth = {"people_ratio": b["users"] / a["users"], "time_ratio": round(b["total_seconds"] / a["total_seconds"], 2),
                  "rss_ratio": round(b["peak_rss_mib"] / a["peak_rss_mib"], 2)}
    if growth:
        print(f"\ngrowth: {growth['people_ratio']:.1f}x people -> {growth['time_ratio']:.2f}x wall time, {growth['rss_ratio']:.2f}x peak RSS")
    out = {"benchmark": "production", "profile": "production", "sizes": results, "growth": growth, "load_average_start": load_start,
           "figures": figures, "stages_table": table, "stages": STAGES}
    emit(out, args.json)


if __name__ == "__main__":
    main()
