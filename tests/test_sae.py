"""SAE and feature-movement invariants: exact reconstruction of a hand-built SAE, learned reconstruction of
sparse data, top-k intersection on hand-built latents, both difference rates, bootstrap intervals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.methods import sae as S
from lib.methods.stats import bootstrap, bootstrap_diff, bootstrap_mean, ratio_of_sums


pytestmark = pytest.mark.usefixtures("one_thread")



def _signed_identity_sae(d: int) -> S.SAE:
    """d_sae = 2d latents: +e_i and -e_i. ReLU keeps the positive and negative parts; k = d suffices."""
    W_dec = torch.cat([torch.eye(d), -torch.eye(d)])
    return S.SAE(W_enc=W_dec.T.clone(), b_enc=torch.zeros(2 * d), W_dec=W_dec, b_dec=torch.zeros(d), scale=1.0, k=d)


def test_decode_encode_exact_on_hand_built_sae():
    sae = _signed_identity_sae(8)
    x = torch.randn(6, 8)
    z = S.encode(sae, x)
    assert z.shape == (6, 16)
    assert (z >= 0).all() and ((z > 0).sum(1) <= sae.k).all()
    torch.testing.assert_close(S.decode(sae, z), x)
    assert S.fvu(sae, x) < 1e-10


def test_dead_fraction_counts_latents_never_active():
    sae = _signed_identity_sae(4)  # latents 0-3 fire on positive coordinates, 4-7 on negative ones
    x = torch.tensor([[1.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])  # only latents 0 and 1 ever fire
    assert S.dead_fraction(sae, x) == pytest.approx(6 / 8)
    assert S.dead_fraction(sae, torch.cat([x, -torch.ones(1, 4), torch.ones(1, 4)])) == 0.0


def test_encode_keeps_k_largest_and_scale_bias_roundtrip():
    sae = _signed_identity_sae(8)
    sae.k = 2
    x = torch.tensor([[3.0, -5.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0]])
    z = S.encode(sae, x)
    assert (z > 0).sum() == 2
    assert z[0, 0] == 3.0 and z[0, 8 + 1] == 5.0  # +e_0 and -e_1 kept
    # scale and b_dec are undone by decode
    sae2 = _signed_identity_sae(8)
    sae2.scale, sae2.b_dec = 2.5, torch.arange(8.0)
    y = torch.randn(4, 8)
    torch.testing.assert_close(S.decode(sae2, S.encode(sae2, y)), y)


def test_trained_sae_reconstructs_sparse_data():
    g = torch.Generator().manual_seed(0)
    d_in, n_atoms = 8, 6
    atoms = torch.randn(n_atoms, d_in, generator=g)
    coef = torch.rand(4000, n_atoms, generator=g) * (torch.rand(4000, n_atoms, generator=g) < 0.3)
    x = coef @ atoms + 0.5
    sae, hist = S.train_sae(x, d_sae=12, k=4, steps=600, batch_size=256, lr=3e-3, seed=0)
    assert hist["mse"][-1] < hist["mse"][0]
    assert S.fvu(sae, x) < 0.05
    rel_err = (S.decode(sae, S.encode(sae, x)) - x).norm(dim=1) / x.norm(dim=1)
    assert rel_err.median() < 0.15  # rows with more than k active atoms cannot be exact
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(12), atol=1e-5)


def test_topk_intersection_hand_built():
    # row 0: top-2 of a = {0, 1}, of b = {1, 2} -> 1; row 1: identical -> 2; row 2: disjoint -> 0
    a = torch.tensor([[5.0, 4.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0], [9.0, 8.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 4.0, 5.0, 0.0], [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 9.0, 8.0]])
    assert S.topk_intersection(a, b, 2).tolist() == [1, 2, 0]
    assert S.topk_intersection(a, b, 4).tolist() == [4, 4, 4]
    assert S.topk_intersection(a, b, 1).tolist() == [0, 1, 0]
    # top-k is over the feature axis (last), not the batch/sequence axis: a [batch, pos, feat] tensor works per token
    a3 = torch.stack([a, b])  # [2, 3, 4]
    assert S.topk_intersection(a3, a3.flip(0), 2).tolist() == [[1, 2, 0], [1, 2, 0]]


def test_topk_intersection_brute_force():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(50, 20, generator=g), torch.randn(50, 20, generator=g)
    for k in (1, 3, 7):
        got = S.topk_intersection(a, b, k)
        want = [len(set(a[i].argsort(descending=True)[:k].tolist()) & set(b[i].argsort(descending=True)[:k].tolist()))
                for i in range(50)]
        assert got.tolist() == want


def test_difference_rates():
    r = S.difference_rates(i_s=2.83, i_g=3.51, k=5)  # the source's Mistral row
    assert r["relative"] == pytest.approx((3.51 - 2.83) / 3.51)
    assert r["nonoverlap"] == pytest.approx((3.51 - 2.83) / (5 - 3.51))
    assert r["relative"] == pytest.approx(0.1937, abs=1e-3) and r["nonoverlap"] == pytest.approx(0.4564, abs=1e-3)


def test_intersections_units_and_summary():
    # 2 task sequences (3 + 1 tokens), 2 general sequences
    task = S.Intersections({2: np.array([0.0, 1.0, 2.0, 1.0])}, np.array([0, 0, 0, 1]))
    gen = S.Intersections({2: np.array([2.0, 2.0, 1.0, 2.0])}, np.array([0, 1, 1, 1]))
    np.testing.assert_allclose(task.units(2), [[3.0, 3.0], [1.0, 1.0]])
    summ = S.movement_summary(task, gen, k=2, n_boot=200)
    assert summ["I_S"] == pytest.approx(1.0) and summ["I_G"] == pytest.approx(1.75)
    assert summ["diff"].point == pytest.approx(0.75)
    assert summ["relative"].point == pytest.approx(0.75 / 1.75)
    assert summ["nonoverlap"].point == pytest.approx(0.75 / 0.25)
    row = S.summary_row("x", summ)
    assert row["diff_lo"] <= row["diff"] <= row["diff_hi"]


def test_token_intersections_same_model_is_k_and_shapes():
    from lib.organisms.models import ModelSpec, build_model

    model = build_model(ModelSpec(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_ctx=24, d_vocab=20)).eval()
    other = build_model(ModelSpec(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_ctx=24, d_vocab=20, seed=1)).eval()
    toks = torch.randint(0, 20, (6, 10))
    mask = torch.ones_like(toks, dtype=torch.bool)
    mask[:, 7:] = False
    hook = "blocks.1.hook_resid_post"
    sae, _ = S.base_sae(model, toks, mask, hook, expansion=2, k=4, steps=50)
    same = S.token_intersections(sae, model, model, toks, mask, hook, ks=(1, 4))
    assert same.per_token[4].shape == (42,) and (same.per_token[4] == 4).all() and (same.per_token[1] == 1).all()
    diff = S.token_intersections(sae, model, other, toks, mask, hook, ks=(4,))
    assert diff.mean(4) < 4
    assert set(np.unique(diff.seq)) == set(range(6))


def test_bootstrap_intervals():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, 400)
    iv = bootstrap_mean(x, n_boot=500)
    assert iv.lo < 1.0 < iv.hi and iv.lo < iv.point < iv.hi and iv.excludes(0.0)
    d = bootstrap_diff(x, rng.normal(1.0, 1.0, 400), n_boot=500)
    assert not d.excludes(0.0)
    units = np.array([[3.0, 3.0], [1.0, 1.0]])
    assert ratio_of_sums(units) == 1.0
    const = bootstrap(lambda a: float(a.mean()), np.ones(10), n_boot=50)
    assert const.lo == const.hi == const.point == 1.0
    with pytest.raises(ValueError):
        bootstrap(np.mean, np.array([]))


def test_cached_base_sae_roundtrip(tmp_path):
    from types import SimpleNamespace

    from lib.organisms.cache import ArtifactCache
    from lib.organisms.models import ModelSpec, build_model

    model = build_model(ModelSpec(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_ctx=12, d_vocab=10)).eval()
    org = SimpleNamespace(model=model, key="tiny-organism")
    toks = torch.randint(0, 10, (8, 6))
    mask = torch.ones_like(toks, dtype=torch.bool)
    cache = ArtifactCache(tmp_path)
    a, hist, created = S.cached_base_sae(org, toks, mask, "blocks.0.hook_resid_post", expansion=2, k=3, steps=20,
                                         cache=cache)
    b, hist2, created2 = S.cached_base_sae(org, toks, mask, "blocks.0.hook_resid_post", expansion=2, k=3, steps=20,
                                           cache=cache)
    assert created and not created2 and hist == hist2
    x = torch.randn(5, 16)
    torch.testing.assert_close(S.decode(a, S.encode(a, x)), S.decode(b, S.encode(b, x)))
    _, _, created3 = S.cached_base_sae(org, toks, mask, "blocks.0.hook_resid_post", expansion=2, k=4, steps=20,
                                       cache=cache)
    assert created3  # another setting, another SAE


def test_paired_excess_by_hand_and_pairing():
    """Point value by hand; a control equal to the fine-tune gives exactly 0 with a zero-width paired interval
    (an unpaired bootstrap would not); a fine-tune that moves only task tokens is above its control."""
    seq_S, seq_G = np.repeat(np.arange(20), 3), np.repeat(np.arange(30), 2)
    rng = np.random.default_rng(0)
    gS, gG = rng.integers(0, 6, 60).astype(float), rng.integers(0, 6, 60).astype(float)  # shared noise
    ctl_S, ctl_G = S.Intersections({5: gS}, seq_S), S.Intersections({5: gG}, seq_G)
    ft_S, ft_G = S.Intersections({5: np.clip(gS - 1, 0, 5)}, seq_S), S.Intersections({5: gG}, seq_G)
    want = (gG.mean() - np.clip(gS - 1, 0, 5).mean()) - (gG.mean() - gS.mean())
    iv = S.paired_excess(ft_S, ft_G, ctl_S, ctl_G, 5, n_boot=300)
    assert iv.point == pytest.approx(want) and iv.lo > 0
    same = S.paired_excess(ctl_S, ctl_G, ctl_S, ctl_G, 5, n_boot=100)
    assert same.point == 0 and same.lo == 0 and same.hi == 0
    with pytest.raises(ValueError, match="same tokens"):
        S.paired_excess(ft_S, ft_G, S.Intersections({5: gS[:30]}, seq_S[:30]), ctl_G, 5)
    # the rate (I_G - I_S) / I_G: a control whose general overlap also fell is not floored by its own I_G
    ctl_G2 = S.Intersections({5: gG / 2}, seq_G)
    want_rate = ((gG.mean() - np.clip(gS - 1, 0, 5).mean()) / gG.mean()
                 - (gG.mean() / 2 - gS.mean()) / (gG.mean() / 2))
    iv_rate = S.paired_excess(ft_S, ft_G, ctl_S, ctl_G2, 5, n_boot=100, rate=True)
    assert iv_rate.point == pytest.approx(want_rate)
    assert S.paired_excess(ctl_S, ctl_G, ctl_S, ctl_G, 5, n_boot=50, rate=True).point == 0


def test_residual_acts_stop_after_their_block_and_equal_the_full_pass():
    """A hook inside block L is read by a pass that stops after block L: the values are the full pass's, bit for
    bit, and blocks above L do not run (the last block's output hook fires only for hooks in that block)."""
    from lib.organisms.models import ModelSpec, build_model

    model = build_model(ModelSpec(n_layers=3, d_model=16, n_heads=2, d_mlp=32, n_ctx=12, d_vocab=20))
    toks = torch.randint(0, 20, (5, 9), generator=torch.Generator().manual_seed(0))
    fired = []
    model.add_hook("blocks.2.hook_resid_post", lambda act, hook: fired.append(hook.name))
    for hook in ("blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.2.hook_resid_post", "hook_embed"):
        fired.clear()
        with torch.no_grad():
            _, full = model.run_with_cache(toks, names_filter=lambda n: n == hook)
        fired.clear()
        got = S.residual_acts(model, toks, hook)  # one batch of 5, as the full pass
        assert torch.equal(got, full[hook].float()), hook
        assert bool(fired) == hook.startswith("blocks.2") or hook == "hook_embed", (hook, fired)
    model.reset_hooks()
