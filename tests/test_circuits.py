"""lib.methods.patching and lib.methods.circuits against brute force on tiny random models (no training, a few seconds)."""
from __future__ import annotations

import copy

import pytest
import torch

from lib.methods import circuits, patching
from lib.organisms.models import ModelSpec, build_model
from lib.worlds import ioi

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


def test_corrupt_set_is_abc(data):
    """Wang et al.'s ABC distribution: the three name slots hold three distinct names, none of them the clean
    prompt's IO or S; every other token (template, place, object) is the clean prompt's."""
    ds, cor = data
    assert ds.toks.shape == cor.toks.shape
    rows = torch.arange(len(ds))
    slots = [ds.word_pos[k] for k in ("IO", "S1", "S2")]
    assert torch.equal(ds.toks[rows, ds.word_pos["S2"]], ds.s_ids)
    names = torch.stack([cor.toks[rows, p] for p in slots], 1)  # [n, 3]
    for i in range(len(ds)):
        got = set(names[i].tolist())
        assert len(got) == 3, f"prompt {i}: ABC names repeat: {names[i].tolist()}"
        assert not got & {int(ds.io_ids[i]), int(ds.s_ids[i])}, f"prompt {i} keeps IO or S"
    mask = torch.ones_like(ds.toks, dtype=torch.bool)
    for p in slots:
        mask[rows, p] = False
    assert torch.equal(ds.toks[mask], cor.toks[mask])
    # the clean draws do not depend on whether a corrupted set is made (same seed, same prompts)
    again = ioi.make_ioi_dataset(TOK, 12, 3, templates=[0, 1])
    assert torch.equal(again.toks, ds.toks)


def test_dla_decomposes_logit_diff(model, runs, data):
    ds, _ = data
    d = circuits.component_dla(model, runs.clean_cache, ds)
    total = d["heads"].sum() + d["attn_bias"].sum() + d["mlps"].sum() + d["embed"] + d["pos_embed"] + d["const"]
    assert total.item() == pytest.approx(runs.ld_clean, abs=1e-4)


def test_dla_components_add_up_prompt_by_prompt_for_any_linear_metric(model, runs, data):
    """``dla_components`` rows sum, prompt by prompt, to the metric they attribute: IO − S by default, and any
    metric linear in the END logits through ``weights`` (here mean(absent names) − IO)."""
    ds, _ = data
    names, table = circuits.dla_components(model, runs.clean_cache, ds)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert names[:L * H] == [f"{l}.{h}" for l in range(L) for h in range(H)] and names[-1] == "rest"
    assert table.shape == (len(names), len(ds))
    assert torch.allclose(table.sum(0), ioi.logit_diff(runs.clean_logits, ds, per_prompt=True), atol=1e-4)
    mean = circuits.component_dla(model, runs.clean_cache, ds)
    assert torch.allclose(table[:L * H].mean(1).reshape(L, H), mean["heads"], atol=1e-5)
    name_ids = torch.tensor([TOK.token_id(n) for n in ioi.NAMES])
    w = ioi.metric_weights(ds, name_ids, model.cfg.d_vocab, "absent")
    _, tab_w = circuits.dla_components(model, runs.clean_cache, ds, w)
    value = (ioi.final_logits(runs.clean_logits, ds) * w).sum(-1)
    assert torch.allclose(tab_w.sum(0), value, atol=1e-4)


def test_paired_share_test_by_hand():
    """Change a puts all of its movement in component 0 on every prompt, b spreads it evenly: a's top-1 share is
    1, b's 1/4, and every resampling agrees (interval [0.75, 0.75], p = 0)."""
    a = torch.zeros(4, 30)
    a[0] = 2.0
    b = torch.full((4, 30), 0.5)
    out = circuits.concentration_test(a, b, 1, n_boot=100)
    assert out["share_a"] == pytest.approx(1.0) and out["share_b"] == pytest.approx(0.25)
    assert out["lo"] == pytest.approx(0.75) and out["hi"] == pytest.approx(0.75) and out["p"] == 0.0
    assert out["total_a"] == pytest.approx(2.0) and out["total_b"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="prompts"):
        circuits.concentration_test(a, b[:, :10], 1)


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


