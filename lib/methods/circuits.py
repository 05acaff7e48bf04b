"""The IOI circuit of a model: direct logit attribution, attention scores, circuit discovery by the criteria of
Wang et al. (2022) as used by Chhabra et al. (2025), faithfulness, and what fine-tuning changed.

Conventions: heads are ``(layer, head)``; per-head arrays are ``[layer, head]``; ``runs = ioi_runs(model, ds,
corrupt)`` bundles a clean IOI set, its aligned corrupted (ABC-style) set, and both runs' logits and caches, so
every analysis of one model shares two forward passes. Effects are in raw logit-difference units unless a name
says ``normalized`` (then divided by the clean − corrupted logit-difference gap, so −1 = the whole behaviour).

Head classes (``discover_circuit``), each found by path patching from the class below it, as in Wang et al.
(corrupted prompts: ABC, all three names resampled):

* ``name_mover``: direct effect on the logits (sender → logits path) lowers the logit difference by at least
  ``threshold`` of the gap when corrupted, at END attends to IO at least as much as to S1 and to S2, and has a
  positive *copy score* (``copy_scores``: its OV circuit, fed the residual stream at IO, raises IO's logit above
  the other names');
* ``negative_name_mover``: direct effect of the opposite sign (corrupting it *raises* the logit difference),
  attends to IO and has a negative copy score (writes *against* the name it attends to);
* ``backup_name_mover``: no significant direct effect of its own, but when the name movers are knocked out
  (mean-ablated over the ABC distribution) its direct logit attribution rises by at least ``threshold`` of the
  gap and it attends to IO (Wang et al.'s backup name movers, §3.4);
* ``s_inhibition``: effect through the queries at END of every head with a direct effect (name movers, negative
  name movers and ``other_direct``: the receivers of Wang et al.'s name-mover stage, generalised because an
  organism's direct-effect heads need not attend to names; receivers in layer 0 are skipped for lack of
  senders); the END → S2 attention is recorded, not required. A head with a direct effect of its own that does
  not attend IO (would be ``other_direct``) is an S-inhibition head if it also acts through those queries and at END
  attends to S1 + S2 more than to IO (in a shallow organism the S-inhibition heads sit in layer 0 and also
  write to the logits directly);
* ``induction`` / ``duplicate_token``: effect through the S-inhibition heads' *values* (all positions; the
  direct-effect heads' values if there is no S-inhibition head); duplicate-token if its S2 → S1 attention
  exceeds its S2 → S1+1 attention, induction otherwise;
* ``previous_token``: effect through the induction heads' keys, with S1+1 → S1 attention above ``prev_attn_min``.

A head gets the first class it qualifies for, in this order; significant heads without a matching signature are
listed under ``other_direct`` (direct effect) or ``other_upstream`` (effect through the values of later circuit
heads, but S2 attends to neither S1 nor S1+1 above ``attn_min``), so nothing is hidden.

Class effects are measured per class along its own path (``class_effects``) and per head (``head_effects``);
they are *not* additive (an S-inhibition head's effect passes through the name movers), so the book never sums
them into one "circuit effect".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from lib.methods.patching import (Head, Metric, has_mlps, head_patch, ld_metric, n_layers_heads, path_patch,
                                  path_patch_to_heads, path_patch_to_logits, run_cache, z_name)
from lib.methods.stats import bootstrap_distribution
from lib.worlds.ioi import IOIDataset, logit_diff

CLASSES = ("name_mover", "negative_name_mover", "backup_name_mover", "s_inhibition", "induction", "duplicate_token", "previous_token",
           "other_upstream")
CLASS_LABELS = {"name_mover": "name movers", "negative_name_mover": "negative name movers",
                "backup_name_mover": "backup name movers",
                "s_inhibition": "S-inhibition", "induction": "induction", "duplicate_token": "duplicate-token",
                "previous_token": "previous-token", "other_direct": "direct, not attending IO",
                "other_upstream": "upstream, no dup./ind. attention"}


# --------------------------------------------------------------------------- runs

@dataclass
class IOIRuns:
    """One model's clean and corrupted runs on aligned IOI prompt sets (caches hold every hook)."""

    model: object
    ds: IOIDataset
    corrupt: IOIDataset
    clean_logits: torch.Tensor
    corrupt_logits: torch.Tensor
    clean_cache: object
    corrupt_cache: object

    @property
    def metric(self) -> Metric:
        return ld_metric(self.ds)

    @property
    def ld_clean(self) -> float:
        return float(logit_diff(self.clean_logits, self.ds))

    @property
    def ld_corrupt(self) -> float:
        """Logit difference of the *clean* IO/S names on the corrupted prompts (≈ 0 when IOI is the only cue)."""
        return float(logit_diff(self.corrupt_logits, self.ds))

    @property
    def gap(self) -> float:
        return self.ld_clean - self.ld_corrupt


def ioi_runs(model, ds: IOIDataset, corrupt: IOIDataset) -> IOIRuns:
    """Run ``model`` on ``ds`` and its aligned corrupted set ``corrupt`` (same shapes), caching everything."""
    if ds.toks.shape != corrupt.toks.shape:
        raise ValueError(f"clean {tuple(ds.toks.shape)} and corrupted {tuple(corrupt.toks.shape)} sets must align")
    cl, cc = run_cache(model, ds.toks)
    kl, kc = run_cache(model, corrupt.toks)
    return IOIRuns(model, ds, corrupt, cl, kl, cc, kc)


# --------------------------------------------------------------------------- direct logit attribution

