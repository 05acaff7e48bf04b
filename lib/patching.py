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
  activation from model B's run on the *same* prompts (Chhabra et al. 2025, §3). Which components carry the
  difference between a fine-tuned model and its base?
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


def ld_metric(ds) -> Metric:
    """Mean logit difference logit(IO) − logit(S) at END on the prompts of ``ds`` (an ``IOIDataset``)."""
    from lib.ioi import logit_diff

    return lambda logits: logit_diff(logits, ds)


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
    """Metric after patching each MLP's output (``hook_mlp_out``, all positions) from ``source_cache``: ``[layer]``."""
    from transformer_lens.patching import generic_activation_patch

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


@dataclass
class CMAPResult:
    """Cross-model activation patching of ``source`` activations into ``target`` on the same prompts.

    ``heads`` ``[layer, head]`` and ``mlps`` ``[layer]``: the metric after patching that one component;
    ``target_value`` / ``source_value``: the unpatched metric of each model. ``recovered`` gives the share of the
    gap each component closes: ``(patched − target) / (source − target)``.
    """

    heads: torch.Tensor
    mlps: torch.Tensor
    target_value: float
    source_value: float

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
        names = [f"{l}.{h}" for l in range(L) for h in range(H)] + [f"mlp{l}" for l in range(L)]
        return names, torch.cat([self.delta_heads().flatten(), self.delta_mlps().flatten()])


@torch.no_grad()
def cmap(target_model, source_model, toks: torch.Tensor, metric: Metric) -> CMAPResult:
    """CMAP: run ``target_model`` on ``toks`` and patch each head / MLP output (all positions) from
    ``source_model``'s run on the same ``toks``. The two models must share the architecture."""
    if n_layers_heads(target_model) != n_layers_heads(source_model):
        raise ValueError("CMAP needs two models with the same number of layers and heads")
    src_logits, src_cache = run_cache(source_model, toks, lambda n: n.endswith("hook_z") or n.endswith("hook_mlp_out"))
    tgt_logits = target_model(toks)
    return CMAPResult(heads=head_patch(target_model, toks, src_cache, metric),
                      mlps=mlp_patch(target_model, toks, src_cache, metric),
                      target_value=float(metric(tgt_logits)), source_value=float(metric(src_logits)))


# --------------------------------------------------------------------------- path patching

Receivers = Union[str, Sequence[Head]]


@torch.no_grad()
def path_patch(model, clean_toks: torch.Tensor, clean_cache, corrupt_cache, senders: Sequence[Head],
               metric: Metric, receivers: Receivers = "logits", receiver_input: str = "q",
               receiver_pos: Optional[torch.Tensor] = None) -> float:
    """Metric after patching ``senders``' outputs from the corrupted run along the path to ``receivers``.

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
        return float(metric(model.run_with_hooks(clean_toks, fwd_hooks=hooks)))
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

    return float(metric(model.run_with_hooks(clean_toks, fwd_hooks=[(n, patch_receivers) for n in names.values()])))


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
