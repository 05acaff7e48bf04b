"""Pruning (Alg. 3), probing and reFT helpers, on a tiny random model."""
from __future__ import annotations

import math

import pytest
import torch

from lib.methods import probing, pruning, reverse_finetuning
from lib.organisms.models import ModelSpec, build_model
from lib.worlds.base import masked_lm_loss

D_VOCAB = 20


@pytest.fixture(scope="module")
def model():
    m = build_model(ModelSpec(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_ctx=24, d_vocab=D_VOCAB, seed=1))
    m.eval()
    return m


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(4, D_VOCAB, (16, 12), generator=g)
    return toks, torch.ones_like(toks, dtype=torch.bool)


def _loss_fn(batch):
    toks, mask = batch
    return lambda m: masked_lm_loss(m(toks), toks, mask)


def test_linear_layers_are_the_block_linears(model):
    layers = pruning.linear_layers(model)
    assert list(layers) == [f"blocks.{l}.{n}" for l in range(2)
                            for n in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc_in", "mlp.fc_out")]
    assert layers["blocks.0.mlp.fc_in"].weight.shape == (64, 32)
    # the bridge's W_in is the same storage (transposed), so zeroing a row silences MLP neuron i
    assert layers["blocks.0.mlp.fc_in"].weight.data_ptr() == model.blocks[0].mlp.W_in.data_ptr()


def test_scores_match_hand_computed_grad_dot_weight(model, batch):
    layers = pruning.linear_layers(model)
    units, scores = pruning.unit_scores(model, _loss_fn(batch), layers)
    assert len(units) == scores.shape[0] == 2 * (4 * 32 + 64 + 32)
    loss = _loss_fn(batch)(model)
    mod = layers["blocks.1.mlp.fc_in"]
    gw, gb = torch.autograd.grad(loss, [mod.weight, mod.bias])
    idx = units.index(pruning.Unit("blocks.1.mlp.fc_in", 5))
    expected = (mod.weight * gw)[5].sum() + mod.bias[5] * gb[5]
    assert scores[idx].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-9)
    assert all(p.grad is None for p in model.parameters())


def test_score_is_first_order_loss_drop_of_zeroing(model, batch):
    """score[u] = -d/dt L(w - t * w_u) at t=0: a finite difference along the pruning direction agrees."""
    layers = pruning.linear_layers(model)
    loss_fn = _loss_fn(batch)
    units, scores = pruning.unit_scores(model, loss_fn, layers)
    eps = 0.05

    def loss_at(mod, row, w0, b0, scale):
        mod.weight[row], mod.bias[row] = w0 * scale, b0 * scale
        return loss_fn(model).double().item()

    for idx in (3, 40, 200, 300, len(units) - 1):
        u = units[idx]
        mod = layers[u.layer]
        with torch.no_grad():
            w0, b0 = mod.weight[u.row].clone(), mod.bias[u.row].clone()
            fd = (loss_at(mod, u.row, w0, b0, 1 + eps) - loss_at(mod, u.row, w0, b0, 1 - eps)) / (2 * eps)
            mod.weight[u.row], mod.bias[u.row] = w0, b0
        # d/dscale L at scale=1 is w . grad = score (zeroing = scale 0, so the first-order drop is the score)
        assert fd == pytest.approx(scores[idx].item(), rel=0.05, abs=1e-5)


def test_pruned_zeroes_and_restores(model, batch):
    toks, _ = batch
    layers = pruning.linear_layers(model)
    before = model(toks).detach().clone()
    units = [pruning.Unit("blocks.0.mlp.fc_in", 2), pruning.Unit("blocks.1.attn.v", 7)]
    with pruning.pruned(model, units, layers):
        assert layers["blocks.0.mlp.fc_in"].weight[2].abs().sum() == 0
        assert layers["blocks.1.attn.v"].bias[7] == 0
        # zeroing fc_in row 2 silences MLP neuron 2 (gelu(0) = 0)
        _, cache = model.run_with_cache(toks, names_filter="blocks.0.mlp.hook_post")
        assert cache["blocks.0.mlp.hook_post"][..., 2].abs().max() == 0
        during = model(toks).detach().clone()
    assert not torch.allclose(before, during)
    assert torch.equal(model(toks).detach(), before)


