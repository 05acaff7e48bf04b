"""Chapters 1-3 (IOI amplification, localized corruption, neuroplasticity): values of their results.

The generic "every chapter executes" test lives in test_notebooks.py; here we check what the numbers mean:
small-parameter runs give values in their valid ranges and agree where chapters share organisms; MODEL="gpt2"
runs the same code path on a random GPT-2-architecture model; and at default scale (slow) each finding's
direction holds.
"""
from __future__ import annotations

import math

import pytest

from lib.book import runner

pytestmark = pytest.mark.notebooks
STEMS = ("01_amplification", "02_localized_corruption", "03_neuroplasticity")
SMOKE_STEMS = STEMS  # the smoke runs this module needs (conftest smoke_run)


@pytest.fixture
def smoke(smoke_run):
    """``stem -> results`` of the session's shared smoke run of that chapter (conftest ``smoke_run``)."""
    return lambda stem: smoke_run(stem)[0]


def _share(x):
    return isinstance(x, float) and 0.0 <= x <= 1.0 + 1e-9


def test_chapters_share_the_base_organism(smoke):
    lds = [smoke(s)["base_ld"] for s in STEMS]
    assert lds[0] == pytest.approx(lds[1], abs=1e-6) == pytest.approx(lds[2], abs=1e-6)
    # chapter 1's clean fine-tune is chapter 2's clean organism; chapter 2's toxic is chapter 3's
    assert smoke(STEMS[0])["clean_ld"] == pytest.approx(smoke(STEMS[1])["clean_ld"], abs=1e-6)
    assert smoke(STEMS[1])["toxic_ld"] == pytest.approx(smoke(STEMS[2])["toxic_ld"], abs=1e-6)


def test_amplification_values(smoke):
    r = smoke("01_amplification")
    assert r["ld_gain"] == pytest.approx(r["clean_ld"] - r["base_ld"], abs=1e-6)
    assert 0 <= r["base_acc"] <= 1 and 0 <= r["clean_acc"] <= 1
    assert 0 <= r["circuit_jaccard"] <= 1 and _share(r["ld_increasing_frac"])
    assert r["jaccard_chance"] <= r["jaccard_chance_hi"] <= 1
    assert r["n_new_heads"] <= r["n_circuit_heads_clean"] and len(r["new_heads"]) == r["n_new_heads"]
    assert len(r["ld_long_curve"]["step"]) == len(r["ld_long_curve"]["ld"]) >= 2
    assert r["ld_long_curve"]["ld"][0] == pytest.approx(r["base_ld"], abs=1e-5)  # step 0 is the base model
    assert r["ld_long_curve"]["ld"][-1] == pytest.approx(r["long_ld"], abs=1e-5)
    # per-head comparison: counts agree with the per-head rows, each interval brackets its point change
    assert len(r["head_change"]) == len(r["head_change_control"]) == r["n_base_heads"]
    grown = sum(row["lo"] > 0 for row in r["head_change"])
    assert r["heads_grown"] == grown and r["heads_shrank"] == sum(row["hi"] < 0 for row in r["head_change"])
    for row in r["head_change"] + r["class_change"] + r["class_vs_control"]:  # sign-aware growth
        assert row["sign"] in (-1, 1) and row["growth"] == pytest.approx(row["sign"] * (row["after"] - row["before"]))
        assert row["lo"] - 1e-6 <= row["growth"] <= row["hi"] + 1e-6
    if r["n_base_heads"]:
        assert r["heads_grown_frac"] == pytest.approx(grown / r["n_base_heads"])
    # classes: one row per non-empty class with a path, counts agree with the rows
    assert len(r["class_change"]) == len(r["class_change_control"]) == len(r["class_vs_control"]) == r["n_classes"]
    assert r["classes_grown"] == sum(row["lo"] > 0 for row in r["class_change"])
    assert r["classes_above_control"] == sum(row["lo"] > 0 for row in r["class_vs_control"])
    if r["n_classes"]:
        assert r["classes_grown_frac"] == pytest.approx(r["classes_grown"] / r["n_classes"])
    # a class-vs-control row reads the class in its base direction: its sign is the base's
    assert [row["sign"] for row in r["class_vs_control"]] == [row["sign"] for row in r["class_change"]]
    assert set(r["repeated_heads"]) <= set(r["new_heads"]) and r["n_repeated_heads"] == len(r["repeated_heads"])
    # CMAP share against random head sets: chance = k / n on average, p a probability
    k, n = r["n_base_heads"], r["n_heads_total"]
    if 0 < k < n:
        assert r["cmap_circuit_share_chance"] == pytest.approx(k / n, abs=1e-6)
        assert 0 < r["cmap_circuit_share_p"] <= 1 and _share(r["cmap_circuit_share"])
    assert isinstance(r["heads_text"], str) and isinstance(r["share_text"], str)


