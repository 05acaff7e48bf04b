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

# The book's text column: 676 CSS px wide in a 1280-px browser window, 790 px from 1600 px up (sphinx-book-theme
# 1.3; measured by tests/test_browser.py), so 7 inches at the browser's 96 px per inch. A chapter's headline figure
# is drawn this wide (``page_figure``) and shown at the column's full width, so its fonts are read at their size.
PAGE_WIDTH = 7.0
MIN_FONT = 10.0  # pt: the smallest font a headline figure may show at the page's width


def use_style() -> None:
    """Apply the house style (call once per notebook; ``lib.book.plotting`` import does it too)."""
    plt.rcParams.update({
        "figure.figsize": (6.4, 3.6), "figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight",
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
        "axes.prop_cycle": matplotlib.cycler(color=PALETTE), "font.size": 10, "axes.titlesize": 11,
        "axes.titleweight": "bold", "legend.frameon": False, "image.cmap": DIVERGING,
    })


use_style()


def page_figure(nrows: int = 1, ncols: int = 1, height: float = 3.2, mosaic=None, **kwargs):
    """A figure as wide as the book's text column once saved (``PAGE_WIDTH`` less ``savefig``'s padding), in
    constrained layout so that labels and legends stay inside that width; ``height`` in inches. Returns
    ``(fig, axes)`` as ``plt.subplots(nrows, ncols, **kwargs)`` does, or, given a ``mosaic`` (e.g.
    ``[["ld", "ld"], ["loss", "acc"]]``), ``(fig, {name: axes})`` as ``Figure.subplot_mosaic`` does."""
    size = (PAGE_WIDTH - 2 * plt.rcParams["savefig.pad_inches"], height)
    if mosaic is not None:
        fig = plt.figure(figsize=size, layout="constrained")
        return fig, fig.subplot_mosaic(mosaic, **kwargs)
    return plt.subplots(nrows, ncols, figsize=size, layout="constrained", **kwargs)


def smallest_font(fig) -> float:
    """The smallest font size (pt) among ``fig``'s visible, non-empty texts: titles, axis labels, tick labels,
    legends, colour-bar labels and annotations."""
    from matplotlib.text import Text

    fig.canvas.draw()  # tick labels exist only once drawn
    sizes = [t.get_fontsize() for t in fig.findobj(Text)
             if t.get_visible() and t.get_text().strip() and t.get_figure() is not None
             and (t.axes is None or t.axes.get_visible())]
    if not sizes:
        raise ValueError("smallest_font: the figure has no visible text")
    return float(min(sizes))


def saved_width(fig) -> float:
    """The width (inches) of ``fig`` as ``savefig`` writes it: the tight bounding box plus its padding."""
    fig.canvas.draw()
    bbox = fig.get_tightbbox(fig.canvas.get_renderer())
    return float(bbox.width + 2 * plt.rcParams["savefig.pad_inches"])


def rendered_font(fig, width: float = PAGE_WIDTH) -> float:
    """The smallest font size (pt) a reader sees when ``fig``, as saved, is shown ``width`` inches wide (a headline
    figure fills the text column: ``PAGE_WIDTH``). A 14-inch-wide figure with 10 pt labels shows them at 5 pt."""
    return smallest_font(fig) * width / saved_width(fig)


def savefig(fig, out_dir: str | os.PathLike, name: str) -> Path:
    """Save ``fig`` as ``<out_dir>/<name>.png`` and return the path (the notebook still displays it inline).

    Every visible text smaller than ``MIN_FONT`` is raised to it first (the house style's floor: a chapter that asks
    for 8-pt cell labels still prints them readable; the figure shown inline afterwards is the same object). The PNG
    carries two text entries that the browser test reads to check the figure's fonts at the size the page shows it:
    ``ftm:width_in`` (the saved width, inches) and ``ftm:smallest_font_pt`` (``smallest_font``; both left out of a
    figure without text)."""
    from matplotlib.text import Text

    for t in fig.findobj(Text):
        if t.get_visible() and t.get_text().strip() and t.get_fontsize() < MIN_FONT:
            t.set_fontsize(MIN_FONT)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    try:
        meta = {"ftm:width_in": f"{saved_width(fig):.3f}", "ftm:smallest_font_pt": f"{smallest_font(fig):g}"}
    except ValueError:  # no text at all: nothing to read
        meta = {}
    fig.savefig(path, metadata=meta)
    return path


def png_font_info(path: str | os.PathLike) -> dict[str, float]:
    """``{"width_in", "smallest_font_pt"}`` from a PNG that ``savefig`` wrote (``KeyError`` if it has neither)."""
    from PIL import Image

    with Image.open(path) as im:
        text = dict(im.text)
    return {"width_in": float(text["ftm:width_in"]), "smallest_font_pt": float(text["ftm:smallest_font_pt"])}


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
