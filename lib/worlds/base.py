"""What every world provides, and the registry of worlds.

A **world** (a module or package ``lib/worlds/<name>``, registered with ``register_world``) owns a tokenizer,
data sources (batch functions returning ``(tokens, loss_mask)``) and evaluations. ``get_world(name)`` imports
it on first use. ``masked_lm_loss`` is the loss every batch is trained and evaluated under: next-token
cross-entropy on the positions its loss mask marks."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from lib.worlds.tokenizer import WordTokenizer

BatchFn = Callable[[int, int], "tuple[torch.Tensor, torch.Tensor]"]  # (step, batch_size) -> (tokens, loss_mask)
EvalFn = Callable[[torch.nn.Module], "dict[str, float]"]  # model -> named metrics


def masked_lm_loss(logits: torch.Tensor, tokens: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits[:, :-1]`` against ``tokens[:, 1:]`` over positions where ``loss_mask[:, 1:]``.

    logits ``[batch, pos, d_vocab]``, tokens and loss_mask ``[batch, pos]``; returns a scalar.
    """
    tokens, loss_mask = tokens.to(logits.device), loss_mask.to(logits.device)
    target_mask = loss_mask[:, 1:]
    if not target_mask.any():
        raise ValueError("loss_mask selects no target token")
    lp = logits[:, :-1][target_mask]
    return F.cross_entropy(lp.float(), tokens[:, 1:][target_mask])


@dataclass
class World:
    """A synthetic world. ``data[name](tokenizer, seed=..., n_ctx=..., **kwargs) -> BatchFn``;
    ``evals[name](tokenizer, **kwargs) -> EvalFn``. Bump ``version`` whenever generated data changes."""

    name: str
    version: str
    tokenizer: Callable[[], WordTokenizer]
    data: dict[str, Callable[..., BatchFn]] = field(default_factory=dict)
    evals: dict[str, Callable[..., EvalFn]] = field(default_factory=dict)
    n_ctx: int = 64


_WORLDS: dict[str, World] = {}
_TOKENIZERS: dict[str, WordTokenizer] = {}


def register_world(world: World) -> World:
    _WORLDS[world.name] = world
    return world


def get_world(name: str) -> World:
    """The world called ``name``, importing ``lib.worlds.<name>`` on first use."""
    if name not in _WORLDS:
        try:
            importlib.import_module(f"lib.worlds.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"lib.worlds.{name}":
                raise ValueError(f"unknown world {name!r}: no module lib/worlds/{name}") from None
            raise
        if name not in _WORLDS:
            raise ValueError(f"lib/worlds/{name} does not register a world called {name!r}")
    return _WORLDS[name]


def world_tokenizer(name: str) -> WordTokenizer:
    if name not in _TOKENIZERS:
        _TOKENIZERS[name] = get_world(name).tokenizer()
    return _TOKENIZERS[name]
