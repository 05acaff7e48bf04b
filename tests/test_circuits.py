"""lib.patching and lib.circuits against brute force on tiny random models (no training, a few seconds)."""
from __future__ import annotations

import copy

import pytest
import torch

from lib import circuits, ioi, patching
from lib.models import ModelSpec, build_model

TOK = ioi.make_tokenizer()


def tiny(seed: int = 0, attn_only: bool = False):
    m = build_model(ModelSpec(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_ctx=24, d_vocab=len(TOK),
                              attn_only=attn_only, seed=seed))
    m.eval()
    return m


@pytest.fixture(scope="module")
def data():
    ds = ioi.make_ioi_dataset(TOK, 12, 3, templates=[0, 1])
    cor = ioi.make_ioi_dataset(TOK, 12, 3, templates=[0, 1], corrupt=True)
    return ds, cor


@pytest.fixture(scope="module")
def model():
    return tiny(0)


@pytest.fixture(scope="module")
def runs(model, data):
    return circuits.ioi_runs(model, *data)


def _with_z(model, toks, layer, head, src, pos=None):
    """Brute force: run ``model`` with head (layer, head)'s z replaced by ``src`` (all positions or one per row)."""
    rows = torch.arange(toks.shape[0])

    def hook(z, hook):
        z = z.clone()
        if pos is None:
            z[:, :, head] = src[:, :, head]
        else:
            z[rows, pos, head] = src[rows, pos, head]
        return z
    with torch.no_grad():
        return model.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])


def test_corrupt_set_aligns(data):
    ds, cor = data
    assert ds.toks.shape == cor.toks.shape
    s2 = ds.word_pos["S2"]
    rows = torch.arange(len(ds))
    assert torch.equal(ds.toks[rows, s2], ds.s_ids)
    assert not torch.equal(cor.toks[rows, s2], ds.s_ids)
    mask = torch.ones_like(ds.toks, dtype=torch.bool)
    mask[rows, s2] = False
    assert torch.equal(ds.toks[mask], cor.toks[mask])


def test_dla_decomposes_logit_diff(model, runs, data):
    ds, _ = data
    d = circuits.component_dla(model, runs.clean_cache, ds)
    total = d["heads"].sum() + d["attn_bias"].sum() + d["mlps"].sum() + d["embed"] + d["pos_embed"] + d["const"]
    assert total.item() == pytest.approx(runs.ld_clean, abs=1e-4)


def test_head_dla_matches_removing_head_with_frozen_scale(model, runs, data):
    ds, _ = data
    dla = circuits.head_dla(model, runs.clean_cache, ds)
    rows = torch.arange(len(ds))
    scale = runs.clean_cache["ln_final.hook_scale"]
    for layer, head in [(0, 1), (1, 3)]:
        out = torch.einsum("bpd,dm->bpm", runs.clean_cache[f"blocks.{layer}.attn.hook_z"][:, :, head],
                           model.blocks[layer].attn.W_O[head])

        def drop(x, hook):
            return x - out

        def freeze(x, hook):
            return scale
        with torch.no_grad():
            logits = model.run_with_hooks(ds.toks, fwd_hooks=[("ln_final.hook_in", drop),
                                                               ("ln_final.hook_scale", freeze)])
        brute = runs.ld_clean - ioi.logit_diff(logits, ds).item()
        assert dla[layer, head].item() == pytest.approx(brute, abs=1e-4)
    assert rows.numel() == len(ds)


def test_head_patch_matches_brute_force(model, runs, data):
    ds, _ = data
    got = patching.head_patch(model, ds.toks, runs.corrupt_cache, runs.metric)
    assert got.shape == (2, 4)
    for layer in range(2):
        for head in range(4):
            brute = ioi.logit_diff(_with_z(model, ds.toks, layer, head, runs.corrupt_cache[f"blocks.{layer}.attn.hook_z"]), ds)
            assert got[layer, head].item() == pytest.approx(brute.item(), abs=1e-5)


def test_mlp_patch_matches_brute_force(model, runs, data):
    ds, _ = data
    got = patching.mlp_patch(model, ds.toks, runs.corrupt_cache, runs.metric)
    for layer in range(2):
        src = runs.corrupt_cache[f"blocks.{layer}.hook_mlp_out"]
        with torch.no_grad():
            logits = model.run_with_hooks(ds.toks, fwd_hooks=[(f"blocks.{layer}.hook_mlp_out", lambda x, hook: src)])
        assert got[layer].item() == pytest.approx(ioi.logit_diff(logits, ds).item(), abs=1e-5)


def test_head_pos_patch_matches_brute_force(model, runs, data):
    ds, _ = data
    pos = {"S2": ds.word_pos["S2"], "END": ds.end_pos}
    got = patching.head_pos_patch(model, ds.toks, runs.corrupt_cache, runs.metric, pos)
    assert got.shape == (2, 4, 2)
    z0 = runs.corrupt_cache["blocks.0.attn.hook_z"]
    brute = ioi.logit_diff(_with_z(model, ds.toks, 0, 2, z0, pos=ds.word_pos["S2"]), ds)
    assert got[0, 2, 0].item() == pytest.approx(brute.item(), abs=1e-5)
    # patching S2 in a layer-0 head matters; patching END in the last layer equals its all-position patch there
    allpos = patching.head_patch(model, ds.toks, runs.corrupt_cache, runs.metric)
    assert torch.allclose(got[1, :, 1], allpos[1], atol=1e-5)


