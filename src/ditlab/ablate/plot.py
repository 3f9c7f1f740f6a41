"""`ablation.png`: FD against training steps and against training compute per variant, the mean over seeds
with a min-max band (the DiT paper's Figure 5 in miniature)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ditlab.ablate.variants import PAPER_VARIANTS
from ditlab.atomic import atomic_write


def _curve_band(rs: list[dict], key: str):
    """Steps evaluated by every seed, with the mean, min and max of `key` over seeds there."""
    per_seed = [{p["step"]: p[key] for p in r.get("curve", []) if p.get(key) is not None} for r in rs]
    steps = sorted(set.intersection(*(set(s) for s in per_seed))) if per_seed else []
    if not steps:
        return None
    values = np.array([[s[step] for step in steps] for s in per_seed], dtype=float)  # (seeds, points)
    return np.array(steps, dtype=float), values.mean(0), values.min(0), values.max(0)


def plot(study: dict, path: str | Path) -> Path | None:
    """FD against steps and against training Gflops (columns) for each FD of the curves (rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = study["runs"]
    keys = [
        k
        for k in ("fd_effnet_lite0", "fd_classifier")
        if any(k in p for r in runs for p in r.get("curve", []))
    ]
    if not keys:
        return None
    labels = {"fd_effnet_lite0": "FD-EffNetLite0", "fd_classifier": "classifier FD"}
    fig, axes = plt.subplots(len(keys), 2, figsize=(11, 3.8 * len(keys)), squeeze=False)
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    colors = plt.get_cmap("tab10")
    for i, key in enumerate(keys):
        for j, x_name in enumerate(("training steps", "training Gflops")):
            ax = axes[i, j]
            for n, variant in enumerate(variants):
                rs = [r for r in runs if r["variant"] == variant]
                band = _curve_band(rs, key)
                if band is None:
                    continue
                steps, mean, lo, hi = band
                x = steps if j == 0 else steps * 3 * rs[0]["gflops"] * rs[0]["batch_size"]
                style = "-" if variant in PAPER_VARIANTS else "--"
                ax.plot(
                    x,
                    mean,
                    style,
                    marker="o",
                    ms=3,
                    lw=1.5,
                    color=colors(n % 10),
                    label=f"{variant} ({len(rs)} seed{'s' if len(rs) > 1 else ''})",
                )
                if len(rs) > 1:
                    ax.fill_between(x, lo, hi, color=colors(n % 10), alpha=0.15, lw=0)
            ax.set_xlabel(x_name)
            ax.set_ylabel(labels[key])
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=8)
    c = study["config"]
    fig.suptitle(f"Conditioning variants: {c['model']} on {c['data']} (mean over seeds, band = min–max)")
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path
