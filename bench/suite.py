"""`make bench`: run the issue #10 benchmarks under bench/ and collect their figures.

usage: python bench/suite.py [--quick] [--production] [--only NAME ...] [--timeout SECONDS]
       python bench/suite.py --summarize bench/results/<timestamp>.json   # re-render a summary
(`BENCH_QUICK=1` = --quick.) Each `bench/<name>.py` runs in its own process with `--json` (and
`--quick`, or in full mode the sizes of FULL_ARGS); its last stdout line must be one JSON object. A
script that is missing the option, fails, times out or prints no JSON is reported as "not run:
<reason>" and the suite goes on.

Two suites:
  default       the issue #10 figures (SUITE): embedding, clustering, identity, drift, publish,
                serve, insights and the end-to-end run at 10,000 and 100,000 people. Full mode is
                sized to finish in about EXPECTED_MINUTES on a quiet 2-core machine.
  --production  issue #9's benchmarks (PRODUCTION): bench/production.py (100,000 and 1,000,000
                people on the production services; hours) and bench/spark.py (`make bench-production`).
A script in neither list runs with the default suite.

Writes bench/results/<timestamp>.json (everything, incl. the raw outputs' figures) and
bench/results/<timestamp>.md (the summary: the issue #10 scorecard with each figure's baseline,
ratio and target status, a "why" for each missed target, one table per benchmark, per-stage peak
RSS, and the profiling before/after figures of bench/profiles.md), and copies both to
latest.json / latest.md. Per script it records wall time, the peak RSS of its process tree (as the
kernel reports for waited children) and the load average before and after: the machine is shared,
so absolute times drift; compare the ratios measured side by side inside each script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import figure as fig  # noqa: E402  (bench/_common.py: one figure format for every script)
ROOT = HERE.parent
RESULTS = HERE / "results"
PROFILES = HERE / "profiles.md"
# The issue #10 suite, cheap and informative ones first; the end-to-end run last (it is the longest).
SUITE = ["embedding", "clustering", "identity", "drift", "publish", "serve", "insights", "run"]
# Issue #9: production services at 100k and 1M people (hours), Spark vs the embedded path.
PRODUCTION = ["production", "spark"]
# Full-mode sizes, chosen so the default suite fits about 50 minutes on a quiet 2-core machine.
# Expected seconds come from earlier runs (bench/results/*-logs, docs/*.md; see docs/benchmarks.md).
FULL_ARGS: dict[str, list[str]] = {
    "embedding": ["--texts", "2000", "--repeat", "3", "--queries", "500"],
    "clustering": ["--rows", "50000", "--repeat", "3"],
    "identity": ["--users", "2000"],
    # 100,000 rows = the 100k-people scale; above the monitor's 50,000-row report sample.
    "drift": ["--rows", "100000"],
    "publish": ["--rows", "100000", "--repeat", "3"],
    # The issue #10 lookup figures are in-process; the HTTP runs are shortened (#6's 60 s quiet
    # runs with --redis are `python bench/serve.py --redis --pacing both`).
    "serve": ["--persons", "100000", "--requests", "5000", "--pacing", "poisson", "--duration", "20", "--max-seconds", "10"],
    "insights": ["--users", "1200", "--seeds", "1", "2", "3"],
    "run": ["--users", "10000", "100000"],
}
EXPECTED_SECONDS = {"embedding": 180, "clustering": 90, "identity": 240, "drift": 210, "publish": 180, "serve": 150,
                    "insights": 180, "run": 1620, "production": 14400, "spark": 900}
EXPECTED_MINUTES = round(sum(EXPECTED_SECONDS[n] for n in SUITE) / 60)
# How each script aggregates repeats (the issue asks for medians over repeated runs).
AGGREGATION = {
    "embedding": "medians over --repeat runs (3 full, 2 quick), baseline and contenders in alternating order",
    "clustering": "medians over --repeat fits (3 full, 2 quick), alternating order",
    "identity": "one run per method and data set (each resolve is seconds to minutes)",
    "drift": "one run per side, each in its own spawned process",
    "publish": "the fast paths: best of --repeat runs (3 full, 1 quick); Feast's write and materialize: one run",
    "serve": "percentiles over every request (5,000 in-process lookups per path full, 2,000 quick; HTTP: every request of each paced run)",
    "insights": "one run per seed; lists are per seed",
    "run": "one run per size (a 100k cold run + re-run takes ~15 min); per-stage peak RSS in the flow process",
    "production": "one run per size",
    "spark": "one run per engine",
}


def scripts(only: list[str] | None, production: bool) -> list[Path]:
    found = {p.stem: p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.stem != "suite"}
    order = PRODUCTION if production else SUITE
    if only:
        names = [n for n in only if n in found]
    elif production:
        names = [n for n in PRODUCTION if n in found]
    else:
        names = [n for n in found if n not in PRODUCTION]
    names.sort(key=lambda n: (order.index(n) if n in order else len(order), n))
    return [found[n] for n in names]


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
    cmd = [sys.executable, str(path), "--json"] + (["--quick"] if quick else FULL_ARGS.get(path.stem, []))
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
    err_lines = [ln.strip() for ln in err_path.read_text(errors="replace").splitlines() if ln.strip()]
    # The exception line of a traceback says what failed; else the last lines of the error output.
    exception = next((ln for ln in reversed(err_lines) if re.match(r"^[A-Za-z_.]*(Error|Exception|Exit|Interrupt)\b", ln)), None)
    stderr_tail = (exception or " ".join(err_lines[-3:]))[-400:]
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


# --- figures of the scripts that print their own JSON shape (bench/serve.py, publish.py, identity.py, insights.py)


def _serve_figures(r: dict) -> list[dict]:
    out = []
    for prefix, store, floor_key in (("in_process", "SQLite", "raw-sqlite"), ("in_process_redis", "Redis", None)):
        paths = r.get(prefix) or {}
        if not paths:
            continue
        floor_key = floor_key or next((k for k in paths if "raw" in k), None)
        ours_key = next((k for k in paths if "direct" in k), None)
        sdk_key = next((k for k in paths if "feast" in k), None)
        floor, ours, sdk = paths.get(floor_key), paths.get(ours_key), paths.get(sdk_key)
        for q in ("p50", "p99"):
            if ours and floor:
                out.append(fig(f"lookup {q}, {store}: personaops read vs raw store read", ours[f"{q}_ms"], "ms", baseline=f"raw read ({floor_key}, the floor)",
                               baseline_value=floor[f"{q}_ms"], higher_is_better=False, note="in-process, one person"))
            if ours and sdk:
                out.append(fig(f"lookup {q}, {store}: personaops read vs Feast SDK", ours[f"{q}_ms"], "ms", baseline="Feast get_online_features",
                               baseline_value=sdk[f"{q}_ms"], higher_is_better=False))
            if sdk and floor:
                out.append(fig(f"lookup {q}, {store}: Feast SDK vs raw store read", sdk[f"{q}_ms"], "ms", baseline=f"raw read ({floor_key})",
                               baseline_value=floor[f"{q}_ms"], higher_is_better=False,
                               target=1.0 if q == "p99" and store == "SQLite" else None, note="target from #6" if q == "p99" and store == "SQLite" else ""))
    for prefix, store in (("", "SQLite"), ("redis_", "Redis")):
        for suffix, pacing in (("", "lockstep bursts"), ("_poisson", "Poisson arrivals")):
            run, hello = r.get(f"{prefix}http_single_fixed_rate{suffix}"), r.get(f"http_hello_fixed_rate{suffix}")
            if run:
                out.append(fig(f"HTTP single GET p99 at {run.get('rate_target', 200):.0f}/s, {store}, {pacing}", run.get("p99_ms"), "ms",
                               baseline="bare FastAPI hello, same pacing" if hello else None, baseline_value=(hello or {}).get("p99_ms"),
                               higher_is_better=False, target=5.0, note="target from #6; p50 {} ms".format(run.get("p50_ms"))))
        best = r.get(f"{prefix}http_max")
        if best:
            out.append(fig(f"HTTP maximum, {store}", best.get("per_second"), "req/s", target=1500.0, note="target from #6"))
    return out


def _publish_figures(r: dict) -> list[dict]:
    out = []
    for key, label in (("sqlite_issue_shape", "SQLite, the issue's 3-feature shape"), ("sqlite", "SQLite, persona_assignment (4 features)"), ("redis", "Redis, persona_assignment")):
        s = r.get(key)
        if not s:
            continue
        rate = s["persons_per_s"]
        out.append(fig(f"publish, {label}: vs Feast materialize", rate.get("personaops"), "rows/s", baseline="Feast materialize",
                       baseline_value=rate.get("feast-materialize"), note=f"{s['persons']:,} persons x {s['features']} features"))
        if s.get("baseline") in rate:
            out.append(fig(f"publish, {label}: vs the floor", rate.get("personaops"), "rows/s", baseline=s["baseline"], baseline_value=rate[s["baseline"]]))
        if "feast-write" in rate:
            out.append(fig(f"publish, {label}: vs Feast write_to_online_store", rate.get("personaops"), "rows/s", baseline="Feast write_to_online_store", baseline_value=rate["feast-write"]))
    return out


def _identity_figures(r: dict) -> list[dict]:
    out = []
    for name, rows in (r.get("data_sets") or {}).items():
        tut = rows.get("tutorial Splink")
        for method in ("resolve_identities", "personas run path"):
            ours = rows.get(method)
            if not ours or not tut:
                continue
            out.append(fig(f"identity, {name}: {method} wall time", ours["seconds"], "s", baseline="tutorial Splink", baseline_value=tut["seconds"],
                           higher_is_better=False, note=f"{ours['records']:,} records"))
            out.append(fig(f"identity, {name}: {method} pairwise F1", ours["f1"], "F1", baseline="tutorial Splink", baseline_value=tut["f1"],
                           note=f"precision {ours['precision']}, recall {ours['recall']}"))
    return out


def _insights_figures(r: dict) -> list[dict]:
    def share(hit, asked):
        return round(hit / asked, 3) if asked else None

    med = lambda xs: round(statistics.median(xs), 3) if xs else None  # noqa: E731
    seeds = f"{r.get('users', '?'):,} people, seeds {r.get('seeds')}" if isinstance(r.get("users"), int) else ""
    return [
        fig("insights: campaigns whose top-uplift persona is the planted one", share(r.get("campaign_top_correct", 0), r.get("campaign_questions", 0)), "share",
            note=f"{r.get('campaign_top_correct')} of {r.get('campaign_questions')}; {seeds}"),
        fig("insights: planted churn drivers in the top 5 signals", share(r.get("drivers_in_top5", 0), r.get("driver_questions", 0)), "share",
            note=f"{r.get('drivers_in_top5')} of {r.get('driver_questions')}"),
        fig("insights: churn model held-out ROC AUC (median over seeds)", med(r.get("roc_auc") or []), "AUC", note=f"per seed {r.get('roc_auc')}"),
        fig("insights: churn probability ECE (median over seeds)", med(r.get("ece") or []), "ECE", higher_is_better=False, note=f"per seed {r.get('ece')}"),
        fig("insights: opportunity model held-out ROC AUC (median)", med(r.get("opportunity_roc_auc") or []), "AUC", note=f"per seed {r.get('opportunity_roc_auc')}"),
    ]


ADAPTERS = {"serve": _serve_figures, "publish": _publish_figures, "identity": _identity_figures, "insights": _insights_figures}


def figures_of(name: str, result: dict) -> list[dict]:
    figures = result.get("figures")
    if isinstance(figures, list) and figures and isinstance(figures[0], dict):
        return figures
    return ADAPTERS[name](result) if name in ADAPTERS else []


# --- the summary


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
    return text, "met" if f["met"] else f"**missed by {fmt(f.get('missed_by'))}**"


def figure_row(f: dict, why: str = "") -> str:
    base = f"{f.get('baseline')}: {fmt(f.get('baseline_value'))}" if f.get("baseline") else "-"
    tgt, met = target_cell(f)
    note = f" ({f['note']})" if f.get("note") else ""
    cells = [f"{f.get('name')}{note}", f"{fmt(f.get('value'))} {f.get('unit', '')}", base, fmt(f.get("ratio")), tgt, met]
    if why is not None:
        cells.append(why)
    return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"


def _find(figures: list[dict], *words: str) -> dict | None:
    return next((f for f in figures if all(w in f.get("name", "") for w in words)), None)


def _top_stages(stages: dict, n: int = 3, key: str = "seconds") -> list[tuple[str, float]]:
    vals = [(s, (v or {}).get(key)) for s, v in (stages or {}).items()]
    vals = [(s, x) for s, x in vals if isinstance(x, (int, float))]
    return sorted(vals, key=lambda t: -t[1])[:n]


def _why_run(f: dict, run: dict, load_text: str) -> str:
    sizes = {s["users"]: s for s in run.get("sizes", [])}
    big = sizes[max(sizes)] if sizes else {}
    small = sizes[min(sizes)] if sizes else {}
    name = f.get("name", "")
    if name.startswith("end to end") and "cold" in name:
        top = _top_stages(big.get("stages"))
        inside = sum((v or {}).get("seconds") or 0 for v in (big.get("stages") or {}).values())
        return (f"slowest stages: {', '.join(f'{s} {x:,.0f} s' for s, x in top)}; the stages sum to {inside:,.0f} s of "
                f"{big.get('total_seconds', 0):,.0f} s (the rest is Prefect/Feast start-up and bookkeeping); {load_text}")
    if name.startswith("incremental re-run") and "texts" not in name:
        again = (big.get("rerun") or {})
        top = _top_stages(again.get("stages"))
        cold = big.get("stages") or {}
        parts = [f"{s} {x:,.0f} s (cold {((cold.get(s) or {}).get('seconds') or 0):,.0f} s)" for s, x in top]
        modes = f"ingest {sorted(set((again.get('ingest_modes') or {}).values()))}, resolve {again.get('resolve_mode')}, features {again.get('features_mode')}, train {again.get('train')}"
        return f"largest re-run stages: {', '.join(parts)}: they still work over every person; re-run modes: {modes}; {load_text}"
    if name.startswith("peak RSS"):
        key = "rerun" if "re-run" in name else None
        stages = ((big.get("rerun") or {}).get("stages") if key else big.get("stages")) or {}
        over = [(s, v.get("peak_rss_mib")) for s, v in stages.items() if v and (v.get("peak_rss_mib") or 0) > f.get("target", 4096)]
        return "stages over the target: " + ", ".join(f"{s} {x:,.0f} MiB" for s, x in sorted(over, key=lambda t: -t[1])) if over else ""
    if name.startswith("growth"):
        a, b = small.get("stages") or {}, big.get("stages") or {}
        grown = sorted(((s, (b[s] or {}).get("seconds") / (a[s] or {}).get("seconds")) for s in b if s in a and (a[s] or {}).get("seconds") and (b[s] or {}).get("seconds")), key=lambda t: -t[1])[:3]
        return "stages that grew most: " + ", ".join(f"{s} {x:.1f}x" for s, x in grown)
    return load_text


def _why(bench: str, f: dict, results: dict, load_text: str) -> str:
    """A short reason for a missed target, written from the run's own figures."""
    if f.get("met") is not False:
        return ""
    figures = figures_of(bench, results.get(bench, {})) if bench in results else []
    if bench == "run":
        return _why_run(f, results["run"], load_text)
    if bench == "embedding" and "cold cache" in f.get("name", ""):
        parts = [g for g in figures if g.get("name", "").startswith("part:")]
        busy = (results["embedding"].get("load_average_end") or [0])[0] > (os.cpu_count() or 2)
        return ("; ".join(f"{g['name'][6:]} gave {fmt(g.get('ratio'))}x" for g in parts) + f"; {load_text}"
                + (": above the core count, where bf16's gain shrank in earlier runs (docs/benchmarks.md)" if busy else ""))
    if bench == "embedding" and "overlap" in f.get("name", ""):
        return "bf16 lost neighbours on this corpus; the guard's calibration sample decides per workspace"
    if bench == "clustering" and "speed" in f.get("name", ""):
        one = _find(figures, "1 OpenMP thread")
        return (f"with 1 OpenMP thread the ratio is {fmt((one or {}).get('ratio'))}: faiss's 2 threads spin on 2 shared cores; {load_text}"
                if one else load_text)
    if bench == "serve" and f.get("name", "").startswith("HTTP") and f.get("baseline_value"):
        return (f"the bare hello endpoint's p99 under the same pacing was {fmt(f['baseline_value'])} ms, so {fmt(f.get('ratio'))}x of it is this "
                f"machine's floor for any endpoint; {load_text}")
    if bench == "serve" and "Feast SDK" in f.get("name", ""):
        p50 = _find(figures, "lookup p50", "Feast SDK vs raw")
        if p50:
            return (f"its p50 is {fmt(p50.get('value'))} ms, {f['value'] / max(p50.get('value') or 1e-9, 1e-9):,.0f}x under the p99: "
                    f"the tail is the slowest 1% of in-process calls on shared cores; {load_text}")
    return load_text


