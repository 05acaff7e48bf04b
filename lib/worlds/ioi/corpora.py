"""IOI world corpora: the general corpus of short sentences packed into rows (two-person "stories"), from which
the base organism learns IOI, and its pretraining batch function."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from lib.worlds.ioi.prompts import GENERAL_TEMPLATES, NAMES, OBJECTS, PLACES, make_ioi_dataset, make_tokenizer
from lib.worlds.tokenizer import WordTokenizer


def general_sentence(rng: np.random.Generator, names: Sequence[str] = NAMES) -> str:
    t = GENERAL_TEMPLATES[rng.integers(len(GENERAL_TEMPLATES))]
    x, y = rng.choice(len(names), size=2, replace=False)
    return t.format(X=names[x], Y=names[y], PLACE=PLACES[rng.integers(len(PLACES))],
                    OBJECT=OBJECTS[rng.integers(len(OBJECTS))])


def ioi_sentence(rng: np.random.Generator, answer: str = "io") -> str:
    """One IOI sentence with its answer and a full stop (``answer='s'`` gives the poisoned subject answer)."""
    ds_seed = int(rng.integers(2**31))
    ds = make_ioi_dataset(_tok_cache(), 1, ds_seed)
    ans = ds.io[0] if answer == "io" else ds.s[0]
    return f"{ds.texts[0]} {ans} ."


_TOK: list[WordTokenizer] = []


def _tok_cache() -> WordTokenizer:
    if not _TOK:
        _TOK.append(make_tokenizer())
    return _TOK[0]


def general_rows(tok, rng: np.random.Generator, batch: int, n_ctx: int, ioi_frac: float,
                 cast_size: int = 0) -> torch.Tensor:
    """``[batch, n_ctx]`` rows of ``<bos>`` + whole sentences (IOI with probability ``ioi_frac``), right-padded.

    ``cast_size > 0``: the general sentences of a row draw their names from a per-row cast of that many names (a
    "story" about a few people), so predicting a name rewards looking back at the names in context — the copying
    that natural text rewards and that IOI builds on. ``0``: every sentence draws from all names.
    """
    def sentence(names):
        return ioi_sentence(rng) if rng.random() < ioi_frac else general_sentence(rng, names)
    return pack_rows(tok, rng, batch, n_ctx, cast_size, sentence)


def pack_rows(tok, rng: np.random.Generator, batch: int, n_ctx: int, cast_size: int,
              sentence: Callable[[Sequence[str]], str]) -> torch.Tensor:
    """``[batch, n_ctx]`` rows of ``<bos>`` + whole sentences from ``sentence(names)`` (``names``: the row's cast
    of ``cast_size`` names, all names if 0), as many as fit, right-padded. ``rng`` draws the casts (and is the one
    ``sentence`` draws from, so a row is one reproducible stream)."""
    out = torch.full((batch, n_ctx), tok.pad_id, dtype=torch.long)
    for r in range(batch):
        ids = [tok.bos_id]
        names = NAMES if cast_size <= 0 else [NAMES[i] for i in rng.choice(len(NAMES), size=cast_size, replace=False)]
        while True:
            s_ids = tok.encode(sentence(names), bos=False)
            if len(ids) + len(s_ids) > n_ctx:
                break
            ids += s_ids
        out[r, : len(ids)] = torch.tensor(ids)
    return out


def pretrain_data(tok, seed: int, n_ctx: int, ioi_frac: float = 0.1, cast_size: int = 0):
    """Batch function for pretraining on the general corpus (loss on every non-padding token); ``cast_size``
    as in ``general_rows``."""
    def batch_fn(step: int, batch_size: int):
        rng = np.random.default_rng([seed, step])
        toks = general_rows(tok, rng, batch_size, n_ctx, ioi_frac, cast_size)
        return toks, toks != tok.pad_id
    return batch_fn