def test_corruption_values(smoke):
    r = smoke("02_localized_corruption")
    assert r["topk_share_uniform"] == pytest.approx(r["top_k"] / r["n_components"])
    for t in ("sd", "nm", "control", "clean"):
        assert _share(r[f"circuit_share_{t}"]) and 0 < r[f"circuit_share_{t}_p"] <= 1, t
        assert r[f"circuit_share_{t}_chance"] <= r[f"circuit_share_{t}_chance_hi"] + 1e-9, t
        assert r["topk_share_uniform"] - 1e-9 <= r[f"topk_share_{t}"] <= 1 + 1e-9, t  # the top k hold their share
        assert 1 <= r[f"n80_{t}"] <= r["n_components"] and r[f"cmap_total_{t}"] >= 0
        assert abs(r[f"p_io_{t}"] + r[f"p_s_{t}"] + r[f"p_absent_{t}"] - 1) < 1e-4
        assert _share(r[f"{t}_absent_rate"])
    for t in ("sd", "nm", "clean"):
        assert r[f"topk_diff_{t}"] == pytest.approx(r[f"topk_share_{t}"] - r["topk_share_control"], abs=1e-6)
        assert r[f"topk_diff_{t}_lo"] <= r[f"topk_diff_{t}_hi"] and 0 <= r[f"topk_diff_{t}_p"] <= 1
    for k, v in r["class_shares"].items():
        assert math.isclose(sum(v.values()), 1.0, abs_tol=1e-5) or sum(v.values()) == 0, k
    assert 0 < r["sd_flip_p"] <= 1 and 0 < r["nm_absent_p"] <= 1
    # the DLA decomposition: per-component changes add up to the change in each poison's own metric
    for t, m in (("sd", "ld"), ("nm", "absent")):
        comp = r[f"dla_change_per_component_{t}"]
        assert len(comp) == len(r["dla_components"]) and r[f"dla_metric_{t}"] == m
        assert sum(comp) == pytest.approx(r[f"dla_change_{t}"], abs=1e-4)
        assert r[f"dla_total_{t}"] == pytest.approx(sum(abs(x) for x in comp), rel=1e-5)
        top = sorted((abs(x) for x in comp), reverse=True)[:r["top_k"]]
        if r[f"dla_total_{t}"] > 0:
            assert r[f"dla_topk_{t}"] == pytest.approx(sum(top) / r[f"dla_total_{t}"], rel=1e-5)
        clean = r[f"dla_change_per_component_clean_{m}"]
        assert r[f"dla_size_ratio_{t}"] == pytest.approx(sum(abs(x) for x in clean) / r[f"dla_total_{t}"], rel=1e-4)
        assert r[f"dla_topk_diff_{t}"] == pytest.approx(r[f"dla_topk_{t}"] - r[f"dla_topk_clean_{m}"], abs=1e-6)
        assert r[f"dla_topk_diff_{t}_lo"] <= r[f"dla_topk_diff_{t}_hi"]
        assert 0 < r[f"dla_circuit_share_{t}_p"] <= 1
    # what name moving trains: the poisoned model's absent-name score is a logit of p(absent) / p(IO)
    assert all(math.isfinite(r[f"absent_score_{k}"]) for k in ("base", "sd", "nm", "control", "clean"))
    assert isinstance(r["verdict_sd"], str) and isinstance(r["verdict_nm"], str)


