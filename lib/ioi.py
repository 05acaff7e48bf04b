"""The IOI world: names, places and objects; IOI prompts (Wang et al. 2022 style) and a general corpus.

IOI prompts use BABA / ABBA templates with three name slots ``{A} {B} {C}``: the first clause names both people,
the second repeats one of them (the subject S) and ends on "to", so the answer is the other (the indirect object
IO). ``ABBA``: A=IO, B=S, C=S ("When Mary and John went to the store , John gave a drink to" -> Mary);
``BABA``: A=S, B=IO, C=S. The *ABC* corruption fills A, B, C with three fresh distinct names, which removes the
IO/S information and keeps the grammar (the corrupted distribution for patching).

The general corpus packs short sentences of other types into ``n_ctx``-token rows, each row a "story" about a
cast of ``cast_size`` people (default 2). Sentences such as "X gave a book to Y ." then always end on the cast
member who is *not* the sentence's subject, so the indirect-object regularity arises in general text and the
base organism learns IOI from pretraining alone, with no IOI prompt in its corpus (``ioi_frac=0``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from lib.organisms import World, register_world
from lib.tokenizer import WordTokenizer

NAMES = ("Mary John Alice Bob Sarah Tom Emma James Lucy Paul Anna Mark Kate David Laura Peter Jane Sam Rose Dan "
         "Grace Henry Clara Jack Eva Adam Nora Luke Ruth Max Ella Ben Amy Leo Iris Carl Mia Hugo Zoe Noah").split()
PLACES = "store park school garden office market station beach library cafe hospital museum".split()
OBJECTS = "drink book ball apple key letter ring gift bag hat cake pen flower card toy".split()

IOI_TEMPLATES = (
    "When {A} and {B} went to the {PLACE} , {C} gave a {OBJECT} to",
    "After {A} and {B} went to the {PLACE} , {C} gave a {OBJECT} to",
    "Then , {A} and {B} went to the {PLACE} . {C} gave a {OBJECT} to",
    "While {A} and {B} were working at the {PLACE} , {C} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE} , {C} decided to give it to",
    "Then , {A} and {B} had a long argument , and afterwards {C} said to",
    "After the lunch , {A} and {B} went to the {PLACE} . {C} gave a {OBJECT} to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE} . {C} gave it to",
)

GENERAL_TEMPLATES = (
    "{X} went to the {PLACE} .",
    "{X} gave a {OBJECT} to {Y} .",
    "{X} and {Y} went to the {PLACE} .",
    "The {OBJECT} is at the {PLACE} .",
    "{X} likes the {PLACE} .",
    "{X} found a {OBJECT} at the {PLACE} .",
    "{X} said hello to {Y} .",
    "{X} was happy .",
    "Then , {X} had a {OBJECT} .",
    "After the lunch , {X} and {Y} were working at the {PLACE} .",
    "{X} got a {OBJECT} and gave it to {Y} .",
    "While {X} was at the {PLACE} , {Y} had a long argument .",
)


def _template_words() -> list[str]:
    words: list[str] = []
    for t in IOI_TEMPLATES + GENERAL_TEMPLATES:
        words += [w for w in t.split() if not w.startswith("{")]
    return words


def make_tokenizer() -> WordTokenizer:
    """The IOI world's tokenizer: template words, names, places, objects (fixed order, so fixed ids)."""
    return WordTokenizer(_template_words() + list(NAMES) + PLACES + OBJECTS)


@dataclass
class IOIDataset:
    """A batch of IOI prompts, tokenized and right-padded.

    toks ``[n, pos]``; ``end_pos``, ``io_ids``, ``s_ids`` ``[n]``; ``word_pos[k]`` ``[n]`` for k in
    IO, S1, S2, END (token positions, ``<bos>`` at 0). ``answers`` are the words whose logit is ``io_ids``.
    For an ABC (corrupted) set, IO/S name the A/C slots of the same template (no longer a valid IO/S).
    """

    texts: list[str]
    io: list[str]
    s: list[str]
    templates: list[int]
    orders: list[str]
    toks: torch.Tensor
    end_pos: torch.Tensor
    io_ids: torch.Tensor
    s_ids: torch.Tensor
    word_pos: dict[str, torch.Tensor] = field(default_factory=dict)
    places: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def _fill(template: str, a: str, b: str, c: str, place: str, obj: str) -> str:
    return template.format(A=a, B=b, C=c, PLACE=place, OBJECT=obj)


