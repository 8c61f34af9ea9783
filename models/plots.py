"""Plots logged with each persona model: the 2-D persona map."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def persona_map(x: np.ndarray, persona_ids: np.ndarray, names: dict[int, str], path: Path, sample: int = 6000, seed: int = 0) -> Path:
    """Scatter of people on the first two principal components of the model's representation,
    coloured by persona; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), size=min(sample, len(x)), replace=False)
    pts = x[idx, :2] if x.shape[1] >= 2 else np.column_stack([x[idx, 0], np.zeros(len(idx))])
    labels = persona_ids[idx]
    fig, ax = plt.subplots(figsize=(9, 7), dpi=110)
    cmap = plt.get_cmap("tab10")
    for n, pid in enumerate(sorted(set(labels.tolist()))):
        mask = labels == pid
        colour = "lightgrey" if pid < 0 else cmap(n % 10)
        ax.scatter(pts[mask, 0], pts[mask, 1], s=6, alpha=0.6, color=colour, label=f"{pid}: {names.get(int(pid), '')[:40]} ({mask.sum()})")
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2")
    ax.set_title("People by persona (first two components of the model's representation)")
    ax.legend(loc="best", fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
