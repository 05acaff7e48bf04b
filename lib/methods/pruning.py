"""Pruning, as Jain et al. (ICLR 2024, Alg. 3) use it to ask whether fine-tuning *removed* a capability or only
*wrapped* it: one backward pass of the *pretraining-task* loss; every unit (a row of a weight matrix: one output
of an ``nn.Linear``, with its bias) gets the score ``Σ w · ∂L/∂w`` over its row, the first-order *decrease* of
the loss if the unit were zeroed; zeroing the top-``K`` units removes what most hinders the pretraining task,
and if ``K`` of 5–15 restores it, fine-tuning had only wrapped it. Random units of the same kind are the
control.

Model-agnostic: units are found as ``nn.Linear`` modules by name; losses and evals are callables.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

LossFn = Callable[[torch.nn.Module], torch.Tensor]

# --------------------------------------------------------------------------- units and pruning

@dataclass(frozen=True)
class Unit:
    """One prunable unit: row ``row`` of the weight of the ``nn.Linear`` called ``layer`` (``[out, in]``
    convention, so a row is one output neuron)."""

    layer: str
    row: int

    def __str__(self) -> str:
        return f"{self.layer}[{self.row}]"


def clean_name(name: str) -> str:
    """``blocks.0._original_component.mlp._original_component.fc_in._original_component`` -> ``blocks.0.mlp.fc_in``."""
    return name.replace("._original_component", "").replace("_original_component.", "")


def linear_layers(model: torch.nn.Module, include: Callable[[str], bool] = lambda n: n.startswith("blocks.")
                  ) -> dict[str, torch.nn.Linear]:
    """The model's ``nn.Linear`` modules by clean name (default: those inside transformer blocks: attention
    q/k/v/o and MLP fc_in/fc_out), in module order."""
    out: dict[str, torch.nn.Linear] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            n = clean_name(name)
            if include(n) and n not in out:
                out[n] = mod
    return out


def unit_scores(model: torch.nn.Module, loss_fn: LossFn, layers: Optional[dict[str, torch.nn.Linear]] = None
                ) -> tuple[list[Unit], torch.Tensor]:
    """Alg. 3 scores: ``score[u] = Σ_row w · ∂L/∂w`` (+ bias term) for every unit of ``layers``.

    ``loss_fn(model)`` is the loss to reduce (the pretraining task). Returns the units and their scores
    ``[n_units]``; a positive score means zeroing the unit lowers the loss to first order
    (``L(w - w_row) ≈ L(w) - score``). Gradients are cleared afterwards.
    """
    layers = linear_layers(model) if layers is None else layers
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss = loss_fn(model)
        params = [p for mod in layers.values() for p in (mod.weight, mod.bias) if p is not None]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    gmap = {id(p): (torch.zeros_like(p) if g is None else g) for p, g in zip(params, grads)}
    units, scores = [], []
    for name, mod in layers.items():
        s = (mod.weight.detach() * gmap[id(mod.weight)]).sum(1)
        if mod.bias is not None:
            s = s + mod.bias.detach() * gmap[id(mod.bias)]
        units += [Unit(name, i) for i in range(mod.weight.shape[0])]
        scores.append(s)
    return units, torch.cat(scores)


def top_units(units: Sequence[Unit], scores: torch.Tensor, k: int) -> list[Unit]:
    """The ``k`` units with the largest scores (descending)."""
    order = torch.argsort(scores, descending=True)[:k]
    return [units[int(i)] for i in order]


def revived_share(m_ft: float, m_pruned: float, m_base: float, min_gap: float = 0.5) -> float:
    """The share of the base-minus-fine-tune gap in a base metric that pruning restores, **bounded** to [0, 1]:
    ``(m_pruned - m_ft) / (m_base - m_ft)`` clipped, so that overshooting the base counts as a full revival and
    making things worse as none (the unbounded ratio reaches 2-4 on fine-tunes that barely moved the metric, and a
    few such values decide a calibrated threshold). NaN where the fine-tune moved the metric by less than
    ``min_gap`` (nothing to revive: undefined, not 0)."""
    gap = m_base - m_ft
    if not abs(gap) >= min_gap:
        return float("nan")
    return float(min(1.0, max(0.0, (m_pruned - m_ft) / gap)))


def random_units(units: Sequence[Unit], k: int, n_draws: int, seed: int = 0) -> list[list[Unit]]:
    """``n_draws`` random sets of ``k`` distinct units (the null of a pruning score: as many units, not chosen)."""
    rng = np.random.default_rng(seed)
    k = min(k, len(units))
    return [[units[int(i)] for i in rng.choice(len(units), k, replace=False)] for _ in range(n_draws)]


@contextlib.contextmanager
def pruned(model: torch.nn.Module, units: Sequence[Unit],
           layers: Optional[dict[str, torch.nn.Linear]] = None) -> Iterator[torch.nn.Module]:
    """Context manager: ``units`` zeroed (weight row and bias entry) inside, the original weights restored after."""
    layers = linear_layers(model, include=lambda n: True) if layers is None else layers
    saved = []
    with torch.no_grad():
        for u in units:
            mod = layers[u.layer]
            saved.append((mod, u.row, mod.weight[u.row].clone(), None if mod.bias is None else mod.bias[u.row].clone()))
            mod.weight[u.row] = 0.0
            if mod.bias is not None:
                mod.bias[u.row] = 0.0
    try:
        yield model
    finally:
        with torch.no_grad():
            for mod, row, w, b in reversed(saved):
                mod.weight[row] = w
                if b is not None:
                    mod.bias[row] = b


def pruning_curve(model: torch.nn.Module, loss_fn: LossFn, eval_fn: Callable[[torch.nn.Module], dict[str, float]],
                  ks: Sequence[int], layers: Optional[dict[str, torch.nn.Linear]] = None
                  ) -> tuple[list[dict[str, float]], list[Unit]]:
    """Score once with ``loss_fn`` (Alg. 3), then for each ``k`` in ``ks`` zero the top-``k`` units and run
    ``eval_fn``. Returns ``[{"k": k, **eval_fn(pruned model)}]`` and the ranked top-``max(ks)`` units; the model
    is left unchanged."""
    layers = linear_layers(model) if layers is None else layers
    units, scores = unit_scores(model, loss_fn, layers)
    ranked = top_units(units, scores, max(ks))
    rows = []
    for k in ks:
        with pruned(model, ranked[:k], layers):
            with torch.no_grad():
                rows.append({"k": int(k), **eval_fn(model)})
    return rows, ranked


def unit_set(layers: dict[str, torch.nn.Linear], kind: str) -> dict[str, torch.nn.Linear]:
    """The layers whose rows a pruning regime may zero: ``"all"`` (every linear layer in the blocks: the paper's
    "neurons", rows of any weight matrix), ``"mlp"`` (MLP in/out projections only) or ``"attn"`` (attention
    q/k/v/o only). Tells apart a wrapper stored in MLP neurons from one stored in attention."""
    if kind == "all":
        return dict(layers)
    if kind not in ("mlp", "attn"):
        raise ValueError(f"unit set must be 'all', 'mlp' or 'attn', got {kind!r}")
    return {n: m for n, m in layers.items() if (".mlp." in n) == (kind == "mlp")}


def random_pruning_curve(model: torch.nn.Module, eval_fn: Callable[[torch.nn.Module], dict[str, float]],
                         ks: Sequence[int], layers: Optional[dict[str, torch.nn.Linear]] = None, n_draws: int = 3,
                         seed: int = 0) -> list[dict[str, float]]:
    """The control for ``pruning_curve``: zero ``k`` units drawn uniformly from the same ``layers`` (no score),
    ``n_draws`` times per ``k``; each row holds the mean of ``eval_fn`` over the draws. Pruning "works" only where
    the Alg. 3 ranking beats this: zeroing any ``k`` units of a small model changes its behaviour too."""
    layers = linear_layers(model) if layers is None else layers
    units = [Unit(name, i) for name, mod in layers.items() for i in range(mod.weight.shape[0])]
    g = torch.Generator().manual_seed(seed)
    rows = []
    for k in ks:
        draws = []
        for _ in range(n_draws if k > 0 else 1):
            pick = torch.randperm(len(units), generator=g)[:k].tolist()
            with pruned(model, [units[i] for i in pick], layers), torch.no_grad():
                draws.append(eval_fn(model))
        rows.append({"k": int(k), **{m: float(sum(d[m] for d in draws) / len(draws)) for m in draws[0]}})
    return rows


def best_within(curve: Sequence[dict], metric: str = "acc_a", k_max: int = 15) -> dict:
    """The row of a ``pruning_curve`` with the highest ``metric`` among those with ``k <= k_max``."""
    rows = [r for r in curve if r["k"] <= k_max]
    if not rows:
        raise ValueError(f"no pruning row with k <= {k_max}")
    return max(rows, key=lambda r: r[metric])
