"""Activation patching, path patching and cross-model activation patching (CMAP) for TransformerLens models.

Everything addresses activations by canonical hook names (``blocks.{L}.attn.hook_z`` ``[batch, pos, head, d_head]``,
``blocks.{L}.hook_mlp_out`` ``[batch, pos, d_model]``, ``blocks.{L}.attn.hook_q/k/v`` ``[batch, pos, head, d_head]``)
and works on organisms and on pretrained ``TransformerBridge`` models alike.

* **Activation patching** (``head_patch``, ``mlp_patch``, ``head_pos_patch``): run the model on ``target`` tokens
  and overwrite one component's activation with its value in ``source_cache``. With ``target`` = clean prompts and
  the source = the ABC-corrupted run this is *noising* (how much does the component matter?). ``head_patch`` and
  ``mlp_patch`` reuse ``transformer_lens.patching.generic_activation_patch``; ``head_pos_patch`` patches at a named
  token position that differs per prompt (IO, S1, S2, END), which TL's fixed-index setters cannot express.
* **CMAP** (``cmap``): the same operation across two models: run model A on the prompts and patch in component c's
  *output* from model B's run on the *same* prompts (Chhabra et al. 2025, §3): a head's ``z @ W_O``
  (``head_out_patch``, so changes of ``W_O`` count) or an MLP's output. Which components carry the difference
  between a fine-tuned model and its base? Per-prompt values are kept for bootstrap intervals.
* **Path patching** (``path_patch``): patch a sender head's output from the corrupted run *only along the path*
  into the logits, or into chosen receiver heads' queries / keys / values, freezing every other head at its clean
  value (MLPs recompute, as in Wang et al. 2022).

A *metric* maps logits ``[batch, pos, d_vocab]`` to a scalar tensor (``ld_metric(ds)``: mean IO−S logit difference).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Union

import torch

Metric = Callable[[torch.Tensor], torch.Tensor]
Head = tuple[int, int]


def z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def mlp_name(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def n_layers_heads(model) -> tuple[int, int]:
    return int(model.cfg.n_layers), int(model.cfg.n_heads)


def ld_metric(ds, per_prompt: bool = False) -> Metric:
    """Logit difference logit(IO) − logit(S) at END on the prompts of ``ds`` (an ``IOIDataset``): the mean, or
    ``[n]`` per prompt."""
    from lib.worlds.ioi import logit_diff

    return lambda logits: logit_diff(logits, ds, per_prompt=per_prompt)


@contextlib.contextmanager
def _quiet_tl() -> Iterator[None]:
    """Silence the progress bar transformer_lens.patching draws for every sweep."""
    import transformer_lens.patching as tlp

    old = tlp.tqdm
    tlp.tqdm = lambda it, *a, **k: it
    try:
        yield
    finally:
        tlp.tqdm = old


def run_cache(model, toks: torch.Tensor, names: Optional[Callable[[str], bool]] = None):
    """``(logits, ActivationCache)`` of ``model`` on ``toks`` without gradients (``names`` filters hook names)."""
    with torch.no_grad():
        if names is None:
            return model.run_with_cache(toks)
        return model.run_with_cache(toks, names_filter=names)


def _layer_all_pos_setter(act: torch.Tensor, index: Sequence[int], source: torch.Tensor) -> torch.Tensor:
    act[...] = source
    return act


# --------------------------------------------------------------------------- activation patching / CMAP

@torch.no_grad()
def head_patch(model, target_toks: torch.Tensor, source_cache, metric: Metric) -> torch.Tensor:
    """Metric after patching each head's output (``hook_z``, all positions) from ``source_cache``: ``[layer, head]``.

    Runs ``model`` on ``target_toks``; ``source_cache`` comes from a run on tokens of the same shape (a corrupted
    prompt set aligned position by position, or another model on the same prompts for CMAP).
    """
    from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

    with _quiet_tl():
        return get_act_patch_attn_head_out_all_pos(model, target_toks, source_cache, metric).detach().float()


@torch.no_grad()
def mlp_patch(model, target_toks: torch.Tensor, source_cache, metric: Metric) -> torch.Tensor:
    """Metric after patching each MLP's output (``hook_mlp_out``, all positions) from ``source_cache``: ``[layer]``
    (empty for an attention-only model)."""
    from transformer_lens.patching import generic_activation_patch

    if not has_mlps(model):
        return torch.zeros(0)
    with _quiet_tl():
        return generic_activation_patch(model, target_toks, source_cache, metric, _layer_all_pos_setter,
                                        "mlp_out", index_axis_names=("layer",)).detach().float()


@torch.no_grad()
def head_pos_patch(model, target_toks: torch.Tensor, source_cache, metric: Metric,
                   positions: dict[str, torch.Tensor]) -> torch.Tensor:
    """Metric after patching head (L, H)'s ``hook_z`` at one named position per prompt: ``[layer, head, n_positions]``.

    ``positions[name]`` ``[batch]`` gives each prompt's token index for that name (e.g. ``ds.word_pos``); the last
    axis follows ``positions``' order.
    """
    L, H = n_layers_heads(model)
    out = torch.zeros(L, H, len(positions))
    rows = torch.arange(target_toks.shape[0])
    for layer in range(L):
        src = source_cache[z_name(layer)]
        for h in range(H):
            for k, pos in enumerate(positions.values()):
                def hook(z, hook, h=h, pos=pos, src=src):
                    z = z.clone()
                    z[rows, pos, h] = src[rows, pos, h]
                    return z
                out[layer, h, k] = metric(model.run_with_hooks(target_toks, fwd_hooks=[(z_name(layer), hook)])).item()
    return out


def has_mlps(model) -> bool:
    """Whether ``model``'s blocks have MLPs (attention-only organisms have none, and no ``hook_mlp_out``)."""
    return not bool(getattr(model.cfg, "attn_only", False))


