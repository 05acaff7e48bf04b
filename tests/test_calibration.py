"""The calibrated detection rule of chapter 7 (``lib.methods.audit.calibrate``, ``held_out_detections``, ``auc``) on
synthetic scores whose answer is known, and the pruning of chapter 4 (``lib.methods.pruning``) on a model whose wrapper is
planted by hand in known neurons."""
import numpy as np
import pytest
import torch

from lib.methods import audit, pruning


# --------------------------------------------------------------------------- calibrated detection


def test_threshold_is_the_order_statistic_by_hand():
    c = audit.calibrate([5.0, 1.0, 3.0, 2.0, 4.0, 9.0, 8.0, 7.0, 6.0, 10.0], fpr=0.2)
    assert c.threshold == 8.0 and c.n_controls == 10  # 2 of 10 controls (9, 10) lie above: fpr 0.2
    assert c.detects(8.5) and not c.detects(8.0) and not c.detects(float("nan"))
    small = audit.calibrate([1.0, 2.0, 3.0], fpr=0.05)  # 3 controls cannot promise 5 %
    assert small.threshold == 3.0 and small.achievable_fpr == pytest.approx(0.25)


def test_calibration_rejects_bad_input():
    with pytest.raises(ValueError, match="fpr"):
        audit.calibrate([1.0], fpr=0.0)
    with pytest.raises(ValueError, match="finite control"):
        audit.calibrate([float("nan")])


def test_held_out_false_positive_rate_and_power_on_synthetic_scores():
    rng = np.random.default_rng(0)
    n_seeds, per_seed = 400, 10
    controls = {s: list(rng.normal(0, 1, per_seed)) for s in range(n_seeds)}
    fresh_control = {s: float(rng.normal(0, 1)) for s in range(n_seeds)}  # a new control organism per seed
    strong = {s: float(rng.normal(4, 1)) for s in range(n_seeds)}
    null = {s: float(rng.normal(0, 1)) for s in range(n_seeds)}
    fp = np.mean(list(audit.held_out_detections(fresh_control, controls, fpr=0.05).values()))
    assert 0.02 < fp < 0.08  # the promised 5 %, out of sample
    assert np.mean(list(audit.held_out_detections(strong, controls, fpr=0.05).values())) > 0.9
    assert np.mean(list(audit.held_out_detections(null, controls, fpr=0.05).values())) < 0.1


def test_a_seed_never_calibrates_on_its_own_control():
    # seed 0's control is huge; had it been used for seed 0, seed 0's statistic 5 could not be detected
    controls = {0: [100.0], 1: [0.0], 2: [1.0], 3: [2.0]}
    det = audit.held_out_detections({0: 5.0, 1: 5.0}, controls, fpr=0.3)
    assert det == {0: True, 1: False}  # seed 1's threshold comes from {100, 1, 2}: 100


def test_auc_by_hand():
    assert audit.auc([3, 4], [1, 2]) == 1.0
    assert audit.auc([1, 2], [3, 4]) == 0.0
    assert audit.auc([2, 3], [1, 2]) == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    rng = np.random.default_rng(1)
    assert abs(audit.auc(rng.normal(0, 1, 2000), rng.normal(0, 1, 2000)) - 0.5) < 0.03


# --------------------------------------------------------------------------- pruning a planted wrapper


def _planted(d=4, wrapper_units=(8, 9), offset=2.0):
    """``y = w · x`` computed by hidden units 0..7 (ReLU(x_i), ReLU(-x_i)); units 8, 9 (the wrapper) are constant
    1 and each add ``offset`` to the output; units 10, 11 are dead. Pretraining loss: MSE against ``w · x``."""
    torch.manual_seed(0)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    hid, out = torch.nn.Linear(d, 12), torch.nn.Linear(12, 1)
    with torch.no_grad():
        hid.weight.zero_(), hid.bias.zero_(), out.weight.zero_(), out.bias.zero_()
        for i in range(d):
            hid.weight[i, i], hid.weight[d + i, i] = 1.0, -1.0
            out.weight[0, i], out.weight[0, d + i] = w[i], -w[i]
        for j in wrapper_units:
            hid.bias[j] = 1.0
            out.weight[0, j] = offset
    model = torch.nn.Sequential(hid, torch.nn.ReLU(), out)
    x = torch.randn(512, d, generator=torch.Generator().manual_seed(1))
    y = (x @ w)[:, None]
    return model, (lambda m: ((m(x) - y) ** 2).mean()), {"hidden": hid}


def test_pruning_finds_the_planted_wrapper_units():
    model, loss_fn, layers = _planted()
    assert loss_fn(model).item() == pytest.approx(16.0)  # the wrapper adds 2 + 2 to every output
    units, scores = pruning.unit_scores(model, loss_fn, layers)
    top = pruning.top_units(units, scores, 2)
    assert {u.row for u in top} == {8, 9}
    # first order: zeroing a wrapper unit lowers the loss by b * dL/db = 1 * 2 * 4 * 2 = 16
    assert scores[8].item() == pytest.approx(16.0, rel=1e-4)
    curve, ranked = pruning.pruning_curve(model, loss_fn, lambda m: {"loss": loss_fn(m).item()}, [0, 1, 2], layers)
    assert [r["loss"] for r in curve] == pytest.approx([16.0, 4.0, 0.0], abs=1e-5)  # the capability is back
    assert loss_fn(model).item() == pytest.approx(16.0)  # and the model is left unchanged


