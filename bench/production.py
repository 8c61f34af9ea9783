"""Production-profile benchmark: generated people end to end on Redis, the PostgreSQL Feast registry,
the MLflow server and the Prefect server; wall time per stage, peak RSS, and the issue's targets.

usage: python bench/production.py [--users 100000 1000000] [--quick] [--json]
                                  [--data USERS=DIR ...] [--rss-limit-mib N] [--log-dir DIR]
(`BENCH_PRODUCTION_USERS="100000 1000000"` sets the sizes from the environment; --quick = 2,000 people;
--data reuses data `personas generate` wrote for that size (1M people: 11 min, 2 GiB, 1.3 GB on disk);
--rss-limit-mib stops a pipeline whose resident set passes N MiB (default 20,480 on this 24 GiB machine)
and reports the stages it finished and the one it was in; --log-dir keeps each pipeline's log.)

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
import signal
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
from personaops import progress
imported = time.perf_counter() - t0


class StageLog:  # one line per stage start / end on stderr: the parent follows the run through it
    def started(self, stage, description):
        print("STAGE " + json.dumps({"stage": stage, "event": "started", "t": time.time()}), file=sys.stderr, flush=True)

    def progress(self, stage, done, total):
        pass

    def finished(self, stage, summary):
        print("STAGE " + json.dumps({"stage": stage, "event": "finished", "t": time.time(), "summary": summary}), file=sys.stderr, flush=True)


progress.listen(StageLog())
t = time.perf_counter()
state = build_personas(sources=sys.argv[1], home=sys.argv[2], return_state=True)
record = state.result()
record["total_seconds"] = time.perf_counter() - t
record["import_seconds"] = imported
record["flow_run_id"] = str(state.state_details.flow_run_id)
with open(sys.argv[3], "w") as out:  # a file, not stdout: a library writing to stdout cannot hide it
    json.dump(record, out, default=str)
print("RESULT" + sys.argv[3], flush=True)
"""


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _stage_log(stderr: str) -> list[dict]:
    return [json.loads(x[len("STAGE ") :]) for x in stderr.splitlines() if x.startswith("STAGE {")]


def _child(code: str, args: list[str], env: dict, what: str, rss_limit_mib: float | None = None,
           log: Path | None = None, result: Path | None = None) -> tuple[dict, float, float, dict]:
    """Run `python -c code args` in a session of its own: (its record, wall seconds, peak RSS MiB,
    a watch record). The record is the JSON the child wrote to `result` when given, else its
    stdout's RESULT line. The watch samples the child's resident set every 0.5 s; past `rss_limit_mib`
    the child is killed and the RESULT is None (the watch says where it stood); a child killed by a
    signal from elsewhere (the kernel's OOM killer) is reported the same way, not as a bare failure."""
    started = time.perf_counter()
    sampled, samples, killed = 0.0, [], None
    with tempfile.TemporaryFile("w+") as out, (open(log, "w+") if log else tempfile.TemporaryFile("w+")) as errors:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=out, stderr=errors, text=True,
                                start_new_session=True)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = _rss_mib(proc.pid)
            if rss is not None:
                sampled = max(sampled, rss)
                samples.append((time.time(), rss))
                if rss_limit_mib and rss > rss_limit_mib and killed is None:
                    killed = {"at_seconds": round(time.perf_counter() - started, 1), "rss_mib": round(rss, 1), "by": "the memory watch"}
                    os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.5)
        code_ = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        errors.seek(0)
        stdout, stderr = out.read(), errors.read()
    stages = _stage_log(stderr)
    opened = {}
    for e in stages:  # the sampler's peak inside each stage's window (it covers stages a kill cut short)
        if e["event"] == "started":
            opened[e["stage"]] = e["t"]
        else:
            e["sampled_peak_rss_mib"] = round(max((r for t, r in samples if opened.get(e["stage"], 0) <= t <= e["t"]), default=0.0), 1)
    watch = {"sampled_peak_rss_mib": round(sampled, 1), "stage_log": stages}
    if killed is None and code_ < 0:  # a signal from outside (the kernel's OOM killer sends SIGKILL): a stop too, with its figures
        killed = {"at_seconds": round(wall, 1), "rss_mib": round(samples[-1][1] if samples else sampled, 1),
                  "by": f"signal {-code_} from outside the benchmark (SIGKILL: e.g. the kernel's OOM killer)"}
    if killed is not None or code_ != 0:
        last = stages[-1] if stages else None
        watch.update(killed=killed, exit_code=code_, wall_seconds=round(wall, 1),
                     in_stage=last["stage"] if last and last["event"] == "started" else None,
                     stderr_tail=stderr.strip()[-1500:])
        if killed is None:
            raise SystemExit(f"{what} failed (exit {code_}): " + stderr.strip()[-1500:])
        return None, wall, round(sampled, 1), watch
    if log:  # what the child printed, next to its log
        log.with_suffix(".stdout").write_text(stdout)
    if result is not None and result.is_file():
        record = json.loads(result.read_text())
    else:
        line = next((x for x in stdout.splitlines() if x.startswith("RESULT")), None)
        if line is None:
            raise SystemExit(f"{what} exited 0 but wrote no result; its output ends: {(stdout.strip() or stderr.strip())[-800:]}")
        record = json.loads(line[len("RESULT") :])
    peak = max(usage.ru_maxrss / 1024, sampled)
    return record, wall, round(peak, 1), watch


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def services() -> tuple[dict[str, str], bool]:
    """The services' variables and whether this call started them (then `stop_services` at the end)."""
    from tests.services import service_environment

    try:
        return service_environment("mlflow", "prefect")
    except AssertionError as exc:
        raise SystemExit(f"the production services are not available: {exc}") from None