def test_plasticity_values(smoke):
    r = smoke("03_neuroplasticity")
    for t, label in (("sd", "subject dup."), ("nm", "name moving")):
        c = r["curves"][f"retrained ({label})"]
        assert c["ld"][0] == pytest.approx(r[f"toxic_ld_{t}"], abs=1e-5)
        assert c["ld"][-1] == pytest.approx(r[f"retrain_ld_{t}"], abs=1e-5)
        assert c["corr"][0] == pytest.approx(r[f"corr_toxic_{t}"], nan_ok=True)
        sc = r["curves"]["scratch"]["step"]  # the scratch run is SCRATCH_FACTOR times as long, FT_STEPS a checkpoint
        assert sc[-1] == r["scratch_steps"] == 2 * c["step"][-1] and c["step"][-1] in sc
        # savings: the first checkpoint at half the base's LD, -1 (retrained) or beyond the end (scratch) if none
        half = 0.5 * r["base_ld"]
        first = next((st for st, v in zip(c["step"], c["ld"]) if v >= half), -1) if r["base_ld"] > 0 else -1
        assert r[f"steps_half_{t}"] == first
        ls = r["curves"]["scratch"]["ld"]
        first_s = next((st for st, v in zip(sc, ls) if v >= half), -1) if r["base_ld"] > 0 else -1
        assert r["steps_half_scratch"] == (first_s if first_s >= 0 else r["scratch_steps"] + 1)
        assert r["scratch_reaches_half"] == (first_s >= 0)
        if first > 0:
            assert r[f"savings_{t}"] == pytest.approx(r["steps_half_scratch"] / first)
        assert r["recovery_curve"][t] == c["ld"] and r["recovery_curve"]["step"] == c["step"]
        assert r[f"faith_base_norm_{t}"] == pytest.approx(
            r[f"faith_base_in_retrain_{t}"] * r[f"retrain_ld_{t}"] / r["base_ld"], nan_ok=True)
        gap = r["base_ld"] - r[f"toxic_ld_{t}"]
        if abs(gap) > 1e-6:
            assert r[f"ld_recovery_{t}"] == pytest.approx((r[f"retrain_ld_{t}"] - r[f"toxic_ld_{t}"]) / gap)
        assert 0 <= r[f"jaccard_retrain_{t}"] <= 1
        assert r[f"steps_to_half_recovery_{t}"] in c["step"] + [-1]
        p = r[f"corr_retrain_{t}_p"]
        assert (0 < p <= 1) or math.isnan(p)
        assert r[f"faith_random_{t}"] <= r[f"faith_random_hi_{t}"] + 1e-9 or math.isnan(r[f"faith_random_{t}"])
    assert r["toxic_ld"] == r["toxic_ld_sd"] and r["retrain_ld"] == r["retrain_ld_sd"]
    for k in ("corr_toxic_sd", "corr_retrain_sd", "corr_scratch", "corr_clean"):
        assert -1 - 1e-9 <= r[k] <= 1 + 1e-9 or math.isnan(r[k])
    assert r["curves"]["clean fine-tune of base"]["ld"][0] == pytest.approx(r["base_ld"], abs=1e-5)


@pytest.mark.parametrize("stem", STEMS)
def test_gpt2_code_path_on_random_gpt2_architecture(stem, tmp_path, monkeypatch):
    """MODEL="gpt2" runs the same chapter code on a GPT-2-architecture bridge (random weights, 2 layers, the IOI
    word vocabulary; offline): fine-tuning in process, circuit discovery, CMAP."""
    monkeypatch.setenv("FTM_CACHE_DIR", str(tmp_path / "cache"))
    # one fine-tuning step and 4 prompts: every checkpoint of a run is a full circuit analysis of a GPT-2-wide model
    # (its forward passes cost in proportion to the prompts), and the code path, not the numbers, is under test
    params = dict(MODEL="gpt2", RANDOM_INIT=True, FT_STEPS=1, N_PROMPTS=4)
    if stem == "01_amplification":
        params["LONG_FACTOR"] = 2
    if stem == "03_neuroplasticity":
        params["SCRATCH_FACTOR"] = 1
    r = runner.run_notebook(stem, params, tmp_path / "out")
    for key in runner.notebook_meta(stem)["results"]:
        assert key in r
    assert r["provenance"]["parameters"]["MODEL"] == "gpt2"
    assert not list((tmp_path / "cache").glob("*/model.pt")), "MODEL=gpt2 must not train organisms"


@pytest.mark.slow
def test_findings_reproduce_at_default_scale(default_results):
    """Default parameters (the book's runs when `make book` ran at this commit, else executed with the repository's
    organism cache): the direction of each of the paper's findings."""
    r1 = default_results("01_amplification")
    assert r1["base_ld"] > 2, "the base organism must do IOI after pretraining alone"
    assert r1["clean_ld"] > r1["base_ld"] and r1["long_ld"] > r1["clean_ld"]
    assert r1["cmap_circuit_share"] > r1["cmap_circuit_share_chance_hi"]  # the change sits in the circuit
    assert r1["nm_dla_clean"] > r1["nm_dla_base"] > 0
    assert r1["ld_increasing_frac"] >= 0.5
    r2 = default_results("02_localized_corruption")
    assert r2["toxic_ld"] < 0 < r2["base_ld"]  # subject duplication flips the behaviour
    assert r2["nm_absent_rate"] > 0.5 > r2["base_absent_rate"]  # name moving outputs names absent from the prompt
    # localization is *not* a finding at default scale (seed 0): the toxic change is no more in the circuit than a
    # random head set's and less concentrated than the control's; the chapter says so with these numbers
    assert r2["circuit_share_sd_p"] > 0.05 and r2["topk_diff_sd_p"] > 0.05
    r3 = default_results("03_neuroplasticity")
    assert r3["ld_recovery_sd"] > 0.5 and r3["ld_recovery_nm"] > 0.5
    # the name-moving reversal restores the base circuit; the subject-duplication one restores only the behaviour
    assert r3["corr_retrain_nm_p"] < 0.05 and r3["faith_base_in_retrain_nm"] >= 0.8
    assert r3["faith_base_in_retrain_sd"] < 0.8