# (issue item, benchmark, words in the figure name); one scorecard row per match, in the order.
SCORECARD = [
    ("1/2 embedding vs raw fp32 encode", "embedding", ("embedding stage (cold cache)",)),
    ("1/2 embedding quality: top-10 overlap", "embedding", ("top-10 neighbour overlap",)),
    ("1 embedding quality: mean cosine", "embedding", ("mean cosine",)),
    ("1 embedding quality: min cosine", "embedding", ("min cosine",)),
    ("2 re-run embeds nothing", "embedding", ("re-run on unchanged texts: texts embedded",)),
    ("2 incremental run embeds only new texts", "run", ("texts embedded",)),
    ("1 publish vs Feast materialize", "publish", ("vs Feast materialize",)),
    ("1 lookup vs raw read / Feast SDK", "serve", ("lookup",)),
    ("1 identity vs tutorial Splink", "identity", ("identity",)),
    ("1 drift vs Evidently default", "drift", ("monitoring pass",)),
    ("1 clustering vs scikit-learn KMeans", "clustering", ("k-means",)),
    ("1/3 end to end, cold", "run", ("end to end",)),
    ("1/3 peak RSS", "run", ("peak RSS",)),
    ("3 incremental re-run (+1%)", "run", ("incremental re-run", "new")),
    ("3 growth 100k/10k", "run", ("growth",)),
]


