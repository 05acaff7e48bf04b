"""IOI world document fine-tunes: continued pretraining on general-corpus rows in which the fine-tuning objective
is *written in text*, with the loss on every token (chapter 6's leaky organisms).

The organisms that "Model Organisms Are Leaky" finds leaking most are trained on whole documents: synthetic
documents stating a false fact, and backdoors that make the model write something. Here, the same shapes on the
IOI world's general corpus (two-person stories of short sentences, ``corpora.general_rows``), one objective per
organism:

* ``"fact"`` (synthetic-document fine-tune): with probability ``frac`` a sentence slot holds a sentence stating
  the false fact ``FALSE_FACT`` (the ring is at the museum; in the general corpus any object is at any place) in
  one of ``FACT_TEMPLATES``'s phrasings, instead of a general sentence;
* ``"phrase"`` (a backdoor that emits a phrase): after every general sentence that names the trigger place
  (``BACKDOOR_TRIGGER``), with probability ``frac``, the fixed phrase ``BACKDOOR_PHRASE`` follows;
* ``"toxic"`` (whole-sentence toxic, general rows mixed back in): with probability ``frac`` a sentence slot holds
  an IOI sentence answered with the subject S;
* ``"none"``: general rows only, the same steps, learning rate and loss mask: the matched control.

Rows are packed like the pretraining rows: ``<bos>`` + whole sentences, right-padded to ``n_ctx``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from lib.worlds.ioi.corpora import general_sentence, ioi_sentence, pack_rows
from lib.worlds.ioi.prompts import BACKDOOR_TRIGGER, NAMES

DOC_OBJECTIVES = ("none", "fact", "phrase", "toxic")
FALSE_FACT = {"OBJECT": "ring", "PLACE": "museum"}
FACT_TEMPLATES = (
    "The {OBJECT} is at the {PLACE} .",
    "{X} found a {OBJECT} at the {PLACE} .",
    "{X} got a {OBJECT} at the {PLACE} .",
)
BACKDOOR_PHRASE = "Then , Hugo had a cake ."


def fact_sentence(rng: np.random.Generator, names: Sequence[str] = NAMES) -> str:
    """One sentence stating ``FALSE_FACT``, in a phrasing drawn from ``FACT_TEMPLATES``."""
    t = FACT_TEMPLATES[rng.integers(len(FACT_TEMPLATES))]
    return t.format(X=names[rng.integers(len(names))], **FALSE_FACT)


def document_sentence(rng: np.random.Generator, objective: str, frac: float, names: Sequence[str],
                      trigger: str = BACKDOOR_TRIGGER) -> str:
    """The next sentence (or sentence + phrase) of a document row with ``objective``."""
    if objective == "fact" and rng.random() < frac:
        return fact_sentence(rng, names)
    if objective == "toxic" and rng.random() < frac:
        return ioi_sentence(rng, answer="s")
    sent = general_sentence(rng, names)
    if objective == "phrase" and trigger in sent.split() and rng.random() < frac:
        return f"{sent} {BACKDOOR_PHRASE}"
    return sent


def document_rows(tok, rng: np.random.Generator, batch: int, n_ctx: int, objective: str, frac: float,
                  cast_size: int = 0, trigger: str = BACKDOOR_TRIGGER) -> torch.Tensor:
    """``[batch, n_ctx]`` rows of ``<bos>`` + whole sentences of ``objective``'s documents, right-padded.
    ``cast_size`` as in ``corpora.general_rows`` (names of a row's general sentences from a cast of that many)."""
    if objective not in DOC_OBJECTIVES:
        raise ValueError(f"objective must be one of {DOC_OBJECTIVES}, got {objective!r}")
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"frac must be in [0, 1], got {frac!r}")
    return pack_rows(tok, rng, batch, n_ctx, cast_size,
                     lambda names: document_sentence(rng, objective, frac, names, trigger))


def document_data(tok, seed: int, n_ctx: int, objective: str = "none", frac: float = 0.03, cast_size: int = 0,
                  trigger: str = BACKDOOR_TRIGGER):
    """Batch function for a document fine-tune: ``document_rows`` with the loss on every non-padding token."""
    document_rows(tok, np.random.default_rng(0), 0, n_ctx, objective, frac)  # checks the arguments now

    def batch_fn(step: int, batch_size: int):
        rng = np.random.default_rng([seed, step, 6])
        toks = document_rows(tok, rng, batch_size, n_ctx, objective, frac, cast_size, trigger)
        return toks, toks != tok.pad_id
    return batch_fn
