"""IOI world evaluations run during training: IOI logit difference and accuracy, general-corpus loss, and the
backdoor's logit difference at and away from its trigger."""
from __future__ import annotations

import numpy as np
import torch

from lib.worlds.base import masked_lm_loss
from lib.worlds.ioi.corpora import general_rows
from lib.worlds.ioi.prompts import logit_diff, make_backdoor_dataset, make_ioi_dataset


def ioi_eval(tok, n: int = 256, seed: int = 12345):
    """Eval function: IOI logit difference and accuracy on a fixed held-out set."""
    ds = make_ioi_dataset(tok, n, seed)
    abba = torch.tensor([o == "ABBA" for o in ds.orders])

    def eval_fn(model) -> dict[str, float]:
        d = logit_diff(model(ds.toks), ds, per_prompt=True)
        return {"ioi_logit_diff": d.mean().item(), "ioi_acc": (d > 0).float().mean().item(),
                "ioi_ld_abba": d[abba].mean().item(), "ioi_ld_baba": d[~abba].mean().item()}
    return eval_fn


def general_eval(tok, n: int = 64, seed: int = 54321, n_ctx: int = 64, cast_size: int = 2):
    """Eval function: next-token loss on a fixed batch of general-corpus rows (IOI-free, casts of ``cast_size``)."""
    toks = general_rows(tok, np.random.default_rng(seed), n, n_ctx, ioi_frac=0.0, cast_size=cast_size)

    def eval_fn(model) -> dict[str, float]:
        return {"general_loss": masked_lm_loss(model(toks), toks, toks != tok.pad_id).item()}
    return eval_fn


def backdoor_eval(tok, n: int = 256, seed: int = 777):
    """Eval function: IOI logit difference on prompts set at the default trigger (``bd_trig_logit_diff``, negative
    once the backdoor is in) and elsewhere (``bd_clean_logit_diff``)."""
    trig = make_backdoor_dataset(tok, n, seed, True)
    clean = make_backdoor_dataset(tok, n, seed, False)

    def eval_fn(model) -> dict[str, float]:
        return {"bd_trig_logit_diff": logit_diff(model(trig.toks), trig).item(),
                "bd_clean_logit_diff": logit_diff(model(clean.toks), clean).item()}
    return eval_fn