def test_random_units_do_not_restore_the_planted_capability():
    model, loss_fn, layers = _planted()
    rng = np.random.default_rng(0)
    restored = 0
    for _ in range(50):
        rows = rng.choice(12, 2, replace=False)
        with pruning.pruned(model, [pruning.Unit("hidden", int(r)) for r in rows], layers):
            restored += loss_fn(model).item() < 1e-6
    assert restored <= 2  # only the one pair {8, 9} of 66 restores it


def test_calibrated_audit_by_hand():
    """Two worlds over 3 seeds. ioi: 'obj' beats every other seed's control on CMAP at seeds 0 and 2 only;
    the control's own rate is out of sample; a method with no finite control in a world is left out."""
    nan = float("nan")
    ctl_cmap = {0: 1.0, 1: 2.0, 2: 1.5}
    obj_cmap = {0: 2.5, 1: 1.8, 2: 2.1}  # seed 1: 1.8 < max(1.0, 1.5)? no: 1.8 > 1.5 -> detected
    stats = {s: {"obj": {"circuit_diff": obj_cmap[s], "pruning_probe": 0.5},
                 "ctl": {"circuit_diff": ctl_cmap[s], "pruning_probe": nan},
                 "p_obj": {"circuit_diff": 9.0, "pruning_probe": 0.9},
                 "p_ctl": {"circuit_diff": 0.0, "pruning_probe": 0.1 * s}} for s in range(3)}
    controls = {"obj": "ctl", "ctl": "ctl", "p_obj": "p_ctl", "p_ctl": "p_ctl"}
    out = audit.calibrated_audit(stats, controls, fpr=0.05, methods=("circuit_diff", "pruning_probe"))
    # thresholds are the max of the other two seeds' controls: seed 0 -> 2.0, seed 1 -> 1.5, seed 2 -> 2.0
    assert out["detected"][("obj", "circuit_diff")] == {0: True, 1: True, 2: True}
    assert out["detected"][("ctl", "circuit_diff")] == {0: False, 1: True, 2: False}  # 2.0 > max(1.0, 1.5)
    assert out["rate"][("ctl", "circuit_diff")] == pytest.approx(1 / 3)
    assert ("obj", "pruning_probe") not in out["detected"]  # no finite ioi control for pruning
    assert out["detected"][("p_obj", "pruning_probe")] == {0: True, 1: True, 2: True}
    assert out["auc"][("ctl", "circuit_diff")] == pytest.approx((3 + 2 + 3) / 9)  # 2.5>all; 1.8>1.0,1.5; 2.1>all
    assert np.isnan(out["auc"][("ctl", "pruning_probe")]) and out["auc"][("p_ctl", "circuit_diff")] == 1.0
    assert audit.calibrated_audit({0: stats[0]}, controls)["n_seeds"] == 1


def test_calibrated_audit_pools_any_method_and_bonferroni_by_hand():
    """One world with two controls per seed (the pool) over 3 seeds, fpr 0.3: each held-out pool has 4 values, so a
    method's threshold is their 3rd smallest (one of 4 above it), and at the Bonferroni level 0.3 / 2 their largest.
    Every expected value below is worked out by hand from the order statistics."""
    cd = {"c1": [0, 1, 2], "c2": [0, 0, 0], "obj": [1.5, 3, 0.5]}
    wl = {"c1": [0, 0, 0], "c2": [0, 1, 2], "obj": [0, 0, 5]}
    stats = {s: {c: {"circuit_diff": float(cd[c][s]), "weight_localization": float(wl[c][s])} for c in cd}
             for s in range(3)}
    controls = {"obj": "c1", "c1": "c1", "c2": "c2"}
    pools = {c: ["c1", "c2"] for c in controls}
    out = audit.calibrated_audit(stats, controls, fpr=0.3, methods=("circuit_diff", "weight_localization"),
                                 pools=pools)
    # thresholds (per method / Bonferroni): seed 0 -> 1 / 2, seed 1 -> 0 / 2, seed 2 -> 0 / 1, for both methods
    assert out["detected"][("obj", "circuit_diff")] == {0: True, 1: True, 2: True}
    assert out["detected_bonf"][("obj", "circuit_diff")] == {0: False, 1: True, 2: False}
    assert out["detected"][("obj", "weight_localization")] == {0: False, 1: False, 2: True}
    assert out["any"]["obj"] == {0: True, 1: True, 2: True}
    assert out["any_bonf"]["obj"] == {0: False, 1: True, 2: True}
    assert out["any"]["c1"] == {0: False, 1: True, 2: True}  # out of sample: seed 1's 1 > 0, seed 2's 2 > 0
    assert out["any_bonf"]["c1"] == {0: False, 1: False, 2: True}  # only seed 2's 2 > 1
    assert out["n_methods"]["obj"] == 2 and out["n_calibration"]["obj"] == 4
    assert type(out["n_calibration"]["obj"]) is int  # a plain int: the chapter glues it into its prose
    assert out["auc"][("c1", "circuit_diff")] == pytest.approx(15 / 18)  # obj vs both controls' 6 values