def _rows_in(stage_log: list[dict]) -> int | None:
    """Source rows read, from the ingest stage's summary ("N rows in, ..."), when ingest finished."""
    for e in stage_log:
        if e["stage"] == "ingest" and e["event"] == "finished" and " rows in" in e.get("summary", ""):
            return int(e["summary"].split(" rows in")[0].replace(",", ""))
    return None


def one_size(users: int, env: dict[str, str], data: Path | None = None, rss_limit_mib: float | None = None,
             log_dir: Path | None = None) -> dict:
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
        if data is None:
            generated, _, generate_rss = _child(GENERATE, [str(users), f"{tmp}/data"], run_env, f"generating {users:,} people")[:3]
            data, generate_seconds = Path(tmp) / "data", round(generated["seconds"], 2)
        else:
            generate_seconds, generate_rss = None, None  # generated beforehand (--data)
        load_before = load_average()
        log = log_dir / f"production-{users}.log" if log_dir else None
        result = Path(tmp) / "result.json"
        record, wall, peak, watch = _child(PIPELINE, [str(data / "sources.yaml"), f"{tmp}/ws", str(result)], run_env,
                                           f"the production pipeline at {users:,} people", rss_limit_mib, log, result)
        if record is None:  # stopped by the memory watch: what it finished, where it stood
            finished = {e["stage"]: e for e in watch["stage_log"] if e["event"] == "finished"}
            started = {e["stage"]: e for e in watch["stage_log"] if e["event"] == "started"}
            return {
                "users": users, "source_rows": _rows_in(watch["stage_log"]), "stopped": watch["killed"], "in_stage": watch["in_stage"],
                "stages": {s: {"seconds": round(finished[s]["t"] - started[s]["t"], 1) if s in finished else None,
                               "sampled_peak_rss_mib": finished[s].get("sampled_peak_rss_mib") if s in finished else watch["killed"]["rss_mib"],
                               "summary": finished[s]["summary"] if s in finished else "stopped here"}
                           for s in started},
                "process_seconds": round(wall, 2), "peak_rss_mib": peak, "generate_seconds": generate_seconds,
                "load_before": load_before, "load_after": load_average(),
            }  # fmt: skip
        client = redis.Redis.from_url(isolated["PERSONAS_REDIS_URL"])
        try:
            redis_keys, redis_memory = client.dbsize(), client.info("memory")["used_memory"]
        finally:
            client.close()
        timings = record["timings"]
        stage_peaks = [v.get("peak_rss_mib") or 0.0 for v in timings.values() if isinstance(v, dict)]
        return {
            "users": users,
            "source_rows": sum(s["rows_in"] for s in record["ingest"]),
            "persons": record["resolve"]["persons"],
            "generate_seconds": generate_seconds,
            "generate_peak_rss_mib": generate_rss,
            "total_seconds": round(record["total_seconds"], 2),
            "process_seconds": round(wall, 2),
            "import_seconds": round(record["import_seconds"], 2),
            "stages": {s: timings.get(s, {"seconds": None, "peak_rss_mib": None}) for s in _stage_names(timings)},
            "peak_rss_mib": max([peak, *stage_peaks]),
            "sampled_peak_rss_mib": watch["sampled_peak_rss_mib"],
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


def _print_stopped(result: dict, table: list[str]) -> None:
    users, stop = result["users"], result["stopped"]
    rows = f"{result['source_rows']:,}" if result["source_rows"] is not None else "?"
    print(f"\n{users:,} people on the production profile: {rows} source rows; STOPPED by {stop.get('by', 'the memory watch')} in stage "
          f"'{result['in_stage']}' at {stop['at_seconds']} s with {stop['rss_mib']:,} MiB resident; load {result['load_before']} -> "
          f"{result['load_after']}", flush=True)
    table += [f"{users:,} people ({rows} source rows), load {result['load_before']} -> {result['load_after']}: "
              f"stopped in '{result['in_stage']}' at {stop['at_seconds']} s, {stop['rss_mib']:,} MiB resident", "",
              "| stage | seconds | peak RSS MiB (0.5 s samples) | summary |", "|---|---:|---:|---|"]
    for stage, v in result["stages"].items():
        print(f"  {stage:<10}{v['seconds'] if v['seconds'] is not None else '-':>10}{v['sampled_peak_rss_mib'] or '-':>12}  {v['summary']}", flush=True)
        table.append(f"| {stage} | {v['seconds'] if v['seconds'] is not None else '-'} | {v['sampled_peak_rss_mib'] or '-'} | {v['summary']} |")
    table.append("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_users = [int(u) for u in os.environ.get("BENCH_PRODUCTION_USERS", "100000 1000000").split()]
    parser.add_argument("--users", type=int, nargs="+", default=default_users)
    parser.add_argument("--quick", action="store_true", help="2,000 people only")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--data", nargs="+", default=[], metavar="USERS=DIR",
                        help="use the data `personas generate --users USERS` wrote to DIR instead of generating it")
    parser.add_argument("--rss-limit-mib", type=float, default=20480.0,
                        help="stop a pipeline whose resident set passes this many MiB (0: never); default 20,480")
    parser.add_argument("--log-dir", type=Path, help="keep each pipeline's log (stderr) here")
    args = parser.parse_args()
    if args.quick:
        args.users = [2000]
    data = {}
    for item in args.data:
        users, _, folder = item.partition("=")
        if not users.isdigit() or not (Path(folder) / "sources.yaml").is_file():
            raise SystemExit(f"--data {item!r}: give USERS=DIR where DIR holds the sources.yaml that `personas generate --users USERS` wrote.")
        data[int(users)] = Path(folder).resolve()
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    offline_env()
    load_start = load_average()
    env, started = services()
    results, figures, table = [], [], []
    try:
        for users in args.users:
            result = one_size(users, env, data.get(users), args.rss_limit_mib or None, args.log_dir)
            results.append(result)
            if result.get("stopped"):
                _print_stopped(result, table)
                continue
            print(f"\n{users:,} people on the production profile: {result['source_rows']:,} source rows -> {result['persons']:,} persons "
                  f"in {result['total_seconds']} s (process {result['process_seconds']} s), peak RSS {result['peak_rss_mib']} MiB; "
                  f"generated in {result['generate_seconds']} s; Redis {result['redis_keys']:,} keys, {result['redis_used_memory_mib']} MiB; "
                  f"load {result['load_before']} -> {result['load_after']}", flush=True)
            table += [f"{users:,} people ({result['source_rows']:,} source rows), load {result['load_before']} -> {result['load_after']}:", "",
                      "| stage | seconds | peak RSS MiB (process so far) |", "|---|---:|---:|"]
            for stage, v in result["stages"].items():
                print(f"  {stage:<10}{v['seconds'] if v['seconds'] is not None else '-':>10}{v['peak_rss_mib'] or '-':>12}", flush=True)
                table.append(f"| {stage} | {v['seconds'] if v['seconds'] is not None else '-'} | {v['peak_rss_mib'] or '-'} |")
            table += [f"| **pipeline** | {result['total_seconds']} | {result['peak_rss_mib']} (largest of stages, samples, wait4) |", ""]
            figures.append(figure(f"production end to end, {users:,} people", result["total_seconds"], "s", higher_is_better=False))
            figures.append(figure(f"production peak RSS, {users:,} people", result["peak_rss_mib"], "MiB", higher_is_better=False))
    finally:
        if started:
            from tests.services import stop_services

            stop_services()
    by_users = {r["users"]: r for r in results}
    big, small = by_users.get(1_000_000), by_users.get(100_000)
    if big and big.get("stopped"):  # the memory watch stopped it: both targets missed, with where it stood
        where = f"stopped by {big['stopped'].get('by', 'the memory watch')} in stage '{big['in_stage']}' after {big['stopped']['at_seconds']} s"
        figures.append(figure("1,000,000 people end to end", None, "s", higher_is_better=False, note=f"target < 60 min; {where}") | {"status": "missed", "met": False})
        figures.append(figure("1,000,000 people peak RSS", big["stopped"]["rss_mib"], "MiB", higher_is_better=False, target=TARGET_RSS_MIB_1M,
                              note=f"target < 16 GB; {where}, at least this much"))
        big = None
    else:
        figures.append(_target("1,000,000 people end to end", big and big["total_seconds"], "s", TARGET_SECONDS_1M, "target < 60 min on this 2-core machine"))
        figures.append(_target("1,000,000 people peak RSS", big and big["peak_rss_mib"], "MiB", TARGET_RSS_MIB_1M, "target < 16 GB"))
    small = None if small and small.get("stopped") else small
    growth = None
    if big and small:
        growth = {"people_ratio": 10.0, "time_ratio": round(big["total_seconds"] / small["total_seconds"], 2),
                  "rss_ratio": round(big["peak_rss_mib"] / small["peak_rss_mib"], 2)}
    figures.append(_target("growth 1M/100k people: wall-time ratio", growth and growth["time_ratio"], "x", TARGET_GROWTH,
                           "no worse than linear" + (f"; peak RSS ratio {growth['rss_ratio']}" if growth else "")))
    done = [r for r in results if not r.get("stopped")]
    if len(done) > 1 and not growth:
        a, b = done[0], done[-1]
        growth = {"people_ratio": b["users"] / a["users"], "time_ratio": round(b["total_seconds"] / a["total_seconds"], 2),
                  "rss_ratio": round(b["peak_rss_mib"] / a["peak_rss_mib"], 2)}
    if growth:
        print(f"\ngrowth: {growth['people_ratio']:.1f}x people -> {growth['time_ratio']:.2f}x wall time, {growth['rss_ratio']:.2f}x peak RSS")
    out = {"benchmark": "production", "profile": "production", "sizes": results, "growth": growth, "load_average_start": load_start,
           "figures": figures, "stages_table": table, "stages": STAGES}
    emit(out, args.json)


if __name__ == "__main__":
    main()