def _direction(model, ds: IOIDataset, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[n, d_model]``: ln_final.w ⊙ (W_U @ w_i) per prompt, for the metric ``sum_v w[i, v] * logit[i, v]``
    (default: logit(IO) − logit(S))."""
    W_U = model.W_U
    if weights is None:
        return model.ln_final.w * (W_U[:, ds.io_ids] - W_U[:, ds.s_ids]).T
    return model.ln_final.w * (weights.to(W_U.dtype) @ W_U.T)


def _attribute(x: torch.Tensor, scale: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Contribution of residual pieces ``x`` ``[n, ..., d_model]`` to the logit difference, LN scale frozen."""
    while direction.dim() < x.dim():
        direction, scale = direction.unsqueeze(1), scale.unsqueeze(1)
    centred = x - x.mean(-1, keepdim=True)
    return (centred / scale * direction).sum(-1)


@torch.no_grad()
def component_dla(model, cache, ds: IOIDataset, weights: Optional[torch.Tensor] = None,
                  per_prompt: bool = False) -> dict[str, torch.Tensor]:
    """Direct logit attribution of every residual-stream piece at END, averaged over prompts.

    Returns ``heads`` ``[layer, head]``, ``attn_bias`` ``[layer]``, ``mlps`` ``[layer]`` (zeros without MLPs), ``embed``, ``pos_embed``
    and ``const`` (final-LN bias and unembedding bias) — they sum exactly to the mean logit difference, because the
    final LayerNorm is linear once its scale (from ``cache``) is frozen. ``weights`` ``[n, d_vocab]``: attribute
    another metric linear in the END logits instead (``lib.worlds.ioi.metric_weights``); ``per_prompt=True``:
    each entry gets a leading ``[n]`` axis (for a bootstrap over prompts).
    """
    L, H = n_layers_heads(model)
    n = len(ds)
    rows = torch.arange(n)
    end = ds.end_pos
    scale = cache["ln_final.hook_scale"][rows, end]  # [n, 1]
    d = _direction(model, ds, weights)
    agg = (lambda x: x) if per_prompt else (lambda x: x.mean(0))
    heads = torch.zeros((n, L, H) if per_prompt else (L, H))
    attn_bias = torch.zeros((n, L) if per_prompt else (L,))
    mlps = torch.zeros((n, L) if per_prompt else (L,))
    for l in range(L):
        z = cache[z_name(l)][rows, end]  # [n, head, d_head]
        out = torch.einsum("nhd,hdm->nhm", z, model.blocks[l].attn.W_O)
        heads[..., l, :] = agg(_attribute(out, scale, d))
        attn_bias[..., l] = agg(_attribute(model.blocks[l].attn.b_O.expand(n, -1), scale, d))
        if has_mlps(model):
            mlps[..., l] = agg(_attribute(cache[f"blocks.{l}.hook_mlp_out"][rows, end], scale, d))
    emb = agg(_attribute(cache["hook_embed"][rows, end], scale, d))
    pos = agg(_attribute(cache["hook_pos_embed"][rows, end], scale, d))
    W_U, b_U = model.W_U, model.b_U
    if weights is None:
        const = (model.ln_final.b @ (W_U[:, ds.io_ids] - W_U[:, ds.s_ids])) + b_U[ds.io_ids] - b_U[ds.s_ids]
    else:
        w = weights.to(W_U.dtype)
        const = w @ (model.ln_final.b @ W_U) + w @ b_U
    return {"heads": heads, "attn_bias": attn_bias, "mlps": mlps, "embed": emb, "pos_embed": pos,
            "const": agg(const)}


@torch.no_grad()
def dla_components(model, cache, ds: IOIDataset, weights: Optional[torch.Tensor] = None
                   ) -> tuple[list[str], torch.Tensor]:
    """``component_dla`` per prompt as one table: names (``"L.H"`` per head, ``"mlpL"`` per MLP when the model has
    them, and ``"rest"``: embeddings, attention biases and constants together) and values ``[component, n]``. The
    rows add up, prompt by prompt, to the metric itself, so the difference of two models' tables is a
    decomposition of the change in the metric that adds up (unlike CMAP's one-at-a-time patches)."""
    c = component_dla(model, cache, ds, weights, per_prompt=True)
    n, L, H = c["heads"].shape
    names = [f"{l}.{h}" for l in range(L) for h in range(H)]
    rows = [c["heads"].reshape(n, L * H).T]
    if has_mlps(model):
        names += [f"mlp{l}" for l in range(L)]
        rows.append(c["mlps"].T)
    names.append("rest")
    rows.append((c["attn_bias"].sum(-1) + c["embed"] + c["pos_embed"] + c["const"])[None])
    return names, torch.cat(rows, 0)


def head_dla(model, cache, ds: IOIDataset) -> torch.Tensor:
    """Direct logit attribution of each head to logit(IO) − logit(S) at END: ``[layer, head]`` (LN scale frozen)."""
    return component_dla(model, cache, ds)["heads"]


# --------------------------------------------------------------------------- attention

def attention_between(cache, n_layers: int, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """Mean attention probability from query position ``q_pos`` ``[n]`` to key position ``k_pos`` ``[n]``:
    ``[layer, head]``."""
    rows = torch.arange(len(q_pos))
    return torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][rows, :, q_pos, k_pos].mean(0)
                        for l in range(n_layers)])


def ioi_attention(runs: IOIRuns) -> dict[str, torch.Tensor]:
    """The attention scores the head classes use, each ``[layer, head]`` on the clean prompts:
    ``end_io``, ``end_s1``, ``end_s2`` (from END), ``s2_s1`` (duplicate-token), ``s2_s1p1`` (induction),
    ``s1p1_s1`` (previous-token)."""
    L, _ = n_layers_heads(runs.model)
    p = runs.ds.word_pos
    c = runs.clean_cache
    return {
        "end_io": attention_between(c, L, p["END"], p["IO"]),
        "end_s1": attention_between(c, L, p["END"], p["S1"]),
        "end_s2": attention_between(c, L, p["END"], p["S2"]),
        "s2_s1": attention_between(c, L, p["S2"], p["S1"]),
        "s2_s1p1": attention_between(c, L, p["S2"], p["S1"] + 1),
        "s1p1_s1": attention_between(c, L, p["S1"] + 1, p["S1"]),
    }


