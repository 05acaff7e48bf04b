"""Statistics helpers on ``scipy.stats``: the percentile bootstrap, chance baselines for shares (random component
sets) and for hits at the top of a ranking, the sign test and the mean ± t-interval over seeds.

The sources this book reproduces report single-seed point estimates without intervals; the book adds a
bootstrap confidence interval wherever it compares two means. Resample the *independent units* (sequences,
prompts, completions), not tokens: tokens of one sequence are correlated.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional

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


def bootstrap_distribution(statistic: Callable[..., float], *samples: np.ndarray, n_boot: int = 1000,
                           alpha: float = 0.05, seed: int = 0) -> tuple[Interval, np.ndarray]:
    """Percentile bootstrap of ``statistic(*samples)`` (``scipy.stats.bootstrap``, ``method="percentile"``) and
    the ``[n_boot]`` resampled statistics.

    Each array in ``samples`` (first axis = independent units, e.g. ``[n_seq, ...]``, any trailing shape) is
    resampled with replacement *independently of the others*; the interval is the ``alpha/2`` and ``1 - alpha/2``
    quantiles of the resampled statistic, the point estimate the statistic of the data. SciPy resamples the
    units' *indices* here, so a unit may be a row of several columns (``ratio_of_sums``), and a statistic that
    reads two models on the same units through one index array resamples them *paired* (``sae.paired_excess``).
    """
    from scipy import stats as sps

    if not samples:
        raise ValueError("bootstrap needs at least one sample array")
    arrays = [np.asarray(s) for s in samples]
    for a in arrays:
        if len(a) == 0:
            raise ValueError("bootstrap got an empty sample")
    point = float(statistic(*arrays))
    if min(len(a) for a in arrays) < 2:  # one unit: nothing to resample, no spread to estimate
        return Interval(point, point, point, alpha), np.full(n_boot, point)
    index = tuple(np.arange(len(a)) for a in arrays)

    def on_indices(*idx: np.ndarray) -> float:
        return float(statistic(*[a[i] for a, i in zip(arrays, idx)]))

    with warnings.catch_warnings():  # a degenerate (constant) distribution is fine for a percentile interval
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)
        res = sps.bootstrap(index, on_indices, n_resamples=n_boot, confidence_level=1 - alpha, method="percentile",
                            vectorized=False, paired=False, rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return Interval(point, float(lo), float(hi), alpha), np.asarray(res.bootstrap_distribution, dtype=float)


def bootstrap(statistic: Callable[..., float], *samples: np.ndarray, n_boot: int = 1000, alpha: float = 0.05,
              seed: int = 0) -> Interval:
    """The percentile-bootstrap ``Interval`` of ``statistic(*samples)`` (see ``bootstrap_distribution``)."""
    return bootstrap_distribution(statistic, *samples, n_boot=n_boot, alpha=alpha, seed=seed)[0]


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

    The null is ``scipy.stats.permutation_test`` of the members' share with members and non-members relabelled at
    random (``permutation_type="independent"``): all ``C(n, k)`` subsets when there are at most ``n_draws`` of
    them (exact ``p``), else ``n_draws`` random ones (then ``p = (1 + #{>=}) / (1 + n_draws)``).
    """
    from scipy import stats as sps

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
    inside = np.zeros(n, dtype=bool)
    inside[idx] = True

    def share_of(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        sa = a.sum(axis=axis)
        return sa / (sa + b.sum(axis=axis))

    res = sps.permutation_test((v[inside], v[~inside]), share_of, permutation_type="independent", vectorized=True,
                               n_resamples=n_draws, alternative="greater", rng=np.random.default_rng(seed))
    null = np.asarray(res.null_distribution, dtype=float)
    return SetShare(float(res.statistic), float(null.mean()), float(np.quantile(null, 0.95)), float(res.pvalue), k,
                    n)


def sign_test(x) -> float:
    """One-sided exact sign test (``scipy.stats.binomtest``): the probability of at least as many positive
    entries of ``x`` (zeros and non-finite entries dropped) if positive and negative were equally likely."""
    from scipy import stats as sps

    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x) & (x != 0)]
    n, k = len(x), int((x > 0).sum())
    if n == 0:
        return 1.0
    return float(sps.binomtest(k, n, 0.5, alternative="greater").pvalue)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (``scipy.stats.t``)."""
    from scipy import stats as sps

    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return float(sps.t.ppf(0.975, df))


def mean_ci(x) -> Interval:
    """Mean of ``x`` (e.g. one number per seed) with its 95 % Student-t interval (``scipy.stats.t.interval``);
    None and NaN entries are dropped, and with one value the interval is that value's point (no spread to
    estimate)."""
    from scipy import stats as sps

    a = np.asarray([float(v) for v in x if v is not None], dtype=float)
    a = a[np.isfinite(a)]
    if len(a) == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    m = float(a.mean())
    if len(a) == 1:
        return Interval(m, m, m)
    sem = float(a.std(ddof=1)) / np.sqrt(len(a))
    if sem == 0:
        return Interval(m, m, m)
    lo, hi = sps.t.interval(0.95, len(a) - 1, loc=m, scale=sem)
    return Interval(m, float(lo), float(hi))


def censored_median(xs, budget: int) -> str:
    """Median of iteration counts where ``None`` means "not reached within ``budget``" (right-censored): the
    number, or ``"> budget"`` when the middle of the sorted counts is censored."""
    vals = sorted((x if x is not None else float("inf")) for x in xs)
    if not vals:
        raise ValueError("censored_median of no counts")
    mid = [vals[(len(vals) - 1) // 2], vals[len(vals) // 2]]
    return f"> {budget}" if any(m == float("inf") for m in mid) else f"{sum(mid) / 2:g}"


def jaccard_null(k_a: int, k_b: int, n: int) -> tuple[float, float]:
    """Mean and 95th percentile of the Jaccard index of two independent uniform random subsets of sizes ``k_a``
    and ``k_b`` of ``n`` components: the overlap two head sets of those sizes have by chance.

    Exact: the overlap ``X`` is hypergeometric (``scipy.stats.hypergeom``) and ``J = X / (k_a + k_b - X)``
    increases with ``X``, so the percentile of ``J`` is ``J`` of the percentile of ``X``."""
    from scipy import stats as sps

    if not (0 <= k_a <= n and 0 <= k_b <= n):
        raise ValueError(f"set sizes {k_a}, {k_b} must lie in [0, {n}]")
    if k_a == 0 and k_b == 0:
        return 1.0, 1.0
    law = sps.hypergeom(n, k_a, k_b)
    x = np.arange(max(0, k_a + k_b - n), min(k_a, k_b) + 1)
    jac = x / (k_a + k_b - x)
    q = float(law.ppf(0.95))
    return float((law.pmf(x) * jac).sum()), float(q / (k_a + k_b - q))


def hits_at_random(n_items: int, n_hits: int, n: int, observed: Optional[int] = None) -> dict[str, float]:
    """The null of ``count@top n`` under a random ranking of ``n_items`` items of which ``n_hits`` are hits: the
    number of hits among ``n`` items drawn without replacement is hypergeometric (``scipy.stats.hypergeom``), the
    exact distribution of the shuffled-scores permutation test. Returns its ``mean`` (``n`` x hit rate), its 95th
    percentile ``q95`` and, for an ``observed`` count, the one-sided p-value ``P(X >= observed)`` (1 for 0)."""
    from scipy import stats as sps

    if not (0 <= n_hits <= n_items and 0 <= n <= n_items):
        raise ValueError(f"need 0 <= n_hits ({n_hits}), n ({n}) <= n_items ({n_items})")
    law = sps.hypergeom(n_items, n_hits, n)
    out = {"mean": n * n_hits / n_items if n_items else 0.0, "q95": float(law.ppf(0.95))}
    if observed is not None:
        out["p"] = float(law.sf(observed - 1)) if observed > 0 else 1.0
    return out


def format_p(p: float, floor: float = 0.001) -> str:
    """``"= 0.034"``, or ``"< 0.001"`` below ``floor`` (a permutation p-value is never exactly 0)."""
    if p is None or not np.isfinite(p):
        return "undefined"
    return f"< {floor:g}" if p < floor else f"= {p:.3f}"
