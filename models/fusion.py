"""Fusion: scaled behavioural features + the person's text embedding, weighted, then PCA.

Each feature is standardised; indicator columns of one categorical attribute share one column's
weight; the behaviour block as a whole gets `behaviour_weight` and the (unit-norm) text block
`text_weight`.

Fitted on the training frame and stored inside the persona model, so serving applies exactly
the training transformation. Missing blocks get a well-defined value rather than zeros that
would cluster together by accident:
- a person with little behaviour data (most features missing) but with text gets the mean
  behaviour of the `neighbours` reference people whose texts are nearest theirs;
- a person without text gets the mean text direction of the reference people whose behaviour is
  nearest theirs;
- what is still missing gets the training median (behaviour) or population mean (text).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

CLIP_Z = 5.0
REFERENCE_SIZE = 3000
SPARSE_ROW = 0.5  # a row missing more than this share of behaviour features counts as "no behaviour"


def embedding_matrix(column: pd.Series | None, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack a column of vectors (lists/arrays/None) into (n, dim) float32 and a has-text mask."""
    out = np.zeros((n, dim), dtype=np.float32)
    mask = np.zeros(n, dtype=bool)
    if column is None or dim == 0:
        return out, mask
    for i, v in enumerate(column.to_numpy()):
        if v is not None and not (isinstance(v, float) and np.isnan(v)) and len(v) == dim:
            out[i] = np.asarray(v, dtype=np.float32)
            mask[i] = True
    return out, mask


def _knn_mean(queries: np.ndarray, reference: np.ndarray, values: np.ndarray, k: int, metric: str) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(reference.shape[1]) if metric == "ip" else faiss.IndexFlatL2(reference.shape[1])
    index.add(np.ascontiguousarray(reference, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(reference)))
    return values[ids].mean(axis=1)


@dataclass
class Fusion:
    feature_columns: list[str]
    behaviour_weight: float = 1.0
    text_weight: float = 1.0
    pca_components: int = 24
    neighbours: int = 10
    medians: np.ndarray = field(default_factory=lambda: np.zeros(0))
    means: np.ndarray = field(default_factory=lambda: np.zeros(0))
    stds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    text_dim: int = 0
    text_fill: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ref_z: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    ref_text: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    pca_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pca_matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def _behaviour(self, frame: pd.DataFrame) -> np.ndarray:
        cols = [frame[c].astype(float).to_numpy() if c in frame.columns else np.full(len(frame), np.nan) for c in self.feature_columns]
        return np.column_stack(cols) if cols else np.zeros((len(frame), 0))

    def _blocks(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(z with NaN, sparse-behaviour mask, text vectors, has-text mask)."""
        x = self._behaviour(frame)
        z = np.clip((x - self.means) / self.stds, -CLIP_Z, CLIP_Z) if x.size else x
        sparse = np.isnan(z).mean(axis=1) > SPARSE_ROW if z.shape[1] else np.ones(len(frame), bool)
        t, has = embedding_matrix(frame.get("text_embedding"), len(frame), self.text_dim)
        return z, sparse, t, has

    def _complete(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        z, sparse, t, has = self._blocks(frame)
        median_z = (self.medians - self.means) / self.stds
        if len(self.ref_z) and self.text_dim:
            borrow = sparse & has
            if borrow.any():
                guess = _knn_mean(t[borrow], self.ref_text, self.ref_z, self.neighbours, "ip")
                z[borrow] = np.where(np.isnan(z[borrow]), guess, z[borrow])
            lend = ~has & ~sparse
            if lend.any():
                filled = np.where(np.isnan(z[lend]), median_z, z[lend])
                guess = _knn_mean(filled, self.ref_z, self.ref_text, self.neighbours, "l2")
                t[lend] = guess / np.maximum(np.linalg.norm(guess, axis=1, keepdims=True), 1e-12)
                has = has | lend
        z = np.where(np.isnan(z), median_z, z) if z.size else z
        if self.text_dim:
            t[~has] = self.text_fill
        return z, t

    def column_weights(self) -> np.ndarray:
        """Per-column weights: the indicator columns of one categorical attribute (`attr__value`)
        share the weight of one column, so an attribute with many values does not dominate."""
        groups = pd.Series([c.split("__", 1)[0] if "__" in c else c for c in self.feature_columns])
        sizes = groups.map(groups.value_counts()).to_numpy(dtype=float)
        return 1.0 / np.sqrt(sizes)

    def _raw(self, frame: pd.DataFrame) -> np.ndarray:
        z, t = self._complete(frame)
        weights = self.column_weights()
        z = z * weights * (self.behaviour_weight / np.sqrt(max(float((weights**2).sum()), 1.0)))
        # hstack of the float64 behaviour block and the text block is float64 already: no second copy
        return np.hstack([z, t * self.text_weight]).astype(np.float64, copy=False) if self.text_dim else z.astype(np.float64)

    def fit(self, frame: pd.DataFrame, text_dim: int, seed: int = 0) -> "Fusion":
        x = self._behaviour(frame)
        self.medians = np.nan_to_num(np.nanmedian(x, axis=0)) if x.size else np.zeros(0)
        filled = np.where(np.isnan(x), self.medians, x)
        self.means = filled.mean(axis=0)
        self.stds = np.maximum(filled.std(axis=0), 1e-6)
        self.text_dim = text_dim
        z, sparse, t, has = self._blocks(frame)
        if text_dim:
            mean = t[has].mean(axis=0) if has.any() else np.zeros(text_dim, dtype=np.float32)
            self.text_fill = (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)
            both = np.flatnonzero(~sparse & has)
            if len(both):
                pick = np.random.default_rng(seed).choice(both, size=min(REFERENCE_SIZE, len(both)), replace=False)
                median_z = (self.medians - self.means) / self.stds
                self.ref_z = np.where(np.isnan(z[pick]), median_z, z[pick]).astype(np.float32)
                self.ref_text = t[pick].astype(np.float32)
        raw = self._raw(frame)
        self.pca_mean = raw.mean(axis=0)
        n_comp = int(min(self.pca_components, raw.shape[1], max(len(raw) - 1, 1)))
        # PCA by SVD of the centred matrix: rows of vt are the principal directions. Centred in
        # place: the (persons x features+384) float64 matrix is the fit's largest; one copy of it.
        raw -= self.pca_mean
        _, _, vt = np.linalg.svd(raw, full_matrices=False)
        self.pca_matrix = vt[:n_comp].T
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """(n, pca_components) float32 representation of each row of `frame`."""
        raw = self._raw(frame)
        raw -= self.pca_mean  # in place: the same values as raw - pca_mean without a second matrix
        return (raw @ self.pca_matrix).astype(np.float32)

    ARRAYS = ("medians", "means", "stds", "text_fill", "ref_z", "ref_text", "pca_mean", "pca_matrix")

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.ARRAYS}

    def params(self) -> dict:
        return {
            "feature_columns": self.feature_columns,
            "behaviour_weight": self.behaviour_weight,
            "text_weight": self.text_weight,
            "pca_components": self.pca_components,
            "neighbours": self.neighbours,
            "text_dim": self.text_dim,
        }

    @classmethod
    def restore(cls, params: dict, arrays: dict[str, np.ndarray]) -> "Fusion":
        fusion = cls(**{k: params[k] for k in ("feature_columns", "behaviour_weight", "text_weight", "pca_components", "neighbours")})
        fusion.text_dim = int(params["text_dim"])
        for key in cls.ARRAYS:
            setattr(fusion, key, arrays[key])
        return fusion
