"""Feature-drift check benchmark: 1,000,000 people x 40 features, PersonaOps vs Evidently.

usage: python bench/drift.py [--rows 1000000] [--features 40] [--quick] [--json] [--skip-evidently]

Two frames of the same shape (reference = the champion's training frame, current = today's)
with person-feature-like columns: counts (Poisson), shares in 0-1 (Beta), 0/1 indicators (one-hot
categories), durations (log-normal), with 2% missing values; in the current frame 8 of the 40
columns are shifted (so both checks have something to find). Nothing is sampled: both sides see
every row.

  personaops   monitoring/drift.py: `build_profile` on the reference (once per model version,
               then cached in the workspace), then `column_drift` of the current frame (every
               monitoring pass). The per-pass figure is what a monitoring run pays.
  evidently    Evidently 0.7 `Report([DataDriftPreset()]).run(current_data=..., reference_data=...)`
               on the same frames (its default per-column method: normed Wasserstein above 1,000
               rows, Jensen-Shannon for <= 5 values), which recomputes the reference side each run.

Each side runs in its own spawned process (its peak RSS is its own). Prints a table, the
columns each side flagged and their agreement; with --json, one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHIFTED = 8


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


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_personaops(rows: int, features: int, queue) -> None:
    from monitoring.drift import build_profile, column_drift

    reference, current = frames(rows, features)
    base = _peak_rss_mib()
    started = time.perf_counter()
    profile = build_profile(reference, list(reference.columns), model_version=1)
    built = time.perf_counter() - started
    started = time.perf_counter()
    result = column_drift(profile, current)
    check = time.perf_counter() - started
    queue.put({
        "profile_seconds": round(built, 3), "check_seconds": round(check, 3), "peak_rss_mib": _peak_rss_mib(), "data_rss_mib": base,
        "drifted": result["drifted_columns"], "scores": {c: s["score"] for c, s in result["column_scores"].items()},
    })  # fmt: skip


def run_evidently(rows: int, features: int, queue) -> None:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    reference, current = frames(rows, features)
    base = _peak_rss_mib()
    started = time.perf_counter()
    definition = DataDefinition(numerical_columns=list(reference.columns))
    snapshot = Report([DataDriftPreset()]).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition),
    )
    seconds = time.perf_counter() - started
    scores, drifted = {}, []
    for metric in snapshot.dict()["metrics"]:
        if metric["config"].get("type", "").endswith("ValueDrift"):
            column, value, threshold = metric["config"]["column"], float(metric["value"]), float(metric["config"].get("threshold", 0.1))
            scores[column] = value
            if ("p_value" in str(metric["config"].get("method", "")) and value < threshold) or ("p_value" not in str(metric["config"].get("method", "")) and value >= threshold):
                drifted.append(column)
    queue.put({"seconds": round(seconds, 3), "peak_rss_mib": _peak_rss_mib(), "data_rss_mib": base, "drifted": sorted(drifted), "scores": scores})


def _in_process(target, rows: int, features: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(rows, features, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="100,000 rows")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--skip-evidently", action="store_true")
    args = parser.parse_args()
    rows = 100_000 if args.quick else args.rows
    ours = _in_process(run_personaops, rows, args.features)
    print(f"personaops: profile {ours['profile_seconds']:.2f} s, check {ours['check_seconds']:.2f} s, peak RSS {ours['peak_rss_mib']:,.0f} MiB; load {os.getloadavg()[0]:.1f}", flush=True)
    theirs = None if args.skip_evidently else _in_process(run_evidently, rows, args.features)
    load = os.getloadavg()
    result = {
        "benchmark": "drift",
        "rows": rows,
        "features": args.features,
        "sampling": "none (every row of both frames)",
        "personaops": {k: v for k, v in ours.items() if k != "scores"},
        "load_average": [round(x, 2) for x in load],
        "cpus": os.cpu_count(),
    }
    print(f"drift check, {rows:,} people x {args.features} features (load average {load[0]:.1f}, {os.cpu_count()} CPUs)")
    print(f"  personaops   reference profile {ours['profile_seconds']:>8.2f} s (once per model version)")
    print(f"  personaops   check             {ours['check_seconds']:>8.2f} s per pass   peak RSS {ours['peak_rss_mib']:,.0f} MiB (data alone {ours['data_rss_mib']:,.0f})")
    if theirs is not None:
        common = sorted(set(ours["scores"]) & set(theirs["scores"]))
        diff = max(abs(ours["scores"][c] - theirs["scores"][c]) for c in common) if common else None
        result["evidently"] = {k: v for k, v in theirs.items() if k != "scores"}
        result["speedup_per_pass"] = round(theirs["seconds"] / max(ours["check_seconds"], 1e-9), 1)
        result["speedup_including_profile"] = round(theirs["seconds"] / max(ours["check_seconds"] + ours["profile_seconds"], 1e-9), 1)
        result["same_drifted_columns"] = ours["drifted"] == theirs["drifted"]
        result["max_score_difference"] = diff
        print(f"  evidently    DataDriftPreset   {theirs['seconds']:>8.2f} s per run    peak RSS {theirs['peak_rss_mib']:,.0f} MiB (data alone {theirs['data_rss_mib']:,.0f})")
        print(f"  ratio        {result['speedup_per_pass']}x per pass, {result['speedup_including_profile']}x counting the profile build")
        print(f"  drifted columns: personaops {ours['drifted']}; evidently {theirs['drifted']}; same: {result['same_drifted_columns']}; largest score difference {diff:.4f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
