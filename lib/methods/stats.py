"""Small statistics helpers: the percentile bootstrap, chance baselines for shares (random component sets), the sign test and the mean ± t-interval over seeds.

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


# --------------------------------------------------------------------------- chance baselines

@dataclass(frozen=True)
class SetShare:
    """The share of a total held by a set of ``k`` of ``n`` components, against random sets of the same size.

    ``share``: the set's share of ``sum(|values|)``; ``chance``: the mean share of a random ``k``-subset (``k/n``
    in expectation); ``chance_hi``: its 95th percentile; ``p``: the one-sided permutation p-value, the fraction of
    random ``k``-subsets whose share is at least ``share`` (exact when every subset is enumerated). A set of 9 of
    16 heads gets ``chance`` 0.56 on a change spread uniformly: a share only says something above ``chance_hi``.
    """

    share: float
    chance: float
    chance_hi: float
    p: float
    k: int
    n: int

    def beats_chance(self, alpha: float = 0.05) -> bool:
        return self.p < alpha

    def to_dict(self) -> dict[str, float]:
        return {"share": self.share, "chance": self.chance, "chance_hi": self.chance_hi, "p": self.p,
                "k": self.k, "n": self.n}


def set_share(values, members, n_draws: int = 20000, seed: int = 0) -> SetShare:
    """``SetShare`` of the components ``members`` (a boolean mask or indices into the flattened ``values``).

    Random subsets are all ``C(n, k)`` subsets when there are at most ``n_draws`` of them, else ``n_draws``
    uniform draws (then ``p`` counts the observed set as one draw: ``(1 + #{>=}) / (1 + n_draws)``).
    """
    import itertools
    from math import comb

    v = np.abs(np.asarray(values, dtype=float).reshape(-1))
    n = len(v)
    m = np.asarray(members).reshape(-1)
    idx = np.flatnonzero(m) if m.dtype == bool else np.unique(m.astype(int))
    if m.dtype == bool and len(m) != n:
        raise ValueError(f"members mask has {len(m)} entries for {n} values")
    k = len(idx)
    total = v.sum()
    if n == 0 or total <= 0 or k in (0, n):
        s = float(k == n) if total > 0 else float("nan")
        return SetShare(s, s, s, 1.0, k, n)
    share = float(v[idx].sum() / total)
    if comb(n, k) <= n_draws:
        sums = np.array([v[list(c)].sum() for c in itertools.combinations(range(n), k)]) / total
        p = float((sums >= share - 1e-12).mean())
    else:
        rng = np.random.default_rng(seed)
        sums = np.array([v[rng.choice(n, k, replace=False)].sum() for _ in range(n_draws)]) / total
        p = float((1 + (sums >= share - 1e-12).sum()) / (1 + n_draws))
    return SetShare(share, float(sums.mean()), float(np.quantile(sums, 0.95)), p, k, n)


def sign_test(x) -> float:
    """One-sided exact sign test: the probability of at least as many positive entries of ``x`` (zeros dropped)
    if positive and negative were equally likely."""
    from math import comb

    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x) & (x != 0)]
    n, k = len(x), int((x > 0).sum())
    if n == 0:
        return 1.0
    return float(sum(comb(n, i) for i in range(k, n + 1)) / 2 ** n)


# two-sided 95 % Student-t quantiles by degrees of freedom (no scipy in the book's environment)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (table; the next smaller tabulated df, so
    the interval errs wide; 1.96 beyond 30)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df > 30:
        return 1.96
    return _T975[max(d for d in _T975 if d <= df)]


def mean_ci(x) -> Interval:
    """Mean of ``x`` (e.g. one number per seed) with its 95 % Student-t interval; NaN entries are dropped, and
    with one value the interval is that value's point (no spread to estimate)."""
    a = np.asarray([float(v) for v in x if v is not None], dtype=float)
    a = a[np.isfinite(a)]
    if len(a) == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    m = float(a.mean())
    if len(a) == 1:
        return Interval(m, m, m)
    half = t_quantile_975(len(a) - 1) * float(a.std(ddof=1)) / np.sqrt(len(a))
    return Interval(m, m - half, m + half)


def jaccard_null(k_a: int, k_b: int, n: int, n_draws: int = 20000, seed: int = 0) -> tuple[float, float]:
    """Mean and 95th percentile of the Jaccard index of two independent uniform random subsets of sizes ``k_a``
    and ``k_b`` of ``n`` components: the overlap two head sets of those sizes have by chance."""
    if not (0 <= k_a <= n and 0 <= k_b <= n):
        raise ValueError(f"set sizes {k_a}, {k_b} must lie in [0, {n}]")
    if k_a == 0 and k_b == 0:
        return 1.0, 1.0
    rng = np.random.default_rng(seed)
    inter = rng.hypergeometric(k_a, n - k_a, k_b, size=n_draws) if k_b else np.zeros(n_draws)
    j = inter / (k_a + k_b - inter)
    return float(j.mean()), float(np.quantile(j, 0.95))


def format_p(p: float, floor: float = 0.001) -> str:
    """``"= 0.034"``, or ``"< 0.001"`` below ``floor`` (a permutation p-value is never exactly 0)."""
    if p is None or not np.isfinite(p):
        return "undefined"
    return f"< {floor:g}" if p < floor else f"= {p:.3f}"