@torch.no_grad()
def prompt_attention(model, tok, ds: IOIDataset, heads: Sequence[Head], prompt: int = 0
                     ) -> tuple[list[str], torch.Tensor]:
    """The full attention patterns of ``heads`` on one prompt of ``ds``, for looking at (one forward pass).

    Returns ``(words, patterns)``: ``words`` the prompt's tokens up to END as text (``tok.decode`` of each id,
    ``<bos>`` included), ``patterns`` ``[len(heads), n, n]`` with ``n = END + 1``; row ``q`` is the attention
    distribution of position ``q`` over positions ``0..q`` (causal; the padding after END is not run, which
    changes nothing before it).
    """
    if not 0 <= prompt < len(ds):
        raise ValueError(f"prompt={prompt} is not an index of the {len(ds)} prompts in ds")
    if not heads:
        raise ValueError("heads is empty: name at least one (layer, head)")
    L, H = n_layers_heads(model)
    bad = [h for h in heads if not (0 <= h[0] < L and 0 <= h[1] < H)]
    if bad:
        raise ValueError(f"heads {bad} are not (layer, head) pairs of a {L}-layer, {H}-head model")
    ids = ds.toks[prompt, : int(ds.end_pos[prompt]) + 1]
    layers = sorted({l for l, _ in heads})
    names = {f"blocks.{l}.attn.hook_pattern" for l in layers}
    _, cache = run_cache(model, ids[None], names=lambda n: n in names)
    patterns = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0, h] for l, h in heads]).float().cpu()
    words = [tok.decode([int(i)], skip_special=False) for i in ids]
    return words, patterns


# --------------------------------------------------------------------------- copy scores, knockout

@torch.no_grad()
def copy_scores(runs: IOIRuns) -> dict[str, torch.Tensor]:
    """Copy score of every head (Wang et al. 2022, §3.3, on the residual stream the head actually reads).

    For each prompt, the head's OV circuit is applied to its input at the IO token (``ln1`` output at IO), as if
    the head attended to IO alone; the result goes through the final LayerNorm's centring and gain and the
    unembedding. ``signed`` ``[layer, head]``: the mean over prompts of IO's logit minus the mean logit of all
    names (positive: the head copies the name it attends to; negative: it suppresses it). ``top5``: the fraction
    of prompts where IO is among the 5 highest logits of the whole vocabulary (Wang et al.'s measure; chance is
    ``5 / d_vocab``).
    """

    model, ds = runs.model, runs.ds
    L, H = n_layers_heads(model)
    rows = torch.arange(len(ds))
    io_pos = ds.word_pos["IO"]
    name_ids = torch.tensor(sorted({int(i) for i in torch.cat([ds.io_ids, ds.s_ids])}))
    W_U, w = model.W_U, model.ln_final.w
    signed, top5 = torch.zeros(L, H), torch.zeros(L, H)
    for l in range(L):
        x = runs.clean_cache[f"blocks.{l}.ln1.hook_out"][rows, io_pos]  # [n, d_model]
        attn = model.blocks[l].attn
        v = torch.einsum("nm,hmd->nhd", x, attn.W_V) + attn.b_V
        out = torch.einsum("nhd,hdm->nhm", v, attn.W_O)
        out = out - out.mean(-1, keepdim=True)
        out = out / out.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
        logits = (out * w) @ W_U  # [n, head, d_vocab]
        own = logits[rows, :, ds.io_ids]  # [n, head]
        signed[l] = (own - logits[:, :, name_ids].mean(-1)).mean(0)
        top5[l] = (logits.topk(5, dim=-1).indices == ds.io_ids[:, None, None]).any(-1).float().mean(0)
    return {"signed": signed, "top5": top5}


def _template_means(cache, ds: IOIDataset, layer: int) -> torch.Tensor:
    """``hook_z`` of ``layer`` replaced, prompt by prompt, by its mean over the prompts of the same template."""
    z = cache[z_name(layer)]
    tmpl = torch.tensor(ds.templates)
    m = torch.zeros_like(z)
    for t in tmpl.unique():
        sel = tmpl == t
        m[sel] = z[sel].mean(0, keepdim=True)
    return m


@torch.no_grad()
def knockout_dla(runs: IOIRuns, heads: Sequence[Head]) -> torch.Tensor:
    """Per-head direct logit attribution ``[layer, head]`` on the clean prompts with ``heads`` mean-ablated (their
    ``hook_z`` set to its mean over the ABC prompts of the same template). Heads whose DLA rises when the name
    movers are knocked out are Wang et al.'s backup name movers."""
    model, ds = runs.model, runs.ds
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)
    means = {l: _template_means(runs.corrupt_cache, runs.corrupt, l) for l in by_layer}

    def hook(z, hook):
        l = int(hook.name.split(".")[1])
        z = z.clone()
        z[:, :, by_layer[l]] = means[l][:, :, by_layer[l]]
        return z

    with model.hooks(fwd_hooks=[(z_name(l), hook) for l in by_layer]):
        _, cache = model.run_with_cache(ds.toks)
    return head_dla(model, cache, ds)


# --------------------------------------------------------------------------- circuit discovery

