"""Tools of Jain et al. (ICLR 2024) for asking whether fine-tuning *removed* a capability or *wrapped* it.

- **Pruning** (their Alg. 3): one backward pass of the *pretraining-task* loss; every unit (a row of a weight
  matrix: one output of an ``nn.Linear``, with its bias) gets the score ``Σ w · ∂L/∂w`` over its row, the
  first-order *decrease* of the loss if the unit were zeroed; zeroing the top-``K`` units removes what most
  hinders the pretraining task, and if ``K`` of 5–15 restores it, fine-tuning had only wrapped it.
- **Probing**: a linear probe per block on the residual stream at one position (the answer position), trained
  to decode a discrete target (e.g. ``count(a)``); if the target stays decodable after fine-tuning, the
  information the capability needs is still computed.
- **Reverse fine-tuning**: iterations to recover a metric, read from a training history's evals.

Model-agnostic: units are found as ``nn.Linear`` modules by name, losses and evals are callables, residual
streams come from the TransformerLens hook names ``blocks.{L}.hook_resid_pre/post``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

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


# --------------------------------------------------------------------------- probing

def resid_names(n_layers: int) -> list[str]:
    """Hook names of the residual stream entering each block and leaving the last one: ``n_layers + 1`` names
    (B0 = embeddings, B{L} = after block L-1)."""
    return [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]


@torch.no_grad()
def residuals_at(model, tokens: torch.Tensor, positions: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Residual stream at ``positions`` ``[n]`` of each row of ``tokens`` ``[n, pos]``, for every block boundary:
    ``[n_layers + 1, n, d_model]``."""
    names = resid_names(model.cfg.n_layers)
    chunks = []
    for i in range(0, tokens.shape[0], batch_size):
        toks, pos = tokens[i: i + batch_size], positions[i: i + batch_size]
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n in names)
        rows = torch.arange(toks.shape[0])
        chunks.append(torch.stack([cache[n][rows, pos] for n in names]).cpu())
    return torch.cat(chunks, dim=1).float()


@dataclass
class Probe:
    """A linear probe ``logits = ((x - mean) / std) @ W.T + b``; ``W`` ``[n_classes, d]``."""

    linear: torch.nn.Linear
    mean: torch.Tensor
    std: torch.Tensor

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, d] -> [n, n_classes]``."""
        return self.linear((x - self.mean) / self.std)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            return (self.logits(x).argmax(-1) == y).float().mean().item()


def train_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int = 500, lr: float = 5e-2,
                weight_decay: float = 1e-4, seed: int = 0) -> Probe:
    """Full-batch AdamW fit of a linear probe on ``x`` ``[n, d]`` -> class ``y`` ``[n]`` (cross-entropy), with the
    paper's schedule (lr x0.1 at 50 %, 75 % and 87.5 % of ``steps``); features are standardised first."""
    g = torch.Generator().manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-5
    lin = torch.nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.01)
        lin.bias.zero_()
    probe = Probe(lin, mean, std)
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [steps // 2, 3 * steps // 4, 7 * steps // 8], gamma=0.1)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(probe.logits(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return probe


def probe_accuracy_by_block(model, train_tokens: torch.Tensor, train_pos: torch.Tensor, train_y: torch.Tensor,
                            test_tokens: torch.Tensor, test_pos: torch.Tensor, test_y: torch.Tensor,
                            n_classes: int, steps: int = 500, lr: float = 5e-2) -> list[float]:
    """Held-out accuracy of one linear probe per block boundary (``n_layers + 1`` values, B0 = embeddings)
    decoding ``y`` from the residual stream at ``pos``."""
    xtr = residuals_at(model, train_tokens, train_pos)
    xte = residuals_at(model, test_tokens, test_pos)
    return [train_probe(xtr[b], train_y, n_classes, steps, lr).accuracy(xte[b], test_y) for b in range(xtr.shape[0])]


# --------------------------------------------------------------------------- reverse fine-tuning

def steps_to_reach(history: dict, metric: str, threshold: float) -> Optional[int]:
    """First eval step at which ``history["evals"][i][metric] >= threshold``; None if never reached."""
    for e in history["evals"]:
        if metric in e and e[metric] >= threshold:
            return int(e["step"])
    return None


def eval_series(history: dict, metric: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of an eval metric in a training history."""
    ev = [e for e in history["evals"] if metric in e]
    return [int(e["step"]) for e in ev], [float(e[metric]) for e in ev]


def best_within(curve: Sequence[dict], metric: str = "acc_a", k_max: int = 15) -> dict:
    """The row of a ``pruning_curve`` with the highest ``metric`` among those with ``k <= k_max``."""
    rows = [r for r in curve if r["k"] <= k_max]
    if not rows:
        raise ValueError(f"no pruning row with k <= {k_max}")
    return max(rows, key=lambda r: r[metric])
