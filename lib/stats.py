"""Small statistics helpers: the percentile bootstrap.

The sources this book reproduces report single-seed point estimates without intervals; the book adds a
bootstrap confidence interval wherever it compares two means. Resample the *independent units* (sequences,
prompts, completions), not tokens: tokens of one sequence are correlated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided percentile-bootstrap interval at level ``1 - alpha``."""

    point: float
    lo: float
    hi: float
    alpha: float = 0.05

    def excludes(self, value: float = 0.0) -> bool:
        """Whether ``value`` lies outside ``[lo, hi]``."""
        return not (self.lo <= value <= self.hi)

    def to_dict(self) -> dict[str, float]:
        return {"point": self.point, "lo": self.lo, "hi": self.hi, "alpha": self.alpha}

    def __str__(self) -> str:
        return f"{self.point:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


def bootstrap(statistic: Callable[..., float], *samples: np.ndarray, n_boot: int = 1000, alpha: float = 0.05,
              seed: int = 0) -> Interval:
    """Percentile bootstrap of ``statistic(*samples)``.

    Each array in ``samples`` (first axis = independent units, e.g. ``[n_seq, ...]``) is resampled with
    replacement *independently of the others* ``n_boot`` times; the interval is the ``alpha/2`` and
    ``1 - alpha/2`` quantiles of the resampled statistic, the point estimate the statistic of the data.
    """
    if not samples:
        raise ValueError("bootstrap needs at least one sample array")
    arrays = [np.asarray(s) for s in samples]
    for a in arrays:
        if len(a) == 0:
            raise ValueError("bootstrap got an empty sample")
    rng = np.random.default_rng(seed)
    point = float(statistic(*arrays))
    boots = np.empty(n_boot)
    for b in range(n_boot):
        boots[b] = statistic(*[a[rng.integers(0, len(a), len(a))] for a in arrays])
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return Interval(point, float(lo), float(hi), alpha)


def ratio_of_sums(sums_counts: np.ndarray) -> float:
    """``sum(x) / sum(n)`` of ``[units, 2]`` rows ``(x, n)``: the token-level mean when units are sequences."""
    return float(sums_counts[:, 0].sum() / sums_counts[:, 1].sum())


def bootstrap_mean(x: np.ndarray, **kw) -> Interval:
    """Bootstrap interval of the mean of ``x`` ``[n]``."""
    return bootstrap(lambda a: float(a.mean()), np.asarray(x, dtype=float), **kw)


def bootstrap_diff(x: np.ndarray, y: np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean,
                   **kw) -> Interval:
    """Bootstrap interval of ``statistic(x) - statistic(y)`` for two independent samples."""
    return bootstrap(lambda a, b: float(statistic(a)) - float(statistic(b)), np.asarray(x), np.asarray(y), **kw)