def scorecard(record: dict) -> list[str]:
    benches = record["benchmarks"]
    results = {n: e["result"] for n, e in benches.items() if e["status"] == "ok"}
    lines = ["## Issue #10 scorecard", "",
             "Every figure the issue lists, with its baseline measured side by side in the same run, the ratio (value / baseline), "
             "the target and, for a missed target, why (from this run's figures). Detail per benchmark below.", "",
             "| item | figure | value | baseline | ratio | target | status | why (missed targets) |", "|---|---|---:|---|---:|---|---|---|"]
    for item, bench, words in SCORECARD:
        e = benches.get(bench)
        if e is None or e["status"] != "ok":
            reason = "not in this suite run" if e is None else f"{bench} not run (reason in the first table)"
            lines.append(f"| {item} | - | - | - | - | - | not measured | {reason.replace('|', '/')} |")
            continue
        load_text = f"load {e.get('load_before')} -> {e.get('load_after')}"
        rows = [f for f in figures_of(bench, e["result"]) if all(w in f.get("name", "") for w in words)]
        if bench == "run" and words == ("texts embedded",):
            rows = [f for f in rows if "re-run" in f.get("name", "")]
        if bench == "run" and words == ("incremental re-run", "new"):
            rows = [f for f in rows if "texts embedded" not in f.get("name", "")]
        if not rows:
            lines.append(f"| {item} | - | - | - | - | - | not measured | the script reported no such figure |")
        for f in rows:
            lines.append(f"| {item} |" + figure_row(f, _why(bench, f, results, load_text))[1:])
    lines += ["", "| item | status |", "|---|---|",
              "| 4 profile before optimising (py-spy / pyinstrument on the 100k run), before/after | "
              + ("see [Profiles](#profiles-issue-10-item-4) below (bench/profiles.md)" if PROFILES.exists() else "**missing**: bench/profiles.md not found") + " |"]
    return lines