def head_outputs(model, cache, layer: int) -> torch.Tensor:
    """Each head's output written to the residual stream, ``z @ W_O`` per head: ``[batch, pos, head, d_model]``
    (the attention bias ``b_O`` belongs to no head and is left out)."""
    return torch.einsum("bphd,hdm->bphm", cache[z_name(layer)], model.blocks[layer].attn.W_O)


@torch.no_grad()
def head_out_patch(model, toks: torch.Tensor, source_out: dict[int, torch.Tensor], metric: Metric) -> torch.Tensor:
    """Metric after replacing one head's *output* (``z @ W_O``, all positions) by ``source_out[layer]``
    ``[batch, pos, head, d_model]``: ``[layer, head, *metric_shape]``.

    Patching the output rather than ``hook_z`` matters across models: a fine-tune that changes a head's ``W_O``
    changes what the head writes even where its ``z`` is unchanged. The patch adds ``source − own`` to
    ``blocks.{L}.hook_attn_out`` (the attention output is the sum of the heads' outputs plus ``b_O``), so the
    rest of the forward pass recomputes. All heads of a layer run in one forward pass: the batch is repeated
    once per head and copy ``h`` patches head ``h``. ``metric`` is applied to each copy's logits.
    """
    L, H = n_layers_heads(model)
    n = toks.shape[0]
    big = toks.repeat(H, 1)
    out = []
    for layer in range(L):
        W_O = model.blocks[layer].attn.W_O  # [head, d_head, d_model]
        src = source_out[layer]
        stash: dict[str, torch.Tensor] = {}

        def grab(z, hook):
            stash["z"] = z
            return z

        def add(attn_out, hook, W_O=W_O, src=src):
            z = stash["z"].view(H, n, *stash["z"].shape[1:])  # [copy, batch, pos, head, d_head]
            idx = torch.arange(H)
            own = torch.einsum("cbpd,cdm->cbpm", z[idx, :, :, idx], W_O)  # copy c: head c's own output
            delta = src.permute(2, 0, 1, 3) - own  # [copy=head, batch, pos, d_model]
            return attn_out + delta.reshape(attn_out.shape)

        logits = model.run_with_hooks(big, fwd_hooks=[(z_name(layer), grab), (f"blocks.{layer}.hook_attn_out", add)])
        out.append(torch.stack([metric(logits[h * n:(h + 1) * n]).detach().float() for h in range(H)]))
    return torch.stack(out)


@torch.no_grad()
def mlp_out_patch(model, toks: torch.Tensor, source_cache, metric: Metric) -> torch.Tensor:
    """Metric after replacing each MLP's output (all positions) by ``source_cache``'s: ``[layer, *metric_shape]``;
    an empty ``[0]`` tensor for an attention-only model. ``mlp_patch`` does the same through TransformerLens'
    ``generic_activation_patch``, which needs a scalar metric; this loop keeps a per-prompt metric's shape (CMAP's
    bootstrap needs it)."""
    if not has_mlps(model):
        return torch.zeros(0)
    out = []
    for layer in range(n_layers_heads(model)[0]):
        src = source_cache[mlp_name(layer)]
        logits = model.run_with_hooks(toks, fwd_hooks=[(mlp_name(layer), lambda a, hook, src=src: src)])
        out.append(metric(logits).detach().float())
    return torch.stack(out)