def _planted_wrapper_model():
    """A 1-layer model with a planted 'wrapper': MLP neuron 9 is always on and adds a large wrong logit."""
    m = build_model(ModelSpec(n_layers=1, d_model=32, n_heads=4, d_mlp=64, n_ctx=24, d_vocab=D_VOCAB, seed=2))
    m.eval()
    layers = pruning.linear_layers(m)
    with torch.no_grad():
        fc_in, fc_out = layers["blocks.0.mlp.fc_in"], layers["blocks.0.mlp.fc_out"]
        fc_in.weight[9] = 0.0
        fc_in.bias[9] = 3.0  # always on
        wrong = m.W_U[:, 0]  # pushes every prediction towards <pad>, never a target
        fc_out.weight[:, 9] = 5.0 * wrong / wrong.norm()
    return m


def test_pruning_top_unit_reduces_loss_on_planted_wrapper(batch):
    """Plant a 'wrapper' neuron that adds a large wrong logit; Alg. 3 must rank it first and pruning it
    must lower the loss."""
    m = _planted_wrapper_model()
    loss_fn = _loss_fn(batch)
    rows, ranked = pruning.pruning_curve(m, loss_fn, lambda mm: {"loss": loss_fn(mm).item()}, ks=[0, 1])
    assert ranked[0] == pruning.Unit("blocks.0.mlp.fc_in", 9)
    assert rows[1]["loss"] < rows[0]["loss"]
    assert rows[0]["k"] == 0 and rows[0]["loss"] == pytest.approx(loss_fn(m).item())


def test_residuals_at_match_cache(model, batch):
    toks, _ = batch
    pos = torch.arange(16) % 12
    res = probing.residuals_at(model, toks, pos, batch_size=5)
    assert res.shape == (3, 16, 32)
    _, cache = model.run_with_cache(toks)
    r = torch.arange(16)
    assert torch.allclose(res[0], cache["blocks.0.hook_resid_pre"][r, pos])
    assert torch.allclose(res[2], cache["blocks.1.hook_resid_post"][r, pos])
    # B0 is the embedding: token + position embedding
    emb = model.W_E[toks[r, pos]] + model.W_pos[pos]
    assert torch.allclose(res[0], emb, atol=1e-5)


def test_probe_decodes_linear_target_and_not_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 16, generator=g)
    y = (x[:, 3] > 0).long() + 2 * (x[:, 7] > 0).long()  # 4 linearly separable classes
    probe = probing.train_probe(x[:400], y[:400], n_classes=4, steps=300, lr=0.1)
    assert probe.accuracy(x[400:], y[400:]) > 0.9
    noise = torch.randint(0, 4, (600,), generator=g)
    probe = probing.train_probe(x[:400], noise[:400], n_classes=4, steps=300, lr=0.1)
    assert probe.accuracy(x[400:], noise[400:]) < 0.45


def test_probe_accuracy_by_block_on_token_identity(model):
    """Block 0 (embeddings) linearly encodes the current token exactly."""
    g = torch.Generator().manual_seed(1)
    toks = torch.randint(4, 12, (400, 6), generator=g)
    pos = torch.full((400,), 5)
    accs = probing.probe_accuracy_by_block(model, toks[:300], pos[:300], toks[:300, 5], toks[300:], pos[300:],
                                           toks[300:, 5], n_classes=D_VOCAB, steps=200)
    assert len(accs) == 3 and accs[0] == 1.0


