"""`make bench`: run every benchmark under bench/ and collect their figures.

usage: python bench/suite.py [--quick] [--only NAME ...] [--timeout SECONDS]
(`BENCH_QUICK=1` = --quick.) Each `bench/<name>.py` runs in its own process with `--json` (and
`--quick`); its last stdout line must be one JSON object. A script that is missing the option,
fails, times out or prints no JSON is reported as "not run: <reason>" and the suite goes on.
Writes bench/results/<timestamp>.json (everything, incl. raw outputs' figures) and
bench/results/<timestamp>.md (a short summary), and copies both to latest.json / latest.md.
Per script it records wall time, the peak RSS of its process tree (as the kernel reports for
waited children) and the load average before and after: the machine is shared, so absolute
times drift; compare the ratios measured side by side inside each script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
# Cheap, informative ones first; the end-to-end run last (it is the longest).
ORDER = ["embedding", "clustering", "identity", "drift", "publish", "serve", "insights", "run"]


def scripts(only: list[str] | None) -> list[Path]:
    found = {p.stem: p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.stem != "suite"}
    names = sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return [found[n] for n in names if not only or n in only]


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().split()
        info["memory_gib"] = round(int(mem[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        info["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    return info


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_one(path: Path, quick: bool, timeout: float, log_dir: Path) -> dict:
    source = path.read_text(encoding="utf-8", errors="replace")
    entry: dict = {"script": f"bench/{path.name}", "load_before": load()}
    if "--json" not in source:
        return {**entry, "status": "not run", "reason": "the script has no --json option"}
    if quick and "--quick" not in source:
        return {**entry, "status": "not run", "reason": "the script has no --quick option (BENCH_QUICK=1)"}
    cmd = [sys.executable, str(path), "--json"] + (["--quick"] if quick else [])
    env = dict(os.environ, FEAST_USAGE="False", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out_path, err_path = log_dir / f"{path.stem}.stdout", log_dir / f"{path.stem}.stderr"
    started = time.perf_counter()
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only this script's tree
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        # wait4 gives this child's own rusage (peak RSS of it and the children it waited for).
        _, status, usage = os.wait4(proc.pid, 0)
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    entry.update(seconds=round(time.perf_counter() - started, 1), peak_rss_mib=round(usage.ru_maxrss / 1024, 1),
                 load_after=load(), command=" ".join(["python", f"bench/{path.name}"] + cmd[2:]))
    stdout = out_path.read_text(errors="replace").strip().splitlines()
    stderr_tail = " ".join(err_path.read_text(errors="replace").strip().splitlines()[-3:])[-400:]
    if timed_out.is_set():
        return {**entry, "status": "not run", "reason": f"timed out after {timeout:.0f} s (stopped)"}
    if proc.returncode != 0:
        return {**entry, "status": "not run", "reason": f"exit code {proc.returncode}: {stderr_tail or 'no error output'}"}
    try:
        result = json.loads(stdout[-1]) if stdout else None
    except json.JSONDecodeError:
        result = None
    if not isinstance(result, dict):
        return {**entry, "status": "not run", "reason": "its last stdout line is not one JSON object"}
    return {**entry, "status": "ok", "result": result}


def flat_numbers(obj, prefix: str = "", depth: int = 0) -> list[tuple[str, object]]:
    """(dotted key, value) for the numbers of a result that has no `figures` list."""
    rows: list[tuple[str, object]] = []
    if isinstance(obj, dict) and depth < 3:
        for k, v in obj.items():
            rows += flat_numbers(v, f"{prefix}{k}.", depth + 1)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        rows.append((prefix[:-1], obj))
    return rows


def fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float):
        return f"{x:,.6g}" if abs(x) < 1000 else f"{x:,.0f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def target_cell(f: dict) -> tuple[str, str]:
    if "target" not in f:
        return "-", "-"
    op = ">=" if f.get("higher_is_better", True) else "<="
    what = "ratio" if f.get("target_on") == "ratio" else "value"
    text = f"{what} {op} {fmt(f['target'])}"
    if "met" not in f:
        return text, "not measured"
    return text, "met" if f["met"] else f"missed by {fmt(f.get('missed_by'))}"


def summary(record: dict) -> str:
    lines = [
        f"# Benchmark summary {record['started']}",
        "",
        f"Machine: {record['machine'].get('cpus')} CPUs ({record['machine'].get('cpu', '?')}), {record['machine'].get('memory_gib', '?')} GiB; "
        f"commit {record['machine'].get('git_commit', '?')}{' (with uncommitted changes)' if record['machine'].get('git_dirty') else ''}; "
        f"mode: {'quick' if record['quick'] else 'full'}.",
        f"Load average (1/5/15 min): {record['load_start']} at start, {record['load_end']} at end. "
        "The machine is shared: absolute times drift with load; ratios are measured side by side in the same process and hold better.",
        "",
        "| benchmark | status | wall s | peak RSS MiB | load before -> after |",
        "|---|---|---:|---:|---|",
    ]
    for name, e in record["benchmarks"].items():
        status = "ok" if e["status"] == "ok" else f"not run: {e['reason']}"
        lines.append(f"| {name} | {status.replace('|', '/')} | {fmt(e.get('seconds'))} | {fmt(e.get('peak_rss_mib'))} | {e.get('load_before')} -> {e.get('load_after', '-')} |")
    for name, e in record["benchmarks"].items():
        if e["status"] != "ok":
            continue
        result = e["result"]
        lines += ["", f"## {name}", ""]
        figures = result.get("figures")
        if isinstance(figures, list) and figures and isinstance(figures[0], dict):
            lines += ["| figure | value | baseline | ratio | target | status |", "|---|---:|---|---:|---|---|"]
            for f in figures:
                base = f"{f.get('baseline')}: {fmt(f.get('baseline_value'))}" if f.get("baseline") else "-"
                tgt, met = target_cell(f)
                note = f" ({f['note']})" if f.get("note") else ""
                lines.append(f"| {f.get('name')}{note} | {fmt(f.get('value'))} {f.get('unit', '')} | {base} | {fmt(f.get('ratio'))} | {tgt} | {met} |")
        else:
            rows = flat_numbers(result)
            lines += ["| key | value |", "|---|---:|"] + [f"| {k} | {fmt(v)} |" for k, v in rows[:40]]
            if len(rows) > 40:
                lines.append(f"| ({len(rows) - 40} more in the JSON) | |")
        extra = [f"{k}: {result[k]}" for k in ("load_average_start", "load_average_end", "load_average") if k in result]
        if extra:
            lines += ["", "Load inside the script: " + "; ".join(str(x) for x in extra) + "."]
        if isinstance(result.get("stages_table"), list):
            lines += ["", *result["stages_table"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    parser.add_argument("--only", nargs="+", help="benchmark names (file stems) to run")
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("BENCH_TIMEOUT", 0)) or None,
                        help="seconds per script (default 900 quick, 7200 full)")
    args = parser.parse_args()
    timeout = args.timeout or (900 if args.quick else 7200)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_dir = RESULTS / f"{stamp}-logs"
    log_dir.mkdir()
    record = {"started": stamp, "quick": args.quick, "machine": machine(), "load_start": load(), "benchmarks": {}}
    for path in scripts(args.only):
        print(f"== {path.stem} (load {load()})", flush=True)
        entry = run_one(path, args.quick, timeout, log_dir)
        record["benchmarks"][path.stem] = entry
        print(f"   {entry['status']}" + (f": {entry['reason']}" if entry["status"] != "ok" else f" in {entry['seconds']} s, peak RSS {entry['peak_rss_mib']} MiB"), flush=True)
    record["load_end"] = load()
    record["finished"] = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    json_path, md_path = RESULTS / f"{stamp}.json", RESULTS / f"{stamp}.md"
    json_path.write_text(json.dumps(record, indent=2, default=str))
    md_path.write_text(summary(record))
    shutil.copyfile(json_path, RESULTS / "latest.json")
    shutil.copyfile(md_path, RESULTS / "latest.md")
    print(f"\nwrote {md_path.relative_to(ROOT)} and {json_path.relative_to(ROOT)} (also latest.*); logs in {log_dir.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
