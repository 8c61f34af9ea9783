"""bench/suite.py's summary: the issue #10 scorecard carries every figure with its baseline and
ratio, says by how much a target is missed and why, and marks what was not measured."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _suite():
    spec = importlib.util.spec_from_file_location("bench_suite", BENCH / "suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(suite, benchmarks: dict) -> dict:
    return {"started": "t", "quick": False, "machine": {"cpus": 2}, "load_start": [1.0, 1.0, 1.0], "load_end": [1.0, 1.0, 1.0],
            "benchmarks": {n: {"status": "ok", "result": r, "seconds": 1.0, "peak_rss_mib": 1.0, "load_before": [1.0], "load_after": [1.0]}
                           for n, r in benchmarks.items()}}


def _run_result(suite) -> dict:
    stages = {"resolve": {"seconds": 90.0, "peak_rss_mib": 4200.0}, "flags": {"seconds": 150.0, "peak_rss_mib": 3000.0}}
    again = {"resolve": {"seconds": 20.0, "peak_rss_mib": 1000.0}, "flags": {"seconds": 95.0, "peak_rss_mib": 2000.0}}
    size = {"users": 100_000, "total_seconds": 800.0, "stages": stages,
            "rerun": {"total_seconds": 300.0, "stages": again, "ingest_modes": {"events": "incremental"}, "resolve_mode": "incremental"}}
    figures = [
        suite.fig("end to end, 100,000 people, cold", 800.0, "s", higher_is_better=False, target=900.0),
        suite.fig("peak RSS, 100,000 people", 4200.0, "MiB", higher_is_better=False, target=4096.0),
        suite.fig("incremental re-run, 100,000 people + 1% new", 300.0, "s", baseline="cold run", baseline_value=800.0, higher_is_better=False, target=180.0),
    ]
    return {"benchmark": "run", "sizes": [size], "figures": figures}


def test_scorecard_reports_baselines_ratios_and_why_for_missed_targets():
    suite = _suite()
    publish = {"sqlite_issue_shape": {"persons": 100, "features": 3, "persons_per_s": {"personaops": 800, "feast-materialize": 100, "raw-executemany": 400},
                                      "baseline": "raw-executemany"}}
    identity = {"data_sets": {"FEBRL3": {"tutorial Splink": {"records": 5, "precision": 1, "recall": 1, "f1": 0.99, "seconds": 10.0},
                                         "resolve_identities": {"records": 5, "precision": 1, "recall": 1, "f1": 0.995, "seconds": 15.0}}}}
    text = suite.summary(_record(suite, {"publish": publish, "identity": identity, "run": _run_result(suite)}))
    card = text.split("## Issue #10 scorecard", 1)[1].split("\n## ", 1)[0]
    assert "| 1 publish vs Feast materialize |" in card and "Feast materialize: 100 | 8 |" in card
    assert "tutorial Splink: 10 | 1.5 |" in card
    # met, and missed with the amount and a why from the run's own figures
    assert "| value <= 900 | met |" in card
    peak = next(line for line in card.splitlines() if "peak RSS, 100,000 people" in line)
    assert "**missed by 104**" in peak and "resolve 4,200 MiB" in peak and "flags" not in peak.split("why", 1)[-1].split("|")[-2]
    rerun = next(line for line in card.splitlines() if "incremental re-run, 100,000" in line)
    assert "**missed by 120**" in rerun and "flags 95 s (cold 150 s)" in rerun and "resolve incremental" in rerun
    # what did not run is marked, not left out
    assert "| 1/2 embedding vs raw fp32 encode | - | - | - | - | - | not measured |" in card


def test_default_suite_leaves_out_the_production_benchmarks():
    suite = _suite()
    names = [p.stem for p in suite.scripts(None, production=False)]
    assert "run" in names and "embedding" in names
    assert "production" not in names and "spark" not in names
    assert [p.stem for p in suite.scripts(None, production=True)] == ["production", "spark"]