@dataclass
class Circuit:
    """Named head classes of one model, with the evidence that put each head there.

    ``effects[name]`` ``[layer, head]``: the normalized path-patching effect used for that stage (``direct``: to the
    logits; ``via_nm_q``: to the direct-effect heads' queries at END; ``via_sinh_v``: to S-inhibition values;
    ``via_ind_k``: to induction keys), NaN where not computed; ``backup_gain``: the rise of each head's DLA when the
    name movers are knocked out, as a share of the gap. A sender is patched into the receivers in layers above
    its own. ``attention``: ``ioi_attention``. ``dla``: ``head_dla``. ``copy``: ``copy_scores(...)["signed"]``.
    """

    classes: dict[str, list[Head]]
    effects: dict[str, torch.Tensor]
    attention: dict[str, torch.Tensor]
    dla: torch.Tensor
    ld_clean: float
    ld_corrupt: float
    threshold: float
    n_layers: int
    n_heads: int
    copy: Optional[torch.Tensor] = None

    def direct_heads(self) -> list[Head]:
        """Heads with a significant direct effect on the logits (name movers, negative ones, other)."""
        return sorted(set(self.classes["name_mover"]) | set(self.classes["negative_name_mover"])
                      | set(self.classes["other_direct"]))

    def heads(self) -> list[Head]:
        """Every classified head (``other_direct`` included), sorted."""
        return sorted({h for hs in self.classes.values() for h in hs})

    def class_of(self, head: Head) -> Optional[str]:
        for c, hs in self.classes.items():
            if head in hs:
                return c
        return None

    def label_grid(self) -> list[list[str]]:
        """``[layer][head]`` short class labels ('' if none), for annotating heatmaps."""
        short = {"name_mover": "NM", "negative_name_mover": "nNM", "backup_name_mover": "bNM", "s_inhibition": "SI",
                 "induction": "Ind", "duplicate_token": "Dup", "previous_token": "Prev", "other_direct": "dir",
                 "other_upstream": "up"}
        return [[short.get(self.class_of((l, h)) or "", "") for h in range(self.n_heads)]
                for l in range(self.n_layers)]

    def sparsity(self) -> float:
        """Fraction of heads in the circuit (the paper's "circuit sparsity" counts edges; ours counts heads)."""
        return len(self.heads()) / (self.n_layers * self.n_heads)

    def summary(self) -> dict[str, list[str]]:
        return {c: [f"{l}.{h}" for l, h in hs] for c, hs in self.classes.items()}

    def head_label(self, head: Head) -> str:
        """``"3.1 name mover"``, or ``"3.1"`` for a head outside the circuit."""
        cls = self.class_of(head)
        return f"{head[0]}.{head[1]}" + (f" {CLASS_LABELS[cls].removesuffix('s')}" if cls else "")

    def showcase(self, k: int = 2) -> list[Head]:
        """Up to ``k`` heads to look at, in class order (name movers first, then negative and backup name movers,
        S-inhibition, ...); the last layer's first ``k`` heads if the circuit is empty (a tiny, briefly trained
        organism may have none)."""
        heads = [h for c in (*CLASSES, "other_direct") for h in self.classes.get(c, [])][:k]
        return heads or [(self.n_layers - 1, h) for h in range(min(k, self.n_heads))]


def _significant(effect: torch.Tensor, threshold: float, sign: int = -1) -> list[Head]:
    """Heads whose ``sign * effect`` is at least ``threshold`` (NaN: not measured, never significant)."""
    e = effect * sign
    return [(int(l), int(h)) for l, h in zip(*torch.where(torch.isfinite(e) & (e >= threshold)))]


@torch.no_grad()
def discover_circuit(runs: IOIRuns, threshold: float = 0.05, prev_attn_min: float = 0.3,
                     attn_min: float = 0.1) -> Circuit:
    """Classify heads into the IOI classes by path patching (see module docstring) on ``runs``.

    ``threshold``: the minimum |normalized effect| (fraction of the clean − corrupted logit-difference gap) for a
    head to count at each stage.
    """
    model = runs.model
    L, H = n_layers_heads(model)
    metric = runs.metric
    gap = runs.gap if abs(runs.gap) > 1e-6 else 1e-6

    def norm(v: torch.Tensor) -> torch.Tensor:
        return (v - runs.ld_clean) / abs(gap)

    att = ioi_attention(runs)
    copy = copy_scores(runs)["signed"]
    args = (model, runs.ds.toks, runs.clean_cache, runs.corrupt_cache, metric)
    effects: dict[str, torch.Tensor] = {k: torch.full((L, H), float("nan"))
                                        for k in ("direct", "via_nm_q", "via_sinh_v", "via_ind_k", "backup_gain")}
    effects["direct"] = norm(path_patch_to_logits(*args))
    classes: dict[str, list[Head]] = {c: [] for c in CLASSES}
    classes["other_direct"] = []

    def attends_io(h: Head) -> bool:
        l, k = h
        return bool(att["end_io"][l, k] >= max(att["end_s1"][l, k], att["end_s2"][l, k]))

    def attends_s(h: Head) -> bool:
        l, k = h
        return bool(att["end_s1"][l, k] + att["end_s2"][l, k] > att["end_io"][l, k])

    for h in _significant(effects["direct"], threshold, -1):
        (classes["name_mover"] if attends_io(h) and copy[h] > 0 else classes["other_direct"]).append(h)
    for h in _significant(effects["direct"], threshold, +1):
        (classes["negative_name_mover"] if attends_io(h) and copy[h] < 0 else classes["other_direct"]).append(h)
    direct = classes["name_mover"] + classes["negative_name_mover"] + classes["other_direct"]
    taken: set[Head] = set(direct)

    if classes["name_mover"]:  # knockout: who takes over when the name movers are gone?
        dla = head_dla(model, runs.clean_cache, runs.ds)
        effects["backup_gain"] = (knockout_dla(runs, classes["name_mover"]) - dla) / abs(gap)
        for h in _significant(effects["backup_gain"], threshold, +1):
            if h not in taken and attends_io(h):
                classes["backup_name_mover"].append(h)
                taken.add(h)

    recv = [h for h in direct if h[0] > 0]  # a receiver in layer 0 has no sender below it
    if recv:
        effects["via_nm_q"] = norm(path_patch_to_heads(*args, receivers=recv, receiver_input="q",
                                                       receiver_pos=runs.ds.end_pos))
        for h in _significant(effects["via_nm_q"], threshold, -1):
            if h not in taken:
                classes["s_inhibition"].append(h)
                taken.add(h)
            elif h in classes["other_direct"] and attends_s(h):
                # a head with a direct effect of its own that also moves the name movers' queries and attends to
                # S: Wang et al.'s S-inhibition signature (its direct effect stays recorded in effects["direct"])
                classes["other_direct"].remove(h)
                classes["s_inhibition"].append(h)
    si = classes["s_inhibition"]
    feeders = [h for h in (si if si else direct) if h[0] > 0]
    if feeders:
        effects["via_sinh_v"] = norm(path_patch_to_heads(*args, receivers=feeders, receiver_input="v"))
        for h in _significant(effects["via_sinh_v"], threshold, -1):
            if h in taken:
                continue
            l, k = h
            if max(att["s2_s1"][l, k], att["s2_s1p1"][l, k]) < attn_min:
                cls = "other_upstream"
            else:
                cls = "duplicate_token" if att["s2_s1"][l, k] >= att["s2_s1p1"][l, k] else "induction"
            classes[cls].append(h)
            taken.add(h)
    ind = [h for h in classes["induction"] if h[0] > 0]
    if ind:
        effects["via_ind_k"] = norm(path_patch_to_heads(*args, receivers=ind, receiver_input="k"))
        for h in _significant(effects["via_ind_k"], threshold, -1):
            l, k = h
            if h not in taken and att["s1p1_s1"][l, k] >= prev_attn_min:
                classes["previous_token"].append(h)
                taken.add(h)
    return Circuit(classes=classes, effects=effects, attention=att, dla=head_dla(model, runs.clean_cache, runs.ds),
                   ld_clean=runs.ld_clean, ld_corrupt=runs.ld_corrupt, threshold=threshold, n_layers=L, n_heads=H,
                   copy=copy)


