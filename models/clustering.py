"""Persona clustering with faiss k-means.

- k is chosen from [k_min, k_max]: among the k whose smallest cluster holds at least `min_share`
  of people (a persona must be worth naming) and whose partition is stable (bootstrap ARI at
  least `stability_floor`), the one with the best silhouette on a sample; when no k is stable
  enough, the most stable one;
- each k is fitted with several restarts (faiss keeps the best objective);
- confidence is distance-ratio based: 1 - d1/d2 (Euclidean distance to the nearest and the
  second-nearest centroid), 0 on a boundary and 1 on a centroid;
- a person farther from every centroid than `outlier_threshold` (median + `outlier_mads` median
  absolute deviations of the training nearest-centroid distances) is unassigned (id -1);
- stability: mean adjusted Rand index between the partition and partitions refitted on
  bootstrap samples with perturbed seeds.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

UNASSIGNED = -1


@dataclass
class Clustering:
    centroids: np.ndarray  # (k, d) float32
    outlier_threshold: float  # Euclidean distance beyond which a person is unassigned
    k_scores: dict[int, float | None] = field(default_factory=dict)  # silhouette per k (None: a persona too small)
    k_stability: dict[int, float] = field(default_factory=dict)  # bootstrap ARI per candidate k

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])


SINGLE_THREAD_BELOW = 50_000


@contextmanager
def faiss_threads(rows: int):
    """One OpenMP thread for k-means on fewer than SINGLE_THREAD_BELOW rows. Measured here
    (bench/clustering.py): 5,000 rows took 0.36 s on one thread and 17.3 s on two when the
    machine was busy (faiss's threads spin waiting for each other); a fixed thread count also
    keeps results independent of the machine's core count."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1 if rows < SINGLE_THREAD_BELOW else before)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def kmeans(x: np.ndarray, k: int, restarts: int, iterations: int, seed: int) -> np.ndarray:
    """faiss k-means centroids (best of `restarts` runs)."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=iterations, nredo=restarts, seed=seed, verbose=False, min_points_per_centroid=1, max_points_per_centroid=100000)
    with faiss_threads(len(x)):
        km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids.copy()


def nearest(x: np.ndarray, centroids: np.ndarray, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distances to the `n` nearest centroids (ascending) and their indices."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index.search(np.ascontiguousarray(x, dtype=np.float32), n or centroids.shape[0])


def labels_of(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return nearest(x, centroids, 1)[1][:, 0].astype(np.int64)


def assign(x: np.ndarray, clustering: Clustering) -> tuple[np.ndarray, np.ndarray]:
    """(centroid index or UNASSIGNED, confidence in 0-1) per row."""
    if clustering.k == 1:
        dist, ids = nearest(x, clustering.centroids, 1)
        d1 = np.sqrt(np.maximum(dist[:, 0], 0))
        return np.where(d1 > clustering.outlier_threshold, UNASSIGNED, ids[:, 0]).astype(np.int64), np.ones(len(x), dtype=np.float64)
    dist, ids = nearest(x, clustering.centroids, 2)
    d1, d2 = np.sqrt(np.maximum(dist[:, 0], 0)), np.sqrt(np.maximum(dist[:, 1], 0))
    confidence = 1.0 - d1 / np.maximum(d2, 1e-12)
    labels = np.where(d1 > clustering.outlier_threshold, UNASSIGNED, ids[:, 0]).astype(np.int64)
    return labels, np.clip(confidence, 0.0, 1.0).astype(np.float64)


def outlier_threshold(x: np.ndarray, centroids: np.ndarray, mads: float) -> float:
    d1 = np.sqrt(np.maximum(nearest(x, centroids, 1)[0][:, 0], 0))
    median = float(np.median(d1))
    mad = float(np.median(np.abs(d1 - median)))
    return median + mads * max(mad, 1e-6)


def fit_personas(
    x: np.ndarray,
    k_min: int,
    k_max: int,
    restarts: int,
    iterations: int,
    seed: int,
    sample: int,
    min_share: float = 0.0,
    outlier_mads: float = 8.0,
    stability_floor: float = 0.0,
    stability_rounds: int = 5,
    selection_rows: int | None = None,
) -> Clustering:
    """Fit k-means for each k in range and choose k as the module docstring says; `sample` rows
    are used for the silhouette, `min_share` and `stability_floor` are in 0-1.

    With more than `selection_rows` rows, k is chosen on a random `selection_rows` of them (the
    fits per k and the bootstrap refits are the bulk of the cost: (1 + rounds) x restarts k-means
    per k) and the chosen k is then fitted on all rows; the reported stabilities and silhouettes
    are those of the selection sample."""
    if selection_rows is not None and len(x) > selection_rows:
        pick = np.sort(np.random.default_rng(seed + 7).choice(len(x), size=selection_rows, replace=False))
        chosen = fit_personas(x[pick], k_min, k_max, restarts, iterations, seed, sample, min_share, outlier_mads, stability_floor, stability_rounds)
        centroids = kmeans(x, chosen.k, restarts, iterations, seed)
        return Clustering(
            centroids=centroids, outlier_threshold=outlier_threshold(x, centroids, outlier_mads), k_scores=chosen.k_scores, k_stability=chosen.k_stability
        )
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), size=min(sample, len(x)), replace=False)
    k_max = max(k_min, min(k_max, len(x) - 1))
    scores: dict[int, float | None] = {}
    stable: dict[int, float] = {}
    fits: dict[int, np.ndarray] = {}
    for k in range(k_min, k_max + 1):
        centroids = kmeans(x, k, restarts, iterations, seed)
        sizes = np.bincount(labels_of(x, centroids), minlength=k) / len(x)
        fits[k] = centroids
        if sizes.min() < min_share:
            scores[k] = None
            continue
        labels = labels_of(x[idx], centroids)
        scores[k] = float(silhouette_score(x[idx], labels)) if len(set(labels)) > 1 else -1.0
        stable[k] = stability(x, centroids, restarts, iterations, seed, stability_rounds)
    valid = {k: s for k, s in scores.items() if s is not None and stable[k] >= stability_floor}
    if valid:
        best = max(valid, key=lambda k: (round(valid[k], 3), -k))
    elif stable:
        best = max(stable, key=lambda k: (round(stable[k], 3), -k))
    else:
        best = k_min
    return Clustering(
        centroids=fits[best], outlier_threshold=outlier_threshold(x, fits[best], outlier_mads), k_scores=scores, k_stability=stable
    )


def stability(x: np.ndarray, centroids: np.ndarray, restarts: int, iterations: int, seed: int, rounds: int = 5, fraction: float = 0.8) -> float:
    """Mean adjusted Rand index of the partition by `centroids` vs `rounds` refits on bootstrap
    samples (`fraction` of rows, perturbed seeds), each scored on all rows (0-1, 1 = identical)."""
    from sklearn.metrics import adjusted_rand_score

    k = centroids.shape[0]
    base = labels_of(x, centroids)
    rng = np.random.default_rng(seed + 1)
    scores = []
    for r in range(rounds):
        rows = rng.choice(len(x), size=max(k + 1, int(len(x) * fraction)), replace=False)
        refit = kmeans(x[rows], k, restarts, iterations, seed + 101 + r)
        scores.append(adjusted_rand_score(base, labels_of(x, refit)))
    return float(np.mean(scores))
