"""Persona clustering with faiss k-means: k chosen by silhouette, soft confidence by distance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Clustering:
    centroids: np.ndarray  # (k, d) float32
    temperature: float  # softmax temperature on squared distances (median nearest distance)
    k_scores: dict[int, float]  # silhouette per candidate k

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])


def kmeans(x: np.ndarray, k: int, restarts: int, iterations: int, seed: int) -> tuple[np.ndarray, float]:
    """faiss k-means; returns (centroids, objective = sum of squared distances)."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=iterations, nredo=restarts, seed=seed, verbose=False, min_points_per_centroid=1, max_points_per_centroid=100000)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids.copy(), float(km.obj[-1]) if len(km.obj) else float("nan")


def nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distances to every centroid (n, k), sorted ascending, and their centroid ids."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index.search(np.ascontiguousarray(x, dtype=np.float32), centroids.shape[0])


def assign(x: np.ndarray, clustering: Clustering) -> tuple[np.ndarray, np.ndarray]:
    """(persona index, confidence in 0-1): softmax of -squared distance / temperature."""
    dist, ids = nearest(x, clustering.centroids)
    logits = -(dist - dist[:, :1]) / clustering.temperature
    probs = np.exp(logits)
    confidence = probs[:, 0] / probs.sum(axis=1)
    return ids[:, 0].astype(np.int64), confidence.astype(np.float64)


def fit_personas(x: np.ndarray, k_min: int, k_max: int, restarts: int, iterations: int, seed: int, sample: int) -> Clustering:
    """Try k in [k_min, k_max]; keep the k with the best silhouette on a sample (of `sample` rows)."""
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), size=min(sample, len(x)), replace=False)
    k_max = max(k_min, min(k_max, len(x) - 1))
    scores: dict[int, float] = {}
    fits: dict[int, np.ndarray] = {}
    for k in range(k_min, k_max + 1):
        centroids, _ = kmeans(x, k, restarts, iterations, seed)
        _, ids = nearest(x[idx], centroids)
        labels = ids[:, 0]
        scores[k] = float(silhouette_score(x[idx], labels)) if len(set(labels)) > 1 else -1.0
        fits[k] = centroids
    best = max(scores, key=lambda k: (round(scores[k], 3), -k))
    dist, _ = nearest(x, fits[best])
    temperature = float(max(np.median(dist[:, 0]), 1e-6))
    return Clustering(centroids=fits[best], temperature=temperature, k_scores=scores)