# --------------------------------------------------------------------------- effects of a fixed circuit

_STAGE = {"name_mover": ("logits", None, None), "negative_name_mover": ("logits", None, None),
          "backup_name_mover": ("logits", None, None),
          "other_direct": ("logits", None, None), "s_inhibition": ("name_mover", "q", "END"),
          "induction": ("s_inhibition", "v", None), "duplicate_token": ("s_inhibition", "v", None),
          "other_upstream": ("s_inhibition", "v", None),
          "previous_token": ("induction", "k", None)}


def _path_value(runs: IOIRuns, circuit: Circuit, cls: str, heads: Sequence[Head], metric: Optional[Metric] = None):
    """Metric with ``heads`` (of class ``cls``) corrupted along the class's defining path; None if the path has no
    receiver above the senders. ``metric`` defaults to the mean logit difference."""
    metric = metric or runs.metric
    args = (runs.model, runs.ds.toks, runs.clean_cache, runs.corrupt_cache)
    recv_cls, inp, pos = _STAGE[cls]
    if recv_cls == "logits":
        return path_patch(*args, heads, metric, "logits")
    if recv_cls == "name_mover":
        recv = circuit.direct_heads()
    elif recv_cls == "s_inhibition":
        recv = circuit.classes["s_inhibition"] or circuit.direct_heads()
    else:
        recv = circuit.classes.get(recv_cls, [])
    top = max(l for l, _ in heads)
    recv = [r for r in recv if r[0] > top]
    if not recv:
        return None
    return path_patch(*args, heads, metric, recv, inp, runs.ds.end_pos if pos == "END" else None)


@torch.no_grad()
def class_effects(runs: IOIRuns, circuit: Circuit, per_prompt: bool = False) -> dict:
    """For each non-empty class of ``circuit`` (possibly found on *another* model with the same architecture):
    the logit difference lost on ``runs``' model when the whole class is corrupted along its own defining path
    (raw units, positive = the class supports IOI; negative name movers come out negative). Receivers are the
    class's receivers in layers above the class's top layer. The classes' effects overlap (an S-inhibition head
    acts through the name movers): do not add them up. ``per_prompt=True``: a ``[prompt]`` tensor per class (for
    a bootstrap over prompts) instead of its mean."""
    metric = ld_metric(runs.ds, per_prompt=True) if per_prompt else None
    clean = logit_diff(runs.clean_logits, runs.ds, per_prompt=True) if per_prompt else runs.ld_clean
    out: dict = {}
    for cls, heads in circuit.classes.items():
        if heads:
            v = _path_value(runs, circuit, cls, heads, metric)
            if v is not None:
                out[cls] = clean - v
    return out


@torch.no_grad()
def head_effects(runs: IOIRuns, circuit: Circuit, per_prompt: bool = False) -> torch.Tensor:
    """``[layer, head]``: the logit difference each circuit head alone carries along its class's path on ``runs``'
    model (raw units; NaN outside the circuit or where the path has no receiver). ``per_prompt=True`` gives
    ``[layer, head, prompt]`` (for a bootstrap over prompts). Comparing this map between models is the per-head
    test of amplification: the same heads, larger effects."""
    n = len(runs.ds)
    metric = ld_metric(runs.ds, per_prompt=True) if per_prompt else runs.metric
    clean = logit_diff(runs.clean_logits, runs.ds, per_prompt=True) if per_prompt else runs.ld_clean
    out = torch.full((circuit.n_layers, circuit.n_heads) + ((n,) if per_prompt else ()), float("nan"))
    for cls, heads in circuit.classes.items():
        for h in heads:
            v = _path_value(runs, circuit, cls, [h], metric)
            if v is not None:
                out[h] = clean - v
    return out


def class_dla(dla: torch.Tensor, circuit: Circuit) -> dict[str, float]:
    """Sum of a ``[layer, head]`` DLA map over each non-empty class of ``circuit``."""
    return {c: float(sum(dla[l, h] for l, h in hs)) for c, hs in circuit.classes.items() if hs}


