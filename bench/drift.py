"""Monitoring-pass benchmark: what a monitoring pass pays for drift, beside Evidently's default run.

usage: python bench/drift.py [--rows 1000000] [--features 40] [--quick] [--json] [--skip-evidently] [--skip-embeddings]

Part 1, feature drift: two frames of the same shape (reference = the champion's training frame,
current = today's) with person-feature-like columns: counts (Poisson), shares in 0-1 (Beta), 0/1
indicators (one-hot categories), durations (log-normal), with 2% missing values; in the current
frame 8 of the 40 columns are shifted (so both sides have something to find).

  profile      monitoring/drift.py `build_profile` on the reference (once per model version, then
               cached in the workspace).
  check        `column_drift` of the current frame against the profile, every row (the decision
               above `monitor.FULL_REPORT_ROWS` rows a side).
  report       monitoring/reports.py `drift_report` -- Evidently's DataDriftPreset + DataSummaryPreset,
               HTML and JSON written -- on the seeded sample of `FULL_REPORT_ROWS` rows a side that
               monitor.compare gives it. A monitoring pass pays check + report: that is the
               per-pass figure compared with the baseline (earlier versions of this script compared
               the check alone, leaving out the report every pass also runs).
  evidently    the baseline: Evidently 0.7 `Report([DataDriftPreset()]).run(...)` on every row of
               the same frames (its default per-column method: normed Wasserstein above 1,000 rows,
               Jensen-Shannon for <= 5 values), no HTML, recomputing the reference side each run.

Part 2, text-embedding drift: Evidently's `EmbeddingsDrift` (classifier ROC AUC) on synthetic
384-dimension unit vectors (clustered like sentence embeddings, no drift). Evidently computes a
t-SNE projection of up to 2,500 vectors a side for its plot; that is most of the cost.

  now          `monitoring.embedding_sample` vectors a side, OpenMP/BLAS limited to one thread (as
               monitor.compare runs it)
  threads      the same sample with the library default threads (the thread limit's effect alone)
  before       3,000 vectors a side with default threads: the monitor before this change
               (full mode only; --quick leaves it out, it takes minutes on a loaded machine)

Each side runs in its own spawned process (its peak RSS and CPU time are its own). Wall and CPU
seconds are both reported: on this shared 2-CPU machine CPU seconds hold better than wall time.
Prints a table; with --json, one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
SHIFTED = 8
EMBEDDING_DIM = 384
EMBEDDING_ROWS = 20_000  # vectors per side before the monitor samples them
BEFORE_EMBEDDING_SAMPLE = 3000  # monitoring.embedding_sample before this change


def frames(rows: int, features: int, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reference, current): seeded, person-feature-like columns; SHIFTED columns drift."""

    def make(rng: np.random.Generator, shift: bool) -> pd.DataFrame:
        cols = {}
        for j in range(features):
            moved = shift and j % (features // SHIFTED) == 0
            kind = j % 4
            if kind == 0:  # counts
                values = rng.poisson(6.0 * (1.3 if moved else 1.0), rows).astype(np.float64)
            elif kind == 1:  # shares
                values = rng.beta(2.0 + (1.0 if moved else 0.0), 5.0, rows)
            elif kind == 2:  # one-hot indicator
                values = (rng.random(rows) < (0.45 if moved else 0.30)).astype(np.float64)
            else:  # durations, days
                values = rng.lognormal(1.0 + (0.25 if moved else 0.0), 0.8, rows)
            values[rng.random(rows) < 0.02] = np.nan
            cols[f"f{j:02d}"] = values
        return pd.DataFrame(cols)

    return make(np.random.default_rng([seed, 0]), False), make(np.random.default_rng([seed, 1]), True)


def vectors(rows: int, seed: int) -> np.ndarray:
    """Unit vectors around 12 shared topic centres (the same distribution for every seed)."""
    centres = np.random.default_rng(11).normal(size=(12, EMBEDDING_DIM))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, len(centres), rows)] + rng.normal(scale=1.5, size=(rows, EMBEDDING_DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class _Clock:
    """Wall and CPU (all threads of this process) seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = round(time.perf_counter() - self.wall, 3), round(time.process_time() - self.cpu, 3)


def run_personaops(rows: int, features: int, queue) -> None:
    from monitoring.drift import build_profile, column_drift
    from monitoring.monitor import FULL_REPORT_ROWS, _sample
    from monitoring.reports import drift_report

    reference, current = frames(rows, features)
    base = _peak_rss_mib()
    with _Clock() as built:
        profile = build_profile(reference, list(reference.columns), model_version=1)
    with _Clock() as check:
        result = column_drift(profile, current)
    import evidently.presets  # noqa: F401  (imported once per process in a pass too; not timed)

    with tempfile.TemporaryDirectory() as out, _Clock() as report:
        summary, _ = drift_report(_sample(reference, FULL_REPORT_ROWS, 42), _sample(current, FULL_REPORT_ROWS, 43), list(reference.columns), Path(out), "bench", 1, 0.5)
    queue.put({
        "profile_seconds": built.wall, "check_seconds": check.wall, "check_cpu_seconds": check.cpu,
        "report_seconds": report.wall, "report_cpu_seconds": report.cpu, "report_rows_per_side": min(rows, FULL_REPORT_ROWS),
        "peak_rss_mib": _peak_rss_mib(), "data_rss_mib": base, "drifted": result["drifted_columns"], "report_drifted": summary.drifted_columns,
        "scores": {c: s["score"] for c, s in result["column_scores"].items()},
    })  # fmt: skip


def run_evidently(rows: int, features: int, queue) -> None:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    reference, current = frames(rows, features)
    base = _peak_rss_mib()
    with _Clock() as clock:
        definition = DataDefinition(numerical_columns=list(reference.columns))
        snapshot = Report([DataDriftPreset()]).run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition),
        )
    scores, drifted = {}, []
    for metric in snapshot.dict()["metrics"]:
        if metric["config"].get("type", "").endswith("ValueDrift"):
            column, value, threshold = metric["config"]["column"], float(metric["value"]), float(metric["config"].get("threshold", 0.1))
            scores[column] = value
            if ("p_value" in str(metric["config"].get("method", "")) and value < threshold) or ("p_value" not in str(metric["config"].get("method", "")) and value >= threshold):
                drifted.append(column)
    queue.put({"seconds": clock.wall, "cpu_seconds": clock.cpu, "peak_rss_mib": _peak_rss_mib(), "data_rss_mib": base, "drifted": sorted(drifted), "scores": scores})


def run_embeddings(sample: int, one_thread: bool, queue) -> None:
    from contextlib import nullcontext

    from threadpoolctl import threadpool_limits

    from monitoring.checks import embedding_drift

    reference, current = vectors(EMBEDDING_ROWS, 1), vectors(EMBEDDING_ROWS, 2)
    import evidently.metrics  # noqa: F401  (not timed)

    with threadpool_limits(limits=1) if one_thread else nullcontext(), _Clock() as clock:
        result = embedding_drift(reference, current, sample, 42)
    queue.put({"sample_per_side": sample, "one_thread": one_thread, "seconds": clock.wall, "cpu_seconds": clock.cpu, "score": result["score"], "peak_rss_mib": _peak_rss_mib()})


def _in_process(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main() -> None:
    from _common import emit, figure, load_average, offline_env

    from personaops.config import MonitoringConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="100,000 rows; embeddings: now vs default threads only")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--skip-evidently", action="store_true", help="leave out the baseline DataDriftPreset run on every row")
    parser.add_argument("--skip-embeddings", action="store_true")
    args = parser.parse_args()
    offline_env()
    rows = 100_000 if args.quick else args.rows
    start_load = load_average()
    ours = _in_process(run_personaops, rows, args.features)
    per_pass, per_pass_cpu = ours["check_seconds"] + ours["report_seconds"], ours["check_cpu_seconds"] + ours["report_cpu_seconds"]
    print(f"personaops: profile {ours['profile_seconds']:.2f} s, check {ours['check_seconds']:.2f} s, report on {ours['report_rows_per_side']:,} rows a side "
          f"{ours['report_seconds']:.2f} s (CPU {ours['report_cpu_seconds']:.2f} s), peak RSS {ours['peak_rss_mib']:,.0f} MiB; load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    theirs = None if args.skip_evidently else _in_process(run_evidently, rows, args.features)
    result: dict = {
        "benchmark": "drift",
        "rows": rows,
        "features": args.features,
        "sampling": f"check: none (every row); Evidently report in the pass: {ours['report_rows_per_side']:,} rows a side (seeded, without replacement)",
        "personaops": {k: v for k, v in ours.items() if k != "scores"},
        "load_average_start": start_load,
        "cpus": os.cpu_count(),
    }
    figures = [
        figure(f"drift: reference profile, {rows:,} x {args.features} (once per version)", ours["profile_seconds"], "s", higher_is_better=False),
        figure(f"drift: check on every row, {rows:,} x {args.features}", ours["check_seconds"], "s", higher_is_better=False),
        figure(f"drift: Evidently report in the pass ({ours['report_rows_per_side']:,} rows a side, drift + summary, HTML)", ours["report_seconds"], "s", higher_is_better=False),
    ]
    if theirs is not None:
        common = sorted(set(ours["scores"]) & set(theirs["scores"]))
        diff = max(abs(ours["scores"][c] - theirs["scores"][c]) for c in common) if common else None
        result["evidently"] = {k: v for k, v in theirs.items() if k != "scores"}
        result["speedup_check_only"] = round(theirs["seconds"] / max(ours["check_seconds"], 1e-9), 1)
        result["speedup_per_pass"] = round(theirs["seconds"] / max(per_pass, 1e-9), 2)
        result["speedup_per_pass_cpu"] = round(theirs["cpu_seconds"] / max(per_pass_cpu, 1e-9), 2)
        result["same_drifted_columns"] = ours["drifted"] == theirs["drifted"]
        result["report_sample_same_drifted_columns"] = ours["report_drifted"] == theirs["drifted"]
        result["max_score_difference"] = diff
        figures.append(figure(f"drift: monitoring pass (check + report), {rows:,} x {args.features}", round(per_pass, 3), "s", baseline="Evidently DataDriftPreset, every row",
                              baseline_value=theirs["seconds"], higher_is_better=False, note="ratio < 1: the pass is faster"))  # fmt: skip
        figures.append(figure("drift: monitoring pass CPU seconds", round(per_pass_cpu, 3), "CPU s", baseline="Evidently DataDriftPreset CPU s", baseline_value=theirs["cpu_seconds"], higher_is_better=False))
    embeddings = []
    if not args.skip_embeddings:
        sample = MonitoringConfig().embedding_sample
        variants = [(sample, True), (sample, False)] + ([] if args.quick else [(BEFORE_EMBEDDING_SAMPLE, False)])
        for n, one in variants:
            embeddings.append(_in_process(run_embeddings, n, one))
            e = embeddings[-1]
            print(f"embedding drift: {n:,} a side, {'one thread' if one else 'default threads'}: {e['seconds']:.1f} s (CPU {e['cpu_seconds']:.1f} s), AUC {e['score']:.3f}; load {os.getloadavg()[0]:.1f}", flush=True)
        result["embeddings"] = embeddings
        now = embeddings[0]
        for other, short, label in zip(embeddings[1:], ["vs default threads", "vs before"], ["same sample, default threads", f"before: {BEFORE_EMBEDDING_SAMPLE:,} a side, default threads"]):
            figures.append(figure(f"embedding drift ({now['sample_per_side']:,} a side, one thread) wall, {short}", now["seconds"], "s", baseline=label, baseline_value=other["seconds"], higher_is_better=False))
            figures.append(figure(f"embedding drift ({now['sample_per_side']:,} a side, one thread) CPU, {short}", now["cpu_seconds"], "CPU s", baseline=label, baseline_value=other["cpu_seconds"], higher_is_better=False))
    result["figures"] = figures
    result["load_average"] = load_average()
    print(f"drift check, {rows:,} people x {args.features} features (load average {result['load_average'][0]:.1f}, {os.cpu_count()} CPUs)")
    print(f"  personaops   reference profile {ours['profile_seconds']:>8.2f} s (once per model version)")
    print(f"  personaops   check             {ours['check_seconds']:>8.2f} s per pass   peak RSS {ours['peak_rss_mib']:,.0f} MiB (data alone {ours['data_rss_mib']:,.0f})")
    print(f"  personaops   Evidently report  {ours['report_seconds']:>8.2f} s per pass on {ours['report_rows_per_side']:,} rows a side (drift + summary presets, HTML)")
    if theirs is not None:
        print(f"  evidently    DataDriftPreset   {theirs['seconds']:>8.2f} s per run    peak RSS {theirs['peak_rss_mib']:,.0f} MiB (data alone {theirs['data_rss_mib']:,.0f})")
        print(f"  ratio        {result['speedup_per_pass']}x per pass (check + report; CPU {result['speedup_per_pass_cpu']}x), {result['speedup_check_only']}x for the check alone")
        print(f"  drifted columns: check {ours['drifted']}; evidently {theirs['drifted']}; same: {result['same_drifted_columns']}; "
              f"the report's sample flags the same: {result['report_sample_same_drifted_columns']}; largest score difference {result['max_score_difference']:.4f}")  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
