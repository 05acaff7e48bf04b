"""lib.methods.stats against values computed by hand and against scipy.stats called directly (the bootstrap's use
on SAE intersections is tested in test_sae.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lib.methods import stats


def test_set_share_of_a_uniform_change_is_its_size():
    """On a change spread evenly, a 9-of-16 set holds 9/16, exactly what random sets hold: p = 1."""
    r = stats.set_share(np.ones(16), np.arange(9))
    assert r.share == pytest.approx(9 / 16) and r.chance == pytest.approx(9 / 16) and r.p == 1.0
    assert not r.beats_chance()


def test_set_share_exact_permutation_p_by_hand():
    # all the change in components 0-2; the set {0,1,2,3} holds all of it. Of the C(16,4) = 1820 four-sets,
    # those holding share 1 contain 0,1,2 plus any 4th: 13 sets. p = 13 / 1820.
    v = np.zeros(16)
    v[:3] = [1.0, -2.0, 3.0]  # signs do not matter: shares of |values|
    r = stats.set_share(v, np.arange(4))
    assert r.share == 1.0 and r.k == 4 and r.n == 16
    assert r.p == pytest.approx(13 / 1820)
    assert r.chance == pytest.approx(4 / 16)  # every component is in a random 4-set with probability 4/16
    assert r.beats_chance()
    mask = np.zeros(16, dtype=bool)
    mask[:4] = True
    assert stats.set_share(v, mask) == r


def test_set_share_sampled_when_too_many_subsets():
    v = np.arange(30, dtype=float)
    r = stats.set_share(v, np.arange(25, 30), n_draws=500)  # C(30, 5) > 500: sampled
    assert r.share == pytest.approx(sum(range(25, 30)) / v.sum())
    assert r.p == pytest.approx(1 / 501, abs=2 / 501)  # the top five: almost no random set matches it
    assert r.chance == pytest.approx(5 / 30, abs=0.02)


def test_set_share_degenerate_cases():
    assert stats.set_share(np.ones(4), []).share == 0.0
    assert math.isnan(stats.set_share(np.zeros(4), [0]).share)
    with pytest.raises(ValueError, match="mask"):
        stats.set_share(np.ones(4), np.ones(3, dtype=bool))


def test_sign_test_by_hand():
    assert stats.sign_test([1, 2, 3, 4, 5]) == pytest.approx(1 / 32)
    assert stats.sign_test([1, 2, -1]) == pytest.approx(4 / 8)  # P(>= 2 of 3 positive) = (3 + 1) / 8
    assert stats.sign_test([0, 0, 1]) == pytest.approx(1 / 2)  # zeros dropped
    assert stats.sign_test([]) == 1.0


def test_mean_ci_is_the_student_t_interval():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    iv = stats.mean_ci(x)
    half = 2.776445 * np.std(x, ddof=1) / math.sqrt(5)  # t_{0.975, 4} from a printed table
    assert (iv.point, iv.lo, iv.hi) == pytest.approx((3.0, 3 - half, 3 + half))
    assert stats.mean_ci([2.0, float("nan"), None]).lo == 2.0  # one finite value: no spread
    assert stats.mean_ci([2.0, 2.0, 2.0]).hi == 2.0  # no spread at all
    assert math.isnan(stats.mean_ci([]).point)


def test_t_quantiles_beyond_thirty_degrees_of_freedom_are_not_1_96():
    # printed-table values of t_{0.975, df}: the old hand-kept table returned 1.96 for every df > 30
    assert stats.t_quantile_975(11) == pytest.approx(2.2010, abs=1e-4)
    assert stats.t_quantile_975(31) == pytest.approx(2.0395, abs=1e-4)
    assert stats.t_quantile_975(40) == pytest.approx(2.0211, abs=1e-4)
    assert stats.t_quantile_975(100) == pytest.approx(1.9840, abs=1e-4)
    with pytest.raises(ValueError):
        stats.t_quantile_975(0)


def test_mean_ci_at_df_40_by_hand():
    x = np.arange(41, dtype=float)  # mean 20, sd sqrt(41 * 42 / 12) = 12.124
    iv = stats.mean_ci(x)
    half = 2.021075 * math.sqrt(41 * 42 / 12) / math.sqrt(41)
    assert (iv.lo, iv.hi) == pytest.approx((20 - half, 20 + half), abs=1e-5)


def test_bootstrap_is_scipy_percentile_bootstrap_on_fixed_data():
    from scipy import stats as sps

    x = np.random.default_rng(3).exponential(2.0, 60)
    iv = stats.bootstrap_mean(x, n_boot=2000, seed=7)
    ref = sps.bootstrap((np.arange(60),), lambda i: x[i].mean(), n_resamples=2000, method="percentile",
                        vectorized=False, rng=np.random.default_rng(7)).confidence_interval
    assert iv.point == pytest.approx(x.mean()) and (iv.lo, iv.hi) == pytest.approx((ref.low, ref.high))
    # and it is the interval its own distribution gives
    _, boots = stats.bootstrap_distribution(lambda a: float(a.mean()), x, n_boot=2000, seed=7)
    assert (iv.lo, iv.hi) == pytest.approx(tuple(np.percentile(boots, [2.5, 97.5])))


def test_bootstrap_resamples_rows_of_several_columns_as_units():
    # ratio_of_sums over [unit, 2] rows: a resample draws whole rows (a column-wise resample would break pairs)
    rows = np.array([[1.0, 1.0]] * 10 + [[3.0, 1.0]] * 10)
    _, boots = stats.bootstrap_distribution(stats.ratio_of_sums, rows, n_boot=300, seed=0)
    assert set(np.round(boots * 20).astype(int)) <= set(range(20, 61, 2))  # (20 + 2 * #threes) / 20


def test_sign_test_is_scipy_binomtest():
    from scipy import stats as sps

    x = np.array([0.3, -0.1, 0.2, 0.5, 0.0, 0.9, -2.0, 0.4])
    assert stats.sign_test(x) == pytest.approx(sps.binomtest(5, 7, 0.5, alternative="greater").pvalue)


def test_hits_at_random_is_the_hypergeometric_law_by_hand():
    def tail(c):  # P(X >= c), X ~ Hypergeometric(40 items, 10 hits, 8 drawn)
        return sum(math.comb(10, x) * math.comb(30, 8 - x) for x in range(c, 9)) / math.comb(40, 8)
    for c in (1, 2, 4, 6):
        assert stats.hits_at_random(40, 10, 8, observed=c)["p"] == pytest.approx(tail(c))
    h = stats.hits_at_random(40, 10, 8, observed=0)
    assert h["mean"] == pytest.approx(2.0) and h["p"] == 1.0
    cdf = np.cumsum([math.comb(10, x) * math.comb(30, 8 - x) / math.comb(40, 8) for x in range(9)])
    assert h["q95"] == int(np.argmax(cdf >= 0.95))
    with pytest.raises(ValueError):
        stats.hits_at_random(10, 11, 3)


def test_jaccard_null_matches_brute_force_enumeration():
    import itertools

    # two random 1-sets of 4: Jaccard 1 with probability 1/4, else 0
    mean, hi = stats.jaccard_null(1, 1, 4)
    assert mean == pytest.approx(0.25) and hi == 1.0
    # every pair of a 3-set and a 4-set of 8 components, weighted equally
    js = [len(set(a) & set(b)) / len(set(a) | set(b))
          for a in itertools.combinations(range(8), 3) for b in itertools.combinations(range(8), 4)]
    mean, hi = stats.jaccard_null(3, 4, 8)
    assert mean == pytest.approx(np.mean(js))
    assert hi == min(j for j in sorted(set(js)) if np.mean(np.array(js) <= j + 1e-12) >= 0.95)
    assert stats.jaccard_null(16, 16, 16) == (1.0, 1.0)
    assert stats.jaccard_null(0, 3, 16) == (0.0, 0.0)
    with pytest.raises(ValueError):
        stats.jaccard_null(5, 17, 16)


def test_censored_median_by_hand():
    assert stats.censored_median([130, 120, None], 400) == "130"  # sorted 120, 130, >400
    assert stats.censored_median([100, None, None, 50], 400) == "> 400"  # the middle two are 100 and > 400
    assert stats.censored_median([10, 20, 30, 40], 400) == "25"
    with pytest.raises(ValueError):
        stats.censored_median([], 400)


def test_bootstrap_of_a_single_unit_is_its_point():
    iv = stats.bootstrap_mean(np.array([2.5]))
    assert (iv.point, iv.lo, iv.hi) == (2.5, 2.5, 2.5)