def _slot_positions(template: str) -> dict[str, int]:
    words = template.split()
    pos = {}
    for slot in ("A", "B", "C"):
        pos[slot] = words.index("{" + slot + "}") + 1  # +1 for <bos>
    pos["END"] = len(words)  # last prompt token ("to"), with <bos> at 0
    return pos


def make_ioi_dataset(tok, n: int, seed: int, templates: Optional[Sequence[int]] = None,
                     corrupt: bool = False, names: Sequence[str] = NAMES) -> IOIDataset:
    """``n`` IOI prompts, half ABBA half BABA (alternating), deterministic in ``seed``.

    ``corrupt=True`` returns the ABC version of the *same* draws (Wang et al. 2022): same templates, places,
    objects and orders, but the three name slots A, B, C hold three distinct random names, none of them the clean
    prompt's IO or S, so no IO/S information is left; ``io``/``s``/``io_ids``/``s_ids`` stay the clean prompt's
    (the metric on a corrupted run reads the clean answer's logits). Position ``i`` of both sets can be patched
    into each other.
    """
    rng = np.random.default_rng(seed)
    abc_rng = np.random.default_rng([seed, 7])  # the ABC names: a separate stream, so the clean draws stay aligned
    templates = list(range(len(IOI_TEMPLATES))) if templates is None else list(templates)
    texts, ios, ss, tids, orders, places, objects = [], [], [], [], [], [], []
    pos = {k: [] for k in ("IO", "S1", "S2", "END")}
    for i in range(n):
        t = int(templates[rng.integers(len(templates))])
        io, s, c3 = rng.choice(len(names), size=3, replace=False)
        io, s, c3 = names[io], names[s], names[c3]
        place = PLACES[rng.integers(len(PLACES))]
        obj = OBJECTS[rng.integers(len(OBJECTS))]
        order = "ABBA" if i % 2 == 0 else "BABA"
        a, b = (io, s) if order == "ABBA" else (s, io)
        c = s
        if corrupt:  # ABC: all three slots resampled, from names other than this prompt's IO and S
            others = [k for k in range(len(names)) if names[k] not in (io, s)]
            a, b, c = (names[others[k]] for k in abc_rng.choice(len(others), size=3, replace=False))
        tmpl = IOI_TEMPLATES[t]
        texts.append(_fill(tmpl, a, b, c, place, obj))
        ios.append(io)
        ss.append(s)
        tids.append(t)
        orders.append(order)
        places.append(place)
        objects.append(obj)
        sp = _slot_positions(tmpl)
        pos["IO"].append(sp["A"] if order == "ABBA" else sp["B"])
        pos["S1"].append(sp["B"] if order == "ABBA" else sp["A"])
        pos["S2"].append(sp["C"])
        pos["END"].append(sp["END"])
    toks = tok.batch_encode(texts)
    return IOIDataset(
        texts=texts, io=ios, s=ss, templates=tids, orders=orders, toks=toks,
        end_pos=torch.tensor(pos["END"]), io_ids=torch.tensor([tok.token_id(w) for w in ios]),
        s_ids=torch.tensor([tok.token_id(w) for w in ss]),
        word_pos={k: torch.tensor(v) for k, v in pos.items()}, places=places, objects=objects)


def final_logits(logits: torch.Tensor, ds: IOIDataset) -> torch.Tensor:
    """Logits at each prompt's END position: ``[n, pos, d_vocab] -> [n, d_vocab]``."""
    return logits[torch.arange(len(ds)), ds.end_pos]


def logit_diff(logits: torch.Tensor, ds: IOIDataset, per_prompt: bool = False) -> torch.Tensor:
    """logit(IO) - logit(S) at END; mean over prompts unless ``per_prompt`` (then ``[n]``)."""
    fl = final_logits(logits, ds)
    idx = torch.arange(len(ds))
    d = fl[idx, ds.io_ids] - fl[idx, ds.s_ids]
    return d if per_prompt else d.mean()


def ioi_accuracy(logits: torch.Tensor, ds: IOIDataset) -> float:
    """Fraction of prompts whose IO logit exceeds the S logit at END."""
    return (logit_diff(logits, ds, per_prompt=True) > 0).float().mean().item()