@dataclass
class CMAPResult:
    """Cross-model activation patching of ``source`` activations into ``target`` on the same prompts.

    ``heads_pp`` ``[layer, head, prompt]`` and ``mlps_pp`` ``[layer, prompt]`` (``[0, prompt]`` without MLPs): the
    per-prompt metric after patching that one component's output; ``target_pp`` / ``source_pp`` ``[prompt]``: each
    model's unpatched per-prompt metric. Means over prompts: ``heads``, ``mlps``, ``target_value``,
    ``source_value``. ``recovered`` gives the share of the gap each component closes:
    ``(patched − target) / (source − target)``.
    """

    heads_pp: torch.Tensor
    mlps_pp: torch.Tensor
    target_pp: torch.Tensor
    source_pp: torch.Tensor

    @property
    def heads(self) -> torch.Tensor:
        return self.heads_pp.mean(-1)

    @property
    def mlps(self) -> torch.Tensor:
        return self.mlps_pp.mean(-1) if self.mlps_pp.numel() else torch.zeros(0)

    @property
    def target_value(self) -> float:
        return float(self.target_pp.mean())

    @property
    def source_value(self) -> float:
        return float(self.source_pp.mean())

    @property
    def gap(self) -> float:
        return self.source_value - self.target_value

    def delta_heads(self) -> torch.Tensor:
        """Raw metric change ``[layer, head]`` from patching each head."""
        return self.heads - self.target_value

    def delta_mlps(self) -> torch.Tensor:
        return self.mlps - self.target_value

    def recovered_heads(self) -> torch.Tensor:
        return self.delta_heads() / self.gap

    def recovered_mlps(self) -> torch.Tensor:
        return self.delta_mlps() / self.gap

    def components(self) -> tuple[list[str], torch.Tensor]:
        """Component names (``"L.H"`` heads, then ``"mlpL"``) and their raw metric change, flattened."""
        L, H = self.heads.shape
        names = [f"{l}.{h}" for l in range(L) for h in range(H)] + [f"mlp{l}" for l in range(len(self.mlps))]
        return names, torch.cat([self.delta_heads().flatten(), self.delta_mlps().flatten()])

    def components_pp(self) -> torch.Tensor:
        """Per-prompt metric change of every component (order of ``components``): ``[component, prompt]``."""
        L, H, n = self.heads_pp.shape
        return torch.cat([self.heads_pp.reshape(L * H, n), self.mlps_pp.reshape(-1, n)]) - self.target_pp


@torch.no_grad()
def cmap(target_model, source_model, toks: torch.Tensor, metric: Metric) -> CMAPResult:
    """CMAP (Chhabra et al. 2025, §3): run ``target_model`` on ``toks`` and replace one component's output at a
    time — each head's ``z @ W_O`` (``head_out_patch``), each MLP's output — by ``source_model``'s on the same
    ``toks``. The two models must share the architecture. ``metric`` should return one value per prompt
    (``ld_metric(ds, per_prompt=True)``) for the per-prompt arrays to be per prompt; a scalar metric gives
    ``[layer, head, 1]``."""
    if n_layers_heads(target_model) != n_layers_heads(source_model):
        raise ValueError("CMAP needs two models with the same number of layers and heads")
    src_logits, src_cache = run_cache(source_model, toks, lambda n: n.endswith("hook_z") or n.endswith("hook_mlp_out"))
    L, _ = n_layers_heads(source_model)
    src_out = {l: head_outputs(source_model, src_cache, l) for l in range(L)}

    heads = head_out_patch(target_model, toks, src_out, metric)
    mlps = mlp_out_patch(target_model, toks, src_cache, metric)
    tgt, src = metric(target_model(toks)).float(), metric(src_logits).float()
    if tgt.dim() == 0:  # a scalar metric: one "prompt"
        heads, tgt, src = heads.unsqueeze(-1), tgt.reshape(1), src.reshape(1)
        mlps = mlps.unsqueeze(-1) if mlps.numel() else torch.zeros(0, 1)
    elif not mlps.numel():
        mlps = torch.zeros(0, tgt.shape[0])
    return CMAPResult(heads_pp=heads, mlps_pp=mlps, target_pp=tgt, source_pp=src)


# --------------------------------------------------------------------------- path patching

Receivers = Union[str, Sequence[Head]]


@torch.no_grad()
def _value(x):
    """A scalar metric as a float; a per-prompt metric ``[n]`` as a detached tensor."""
    x = torch.as_tensor(x)
    return float(x) if x.numel() == 1 else x.detach()