def _with_head_out(target, source, toks, layer, head):
    """Brute force CMAP of one head: ``target``'s run with head (layer, head)'s output ``z @ W_O`` replaced by
    ``source``'s (its own z and W_O), everything else recomputed."""
    _, src = patching.run_cache(source, toks)
    src_out = src[f"blocks.{layer}.attn.hook_z"][:, :, head] @ source.blocks[layer].attn.W_O[head]
    own = {}

    def grab(z, hook):
        own["out"] = z[:, :, head] @ target.blocks[layer].attn.W_O[head]
        return z

    def swap(attn_out, hook):
        return attn_out - own["out"] + src_out
    with torch.no_grad():
        return target.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", grab),
                                                      (f"blocks.{layer}.hook_attn_out", swap)])


def test_cmap_matches_per_head_output_brute_force_loop(model, data):
    """Every head's CMAP value, per prompt, equals a brute-force run with that head's output swapped."""
    ds, _ = data
    other = tiny(seed=1)
    res = patching.cmap(model, other, ds.toks, patching.ld_metric(ds, per_prompt=True))
    assert res.heads_pp.shape == (2, 4, len(ds)) and res.mlps_pp.shape == (2, len(ds))
    for layer in range(2):
        for head in range(4):
            brute = ioi.logit_diff(_with_head_out(model, other, ds.toks, layer, head), ds, per_prompt=True)
            assert torch.allclose(res.heads_pp[layer, head], brute, atol=1e-4), (layer, head)
    assert res.target_value == pytest.approx(ioi.logit_diff(model(ds.toks), ds).item(), abs=1e-5)
    assert res.source_value == pytest.approx(ioi.logit_diff(other(ds.toks), ds).item(), abs=1e-5)
    names, vals = res.components()
    assert len(names) == vals.numel() == 2 * 4 + 2
    assert res.components_pp().shape == (2 * 4 + 2, len(ds))
    assert torch.allclose(res.components_pp().mean(-1), vals, atol=1e-5)
    same = patching.cmap(model, model, ds.toks, patching.ld_metric(ds))
    assert same.delta_heads().abs().max() < 1e-5 and same.delta_mlps().abs().max() < 1e-5


def test_cmap_sees_a_change_of_w_o_alone(model, data):
    """A fine-tune that only rescales head 1.2's W_O leaves its z unchanged: patching z would miss it; patching
    the head's output finds it there and in no other head (the layer-1 MLP, downstream of it, does change)."""
    ds, _ = data
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.blocks[1].attn.W_O[2] *= 3.0
    res = patching.cmap(model, other, ds.toks, patching.ld_metric(ds))
    d = res.delta_heads().abs()
    assert d[1, 2] > 1e-3
    d[1, 2] = 0
    assert d.max() < 1e-5 and res.delta_mlps()[0].abs() < 1e-5


def test_attention_only_model_through_every_analysis(data):
    """An attention-only model (no ``hook_mlp_out``) goes through CMAP, DLA, circuit discovery and effects."""
    ds, cor = data
    a, b = tiny(seed=3, attn_only=True), tiny(seed=4, attn_only=True)
    assert not patching.has_mlps(a)
    res = patching.cmap(a, b, ds.toks, patching.ld_metric(ds, per_prompt=True))
    assert res.mlps_pp.shape == (0, len(ds)) and len(res.components()[0]) == 2 * 4
    r = circuits.ioi_runs(a, ds, cor)
    d = circuits.component_dla(a, r.clean_cache, ds)
    total = d["heads"].sum() + d["attn_bias"].sum() + d["embed"] + d["pos_embed"] + d["const"]
    assert total.item() == pytest.approx(r.ld_clean, abs=1e-4)
    c = circuits.discover_circuit(r, threshold=0.0)
    assert c.heads()  # threshold 0: some head qualifies
    circuits.class_effects(r, c)
    circuits.head_effects(r, c)
    circuits.faithfulness(r, c.heads())
    assert not circuits.weight_change(a, b)["mlps"].abs().sum()


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