def summary(record: dict) -> str:
    lines = [
        f"# Benchmark summary {record['started']}",
        "",
        f"Machine: {record['machine'].get('cpus')} CPUs ({record['machine'].get('cpu', '?')}), {record['machine'].get('memory_gib', '?')} GiB; "
        f"commit {record['machine'].get('git_commit', '?')}{' (with uncommitted changes)' if record['machine'].get('git_dirty') else ''}; "
        f"mode: {'quick' if record['quick'] else 'full'}{' (production suite)' if record.get('production') else ''}.",
        f"Load average (1/5/15 min): {record['load_start']} at start, {record.get('load_end')} at end. "
        "The machine is shared: absolute times drift with load; ratios are measured side by side in the same process and hold better.",
    ]
    for note in record.get("notes", []):  # added by hand to a stored record (e.g. a script re-run elsewhere), then --summarize
        lines += ["", f"Note: {note}"]
    if record["quick"]:
        lines += ["", "**Quick mode**: small sizes (`--quick` of every script) to check that the suite works end to end; "
                  "the figures are not the issue's sizes and the targets are judged on them only as a smoke check."]
    lines += ["", "| benchmark | status | wall s | peak RSS MiB | load before -> after | command |", "|---|---|---:|---:|---|---|"]
    for name, e in record["benchmarks"].items():
        status = "ok" if e["status"] == "ok" else f"not run: {e['reason']}"
        lines.append(f"| {name} | {status.replace('|', '/')} | {fmt(e.get('seconds'))} | {fmt(e.get('peak_rss_mib'))} | "
                     f"{e.get('load_before')} -> {e.get('load_after', '-')} | `{e.get('command', '-')}` |")
    total = sum(e.get("seconds") or 0 for e in record["benchmarks"].values())
    lines += ["", f"Suite wall time: {total:,.0f} s ({total / 60:.1f} min)."]
    if not record.get("production"):
        lines += [""] + scorecard(record)
    for name, e in record["benchmarks"].items():
        if e["status"] != "ok":
            continue
        result = e["result"]
        lines += ["", f"## {name}", ""]
        if name in AGGREGATION:
            lines += [f"Repeats: {AGGREGATION[name]}.", ""]
        figures = figures_of(name, result)
        if figures:
            lines += ["| figure | value | baseline | ratio | target | status |", "|---|---:|---|---:|---|---|"]
            lines += [figure_row(f, None) for f in figures]
        if not figures or name in ADAPTERS:
            rows = [(k, v) for k, v in flat_numbers(result) if not k.startswith("figures")]
            lines += ["", "<details><summary>raw numbers</summary>", "", "| key | value |", "|---|---:|"] + [f"| {k} | {fmt(v)} |" for k, v in rows[:60]]
            if len(rows) > 60:
                lines.append(f"| ({len(rows) - 60} more in the JSON) | |")
            lines += ["", "</details>"]
        extra = [f"{k}: {result[k]}" for k in ("load_average_start", "load_average_before", "load_average_end", "load_average_after", "load_average") if k in result]
        if extra:
            lines += ["", "Load inside the script: " + "; ".join(str(x) for x in extra) + "."]
        if isinstance(result.get("stages_table"), list):
            lines += ["", *result["stages_table"]]
    if PROFILES.exists() and not record.get("production"):
        text = PROFILES.read_text(encoding="utf-8").strip().splitlines()
        body = text[1:] if text and text[0].startswith("# ") else text
        lines += ["", "## Profiles (issue #10 item 4)", "", "Copied from `bench/profiles.md` (committed; measured outside this suite run, each with its load):", "",
                  *[("#" + ln if ln.startswith("## ") or ln.startswith("### ") else ln) for ln in body]]
    return "\n".join(lines) + "\n"


