"""The PCFG organisms of chapter 4 (Jain et al. 2024): the pretrained counter, its fine-tunes (counting ``b``
with the spurious correlation), reverse fine-tuning and the from-scratch baseline.

``last`` is the counting regime of ``lib.worlds.pcfg.make_examples``: ``"all"`` counts over the whole window
(the book's first setting, still the one chapters 5-7 audit), ``"random"`` within the last ``K`` tokens, ``K``
drawn per row (the paper's O'). A recipe names ``last`` only when it is ``"random"``, so the organisms of the
``"all"`` setting keep their cache keys.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

from lib.organisms.models import ModelSpec
from lib.organisms.recipes import Recipe
from lib.organisms.train import TrainConfig
from lib.worlds.pcfg import FT_LRS, PRIORS, TERMINALS

LASTS = ("all", "random")


def _one_hot(operand: str) -> tuple[float, float, float]:
    if operand not in TERMINALS:
        raise ValueError(f"operand must be one of {TERMINALS}, got {operand!r}")
    return tuple(1.0 if o == operand else 0.0 for o in TERMINALS)  # type: ignore[return-value]


def _regime(max_len: int, last: str, sets: Optional[Sequence[str]] = None) -> tuple[dict, dict]:
    """(data kwargs, eval kwargs) naming the window and, when it is not ``"all"``, the counting regime."""
    if last not in LASTS:
        raise ValueError(f"last must be one of {LASTS}, got {last!r}")
    extra = {} if last == "all" else {"last": last}
    evals = {"max_len": max_len, **extra, **({} if sets is None else {"sets": list(sets)})}
    return {"max_len": max_len, **extra}, evals


def pretrain_recipe(prior: str = "medium", steps: int = 2000, operands: str = "abc",
                    tasks: Sequence[str] = ("count", "index"), max_len: int = 24, n_layers: int = 2,
                    d_model: int = 64, n_heads: int = 4, lr: float = 3e-3, batch_size: int = 64,
                    eval_every: int = 250, seed: int = 0, last: str = "all", warmup_frac: float = 0.1):
    """The pretrained organism: a GPT trained from scratch on counting/indexing with operand prior ``prior``.

    ``operands="bac"`` puts the prior on ``b`` first (the "pretrained on counting b" baseline of reFT). The
    paper pretrains at lr 1e-3 with 20 % warmup (``lr=1e-3, warmup_frac=0.2``).
    """
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {sorted(PRIORS)}, got {prior!r}")
    data, evals = _regime(max_len, last)
    return Recipe(
        name=f"pcfg-pt-{prior}" + ("" if operands == "abc" else f"-{operands}") + ("" if last == "all" else f"-{last}"),
        world="pcfg", data="tasks", data_kwargs={"prior": prior, "operands": operands, "tasks": list(tasks), **data},
        train=TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_frac=warmup_frac, min_lr_frac=0.01,
                          eval_every=eval_every, ckpt_every=0),
        model=ModelSpec(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_mlp=4 * d_model, n_ctx=48, seed=seed),
        seed=seed, evals=("counting",), eval_kwargs=evals)


def _stop(target: Optional[float]) -> Optional[tuple[str, float]]:
    if target is None:
        return None
    if not 0 < target <= 1:
        raise ValueError(f"target must be an accuracy in (0, 1], got {target!r}")
    return ("acc_a", round(float(target), 4))


def finetune_recipe(parent, operand: str = "b", c_tr: float = 1.0, lr="medium", steps: int = 400,
                    batch_size: int = 64, eval_every: int = 25, seed: int = 0, name: Optional[str] = None,
                    target: Optional[float] = None):
    """Fine-tune ``parent`` to count ``operand`` (answer-only loss), a fraction ``c_tr`` of rows correlated
    (``count(b) = count(a) + 1``), in the parent's window and counting regime. ``lr`` is a float or
    ``"small"``/``"medium"``/``"large"`` (``FT_LRS``); warmup 20 % and cosine to lr/100 as in the paper. Evals
    every ``eval_every`` steps. With ``target``, training stops at the first eval whose count-``a`` accuracy
    reaches it, and only count ``a`` is evaluated (a revival run: only its steps to the target are read)."""
    lr_val = FT_LRS[lr] if isinstance(lr, str) else float(lr)
    data, evals = _regime(parent.data_kwargs.get("max_len", 24), parent.data_kwargs.get("last", "all"),
                          None if target is None else ("a",))
    label = lr if isinstance(lr, str) else f"{lr_val:g}"
    return parent.derive(
        name=name or f"{parent.name}>ft-{operand}-c{c_tr:g}-{label}", parent=parent, model=None,
        data="tasks", data_kwargs={"prior": list(_one_hot(operand)), "tasks": ["count"], **data, "c_tr": c_tr},
        train=TrainConfig(steps=steps, batch_size=batch_size, lr=lr_val, warmup_frac=0.2, min_lr_frac=0.01,
                          eval_every=eval_every, stop_when=_stop(target)), seed=seed, evals=("counting",),
        eval_kwargs=evals)


def reverse_recipe(parent, lr: float = 3e-5, steps: int = 400, eval_every: int = 10, seed: int = 0,
                   name: Optional[str] = None, target: Optional[float] = None):
    """Reverse fine-tuning (reFT): train ``parent`` back on counting ``a`` (no correlation); with ``target``,
    until count-``a`` accuracy reaches it (see ``finetune_recipe``)."""
    return finetune_recipe(parent, operand="a", c_tr=0.0, lr=lr, steps=steps, eval_every=eval_every, seed=seed,
                           name=name or f"{parent.name}>reft-a", target=target)


def scratch_recipe(operand: str = "a", steps: int = 600, lr: float = 3e-3, max_len: int = 24, n_layers: int = 2,
                   d_model: int = 64, n_heads: int = 4, batch_size: int = 64, eval_every: int = 25, seed: int = 0,
                   last: str = "all", warmup_frac: float = 0.1, target: Optional[float] = None):
    """The "Scr." baseline: a fresh model trained only on counting ``operand``, with the reFT evals (and, with
    ``target``, the same early stop)."""
    base = pretrain_recipe(steps=steps, max_len=max_len, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                           lr=lr, batch_size=batch_size, eval_every=eval_every, seed=seed, last=last,
                           warmup_frac=warmup_frac)
    data, evals = _regime(max_len, last, None if target is None else ("a",))
    return base.derive(name=f"pcfg-scratch-{operand}" + ("" if last == "all" else f"-{last}"),
                       data_kwargs={"prior": list(_one_hot(operand)), "tasks": ["count"], **data},
                       train=replace(base.train, stop_when=_stop(target)), eval_kwargs=evals)