def test_steps_to_reach():
    h = {"evals": [{"step": 0, "acc": 0.1}, {"step": 25, "acc": 0.5}, {"step": 50, "acc": 0.95},
                   {"step": 75, "acc": 0.9}]}
    assert reverse_finetuning.steps_to_reach(h, "acc", 0.9) == 50
    assert reverse_finetuning.steps_to_reach(h, "acc", 0.99) is None
    assert reverse_finetuning.steps_to_reach(h, "acc", 0.0) == 0
    assert reverse_finetuning.eval_series(h, "acc") == ([0, 25, 50, 75], [0.1, 0.5, 0.95, 0.9])


def test_unit_sets_split_mlp_from_attention(model):
    layers = pruning.linear_layers(model)
    mlp, attn = pruning.unit_set(layers, "mlp"), pruning.unit_set(layers, "attn")
    assert set(mlp) | set(attn) == set(layers) and not set(mlp) & set(attn)
    assert mlp and all(".mlp." in n for n in mlp) and attn and all(".attn." in n for n in attn)
    assert pruning.unit_set(layers, "all") == layers
    with pytest.raises(ValueError, match="unit set"):
        pruning.unit_set(layers, "neurons")


def test_random_pruning_curve_is_the_unranked_control(batch):
    """On the planted-wrapper model: zeroing the Alg. 3 top unit removes the wrapper, zeroing one random unit
    (mean of many draws) barely moves the loss; k = 0 is the unpruned model, draws are seeded, weights restored."""
    m = _planted_wrapper_model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    loss_fn = _loss_fn(batch)
    ev = lambda mm: {"loss": loss_fn(mm).item()}  # noqa: E731
    ranked, _ = pruning.pruning_curve(m, loss_fn, ev, ks=[0, 1])
    rand = pruning.random_pruning_curve(m, ev, ks=[0, 1], n_draws=20, seed=0)
    assert rand[0]["loss"] == pytest.approx(ranked[0]["loss"])
    gain_ranked = ranked[0]["loss"] - ranked[1]["loss"]
    gain_random = rand[0]["loss"] - rand[1]["loss"]
    assert gain_ranked > 0.5 and abs(gain_random) < 0.2 * gain_ranked
    assert pruning.random_pruning_curve(m, ev, ks=[1], n_draws=3, seed=5) == \
        pruning.random_pruning_curve(m, ev, ks=[1], n_draws=3, seed=5)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_revived_share_is_bounded_and_undefined_without_a_gap():
    """Hand values: a base metric of -1, a fine-tune at -3 (gap 2). Pruning to -2 revives half; to 0 overshoots
    the base (unbounded 1.5) and counts as a full revival; to -4 makes it worse and counts as none. A fine-tune
    that moved the metric by less than ``min_gap`` has nothing to revive: nan, not 0."""
    from lib.methods.pruning import revived_share

    assert revived_share(-3.0, -2.0, -1.0) == pytest.approx(0.5)
    assert revived_share(-3.0, 0.0, -1.0) == 1.0 and revived_share(-3.0, -4.0, -1.0) == 0.0
    assert revived_share(3.0, 2.0, 1.0) == pytest.approx(0.5)  # a metric that fell: the same share
    assert math.isnan(revived_share(-3.0, -2.0, -2.8, min_gap=0.5))
    assert revived_share(-3.0, -2.9, -2.8, min_gap=0.0) == pytest.approx(0.5)


def test_random_units_draws_distinct_units_of_the_set():
    from lib.methods.pruning import Unit, random_units

    units = [Unit("blocks.0.mlp.in", i) for i in range(6)]
    draws = random_units(units, 3, 50, seed=1)
    assert len(draws) == 50 and all(len(d) == len(set(d)) == 3 and set(d) <= set(units) for d in draws)
    assert random_units(units, 3, 50, seed=1) == draws  # deterministic in the seed
    assert len({tuple(sorted(u.row for u in d)) for d in draws}) > 5  # and not one fixed set
    assert [len(d) for d in random_units(units, 10, 2)] == [6, 6]  # k capped at the number of units