def head_patch_map(runs: IOIRuns) -> torch.Tensor:
    """Noising map: normalized change of the logit difference when each head's output (all positions) is patched
    from the corrupted run into the clean run: ``[layer, head]`` (−1 = the whole gap)."""
    v = head_patch(runs.model, runs.ds.toks, runs.corrupt_cache, runs.metric)
    gap = runs.gap if abs(runs.gap) > 1e-6 else 1e-6
    return (v - runs.ld_clean) / abs(gap)


@torch.no_grad()
def faithfulness(runs: IOIRuns, heads: Sequence[Head]) -> float:
    """Logit difference of the circuit alone over the model's: every head *not* in ``heads`` is mean-ablated to
    its mean output on the corrupted prompts of the same template (position by position), MLPs untouched."""
    model, ds = runs.model, runs.ds
    L, H = n_layers_heads(model)
    keep = set(heads)
    means = {l: _template_means(runs.corrupt_cache, runs.corrupt, l) for l in range(L)}
    ablate = {l: [h for h in range(H) if (l, h) not in keep] for l in range(L)}

    def hook(z, hook):
        l = int(hook.name.split(".")[1])
        z = z.clone()
        z[:, :, ablate[l]] = means[l][:, :, ablate[l]]
        return z

    ld = float(logit_diff(model.run_with_hooks(ds.toks, fwd_hooks=[(z_name(l), hook) for l in range(L)]), ds))
    return ld / runs.ld_clean if abs(runs.ld_clean) > 1e-6 else float("nan")


# --------------------------------------------------------------------------- weights, concentration, similarity

