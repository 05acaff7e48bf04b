"""lib.methods.stats chance baselines against values computed by hand (the bootstrap itself is tested in test_sae.py)."""
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
    half = 2.776 * np.std(x, ddof=1) / math.sqrt(5)
    assert (iv.point, iv.lo, iv.hi) == pytest.approx((3.0, 3 - half, 3 + half))
    assert stats.mean_ci([2.0, float("nan"), None]).lo == 2.0  # one finite value: no spread
    assert math.isnan(stats.mean_ci([]).point)
    assert stats.t_quantile_975(11) == 2.228 and stats.t_quantile_975(100) == 1.96


def test_jaccard_null_matches_the_hypergeometric_expectation():
    # two random 1-sets of 4: Jaccard 1 with probability 1/4, else 0
    mean, hi = stats.jaccard_null(1, 1, 4, n_draws=40000)
    assert mean == pytest.approx(0.25, abs=0.01) and hi == 1.0
    assert stats.jaccard_null(16, 16, 16) == (1.0, 1.0)
    assert stats.jaccard_null(0, 3, 16) == (0.0, 0.0)
    with pytest.raises(ValueError):
        stats.jaccard_null(5, 17, 16)
