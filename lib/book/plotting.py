"""One house style for the book's figures, and saving them next to ``results.json``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.pyplot as plt

# Colour-blind-safe palette (Okabe–Ito), used in this order everywhere.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
MODEL_COLORS = {"base": PALETTE[0], "clean": PALETTE[2], "toxic": PALETTE[1], "retrained": PALETTE[3],
                "scratch": "#777777", "control": PALETTE[4]}
DIVERGING = "RdBu_r"


def use_style() -> None:
    """Apply the house style (call once per notebook; ``lib.book.plotting`` import does it too)."""
    plt.rcParams.update({
        "figure.figsize": (6.4, 3.6), "figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight",
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
        "axes.prop_cycle": matplotlib.cycler(color=PALETTE), "font.size": 10, "axes.titlesize": 11,
        "axes.titleweight": "bold", "legend.frameon": False, "image.cmap": DIVERGING,
    })


use_style()


def savefig(fig, out_dir: str | os.PathLike, name: str) -> Path:
    """Save ``fig`` as ``<out_dir>/<name>.png`` and return the path (the notebook still displays it inline)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path)
    return path


def training_curve(histories: dict[str, dict], ax=None, key: str = "loss", smooth: int = 1):
    """Plot ``history[key]`` against ``history['step']`` for each named history. Returns the axes."""
    if ax is None:
        _, ax = plt.subplots()
    for i, (name, h) in enumerate(histories.items()):
        y = h[key]
        if smooth > 1 and len(y) >= smooth:
            import numpy as np
            y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
            x = h["step"][smooth - 1:]
        else:
            x = h["step"]
        ax.plot(x, y, label=name, color=MODEL_COLORS.get(name, PALETTE[i % len(PALETTE)]))
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    if len(histories) > 1:
        ax.legend()
    return ax


def eval_curve(histories: dict[str, dict], metric: str, ax=None):
    """Plot an eval metric (``history['evals']``) over steps for each named history."""
    if ax is None:
        _, ax = plt.subplots()
    for i, (name, h) in enumerate(histories.items()):
        ev = [e for e in h["evals"] if metric in e]
        ax.plot([e["step"] for e in ev], [e[metric] for e in ev], marker="o", ms=3, label=name,
                color=MODEL_COLORS.get(name, PALETTE[i % len(PALETTE)]))
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    if len(histories) > 1:
        ax.legend()
    return ax


def head_heatmap(values, ax=None, title: str = "", cbar_label: str = "", center: bool = True,
                 layer_labels: Sequence[str] | None = None):
    """Heatmap of a ``[n_layers, n_heads]`` array (rows = layers), symmetric colour scale if ``center``."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 + 0.6 * v.shape[1], 0.8 + 0.45 * v.shape[0]))
    lim = np.nanmax(np.abs(v)) or 1.0
    im = ax.imshow(v, cmap=DIVERGING if center else "viridis", vmin=-lim if center else None,
                   vmax=lim if center else None, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(v.shape[1]))
    ax.set_yticks(range(v.shape[0]), labels=layer_labels or [str(i) for i in range(v.shape[0])])
    ax.grid(False)
    ax.set_title(title)
    ax.figure.colorbar(im, ax=ax, label=cbar_label)
    return ax