def test_prompt_attention_is_the_batch_pattern_up_to_end(model):
    ds = ioi.make_ioi_dataset(TOK, 12, 3)  # every template: prompts of different lengths, right-padded
    i = int(torch.argmin(ds.end_pos))
    n = int(ds.end_pos[i]) + 1
    assert n < ds.toks.shape[1]
    words, pat = circuits.prompt_attention(model, TOK, ds, [(1, 3), (0, 1)], prompt=i)
    assert words == ["<bos>"] + ds.texts[i].split() and len(words) == n
    _, batch = patching.run_cache(model, ds.toks)
    assert pat.shape == (2, n, n)
    torch.testing.assert_close(pat[0], batch["blocks.1.attn.hook_pattern"][i, 3, :n, :n], atol=1e-5, rtol=0)
    torch.testing.assert_close(pat[1], batch["blocks.0.attn.hook_pattern"][i, 1, :n, :n], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="prompt=12"):
        circuits.prompt_attention(model, TOK, ds, [(0, 0)], prompt=12)
    with pytest.raises(ValueError, match=r"\(2, 0\)"):
        circuits.prompt_attention(model, TOK, ds, [(2, 0)])
    with pytest.raises(ValueError, match="heads"):
        circuits.prompt_attention(model, TOK, ds, [])


def test_head_label_and_showcase(runs):
    c = circuits.discover_circuit(runs, threshold=0.02)
    c.classes = {k: [] for k in c.classes}
    assert c.showcase(3) == [(1, 0), (1, 1), (1, 2)]  # an empty circuit: the last layer's heads
    c.classes["s_inhibition"] = [(0, 2)]
    c.classes["name_mover"] = [(1, 3), (1, 1)]
    assert c.showcase(2) == [(1, 3), (1, 1)] and c.showcase(5) == [(1, 3), (1, 1), (0, 2)]
    assert c.head_label((1, 3)) == "1.3 name mover" and c.head_label((0, 2)) == "0.2 S-inhibition"
    assert c.head_label((0, 0)) == "0.0"


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


def test_discover_circuit_classifies_by_wang_signatures(runs):
    """Name movers copy (positive copy score), negative ones suppress; a layer-0 direct head does not block the
    S-inhibition stage when direct heads sit above it; per-head effects live on circuit heads only."""
    c = circuits.discover_circuit(runs, threshold=0.0)
    for h in c.classes["name_mover"]:
        assert c.copy[h] > 0
    for h in c.classes["negative_name_mover"]:
        assert c.copy[h] < 0
    recv = [h for h in c.direct_heads() if h[0] > 0]
    if recv:  # senders below a receiver: the stage ran (finite in layer 0), and nothing above layer 0 is a sender
        assert torch.isfinite(c.effects["via_nm_q"][0]).all()
    for h in c.classes["s_inhibition"]:
        assert h[0] < max(l for l, _ in recv)
    e = circuits.head_effects(runs, c)
    outside = ~circuits.head_mask(c.heads(), c.n_layers, c.n_heads)
    assert torch.isnan(e[outside]).all()
    pp = circuits.head_effects(runs, c, per_prompt=True)
    assert pp.shape == (2, 4, len(runs.ds))
    assert torch.allclose(pp.nanmean(-1)[~outside], e[~outside], atol=1e-4)


def test_layer0_only_direct_heads_skip_the_query_stage(runs):
    """If every direct-effect head sits in layer 0 there is no sender below them: the S-inhibition stage is
    skipped (NaN), not an error."""
    c = circuits.discover_circuit(runs, threshold=0.0)
    only0 = circuits.Circuit(classes={k: [h for h in v if h[0] == 0] for k, v in c.classes.items()},
                             effects=c.effects, attention=c.attention, dla=c.dla, ld_clean=c.ld_clean,
                             ld_corrupt=c.ld_corrupt, threshold=0.0, n_layers=2, n_heads=4, copy=c.copy)
    eff = circuits.head_effects(runs, only0)
    for h in only0.classes["s_inhibition"]:
        assert torch.isnan(eff[h])


def test_knockout_dla_mean_ablates_only_the_given_heads(model, runs, data):
    ds, cor = data
    base = circuits.head_dla(model, runs.clean_cache, ds)
    ko = circuits.knockout_dla(runs, [(1, 2)])
    # heads that do not read head 1.2's output (layer 0, the other layer-1 heads) write the same; their DLA moves
    # only through the final LayerNorm's scale
    assert torch.allclose(ko[0], base[0], rtol=0.05, atol=1e-3)
    assert torch.allclose(ko[1, [0, 1, 3]], base[1, [0, 1, 3]], rtol=0.05, atol=1e-3)
    # head 1.2 now writes its template-mean ABC output
    z = runs.clean_cache["blocks.1.attn.hook_z"].clone()
    z[:, :, 2] = circuits._template_means(runs.corrupt_cache, cor, 1)[:, :, 2]
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", lambda x, hook: z)]):
        _, cache = model.run_with_cache(ds.toks)
    assert ko[1, 2].item() == pytest.approx(circuits.head_dla(model, cache, ds)[1, 2].item(), abs=1e-5)
    assert not torch.allclose(ko[1, 2], base[1, 2])