def test_cmap_matches_brute_force_and_self_patch_is_identity(model, data):
    ds, _ = data
    other = tiny(seed=1)
    res = patching.cmap(model, other, ds.toks, patching.ld_metric(ds))
    _, src = patching.run_cache(other, ds.toks)
    brute = ioi.logit_diff(_with_z(model, ds.toks, 1, 2, src["blocks.1.attn.hook_z"]), ds)
    assert res.heads[1, 2].item() == pytest.approx(brute.item(), abs=1e-5)
    assert res.target_value == pytest.approx(ioi.logit_diff(model(ds.toks), ds).item(), abs=1e-5)
    assert res.source_value == pytest.approx(ioi.logit_diff(other(ds.toks), ds).item(), abs=1e-5)
    names, vals = res.components()
    assert len(names) == vals.numel() == 2 * 4 + 2
    same = patching.cmap(model, model, ds.toks, patching.ld_metric(ds))
    assert same.delta_heads().abs().max() < 1e-5 and same.delta_mlps().abs().max() < 1e-5


def test_path_patch_to_logits_matches_residual_brute_force(data):
    """Attention-only model: freezing all other heads, the sender's path to the logits is exactly
    final_resid + (z_corrupt − z_clean) W_O passed through the final LayerNorm and unembedding."""
    ds, cor = data
    m = tiny(seed=2, attn_only=True)
    r = circuits.ioi_runs(m, ds, cor)
    got = patching.path_patch_to_logits(m, ds.toks, r.clean_cache, r.corrupt_cache, r.metric)
    for layer, head in [(0, 0), (0, 3), (1, 1)]:
        dz = (r.corrupt_cache[f"blocks.{layer}.attn.hook_z"] - r.clean_cache[f"blocks.{layer}.attn.hook_z"])[:, :, head]
        delta = dz @ m.blocks[layer].attn.W_O[head]
        with torch.no_grad():
            logits = m.run_with_hooks(ds.toks, fwd_hooks=[("ln_final.hook_in", lambda x, hook: x + delta)])
        assert got[layer, head].item() == pytest.approx(ioi.logit_diff(logits, ds).item(), abs=1e-4)
    # a last-layer head has no downstream heads: its path effect equals plain activation patching
    act = patching.head_patch(m, ds.toks, r.corrupt_cache, r.metric)
    assert torch.allclose(got[1], act[1], atol=1e-5)


def test_path_patch_to_queries_matches_brute_force(data):
    ds, cor = data
    m = tiny(seed=3, attn_only=True)
    r = circuits.ioi_runs(m, ds, cor)
    recv = [(1, 2)]
    got = patching.path_patch_to_heads(m, ds.toks, r.clean_cache, r.corrupt_cache, r.metric, recv, "q", ds.end_pos)
    assert torch.isnan(got[1]).all() and not torch.isnan(got[0]).any()
    rows = torch.arange(len(ds))
    sender = 1
    dz = (r.corrupt_cache["blocks.0.attn.hook_z"] - r.clean_cache["blocks.0.attn.hook_z"])[:, :, sender]
    delta = dz @ m.blocks[0].attn.W_O[sender]
    store = {}
    with torch.no_grad():
        m.run_with_hooks(ds.toks, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: x + delta),
                                             ("blocks.1.attn.hook_q", lambda x, hook: store.setdefault("q", x.clone()))])

        def patch_q(q, hook):
            q = q.clone()
            q[rows, ds.end_pos, 2] = store["q"][rows, ds.end_pos, 2]
            return q
        logits = m.run_with_hooks(ds.toks, fwd_hooks=[("blocks.1.attn.hook_q", patch_q)])
    assert got[0, sender].item() == pytest.approx(ioi.logit_diff(logits, ds).item(), abs=1e-5)
    with pytest.raises(ValueError):
        patching.path_patch(m, ds.toks, r.clean_cache, r.corrupt_cache, [(1, 0)], r.metric, [(1, 2)], "q")


def test_faithfulness_bounds(model, runs):
    all_heads = [(l, h) for l in range(2) for h in range(4)]
    assert circuits.faithfulness(runs, all_heads) == pytest.approx(1.0, abs=1e-5)
    # no heads kept == every head replaced by its per-template corrupted mean
    ds = runs.ds
    tmpl = torch.tensor(ds.templates)
    hooks = []
    for l in range(2):
        z = runs.corrupt_cache[f"blocks.{l}.attn.hook_z"]
        mean = torch.stack([z[tmpl == t].mean(0) for t in ds.templates])
        hooks.append((f"blocks.{l}.attn.hook_z", lambda x, hook, mean=mean: mean))
    with torch.no_grad():
        brute = ioi.logit_diff(model.run_with_hooks(ds.toks, fwd_hooks=hooks), ds).item()
    assert circuits.faithfulness(runs, []) == pytest.approx(brute / runs.ld_clean, rel=1e-4, abs=1e-5)