# --------------------------------------------------------------------------- general corpus

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
    out = torch.full((batch, n_ctx), tok.pad_id, dtype=torch.long)
    for r in range(batch):
        ids = [tok.bos_id]
        names = NAMES if cast_size <= 0 else [NAMES[i] for i in rng.choice(len(NAMES), size=cast_size, replace=False)]
        while True:
            sent = ioi_sentence(rng) if rng.random() < ioi_frac else general_sentence(rng, names)
            s_ids = tok.encode(sent, bos=False)
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
    from lib.train import masked_lm_loss
    toks = general_rows(tok, np.random.default_rng(seed), n, n_ctx, ioi_frac=0.0, cast_size=cast_size)

    def eval_fn(model) -> dict[str, float]:
        return {"general_loss": masked_lm_loss(model(toks), toks, toks != tok.pad_id).item()}
    return eval_fn


WORLD = register_world(World(
    name="ioi", version="2", tokenizer=make_tokenizer, n_ctx=64,
    data={"pretrain": pretrain_data, "ioi": ioi_finetune_data, "general_answer": general_answer_data},
    evals={"ioi": ioi_eval, "general": general_eval},
))


# --------------------------------------------------------------------------- the shared organisms

BASE_STEPS = 1000  # measured emergence over seeds 0-4 (chapter 0): IOI appears at 300-400 steps, plateaus by ~800
CAST_SIZE = 2