def test_head_change_bootstrap_brackets_the_mean(runs, model, data):
    ds, cor = data
    c = circuits.discover_circuit(runs, threshold=0.0)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.05)
    ch = circuits.head_change(runs, circuits.ioi_runs(other, ds, cor), c, n_boot=200)
    d = ch.sign * (ch.after - ch.before)  # the growth, in each head's own direction
    assert len(ch.heads) == len(d) and (d == ch.growth).all() and (ch.lo <= d + 1e-6).all() and (d <= ch.hi + 1e-6).all()
    same = circuits.head_change(runs, runs, c, n_boot=50)
    assert not same.grew.any() and not same.shrank.any() and same.frac_grew() == 0.0


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
    from lib.organisms.models import load_pretrained

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


def test_growth_is_read_in_each_units_own_direction(monkeypatch):
    """Hand-made per-prompt effects: a positive head that rises, a negative (anti-IOI) head that becomes more
    negative, and one that drifts towards 0. The first two grew (sign-aware), the third shrank; against a
    reference that gives the signs, the comparison of two other models keeps the reference's direction."""
    classes = {k: [] for k in circuits.CLASSES}
    classes.update(name_mover=[(1, 0)], negative_name_mover=[(1, 1)], s_inhibition=[(0, 0)])
    c = circuits.Circuit(classes=classes, effects={}, attention={}, dla=torch.zeros(2, 2), ld_clean=1.0,
                         ld_corrupt=0.0, threshold=0.05, n_layers=2, n_heads=2)
    n = 40
    noise = torch.linspace(-0.05, 0.05, n)
    effects = {  # model -> {head: per-prompt effect}
        "base": {(1, 0): 2.0, (1, 1): -1.0, (0, 0): 1.0},
        "ft": {(1, 0): 3.0, (1, 1): -3.0, (0, 0): 0.2},
        "ctl": {(1, 0): 2.5, (1, 1): -0.5, (0, 0): 1.0},
    }

    def fake(runs, circuit, per_prompt=False):
        out = torch.full((2, 2, n), float("nan"))
        for h, v in effects[runs].items():
            out[h] = v + noise
        return out
    monkeypatch.setattr(circuits, "head_effects", fake)
    ch = circuits.head_change("base", "ft", c, n_boot=200)
    rows = {r["head"]: r for r in ch.rows()}
    assert [rows[k]["sign"] for k in ("1.0", "1.1", "0.0")] == [1, -1, 1]
    assert rows["1.0"]["growth"] == pytest.approx(1.0) and rows["1.1"]["growth"] == pytest.approx(2.0)
    assert rows["0.0"]["growth"] == pytest.approx(-0.8)
    grew = dict(zip(ch.labels(), ch.grew))
    assert grew == {"1.0": True, "1.1": True, "0.0": False} and ch.shrank[ch.labels().index("0.0")]
    assert ch.frac_grew() == pytest.approx(2 / 3)
    # clean against control, read in the base's direction: 1.1 is more negative after ft than after ctl -> grew
    vs = circuits.head_change("ctl", "ft", c, n_boot=200, reference="base")
    g = dict(zip(vs.labels(), vs.growth))
    assert g["1.1"] == pytest.approx(2.5) and g["1.0"] == pytest.approx(0.5) and g["0.0"] == pytest.approx(-0.8)
    # without the reference, ctl's own signs are used: the same here, since no head changes sign
    assert list(circuits.head_change("ctl", "ft", c, n_boot=50).sign) == list(vs.sign)


def test_class_change_matches_class_effects(runs):
    """``class_effects(per_prompt=True)`` averages to ``class_effects``; a model compared with itself grows nowhere."""
    c = circuits.discover_circuit(runs, threshold=0.0)
    mean = circuits.class_effects(runs, c)
    pp = circuits.class_effects(runs, c, per_prompt=True)
    assert set(pp) == set(mean) and mean
    for cls in mean:
        assert float(pp[cls].mean()) == pytest.approx(mean[cls], abs=1e-4)
    same = circuits.class_change(runs, runs, c, n_boot=50)
    assert same.labels() == list(mean) and not same.grew.any() and not same.shrank.any()
    assert list(same.sign) == [1.0 if mean[k] >= 0 else -1.0 for k in mean]
