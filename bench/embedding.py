"""Embedding stage vs raw SentenceTransformer.encode (fp32, batch 32) on the same texts.

usage: python bench/embedding.py [--texts 3000] [--duplicates 0.2] [--repeat 3] [--quick] [--json]

Corpus: distinct English sentences from the Python standard library's docstrings (offline,
varied lengths) plus a share of exact duplicates (default 20%), shuffled. Each repeat measures,
side by side and in alternating order, on one loaded model:
  baseline  raw `SentenceTransformer.encode(texts, batch_size=32)` in fp32 on every text;
  stage     `TextEmbedder` as the pipeline builds it (empty cache; dedup, length order, the
            guarded bf16 path) -- the one-time calibration is reported separately;
  parts     the stage in fp32 (dedup + length order only), and bf16 alone on the distinct texts;
  re-run    the stage again on the same texts with its cache (texts embedded must be 0).
Quality of the stage vs fp32: mean and minimum cosine per distinct text, and top-10 neighbour
overlap on 500 query texts against the whole distinct corpus.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np

from _common import emit, figure, load_average, median, offline_env, scratch

MODULES = ["json", "argparse", "collections", "functools", "itertools", "pathlib", "subprocess", "typing", "asyncio",
           "email.message", "http.client", "logging", "unittest", "decimal", "datetime", "csv", "sqlite3", "threading",
           "zipfile", "tarfile", "os", "io", "re", "string", "textwrap", "shutil", "socket", "ssl", "urllib.request",
           "xml.etree.ElementTree", "configparser", "dataclasses", "enum", "inspect", "pickle", "random", "statistics"]


def corpus(n_distinct: int, duplicate_share: float, seed: int = 0) -> list[str]:
    sentences: set[str] = set()
    for name in MODULES:
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            for s in re.split(r"(?<=[.!?])\s+", doc.replace("\n", " ")):
                s = re.sub(r"\s+", " ", s).strip()
                if 20 <= len(s) <= 400:
                    sentences.add(s)
    pool = sorted(sentences)
    rng = random.Random(seed)
    rng.shuffle(pool)
    if len(pool) < n_distinct:
        raise SystemExit(f"only {len(pool)} distinct docstring sentences available; ask for --texts {len(pool)} or fewer.")
    distinct = pool[:n_distinct]
    dups = [rng.choice(distinct) for _ in range(int(round(n_distinct * duplicate_share / (1 - duplicate_share))))]
    texts = distinct + dups
    rng.shuffle(texts)
    return texts


def neighbour_overlap(ref: np.ndarray, cand: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Mean share of each query's top-k neighbours (self excluded) under `ref` kept under `cand`."""
    a, b = ref[queries] @ ref.T, cand[queries] @ cand.T
    a[np.arange(len(queries)), queries] = -np.inf
    b[np.arange(len(queries)), queries] = -np.inf
    na, nb = np.argpartition(-a, k, axis=1)[:, :k], np.argpartition(-b, k, axis=1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=3000, help="distinct texts")
    parser.add_argument("--duplicates", type=float, default=0.2, help="share of the corpus that are exact duplicates (0-1)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="500 texts, 2 repeats, 200 queries")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    if args.quick:
        args.texts, args.repeat, args.queries = min(args.texts, 500), min(args.repeat, 2), min(args.queries, 200)
    offline_env()
    import torch
    from sentence_transformers import SentenceTransformer

    from models.embedder import TextEmbedder, cpu_supports_bf16, normalise_text
    from personaops.config import EmbeddingConfig

    load_start = load_average()
    texts = corpus(args.texts, args.duplicates)
    distinct = sorted(set(texts))
    cfg = EmbeddingConfig()
    model = SentenceTransformer(TextEmbedder().model_path, device="cpu")
    model.encode(texts[:64], batch_size=32)  # warm-up: first-call allocations out of the timings

    def stage(cache: Path, **override) -> TextEmbedder:
        e = TextEmbedder.from_config(cfg.model_copy(update=override), cache)
        e.__dict__["model"] = model
        return e

    work = scratch("bench-embedding-")
    try:
        # One-time calibration of the fast path (kept in the workspace; later runs read it).
        calib_dir = work / "calibration"
        calibrated = stage(calib_dir)
        t = time.perf_counter()
        calibration = calibrated.calibrate([distinct[i] for i in np.linspace(0, len(distinct) - 1, cfg.quality_sample).astype(int)]) if cfg.precision != "fp32" else None
        calibration_seconds = time.perf_counter() - t
        runs: dict[str, list[float]] = {"baseline": [], "stage": [], "stage_fp32": [], "bf16_distinct": [], "rerun": []}
        reruns_embedded, stage_vectors, base_vectors, precision_used = [], None, None, None
        for r in range(args.repeat):
            order = ["baseline", "stage"] if r % 2 == 0 else ["stage", "baseline"]
            for what in order:
                if what == "baseline":
                    t = time.perf_counter()
                    base_vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
                    runs["baseline"].append(time.perf_counter() - t)
                else:
                    cache = work / f"stage-{r}"
                    e = stage(cache)
                    e._calibration = calibration  # as a workspace that already holds its calibration
                    t = time.perf_counter()
                    stage_vectors = e.encode(texts)
                    runs["stage"].append(time.perf_counter() - t)
                    precision_used = e.last_run.precision
                    again = stage(cache)
                    again._calibration = calibration
                    t = time.perf_counter()
                    again.encode(texts)
                    runs["rerun"].append(time.perf_counter() - t)
                    reruns_embedded.append(again.texts_encoded)
            e32 = stage(work / f"fp32-{r}", precision="fp32")
            t = time.perf_counter()
            e32.encode(texts)
            runs["stage_fp32"].append(time.perf_counter() - t)
            t = time.perf_counter()
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                model.encode(distinct, batch_size=32, normalize_embeddings=True)
            runs["bf16_distinct"].append(time.perf_counter() - t)
            print(f"repeat {r + 1}/{args.repeat}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in runs.items()) + f"; load {load_average()}", flush=True)
        # Quality on the distinct texts: the stage's vectors vs raw fp32 of the same text.
        index = {t: i for i, t in enumerate(texts)}
        rows = np.array([index[t] for t in distinct])
        ref, ours = base_vectors[rows], stage_vectors[rows]
        cosine = (ref * ours).sum(axis=1)
        queries = np.random.default_rng(0).choice(len(distinct), size=min(args.queries, len(distinct)), replace=False)
        overlap = neighbour_overlap(ref, ours, queries)
        # Normalisation may change a text (whitespace): count those, they are the same text to the tokenizer.
        changed = sum(normalise_text(t) != t for t in distinct)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = len(texts)
    rate = {k: n / median(v) for k, v in runs.items() if k != "bf16_distinct"}
    bf16_rate_distinct = len(distinct) / median(runs["bf16_distinct"])
    base_rate_distinct = rate["baseline"]  # fp32 rate per text is the same for distinct texts
    figures = [
        figure("embedding stage (cold cache)", round(rate["stage"], 1), "texts/s", baseline="raw encode fp32 b32", baseline_value=round(rate["baseline"], 1), target=2.0, target_on="ratio"),
        figure("stage quality: top-10 neighbour overlap", round(overlap, 4), "share", target=0.98, note=f"{len(queries)} queries vs {len(distinct)} texts"),
        figure("stage quality: mean cosine vs fp32", round(float(cosine.mean()), 6), "cosine"),
        figure("stage quality: min cosine vs fp32", round(float(cosine.min()), 6), "cosine"),
        figure("re-run on unchanged texts: texts embedded", int(max(reruns_embedded)), "texts", higher_is_better=False, target=0),
        figure("re-run on unchanged texts", round(rate["rerun"], 1), "texts/s", baseline="raw encode fp32 b32", baseline_value=round(rate["baseline"], 1)),
        figure("part: dedup + length order, fp32", round(rate["stage_fp32"], 1), "texts/s", baseline="raw encode fp32 b32", baseline_value=round(rate["baseline"], 1)),
        figure("part: bf16 autocast alone (distinct texts)", round(bf16_rate_distinct, 1), "texts/s", baseline="raw encode fp32 b32", baseline_value=round(base_rate_distinct, 1)),
        figure("one-time fast-path calibration", round(calibration_seconds, 2), "s", higher_is_better=False,
               note=f"{cfg.quality_sample} texts fp32+bf16, once per workspace and model"),
    ]
    result = {
        "benchmark": "embedding",
        "texts": n,
        "distinct_texts": len(distinct),
        "texts_changed_by_normalisation": changed,
        "repeats": args.repeat,
        "precision_used": precision_used,
        "cpu_native_bf16": cpu_supports_bf16(),
        "calibration": None if calibration is None else {k: v for k, v in vars(calibration).items()},
        "torch_threads": torch.get_num_threads(),
        "seconds": {k: [round(x, 3) for x in v] for k, v in runs.items()},
        "load_average_start": load_start,
        "figures": figures,
    }
    print(f"{n:,} texts ({len(distinct):,} distinct), {args.repeat} repeats, medians; precision used: {precision_used}")
    emit(result, args.json)


if __name__ == "__main__":
    main()
