"""Persona clustering (faiss k-means, models/clustering.py) vs scikit-learn KMeans on the same data.

usage: python bench/clustering.py [--rows 50000] [--dim 48] [--k 6] [--repeat 3] [--quick] [--json]

Data: Gaussian blobs shaped like the persona model's input (PCA'd behaviour + text columns,
standardised), with known membership. Both fit the same k with the same restarts (n_init) and
iterations as the model's defaults. Figures: fit time (median over repeats) and the speed ratio;
quality as the k-means objective (inertia, lower is better) relative to scikit-learn's, and the
adjusted Rand index of each against the planted membership. The model's full k selection
(`fit_personas`, k_min..k_max with silhouette and stability) is timed on its own.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import emit, figure, load_average, median, offline_env


def persona_like(rows: int, dim: int, k: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.2, size=(k, dim))
    shares = rng.dirichlet(np.full(k, 4.0))
    truth = rng.choice(k, size=rows, p=shares)
    x = centres[truth] + rng.normal(0, 1.0, size=(rows, dim)) * rng.uniform(0.7, 1.3, size=(1, dim))
    x = (x - x.mean(0)) / x.std(0)
    return x.astype(np.float32), truth


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    from models.clustering import nearest

    return float(nearest(x, centroids, 1)[0][:, 0].astype(np.float64).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=48)
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--select", action="store_true", help="also time the model's full k selection (fit_personas; slow)")
    parser.add_argument("--quick", action="store_true", help="5,000 rows, 2 repeats")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeat = min(args.rows, 5_000), min(args.repeat, 2)
    offline_env()
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from models.clustering import fit_personas, kmeans, labels_of
    from personaops.config import ModelConfig

    cfg = ModelConfig()
    load_start = load_average()
    x, truth = persona_like(args.rows, args.dim, args.k)
    import faiss

    threads = faiss.omp_get_max_threads()
    ours_s, sk_s, one_s = [], [], []
    for r in range(args.repeat):
        for what in (["ours", "sklearn", "one"] if r % 2 == 0 else ["one", "sklearn", "ours"]):
            t = time.perf_counter()
            if what == "ours":
                ours = kmeans(x, args.k, cfg.restarts, cfg.iterations, cfg.seed + r)
                ours_s.append(time.perf_counter() - t)
            elif what == "one":
                # The same fit with one OpenMP thread: on a shared, loaded machine spinning threads cost more than they give.
                faiss.omp_set_num_threads(1)
                kmeans(x, args.k, cfg.restarts, cfg.iterations, cfg.seed + r)
                one_s.append(time.perf_counter() - t)
                faiss.omp_set_num_threads(threads)
            else:
                km = KMeans(n_clusters=args.k, n_init=cfg.restarts, max_iter=cfg.iterations, random_state=cfg.seed + r).fit(x)
                sk_s.append(time.perf_counter() - t)
        print(f"repeat {r + 1}/{args.repeat}: faiss {ours_s[-1]:.2f}s ({threads} threads), faiss 1 thread {one_s[-1]:.2f}s, sklearn {sk_s[-1]:.2f}s; load {load_average()}", flush=True)
    ours_inertia, sk_inertia = inertia(x, ours), inertia(x, km.cluster_centers_.astype(np.float32))
    ours_ari = adjusted_rand_score(truth, labels_of(x, ours))
    sk_ari = adjusted_rand_score(truth, km.labels_)
    chosen, select_s = None, None
    if args.select:
        t = time.perf_counter()
        chosen = fit_personas(x, cfg.k_min, cfg.k_max, cfg.restarts, cfg.iterations, cfg.seed, cfg.silhouette_sample, cfg.min_persona_share,
                              cfg.outlier_mads, cfg.stability_floor, cfg.stability_rounds)
        select_s = time.perf_counter() - t
    figures = [
        figure("k-means fit (faiss) speed", round(args.rows / median(ours_s), 1), "rows/s", baseline="scikit-learn KMeans", baseline_value=round(args.rows / median(sk_s), 1),
               target=1.0, target_on="ratio", note=f"k={args.k}, n_init={cfg.restarts}, max_iter={cfg.iterations}; medians {median(ours_s):.2f}s vs {median(sk_s):.2f}s"),
        figure("k-means fit (faiss, 1 OpenMP thread) speed", round(args.rows / median(one_s), 1), "rows/s", baseline="scikit-learn KMeans", baseline_value=round(args.rows / median(sk_s), 1),
               note=f"median {median(one_s):.2f}s; faiss default is {threads} threads"),
        figure("k-means objective (inertia)", round(ours_inertia, 1), "sum sq. dist", baseline="scikit-learn KMeans", baseline_value=round(sk_inertia, 1),
               higher_is_better=False, target=1.01, target_on="ratio", note="ratio <= 1.01: within 1% of scikit-learn's objective"),
        figure("ARI vs planted membership (faiss)", round(ours_ari, 4), "ARI", baseline="scikit-learn KMeans", baseline_value=round(sk_ari, 4)),
    ]
    if chosen is not None:
        figures.append(figure("full k selection (fit_personas)", round(select_s, 2), "s", higher_is_better=False,
                              note=f"k {cfg.k_min}..{cfg.k_max}, silhouette on {cfg.silhouette_sample}, {cfg.stability_rounds} stability refits per k; chose k={chosen.k}"))
    result = {
        "benchmark": "clustering", "rows": args.rows, "dim": args.dim, "k": args.k, "repeats": args.repeat,
        "faiss_threads": threads,
        "seconds": {"faiss": [round(s, 3) for s in ours_s], "faiss_1_thread": [round(s, 3) for s in one_s], "sklearn": [round(s, 3) for s in sk_s],
                    "fit_personas": None if select_s is None else round(select_s, 3)},
        "chosen_k": None if chosen is None else chosen.k, "load_average_start": load_start, "figures": figures,
    }
    print(f"{args.rows:,} rows x {args.dim} dims, k={args.k}, {args.repeat} repeats (medians)")
    emit(result, args.json)


if __name__ == "__main__":
    main()