def test_attention_scores_match_pattern(runs):
    att = circuits.ioi_attention(runs)
    ds = runs.ds
    pat = runs.clean_cache["blocks.1.attn.hook_pattern"]
    i = 5
    assert att["end_io"][1, 3].item() == pytest.approx(
        pat[:, 3, ds.end_pos, ds.word_pos["IO"]].diagonal().mean().item(), abs=1e-6)
    assert pat[i, 3, ds.end_pos[i]].sum().item() == pytest.approx(1.0, abs=1e-5)
    for v in att.values():
        assert v.shape == (2, 4) and (v >= 0).all() and (v <= 1).all()


def test_discover_circuit_invariants(runs):
    c = circuits.discover_circuit(runs, threshold=0.02)
    seen = [h for hs in c.classes.values() for h in hs]
    assert len(seen) == len(set(seen)), "a head is in two classes"
    assert set(c.classes) == set(circuits.CLASSES) | {"other_direct"}
    assert set(c.direct_heads()) >= set(c.classes["name_mover"]) | set(c.classes["other_direct"])
    for cls in ("name_mover", "negative_name_mover"):
        for l, h in c.classes[cls]:
            assert abs(c.effects["direct"][l, h]) >= 0.02
            assert c.attention["end_io"][l, h] >= c.attention["end_s2"][l, h]
    eff = circuits.class_effects(runs, c)
    assert set(eff) <= set(c.classes)
    assert 0 <= c.sparsity() <= 1
    assert len(c.label_grid()) == 2


def test_weight_change_localises_a_perturbation(model):
    other = copy.deepcopy(model)
    assert circuits.weight_change(model, other)["heads"].abs().max() == 0
    with torch.no_grad():
        other.blocks[1].attn.W_Q  # property view; perturb the underlying parameter of layer 1's query projection
        name = [n for n, _ in other.named_parameters() if "layers.1." in n and ".q." in n and n.endswith("weight")][0]
        p = dict(other.named_parameters())[name]
        d_head = model.cfg.d_head
        assert p.shape[0] == 4 * d_head
        p[2 * d_head: 3 * d_head] += 0.5
    wc = circuits.weight_change(model, other)
    changed = (wc["heads"] > 0).nonzero().tolist()
    assert changed == [[1, 2]]
    assert wc["mlps"].abs().max() == 0 and wc["embed"] == 0
    before = model.blocks[1].attn
    norm = sum(float((getattr(before, w)[2].detach() ** 2).sum()) for w in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")) ** 0.5
    rel = circuits.weight_change(model, other, relative=True)["heads"][1, 2]
    assert rel.item() == pytest.approx(wc["heads"][1, 2].item() / norm, rel=1e-5)


def test_concentration_and_correlation_by_hand():
    v = torch.tensor([4.0, -3.0, 2.0, 1.0])
    assert circuits.topk_share(v, 1) == pytest.approx(0.4)
    assert circuits.topk_share(v, 2) == pytest.approx(0.7)
    assert circuits.topk_share(torch.ones(10), 3) == pytest.approx(0.3)
    assert circuits.n_for_share(v, 0.7) == 2
    assert circuits.n_for_share(v, 0.71) == 3
    a = torch.tensor([[1.0, 2.0], [3.0, float("nan")]])
    assert circuits.map_correlation(a, 2 * a + 1) == pytest.approx(1.0)
    assert circuits.map_correlation(a, -a) == pytest.approx(-1.0)
    names, vals = circuits.component_values(torch.zeros(2, 3), torch.ones(2))
    assert names[:2] == ["0.0", "0.1"] and names[-1] == "mlp1" and vals.shape == (8,)


def test_pretrained_architecture_code_path(data):
    """The same tools on a GPT-2-architecture bridge (random weights, offline) with the IOI word tokenizer."""
    from lib.models import load_pretrained

    ds, cor = data
    g = load_pretrained("gpt2", random_init=True, n_layers=2, d_vocab=len(TOK))
    r = circuits.ioi_runs(g, ds, cor)
    d = circuits.component_dla(g, r.clean_cache, ds)
    total = d["heads"].sum() + d["attn_bias"].sum() + d["mlps"].sum() + d["embed"] + d["pos_embed"] + d["const"]
    assert total.item() == pytest.approx(r.ld_clean, abs=1e-3)
    m = circuits.head_patch_map(r)
    assert m.shape == (2, 12)
    one = patching.path_patch(g, ds.toks, r.clean_cache, r.corrupt_cache, [(1, 0)], r.metric)
    act = patching.head_patch(g, ds.toks, r.corrupt_cache, r.metric)[1, 0]
    assert one == pytest.approx(act.item(), abs=1e-4)
