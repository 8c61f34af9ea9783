"""Small shared helpers of the benchmarks owned by bench/embedding.py, clustering.py, run.py and suite.py."""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def scratch(prefix: str) -> Path:
    """A temporary folder removed when the process exits (a benchmark's workspaces hold generated
    identifiers and lakes of up to a few GB: none may outlive the run)."""
    import atexit
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def offline_env() -> None:
    for key, value in {"FEAST_USAGE": "False", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def figure(name: str, value: float | None, unit: str, *, baseline: str | None = None, baseline_value: float | None = None,
           higher_is_better: bool = True, target: float | None = None, target_on: str = "value", note: str = "") -> dict:
    """One reported figure. `target` applies to `target_on` ("value" or "ratio"); ratio = value / baseline_value."""
    ratio = None
    if value is not None and baseline_value not in (None, 0):
        ratio = value / baseline_value
    out: dict = {"name": name, "value": value, "unit": unit, "baseline": baseline, "baseline_value": baseline_value,
                 "ratio": None if ratio is None else round(ratio, 3), "higher_is_better": higher_is_better}
    if target is not None:
        judged = ratio if target_on == "ratio" else value
        out.update(target=target, target_on=target_on)
        if judged is not None:
            met = judged >= target if higher_is_better else judged <= target
            out["met"] = bool(met)
            out["missed_by"] = None if met else round(abs(target - judged), 4)
    if note:
        out["note"] = note
    return out


def emit(result: dict, as_json: bool) -> None:
    """Print the figures; with --json the LAST stdout line is one JSON object."""
    result.setdefault("load_average_end", load_average())
    result.setdefault("peak_rss_mib", peak_rss_mib())
    for f in result.get("figures", []):
        base = f"  vs {f['baseline']} {fmt(f['baseline_value'])}  ratio {fmt(f['ratio'])}" if f.get("baseline") else ""
        tgt = ""
        if "target" in f:
            tgt = f"  target {f['target_on']} {'>=' if f['higher_is_better'] else '<='} {f['target']}: " + ("met" if f.get("met") else f"MISSED by {f.get('missed_by')}")
        print(f"{f['name']:<44} {fmt(f['value']):>12} {f['unit']:<12}{base}{tgt}", flush=True)
    print(f"load average (1/5/15 min) at end: {result['load_average_end']}; peak RSS {result['peak_rss_mib']} MiB", flush=True)
    if as_json:
        print(json.dumps(result, default=str), flush=True)


def fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.4f}" if abs(x) < 10 else f"{x:,.1f}"
    return f"{x:,}" if isinstance(x, int) else str(x)
