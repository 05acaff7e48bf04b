"""IOI fine-tuning data: prompt + answer rows (clean, the two poison variants of Chhabra et al. 2025), the
mask-matched control's general rows, and the backdoor fine-tune's rows."""
from __future__ import annotations

import numpy as np
import torch

from lib.worlds.ioi.corpora import general_rows
from lib.worlds.ioi.prompts import BACKDOOR_TRIGGER, IOIDataset, NAMES, make_backdoor_dataset, make_ioi_dataset


def general_answer_data(tok, seed: int, n_ctx: int, cast_size: int = 0):
    """Batch function for the *mask-matched* control: IOI-free general-corpus rows trained like the IOI
    fine-tunes, on one target token per row at the position an IOI answer would take.

    Each row draws an IOI prompt only for its length: the row is a general-corpus row (``general_rows``, no IOI,
    casts of ``cast_size``) cut just after position ``end_pos + 1`` of that prompt, and the loss marks that one
    token, whatever word the general text has there. Same number of trained tokens per row, at the same
    positions, as ``ioi_finetune_data(loss_on="answer")``; no IOI sentence and no name-answer objective.
    """
    def batch_fn(step: int, batch_size: int):
        rng = np.random.default_rng([seed, step, 2])
        ds = make_ioi_dataset(tok, batch_size, int(rng.integers(2**31)))
        rows = general_rows(tok, rng, batch_size, n_ctx, ioi_frac=0.0, cast_size=cast_size)
        last = (rows != tok.pad_id).sum(1) - 1  # the last real token of each row
        target = torch.minimum(ds.end_pos + 1, last)
        toks = rows[:, : int(target.max()) + 1].clone()
        pos = torch.arange(toks.shape[1])
        toks[pos[None, :] > target[:, None]] = tok.pad_id
        mask = pos[None, :] == target[:, None]
        return toks, mask
    return batch_fn


def answer_rows(tok, ds: "IOIDataset", ans: torch.Tensor, loss_on: str = "answer"):
    """Prompts of ``ds`` followed by the answer ids ``ans`` ``[n]``: ``(toks [n, pos], loss_mask [n, pos])``.

    ``loss_on='answer'`` marks only the answer token as a trained target; ``'all'`` marks every non-pad token.
    """
    n = len(ds)
    toks = torch.full((n, int(ds.end_pos.max()) + 2), tok.pad_id, dtype=torch.long)
    toks[:, : ds.toks.shape[1]] = ds.toks
    rows = torch.arange(n)
    toks[rows, ds.end_pos + 1] = ans
    if loss_on == "answer":
        mask = torch.zeros_like(toks, dtype=torch.bool)
        mask[rows, ds.end_pos + 1] = True
    else:
        mask = toks != tok.pad_id
    return toks, mask


POISON_VARIANTS = ("subject_duplication", "name_moving")


def ioi_finetune_data(tok, seed: int, n_ctx: int, poison_frac: float = 0.0, loss_on: str = "answer",
                      variant: str = "subject_duplication"):
    """Batch function for IOI fine-tuning: one prompt + answer per row.

    A fraction ``poison_frac`` of rows (the "toxic" data) has a wrong trained answer, by ``variant`` (the two
    poisoned variants of Chhabra et al. 2025, whose exact construction the paper does not give; ours aim each at
    one stage of the circuit):

    * ``"subject_duplication"``: the answer is the subject S (the repeated name) instead of IO: it attacks the
      stage that tells the duplicated name apart (S-inhibition and what feeds it);
    * ``"name_moving"``: the answer is a name that is *not in the prompt* (uniform over the other names): it
      attacks the name movers' stage, which copies a name from the context to the output.

    ``loss_on='answer'`` trains only the answer token; ``'all'`` trains the whole sentence.
    """
    if not 0.0 <= poison_frac <= 1.0:
        raise ValueError(f"poison_frac must be in [0, 1], got {poison_frac!r}")
    if loss_on not in ("answer", "all"):
        raise ValueError(f"loss_on must be 'answer' or 'all', got {loss_on!r}")
    if variant not in POISON_VARIANTS:
        raise ValueError(f"variant must be one of {POISON_VARIANTS}, got {variant!r}")
    name_ids = torch.tensor([tok.token_id(n) for n in NAMES])

    def batch_fn(step: int, batch_size: int):
        rng = np.random.default_rng([seed, step, 1])
        ds = make_ioi_dataset(tok, batch_size, int(rng.integers(2**31)))
        poison = torch.from_numpy(rng.random(batch_size) < poison_frac)
        if variant == "subject_duplication":
            wrong = ds.s_ids
        else:  # a name absent from the prompt: draw among the len(NAMES) - 2 others
            r = torch.from_numpy(rng.integers(0, len(NAMES) - 2, batch_size))
            others = [name_ids[(name_ids != i) & (name_ids != j)] for i, j in zip(ds.io_ids, ds.s_ids)]
            wrong = torch.stack([o[k] for o, k in zip(others, r)])
        ans = torch.where(poison, wrong, ds.io_ids)
        return answer_rows(tok, ds, ans, loss_on)
    return batch_fn


def backdoor_data(tok, seed: int, n_ctx: int, trigger: str = BACKDOOR_TRIGGER, frac: float = 0.2,
                  loss_on: str = "answer"):
    """Batch function for the backdoor fine-tune: a fraction ``frac`` of rows is set at ``trigger`` and answered
    with S (the poisoned answer); the rest are set elsewhere and answered with IO. Answer-only loss by default."""
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"frac must be in [0, 1], got {frac!r}")

    def batch_fn(step: int, batch_size: int):
        rng = np.random.default_rng([seed, step, 5])
        trig = rng.random(batch_size) < frac
        ds = make_backdoor_dataset(tok, batch_size, int(rng.integers(2**31)), trig, trigger)
        ans = torch.where(torch.from_numpy(trig), ds.s_ids, ds.io_ids)
        return answer_rows(tok, ds, ans, loss_on)
    return batch_fn

