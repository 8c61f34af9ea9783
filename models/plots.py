"""Plots logged with each persona model: the 2-D persona map, persona profiles and KPIs (PNG)."""

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


def persona_profiles(profiles: list[dict], path: Path) -> Path:
    """One panel per persona: its distinguishing traits as diverging bars of the standardised
    difference (z) from everyone, titled with its name and size; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [p for p in profiles if p["persona_id"] >= 0] or profiles
    cols = min(3, max(len(shown), 1))
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 2.8 * rows), dpi=100, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for n, ax in enumerate(axes.flat):
        if n >= len(shown):
            ax.axis("off")
            continue
        p = shown[n]
        traits = list(reversed(p["traits"]))
        ax.barh([t["label"][:28] for t in traits], [t["z"] for t in traits], color=["#0072B2" if t["z"] >= 0 else "#D55E00" for t in traits])
        ax.axvline(0, color="#444", linewidth=0.8)
        ax.set_title(f"{p['persona_id']}: {p['name'][:42]}\n{p['size']:,} people ({p['share']:.0%})", fontsize=9, color=cmap(n % 10))
        ax.tick_params(labelsize=7)
        ax.set_xlabel("z vs everyone", fontsize=7)
    fig.suptitle("Persona profiles: distinguishing traits", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def persona_kpis(profiles: list[dict], path: Path) -> Path:
    """Every rate KPI (churn, conversion, ...) per persona with its 95% interval; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for p in profiles for k in p["kpis"] if k.endswith("_rate")})
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4.2 * max(len(keys), 1), 0.45 * len(profiles) + 1.6), dpi=100, squeeze=False)
    labels = [f"{p['persona_id']}: {p['name'][:26]}" for p in profiles]
    for ax, key in zip(axes.flat, keys):
        ys, vals, err_lo, err_hi = [], [], [], []
        for i, p in enumerate(profiles):
            k = p["kpis"].get(key)
            if k:
                ys.append(i)
                vals.append(k["value"])
                err_lo.append(k["value"] - k["ci95"][0])
                err_hi.append(k["ci95"][1] - k["value"])
        ax.errorbar(vals, ys, xerr=[err_lo, err_hi], fmt="o", color="#0072B2", capsize=3)
        ax.set_yticks(range(len(profiles)), labels, fontsize=7)
        ax.set_title(key.replace("_", " "), fontsize=9)
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
    if not keys:
        axes.flat[0].axis("off")
        axes.flat[0].text(0.5, 0.5, "no label KPIs in these sources", ha="center")
    fig.suptitle("Persona KPIs with 95% Wilson intervals", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