def path_patch(model, clean_toks: torch.Tensor, clean_cache, corrupt_cache, senders: Sequence[Head],
               metric: Metric, receivers: Receivers = "logits", receiver_input: str = "q",
               receiver_pos: Optional[torch.Tensor] = None):
    """Metric after patching ``senders``' outputs from the corrupted run along the path to ``receivers`` (a float,
    or a tensor for a per-prompt ``metric``).

    Step 1: run on ``clean_toks`` with every head's ``hook_z`` frozen at its clean value except the senders, which
    take their corrupted value; MLPs recompute. If ``receivers == "logits"`` the metric of this run is the answer
    (the sender → logits path, through MLPs but no other head). Otherwise step 2: record the receivers'
    ``hook_{receiver_input}`` (``"q"``, ``"k"`` or ``"v"``) in step 1, and run clean again with only those receiver
    inputs patched (at ``receiver_pos`` ``[batch]``, one position per prompt, or at every position if None).
    Senders must sit in layers below every receiver. The caches need ``hook_z`` of every layer.
    """
    L, H = n_layers_heads(model)
    send = {}
    for (l, h) in senders:
        send.setdefault(l, []).append(h)

    def freeze(z, hook):
        layer = int(hook.name.split(".")[1])
        out = clean_cache[hook.name].clone()
        for h in send.get(layer, []):
            out[:, :, h] = corrupt_cache[hook.name][:, :, h]
        return out

    hooks = [(z_name(l), freeze) for l in range(L)]
    if isinstance(receivers, str):
        if receivers != "logits":
            raise ValueError(f"receivers must be 'logits' or a list of (layer, head), got {receivers!r}")
        return _value(metric(model.run_with_hooks(clean_toks, fwd_hooks=hooks)))
    if receiver_input not in ("q", "k", "v"):
        raise ValueError(f"receiver_input must be 'q', 'k' or 'v', got {receiver_input!r}")
    recv = {}
    for (l, h) in receivers:
        recv.setdefault(l, []).append(h)
    if senders and max(l for l, _ in senders) >= min(recv):
        raise ValueError("path patching: every sender must sit in a layer below every receiver")
    names = {l: f"blocks.{l}.attn.hook_{receiver_input}" for l in recv}
    stored: dict[str, torch.Tensor] = {}

    def record(act, hook):
        stored[hook.name] = act.detach().clone()

    model.run_with_hooks(clean_toks, fwd_hooks=hooks + [(n, record) for n in names.values()])
    rows = torch.arange(clean_toks.shape[0])

    def patch_receivers(act, hook):
        layer = int(hook.name.split(".")[1])
        act = act.clone()
        new = stored[hook.name]
        for h in recv[layer]:
            if receiver_pos is None:
                act[:, :, h] = new[:, :, h]
            else:
                act[rows, receiver_pos, h] = new[rows, receiver_pos, h]
        return act

    return _value(metric(model.run_with_hooks(clean_toks, fwd_hooks=[(n, patch_receivers) for n in names.values()])))


@torch.no_grad()
def path_patch_heads(model, clean_toks: torch.Tensor, clean_cache, corrupt_cache, metric: Metric,
                     receivers: Receivers = "logits", receiver_input: str = "q",
                     receiver_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``path_patch`` with each head as the single sender: ``[layer, head]`` metric values.

    Each sender is patched along its paths to the receivers in layers above its own; a head with no receiver
    above it gets NaN. Use ``path_patch_to_logits`` / ``path_patch_to_heads`` for the two common cases.
    """
    L, H = n_layers_heads(model)
    out = torch.full((L, H), float("nan"))
    for l in range(L):
        recv = receivers if isinstance(receivers, str) else [r for r in receivers if r[0] > l]
        if not recv:
            continue
        for h in range(H):
            out[l, h] = path_patch(model, clean_toks, clean_cache, corrupt_cache, [(l, h)], metric, recv,
                                   receiver_input, receiver_pos)
    return out


def path_patch_to_logits(model, clean_toks, clean_cache, corrupt_cache, metric: Metric) -> torch.Tensor:
    """Direct effect of each head on the logits (sender → logits path): ``[layer, head]`` metric values."""
    return path_patch_heads(model, clean_toks, clean_cache, corrupt_cache, metric, "logits")


def path_patch_to_heads(model, clean_toks, clean_cache, corrupt_cache, metric: Metric, receivers: Sequence[Head],
                        receiver_input: str = "q", receiver_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Effect of each head through ``receivers``' ``receiver_input`` (q/k/v) only: ``[layer, head]`` metric values."""
    return path_patch_heads(model, clean_toks, clean_cache, corrupt_cache, metric, list(receivers), receiver_input,
                            receiver_pos)
