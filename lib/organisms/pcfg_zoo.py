"""The PCFG organisms of chapter 4 (Jain et al. 2024): the pretrained counter, its fine-tunes (counting ``b``
with the spurious correlation), reverse fine-tuning and the from-scratch baseline."""
from __future__ import annotations

from typing import Optional, Sequence

from lib.organisms.models import ModelSpec
from lib.organisms.recipes import Recipe
from lib.organisms.train import TrainConfig
from lib.worlds.pcfg import FT_LRS, PRIORS, TERMINALS


def _one_hot(operand: str) -> tuple[float, float, float]:
    if operand not in TERMINALS:
        raise ValueError(f"operand must be one of {TERMINALS}, got {operand!r}")
    return tuple(1.0 if o == operand else 0.0 for o in TERMINALS)  # type: ignore[return-value]


def pretrain_recipe(prior: str = "medium", steps: int = 2000, operands: str = "abc",
                    tasks: Sequence[str] = ("count", "index"), max_len: int = 24, n_layers: int = 2,
                    d_model: int = 64, n_heads: int = 4, lr: float = 3e-3, batch_size: int = 64,
                    eval_every: int = 250, seed: int = 0):
    """The pretrained organism: a GPT trained from scratch on counting/indexing with operand prior ``prior``.

    ``operands="bac"`` puts the prior on ``b`` first (the "pretrained on counting b" baseline of reFT).
    """
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {sorted(PRIORS)}, got {prior!r}")
    return Recipe(
        name=f"pcfg-pt-{prior}" + ("" if operands == "abc" else f"-{operands}"), world="pcfg", data="tasks",
        data_kwargs={"prior": prior, "operands": operands, "tasks": list(tasks), "max_len": max_len},
        train=TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_frac=0.1, min_lr_frac=0.01,
                          eval_every=eval_every, ckpt_every=0),
        model=ModelSpec(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_mlp=4 * d_model, n_ctx=48, seed=seed),
        seed=seed, evals=("counting",), eval_kwargs={"max_len": max_len})


def finetune_recipe(parent, operand: str = "b", c_tr: float = 1.0, lr="medium", steps: int = 400,
                    batch_size: int = 64, eval_every: int = 25, seed: int = 0, name: Optional[str] = None):
    """Fine-tune ``parent`` to count ``operand`` (answer-only loss), a fraction ``c_tr`` of rows correlated
    (``count(b) = count(a) + 1``). ``lr`` is a float or ``"small"``/``"medium"``/``"large"`` (``FT_LRS``);
    warmup 20 % and cosine to lr/100 as in the paper. Evals every ``eval_every`` steps."""
    lr_val = FT_LRS[lr] if isinstance(lr, str) else float(lr)
    max_len = parent.data_kwargs.get("max_len", 24)
    label = lr if isinstance(lr, str) else f"{lr_val:g}"
    return parent.derive(
        name=name or f"{parent.name}>ft-{operand}-c{c_tr:g}-{label}", parent=parent, model=None,
        data="tasks", data_kwargs={"prior": list(_one_hot(operand)), "tasks": ["count"], "max_len": max_len,
                                   "c_tr": c_tr},
        train=TrainConfig(steps=steps, batch_size=batch_size, lr=lr_val, warmup_frac=0.2, min_lr_frac=0.01,
                          eval_every=eval_every), seed=seed, evals=("counting",), eval_kwargs={"max_len": max_len})


def reverse_recipe(parent, lr: float = 3e-5, steps: int = 400, eval_every: int = 10, seed: int = 0,
                   name: Optional[str] = None):
    """Reverse fine-tuning (reFT): train ``parent`` back on counting ``a`` (no correlation)."""
    return finetune_recipe(parent, operand="a", c_tr=0.0, lr=lr, steps=steps, eval_every=eval_every, seed=seed,
                           name=name or f"{parent.name}>reft-a")


def scratch_recipe(operand: str = "a", steps: int = 600, lr: float = 3e-3, max_len: int = 24, n_layers: int = 2,
                   d_model: int = 64, n_heads: int = 4, batch_size: int = 64, eval_every: int = 25, seed: int = 0):
    """The "Scr." baseline: a fresh model trained only on counting ``operand``, with the reFT evals."""
    base = pretrain_recipe(steps=steps, max_len=max_len, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                           lr=lr, batch_size=batch_size, eval_every=eval_every, seed=seed)
    return base.derive(name=f"pcfg-scratch-{operand}",
                       data_kwargs={"prior": list(_one_hot(operand)), "tasks": ["count"], "max_len": max_len})