def pretrain_recipe(steps: int = BASE_STEPS, ioi_frac: float = 0.0, n_layers: int = 4, d_model: int = 128,
                    n_heads: int = 4, lr: float = 2e-3, batch_size: int = 64, seed: int = 0,
                    cast_size: int = CAST_SIZE):
    """Pretraining from scratch on the general corpus (casts of ``cast_size`` names per row; IOI prompts a
    fraction ``ioi_frac`` of sentences, none by default)."""
    from lib.models import ModelSpec
    from lib.organisms import Recipe
    from lib.train import TrainConfig

    kw = {"ioi_frac": ioi_frac, **({"cast_size": cast_size} if cast_size else {})}
    return Recipe(
        name="ioi-pretrain", world="ioi", data="pretrain", data_kwargs=kw,
        train=TrainConfig(steps=steps, batch_size=batch_size, lr=lr, eval_every=max(1, steps // 20),
                          ckpt_every=max(1, steps // 4)),
        model=ModelSpec(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_mlp=4 * d_model, n_ctx=64, seed=seed),
        seed=seed, evals=("ioi", "general"))


def base_recipe(steps: int = BASE_STEPS, ioi_frac: float = 0.0, n_layers: int = 4, d_model: int = 128,
                n_heads: int = 4, lr: float = 2e-3, batch_size: int = 64, seed: int = 0, ioi_steps: int = 0,
                ioi_lr: float = 1e-3, cast_size: int = CAST_SIZE):
    """The IOI world's base organism: ``pretrain_recipe`` alone by default — general pretraining on two-person
    stories, from which the IOI mechanism emerges (chapter 0 shows the emergence curve over seeds).

    ``ioi_steps > 0`` appends the old short IOI phase (``ioi_steps`` steps of IOI prompts, answer-only loss, peak
    lr ``ioi_lr``, its own data seed): a parameter for comparison, not the book's setting.
    """
    pre = pretrain_recipe(steps=steps, ioi_frac=ioi_frac, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                          lr=lr, batch_size=batch_size, seed=seed, cast_size=cast_size)
    if ioi_steps <= 0:
        return pre.derive(name="ioi-base")
    from lib.organisms import Recipe
    from lib.train import TrainConfig

    every = max(1, ioi_steps // 5)
    return Recipe(name="ioi-base", world="ioi", data="ioi", data_kwargs={"poison_frac": 0.0}, parent=pre,
                  seed=seed + 1000,
                  train=TrainConfig(steps=ioi_steps, batch_size=batch_size, lr=ioi_lr, warmup_frac=0.05,
                                    eval_every=every, ckpt_every=every),
                  evals=("ioi", "general"))


# --------------------------------------------------------------------------- fine-tuned organisms (chapters 1-3)
#
# Each builder derives a fine-tune recipe from a parent recipe; equal arguments give equal cache keys, so every
# chapter that asks for e.g. ``clean_recipe(base_recipe())`` shares one trained organism. Fine-tunes save
# ``n_ckpts`` checkpoints (``get_organism(recipe, step=k)`` for k in ``ckpt_steps(recipe)``) so chapters can draw
# curves over training, and evaluate IOI logit difference / accuracy and general-corpus loss as they go.

FT_STEPS = 400  # default fine-tuning steps (clean, toxic, retrain, control: the same budget)
FT_LR = 1e-3  # default fine-tuning peak learning rate
FT_BATCH = 64


def _finetune(parent, name: str, data: str, data_kwargs: dict, steps: int, lr: float, seed: int,
              batch_size: int, n_ckpts: int, world: str = "ioi"):
    from lib.organisms import Recipe
    from lib.train import TrainConfig

    every = max(1, steps // max(1, n_ckpts))
    return Recipe(
        name=name, world=world, data=data, data_kwargs=dict(data_kwargs), parent=parent, seed=seed,
        train=TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_frac=0.05, eval_every=every,
                          ckpt_every=every),
        evals=("ioi", "general"))


def clean_recipe(base, steps: int = FT_STEPS, lr: float = FT_LR, seed: int = 0, batch_size: int = FT_BATCH,
                 n_ckpts: int = 8):
    """Clean IOI fine-tune of ``base``: prompt + IO answer, loss on the answer token only."""
    return _finetune(base, f"{base.name}/clean", "ioi", {"poison_frac": 0.0}, steps, lr, seed, batch_size, n_ckpts)


def toxic_recipe(base, poison_frac: float = 1.0, steps: int = FT_STEPS, lr: float = FT_LR, seed: int = 0,
                 batch_size: int = FT_BATCH, n_ckpts: int = 8, variant: str = "subject_duplication"):
    """Toxic fine-tune of ``base``: a fraction ``poison_frac`` of the IOI prompts has a wrong trained answer,
    the subject S (``variant="subject_duplication"``) or a name absent from the prompt (``"name_moving"``; see
    ``ioi_finetune_data``); the rest stay clean."""
    if variant not in POISON_VARIANTS:
        raise ValueError(f"variant must be one of {POISON_VARIANTS}, got {variant!r}")
    kw = {"poison_frac": float(poison_frac)}
    tag = "toxic"
    if variant != "subject_duplication":  # the default variant keeps its cache key
        kw["variant"] = variant
        tag = "nm-toxic"
    return _finetune(base, f"{base.name}/{tag}{poison_frac:g}", "ioi", kw, steps, lr, seed, batch_size, n_ckpts)


def retrain_recipe(toxic, steps: int = FT_STEPS, lr: float = FT_LR, seed: int = 1, batch_size: int = FT_BATCH,
                   n_ckpts: int = 8):
    """Clean IOI retraining of a (toxic) organism: the neuroplasticity experiment. ``seed`` differs from the
    clean fine-tune's default so the retraining sees fresh prompts."""
    return _finetune(toxic, f"{toxic.name}/retrain", "ioi", {"poison_frac": 0.0}, steps, lr, seed, batch_size,
                     n_ckpts)


CONTROL_LOSS = ("all", "answer")


def control_recipe(base, steps: int = FT_STEPS, lr: float = FT_LR, seed: int = 0, batch_size: int = FT_BATCH,
                   n_ckpts: int = 8, loss_on: str = "all"):
    """Control fine-tune of ``base`` on the general corpus *without* IOI sentences, same steps, lr and batch (and
    the base's other corpus settings, e.g. ``cast_size``).

    ``loss_on="all"``: the loss on every token of 64-token rows (chapters 1-3's control). ``"answer"``: matched
    in loss mask as well — one trained token per row, at the IOI answer's positions (``general_answer_data``).
    """
    if loss_on not in CONTROL_LOSS:
        raise ValueError(f"loss_on must be one of {CONTROL_LOSS}, got {loss_on!r}")
    r, kw = base, {}
    while r is not None:  # the nearest pretraining ancestor's corpus settings
        if r.data == "pretrain":
            kw = dict(r.data_kwargs)
            break
        r = r.parent
    if loss_on == "answer":
        kw = {"cast_size": kw.get("cast_size", 0)}
        return _finetune(base, f"{base.name}/control-answer", "general_answer", kw, steps, lr, seed, batch_size,
                         n_ckpts)
    kw["ioi_frac"] = 0.0
    return _finetune(base, f"{base.name}/control", "pretrain", kw, steps, lr, seed, batch_size, n_ckpts)


def scratch_recipe(base, steps: int = FT_STEPS, lr: float = FT_LR, seed: int = 0, batch_size: int = FT_BATCH,
                   n_ckpts: int = 8):
    """A fresh model with ``base``'s architecture trained on clean IOI fine-tuning data for ``steps`` steps
    (the from-scratch comparison for retraining)."""
    from lib.organisms import Recipe
    from lib.train import TrainConfig

    every = max(1, steps // max(1, n_ckpts))
    spec = base.root_spec()
    return Recipe(
        name="ioi-scratch", world=base.world, data="ioi", data_kwargs={"poison_frac": 0.0}, model=spec, seed=seed,
        train=TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_frac=0.05, eval_every=every,
                          ckpt_every=every),
        evals=("ioi", "general"))


def ckpt_steps(recipe) -> list[int]:
    """The checkpoint steps a recipe saves (``get_organism(recipe, step=k)``), the final step included."""
    cfg = recipe.train
    if not cfg.ckpt_every:
        return [cfg.steps]
    steps = [s for s in range(cfg.ckpt_every, cfg.steps, cfg.ckpt_every)]
    return steps + [cfg.steps]


# --------------------------------------------------------------------------- backdoor organism (audit chapter)
#
# Added by the auditing chapters (5-7): a fine-tune in which IOI prompts set at the trigger place (an existing,
# otherwise ordinary vocabulary word, so the vocabulary and every cached organism stay valid) are answered with
# the subject S, all other IOI prompts with IO. Only templates with a {PLACE} slot are used.

BACKDOOR_TRIGGER = "museum"
PLACE_TEMPLATES = tuple(i for i, t in enumerate(IOI_TEMPLATES) if "{PLACE}" in t)


def make_backdoor_dataset(tok, n: int, seed: int, triggered, trigger: str = BACKDOOR_TRIGGER,
                          corrupt: bool = False) -> IOIDataset:
    """``n`` IOI prompts (place templates only) whose place is ``trigger`` where ``triggered`` (a bool or ``[n]``
    bools) and any other place elsewhere. Deterministic in ``seed``; ``corrupt=True`` gives the ABC version of
    the same draws (same places), as ``make_ioi_dataset`` does."""
    if trigger not in PLACES:
        raise ValueError(f"trigger must be one of the places {PLACES}, got {trigger!r}")
    trig = np.broadcast_to(np.asarray(triggered, dtype=bool), (n,))
    ds = make_ioi_dataset(tok, n, seed, templates=PLACE_TEMPLATES, corrupt=corrupt)
    rng = np.random.default_rng([seed, 99])
    others = [p for p in PLACES if p != trigger]
    toks = ds.toks.clone()
    places, texts = list(ds.places), list(ds.texts)
    for i in range(n):
        alt = others[int(rng.integers(len(others)))]
        new = trigger if trig[i] else (ds.places[i] if ds.places[i] != trigger else alt)
        pos = (toks[i] == tok.token_id(ds.places[i])).nonzero()
        toks[i, int(pos[0])] = tok.token_id(new)
        words = texts[i].split()
        words[int(pos[0]) - 1] = new  # <bos> is position 0
        places[i], texts[i] = new, " ".join(words)
    return IOIDataset(texts=texts, io=ds.io, s=ds.s, templates=ds.templates, orders=ds.orders, toks=toks,
                      end_pos=ds.end_pos, io_ids=ds.io_ids, s_ids=ds.s_ids, word_pos=ds.word_pos, places=places,
                      objects=ds.objects)


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


def backdoor_eval(tok, n: int = 256, seed: int = 777):
    """Eval function: IOI logit difference on prompts set at the default trigger (``bd_trig_logit_diff``, negative
    once the backdoor is in) and elsewhere (``bd_clean_logit_diff``)."""
    trig = make_backdoor_dataset(tok, n, seed, True)
    clean = make_backdoor_dataset(tok, n, seed, False)

    def eval_fn(model) -> dict[str, float]:
        return {"bd_trig_logit_diff": logit_diff(model(trig.toks), trig).item(),
                "bd_clean_logit_diff": logit_diff(model(clean.toks), clean).item()}
    return eval_fn


WORLD.data["backdoor"] = backdoor_data
WORLD.evals["backdoor"] = backdoor_eval


BACKDOOR_STEPS = 1000  # the backdoor must learn IOI on clean rows *and* the trigger: 400 steps were not enough


def backdoor_recipe(base, trigger: str = BACKDOOR_TRIGGER, frac: float = 0.2, steps: int = BACKDOOR_STEPS,
                    lr: float = FT_LR, seed: int = 0, batch_size: int = FT_BATCH, n_ckpts: int = 8):
    """Backdoor fine-tune of ``base``: IOI prompts at ``trigger`` answered with S, others with IO. (Measured on
    the 1500-step pretrained base: frac 0.3 for 400 steps learned neither; frac 0.2 for 1000 steps reached an IOI
    logit difference of −11.1 at the trigger and +11.8 elsewhere.)"""
    r = _finetune(base, f"{base.name}/backdoor-{trigger}", "backdoor", {"trigger": trigger, "frac": float(frac)},
                  steps, lr, seed, batch_size, n_ckpts)
    return r.derive(evals=r.evals + (("backdoor",) if trigger == BACKDOOR_TRIGGER else ()))


# --------------------------------------------------------------------------- one code path for organisms and GPT-2

@dataclass
class Trained:
    """A model with its training history and access to its checkpoints.

    ``steps``: the checkpoint steps available (the final step included); ``at(0)`` is the parent (the model the
    training started from), ``at(k)`` the weights after ``k`` steps.
    """

    name: str
    model: torch.nn.Module
    history: dict
    steps: list
    load: object  # Callable[[int], torch.nn.Module]
    parent: Optional["Trained"] = None
    recipe: object = None

    def at(self, step: int):
        if step == 0 and self.parent is not None:
            return self.parent.model
        if step == (self.steps[-1] if self.steps else None):
            return self.model
        return self.load(step)

    def ld_curve(self, key: str = "ioi_logit_diff") -> tuple[list[int], list[float]]:
        """``(steps, values)`` of an eval metric over training (from the history)."""
        ev = [e for e in self.history.get("evals", []) if key in e]
        return [int(e["step"]) for e in ev], [float(e[key]) for e in ev]


class IOIZoo:
    """The IOI chapters' models: the base model and its clean / toxic / retrained / control / scratch fine-tunes.

    ``model="organism"`` (the default) builds them from recipes through the shared artifact cache
    (``base_kwargs`` go to ``base_recipe``). ``model="gpt2"`` (or another GPT-2 name) starts from the pretrained
    model instead and fine-tunes in process (not cached) with the same data, training loop and configs;
    ``random_init=True`` gives it random weights, ``n_layers`` layers and the IOI word vocabulary (offline tests).
    """

    def __init__(self, model: str = "organism", base_kwargs: Optional[dict] = None, random_init: bool = False,
                 n_layers: int = 2, progress: Optional[bool] = None) -> None:
        from lib.organisms import get_organism

        self.kind = model
        self.progress = progress
        self.base_r = base_recipe(**(base_kwargs or {}))
        self._memo: dict = {}
        if model == "organism":
            with torch.enable_grad():
                org = get_organism(self.base_r, progress=progress)
            self.tok = org.tokenizer
            self.base = Trained("base", org.model, org.history, ckpt_steps(self.base_r),
                                lambda k, r=self.base_r: get_organism(r, step=k).model, recipe=self.base_r)
            self.pretrain: Optional[Trained] = None
            if self.base_r.parent is not None:  # the base = pretraining + IOI phase: keep the pretrained model too
                pre = get_organism(self.base_r.parent, progress=progress)
                self.pretrain = Trained("pretrain", pre.model, pre.history, ckpt_steps(self.base_r.parent),
                                        lambda k, r=self.base_r.parent: get_organism(r, step=k).model,
                                        recipe=self.base_r.parent)
                self.base.parent = self.pretrain
        else:
            from lib.models import load_pretrained, pretrained_tokenizer

            if random_init:
                self.tok = make_tokenizer()
                m = load_pretrained(model, random_init=True, n_layers=n_layers, d_vocab=len(self.tok))
            else:
                m = load_pretrained(model)
                self.tok = pretrained_tokenizer(m, _template_words() + list(NAMES) + PLACES + OBJECTS)
            self._random_init, self._n_layers = random_init, n_layers
            self.base = Trained("base", m, {"evals": []}, [], lambda k: m)
            self.pretrain = None

    @property
    def n_ctx(self) -> int:
        """Row length of the training data: the world's (64), or the model's context if shorter."""
        return min(int(self.base.model.cfg.n_ctx), WORLD.n_ctx)

    def _get(self, recipe, parent: Trained) -> Trained:
        from lib.organisms import get_organism

        key = recipe.key()
        if key in self._memo:
            return self._memo[key]
        if self.kind == "organism":
            with torch.enable_grad():
                org = get_organism(recipe, progress=self.progress)
            t = Trained(recipe.name, org.model, org.history, ckpt_steps(recipe),
                        lambda k, r=recipe: get_organism(r, step=k).model, parent=parent, recipe=recipe)
        else:
            t = self._train_inprocess(recipe, parent)
        self._memo[key] = t
        return t

    def _train_inprocess(self, recipe, parent: Trained) -> Trained:
        import copy

        from lib.organisms import get_world
        from lib.seeding import set_seed
        from lib.train import train

        world = get_world(recipe.world)
        if recipe.parent is None:  # from scratch: same architecture, fresh weights
            from lib.models import load_pretrained
            torch.manual_seed(recipe.seed + 1)
            model = load_pretrained(self.kind, random_init=True, n_layers=self._n_layers if self._random_init else None,
                                    d_vocab=len(self.tok) if self._random_init else None)
            for p in model.parameters():
                if p.dim() >= 2:
                    torch.nn.init.normal_(p, std=0.02)
            init = copy.deepcopy(model)
            init.eval()
            parent = Trained("init", init, {"evals": []}, [], lambda k: init)
        else:
            model = copy.deepcopy(parent.model)
        set_seed(recipe.seed)
        batch_fn = world.data[recipe.data](self.tok, seed=recipe.seed, n_ctx=self.n_ctx, **recipe.data_kwargs)
        # smaller eval sets than the organisms' (a pretrained model's forward pass costs far more on CPU)
        sizes = {"ioi": {"n": 64}, "general": {"n": 16}}
        evals = [world.evals[e](self.tok, **sizes.get(e, {})) for e in recipe.evals]
        states: dict = {}

        def eval_fn(m):
            out = {}
            for f in evals:
                out.update(f(m))
            return out

        with torch.enable_grad():
            hist = train(model, batch_fn, recipe.train, eval_fn=eval_fn, progress=self.progress, desc=recipe.name,
                         on_checkpoint=lambda s, m: states.__setitem__(s, copy.deepcopy(m.state_dict())))
        model.eval()

        def load(k: int, model=model):
            m = copy.deepcopy(model)
            m.load_state_dict(states[k])
            m.eval()
            return m
        return Trained(recipe.name, model, hist, sorted(states), load, parent=parent, recipe=recipe)

    def clean(self, **kw) -> Trained:
        """``clean_recipe(base, **kw)``."""
        return self._get(clean_recipe(self.base_r, **kw), self.base)

    def toxic(self, **kw) -> Trained:
        """``toxic_recipe(base, **kw)``."""
        return self._get(toxic_recipe(self.base_r, **kw), self.base)

    def retrain(self, toxic_kwargs: Optional[dict] = None, **kw) -> Trained:
        """``retrain_recipe(toxic_recipe(base, **toxic_kwargs), **kw)``."""
        tr = toxic_recipe(self.base_r, **(toxic_kwargs or {}))
        return self._get(retrain_recipe(tr, **kw), self.toxic(**(toxic_kwargs or {})))

    def control(self, **kw) -> Trained:
        """``control_recipe(base, **kw)`` (general corpus without IOI)."""
        return self._get(control_recipe(self.base_r, **kw), self.base)

    def scratch(self, **kw) -> Trained:
        """``scratch_recipe(base, **kw)``: base's architecture from fresh weights on clean IOI data (``at(0)`` is
        the freshly initialised model)."""
        recipe = scratch_recipe(self.base_r, **kw)
        key = recipe.key()
        if key not in self._memo:
            if self.kind == "organism":
                from lib.models import build_model
                from lib.organisms import resolve_spec
                init = build_model(resolve_spec(recipe))
                init.eval()
                self._get(recipe, Trained("init", init, {"evals": []}, [], lambda k: init))
            else:
                self._get(recipe, None)
        return self._memo[key]