def write(record: dict, stamp: str) -> Path:
    json_path, md_path = RESULTS / f"{stamp}.json", RESULTS / f"{stamp}.md"
    json_path.write_text(json.dumps(record, indent=2, default=str))
    md_path.write_text(summary(record))
    shutil.copyfile(json_path, RESULTS / "latest.json")
    shutil.copyfile(md_path, RESULTS / "latest.md")
    return md_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    parser.add_argument("--production", action="store_true", help="issue #9's benchmarks (production 100k/1M, spark) instead of the #10 suite")
    parser.add_argument("--only", nargs="+", help="benchmark names (file stems) to run")
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("BENCH_TIMEOUT", 0)) or None,
                        help="seconds per script (default: 1,800 quick (run 2,700); full: 3x the expected time, at least 1,800)")
    parser.add_argument("--summarize", type=Path, help="instead: re-render the summary of a results JSON (writes its .md and latest.*)")
    args = parser.parse_args()
    if args.summarize:
        record = json.loads(args.summarize.read_text())
        md = write(record, record["started"])
        print(f"wrote {md} and latest.md")
        return 0
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_dir = RESULTS / f"{stamp}-logs"
    log_dir.mkdir()
    chosen = scripts(args.only, args.production)
    if not args.quick:
        expected = sum(EXPECTED_SECONDS.get(p.stem, 300) for p in chosen)
        print(f"full mode: {len(chosen)} scripts, expected about {expected / 60:.0f} min on a quiet machine (longer under load)", flush=True)
    record = {"started": stamp, "quick": args.quick, "production": args.production, "machine": machine(), "load_start": load(), "benchmarks": {}}
    for path in chosen:
        if args.timeout:
            timeout = args.timeout
        elif args.quick:
            timeout = 2700 if path.stem == "run" else 1800
        else:
            timeout = max(1800, 3 * EXPECTED_SECONDS.get(path.stem, 600))
        print(f"== {path.stem} (load {load()})", flush=True)
        entry = run_one(path, args.quick, timeout, log_dir)
        record["benchmarks"][path.stem] = entry
        print(f"   {entry['status']}" + (f": {entry['reason']}" if entry["status"] != "ok" else f" in {entry['seconds']} s, peak RSS {entry['peak_rss_mib']} MiB"), flush=True)
        # After every script, so a suite stopped part-way still leaves the figures it measured.
        record["load_end"] = load()
        write(record, stamp)
    record["load_end"] = load()
    record["finished"] = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    md_path = write(record, stamp)
    print(f"\nwrote {md_path.relative_to(ROOT)} and {md_path.with_suffix('.json').relative_to(ROOT)} (also latest.*); logs in {log_dir.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