@torch.no_grad()
def weight_change(before, after, relative: bool = False) -> dict[str, torch.Tensor]:
    """Frobenius norm of the weight change per component: ``heads`` ``[layer, head]`` (W_Q, W_K, W_V, W_O and the
    head's b_Q, b_K, b_V together), ``mlps`` ``[layer]`` (W_in, b_in, W_out, b_out), ``embed`` (token + position
    embeddings), ``unembed``. ``relative`` divides each by the norm of the ``before`` weights."""
    L, H = n_layers_heads(before)

    def norms(pairs):
        d = sum(float(((a - b) ** 2).sum()) for a, b in pairs)
        s = sum(float((b ** 2).sum()) for _, b in pairs)
        return (d ** 0.5) / (s ** 0.5 if relative and s > 0 else 1.0)

    heads = torch.zeros(L, H)
    mlps = torch.zeros(L)
    for l in range(L):
        ab, bb = after.blocks[l].attn, before.blocks[l].attn
        for h in range(H):
            pairs = [(getattr(ab, w)[h], getattr(bb, w)[h]) for w in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")]
            heads[l, h] = norms(pairs)
        if not has_mlps(before):
            continue
        am, bm = after.blocks[l].mlp, before.blocks[l].mlp
        mlps[l] = norms([(am.W_in, bm.W_in), (am.b_in, bm.b_in), (am.W_out, bm.W_out), (am.b_out, bm.b_out)])
    return {"heads": heads, "mlps": mlps,
            "embed": torch.tensor(norms([(after.W_E, before.W_E), (after.W_pos, before.W_pos)])),
            "unembed": torch.tensor(norms([(after.W_U, before.W_U)]))}


def component_values(heads: torch.Tensor, mlps: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """Flatten a ``[layer, head]`` and a ``[layer]`` map into component names (``"L.H"``, ``"mlpL"``) and values."""
    L, H = heads.shape
    names = [f"{l}.{h}" for l in range(L) for h in range(H)] + [f"mlp{l}" for l in range(L)]
    return names, torch.cat([heads.flatten(), mlps.flatten()]).float()


def topk_share(values: torch.Tensor, k: int) -> float:
    """Share of the total ``|values|`` held by the ``k`` largest: 1 = all change in k components; ``k/N`` if uniform."""
    a = values.abs().flatten().float()
    tot = float(a.sum())
    if tot == 0:
        return float("nan")
    return float(a.topk(min(k, a.numel())).values.sum()) / tot


def n_for_share(values: torch.Tensor, share: float = 0.8) -> int:
    """Fewest components whose ``|values|`` sum to at least ``share`` of the total."""
    a = values.abs().flatten().float().sort(descending=True).values
    c = torch.cumsum(a, 0) / a.sum()
    return int((c < share - 1e-9).sum()) + 1


def map_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two per-head maps (flattened; NaNs dropped)."""
    x, y = a.flatten().double(), b.flatten().double()
    ok = ~(torch.isnan(x) | torch.isnan(y))
    x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    den = float(x.norm() * y.norm())
    return float((x * y).sum()) / den if den > 0 else float("nan")


# --------------------------------------------------------------------------- chapter helpers

def eval_sets(tok, n: int = 128, seed: int = 2024) -> tuple[IOIDataset, IOIDataset]:
    """A held-out IOI set and its aligned corrupted set (S2 replaced by a third name), ``n`` prompts each."""
    from lib.worlds.ioi import make_ioi_dataset

    return make_ioi_dataset(tok, n, seed), make_ioi_dataset(tok, n, seed, corrupt=True)


@dataclass
class Analysis:
    """One model analysed on one prompt set: its runs, circuit (discovered here unless given), DLA, noising map,
    and the effects of the given/discovered circuit's classes."""

    runs: IOIRuns
    circuit: Circuit
    dla: torch.Tensor
    patch_map: torch.Tensor
    class_effects: dict[str, float]
    class_dla: dict[str, float]

    @property
    def ld(self) -> float:
        return self.runs.ld_clean

    @property
    def acc(self) -> float:
        from lib.worlds.ioi import ioi_accuracy
        return ioi_accuracy(self.runs.clean_logits, self.runs.ds)


def analyse(model, ds: IOIDataset, corrupt: IOIDataset, circuit: Optional[Circuit] = None,
            threshold: float = 0.05) -> Analysis:
    """Runs, circuit (``discover_circuit`` unless ``circuit`` is given, e.g. the base model's), DLA ``[layer, head]``,
    ``head_patch_map`` and per-class path effects / DLA for ``model``."""
    runs = ioi_runs(model, ds, corrupt)
    c = circuit if circuit is not None else discover_circuit(runs, threshold=threshold)
    dla = head_dla(model, runs.clean_cache, ds)
    return Analysis(runs=runs, circuit=c, dla=dla, patch_map=head_patch_map(runs),
                    class_effects=class_effects(runs, c), class_dla=class_dla(dla, c))


def class_shares(values: torch.Tensor, circuit: Circuit) -> dict[str, float]:
    """Share of the total ``|values|`` (a ``[layer, head]`` map) held by each class of ``circuit``, plus
    ``"outside circuit"`` (heads in no class)."""
    a = values.abs().float()
    tot = float(a.sum()) or 1.0
    out = {c: float(sum(a[l, h] for l, h in hs)) / tot for c, hs in circuit.classes.items() if hs}
    inside = set(circuit.heads())
    out["outside circuit"] = float(sum(a[l, h] for l in range(a.shape[0]) for h in range(a.shape[1])
                                       if (l, h) not in inside)) / tot
    return out


def jaccard(a: Sequence[Head], b: Sequence[Head]) -> float:
    """|a ∩ b| / |a ∪ b| of two head sets (1.0 if both are empty)."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if (sa | sb) else 1.0


@dataclass
class HeadChange:
    """Each unit's (a circuit head's, or a class's: ``class_change``) effect along its class path on two models (same
    prompts, same circuit), with a paired bootstrap over prompts of its **sign-aware growth**.

    ``heads``: the units in circuit order (``(layer, head)`` tuples, or class names); ``before``/``after``
    ``[n_units]`` (raw logit-difference units); ``sign`` ``[n_units]``: +1 for a unit that supports IOI on the
    reference model (``before`` unless told otherwise), -1 for one that works against it (a negative name mover);
    ``lo``/``hi``: the 95 % interval of the growth ``sign * (after - before)``. A negative name mover whose effect
    goes from -1 to -3 *grew* (its growth is +2); read with ``sign``, "larger effects" means larger in magnitude in
    the unit's own direction."""

    heads: list
    before: np.ndarray
    after: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    sign: np.ndarray = None

    def __post_init__(self):
        if self.sign is None:
            self.sign = np.ones(len(self.heads))

    @property
    def growth(self) -> np.ndarray:
        """``sign * (after - before)``: positive where the unit's effect grew in its own direction."""
        return self.sign * (self.after - self.before)

    @property
    def grew(self) -> np.ndarray:
        """Units whose effect grew in its own direction, the interval of the growth above 0."""
        return self.lo > 0

    @property
    def shrank(self) -> np.ndarray:
        return self.hi < 0

    def frac_grew(self) -> float:
        return float(self.grew.mean()) if len(self.heads) else float("nan")

    def labels(self) -> list[str]:
        return [u if isinstance(u, str) else f"{u[0]}.{u[1]}" for u in self.heads]

    def rows(self) -> list[dict]:
        return [{"head": lab, "before": float(b), "after": float(a), "sign": int(sg), "growth": float(g),
                 "lo": float(lo), "hi": float(hi)}
                for lab, b, a, sg, g, lo, hi in zip(self.labels(), self.before, self.after, self.sign, self.growth,
                                                    self.lo, self.hi)]


def _signs(ref, units: Sequence) -> np.ndarray:
    """+1/-1 per unit from the sign of its mean effect on the reference model, ``ref[unit]`` a per-prompt tensor
    (0 counts as +1)."""
    return np.array([-1.0 if float(ref[u].mean()) < 0 else 1.0 for u in units])


def _growth_intervals(eb: dict, ea: dict, units: Sequence, sign: np.ndarray, n_boot: int, seed: int):
    from lib.methods.stats import bootstrap_mean

    ivs = [bootstrap_mean((sg * (ea[u] - eb[u])).numpy(), n_boot=n_boot, seed=seed) for u, sg in zip(units, sign)]
    return np.array([iv.lo for iv in ivs]), np.array([iv.hi for iv in ivs])


@torch.no_grad()
def head_change(before: IOIRuns, after: IOIRuns, circuit: Circuit, n_boot: int = 1000, seed: int = 0,
                reference: Optional[IOIRuns] = None) -> HeadChange:
    """``HeadChange`` of ``circuit``'s heads from model ``before`` to model ``after`` (``head_effects`` per prompt,
    paired over the shared prompts). Each head's sign is that of its mean effect on ``reference`` (default
    ``before``): to compare two fine-tunes (clean against control) pass the base's runs, so that both are read
    in the direction the head had before fine-tuning. Heads whose class path has no receiver are left out."""
    eb = head_effects(before, circuit, per_prompt=True)
    ea = head_effects(after, circuit, per_prompt=True)
    er = head_effects(reference, circuit, per_prompt=True) if reference is not None else eb
    heads = [h for h in circuit.heads()
             if torch.isfinite(eb[h]).all() and torch.isfinite(ea[h]).all() and torch.isfinite(er[h]).all()]
    sign = _signs(er, heads)
    lo, hi = _growth_intervals(eb, ea, heads, sign, n_boot, seed)
    return HeadChange(heads, np.array([float(eb[h].mean()) for h in heads]),
                      np.array([float(ea[h].mean()) for h in heads]), lo, hi, sign)


@torch.no_grad()
def class_change(before: IOIRuns, after: IOIRuns, circuit: Circuit, n_boot: int = 1000, seed: int = 0,
                 reference: Optional[IOIRuns] = None) -> HeadChange:
    """The class-level version of ``head_change``: each non-empty class's effect along its own path
    (``class_effects(per_prompt=True)``: the whole class corrupted at once) on ``before`` and ``after``, and the
    95 % bootstrap interval over prompts of its sign-aware growth (sign from ``reference``, default ``before``).
    This is amplification as the paper states it: the circuit's *roles* carry larger effects."""
    eb = class_effects(before, circuit, per_prompt=True)
    ea = class_effects(after, circuit, per_prompt=True)
    er = class_effects(reference, circuit, per_prompt=True) if reference is not None else eb
    classes = [c for c in eb if c in ea and c in er]
    sign = _signs(er, classes)
    lo, hi = _growth_intervals(eb, ea, classes, sign, n_boot, seed)
    return HeadChange(classes, np.array([float(eb[c].mean()) for c in classes]),
                      np.array([float(ea[c].mean()) for c in classes]), lo, hi, sign)


def head_mask(heads: Sequence[Head], n_layers: int, n_heads: int) -> torch.Tensor:
    """``[layer, head]`` boolean mask of ``heads``."""
    m = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    for h in heads:
        m[h] = True
    return m


def correlation_null(a: torch.Tensor, b: torch.Tensor, n_perm: int = 2000, seed: int = 0) -> dict[str, float]:
    """``map_correlation(a, b)`` against maps with the heads of ``a`` shuffled: ``scipy.stats.permutation_test``
    (``permutation_type="pairings"``, ``n_perm`` random permutations) gives ``corr``, ``chance_hi`` (95th
    percentile of the shuffled correlations) and the one-sided ``p`` (``(1 + #{shuffled >= corr}) / (1 + n_perm)``).
    """
    from scipy import stats as sps

    r = map_correlation(a, b)
    x, y = a.flatten().double().numpy(), b.flatten().double()
    if not np.isfinite(r):
        return {"corr": r, "chance_hi": float("nan"), "p": float("nan")}
    res = sps.permutation_test((x,), lambda xs: map_correlation(torch.from_numpy(xs), y), vectorized=False,
                               permutation_type="pairings", n_resamples=n_perm, alternative="greater",
                               rng=np.random.default_rng(seed))
    null = np.asarray(res.null_distribution, dtype=float)
    finite = null[np.isfinite(null)]
    if not len(finite):
        return {"corr": r, "chance_hi": float("nan"), "p": float("nan")}
    # scipy's p (exact when every ordering was enumerated); recomputed without the undefined shuffles if any
    p = float(res.pvalue) if len(finite) == len(null) else float((1 + (finite >= r).sum()) / (1 + len(finite)))
    return {"corr": r, "chance_hi": float(np.quantile(finite, 0.95)), "p": p}


@torch.no_grad()
def random_set_faithfulness(runs: IOIRuns, k: int, n_draws: int = 30, seed: int = 0) -> dict[str, float]:
    """``faithfulness`` of ``n_draws`` random sets of ``k`` heads: ``mean`` and 95th percentile ``hi`` (what a
    circuit of that size keeps by chance)."""
    L, H = n_layers_heads(runs.model)
    rng = np.random.default_rng(seed)
    heads = [(l, h) for l in range(L) for h in range(H)]
    vals = np.array([faithfulness(runs, [heads[i] for i in rng.choice(len(heads), k, replace=False)])
                     for _ in range(n_draws)]) if 0 < k <= len(heads) else np.array([float("nan")])
    return {"mean": float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan"),
            "hi": float(np.nanquantile(vals, 0.95)) if np.isfinite(vals).any() else float("nan")}


def paired_share_test(pa: torch.Tensor, pb: torch.Tensor, share, n_boot: int = 1000, seed: int = 0
                      ) -> dict[str, float]:
    """Is ``share(mean change)`` larger for change ``pa`` than for ``pb`` (each ``[component, prompt]``, the same
    prompts)? ``share`` maps a ``[component]`` vector of mean changes to a number (``topk_share``, a set's share of
    the total...). A paired bootstrap over prompts (one resampling applied to both): ``share_a``, ``share_b``,
    ``diff``, its 95 % ``lo``/``hi`` and ``p`` = the fraction of resamples with ``share_a <= share_b``; also each
    change's ``total_a``/``total_b`` (sum of |mean change|), since a share says nothing of how much moved."""
    n = pa.shape[1]
    if pb.shape[1] != n:
        raise ValueError(f"the two changes cover {n} and {pb.shape[1]} prompts; they must share prompts")
    sa, sb = share(pa.mean(1)), share(pb.mean(1))
    out = {"share_a": sa, "share_b": sb, "diff": sa - sb, "total_a": float(pa.mean(1).abs().sum()),
           "total_b": float(pb.mean(1).abs().sum())}

    def diff(idx: np.ndarray) -> float:  # one resampling of the prompts, applied to both changes
        i = torch.from_numpy(idx)
        return share(pa[:, i].mean(1)) - share(pb[:, i].mean(1))
    _, diffs = bootstrap_distribution(diff, np.arange(n), n_boot=n_boot, seed=seed)
    diffs = diffs[np.isfinite(diffs)]
    if not len(diffs):
        return {**out, "lo": float("nan"), "hi": float("nan"), "p": float("nan")}
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return {**out, "lo": float(lo), "hi": float(hi), "p": float((diffs <= 0).mean())}


def concentration_test(a, b, k: int, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Is change ``a`` more concentrated in its top ``k`` components than change ``b`` (same prompts)? Each is a
    CMAP result (its ``components_pp()``) or a ``[component, prompt]`` tensor (e.g. a difference of two
    ``dla_components`` tables). ``paired_share_test`` with ``topk_share``: ``share_a``, ``share_b``, ``diff``,
    ``lo``/``hi``, ``p``, ``total_a``, ``total_b``."""
    pa = a if isinstance(a, torch.Tensor) else a.components_pp()  # [component, prompt]
    pb = b if isinstance(b, torch.Tensor) else b.components_pp()
    return paired_share_test(pa, pb, lambda v: topk_share(v, k), n_boot=n_boot, seed=seed)
