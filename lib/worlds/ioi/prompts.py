"""IOI vocabulary and prompts: names, places, objects, the IOI templates (Wang et al. 2022 style) and the
general-sentence templates, the world's tokenizer, IOI prompt sets (clean and ABC-corrupted, and the backdoor
chapters' prompts set at a trigger place) and the logit-difference metric read on them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from lib.worlds.tokenizer import WordTokenizer

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


def template_words() -> list[str]:
    words: list[str] = []
    for t in IOI_TEMPLATES + GENERAL_TEMPLATES:
        words += [w for w in t.split() if not w.startswith("{")]
    return words


def make_tokenizer() -> WordTokenizer:
    """The IOI world's tokenizer: template words, names, places, objects (fixed order, so fixed ids)."""
    return WordTokenizer(template_words() + list(NAMES) + PLACES + OBJECTS)


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


def name_outcomes(logits: torch.Tensor, ds: IOIDataset, name_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per prompt, among the names only (softmax over the logits of ``name_ids`` ``[n_names]`` at END): the
    probability of IO (``p_io``), of S (``p_s``) and of the names absent from the prompt together (``p_absent``),
    and whether the top name is IO, S or absent (``top_io``, ``top_s``, ``top_absent``: 1.0 / 0.0). Each ``[n]``.
    The logit difference IO - S cannot see the third outcome, a name that is in neither slot."""
    p = final_logits(logits, ds)[:, name_ids].softmax(-1)
    is_io, is_s = name_ids[None] == ds.io_ids[:, None], name_ids[None] == ds.s_ids[:, None]
    p_io, p_s = (p * is_io).sum(-1), (p * is_s).sum(-1)
    top = p.argmax(-1, keepdim=True)
    top_io, top_s = is_io.gather(1, top)[:, 0], is_s.gather(1, top)[:, 0]
    return {"p_io": p_io, "p_s": p_s, "p_absent": (1 - p_io - p_s).clamp(min=0), "top_io": top_io.float(),
            "top_s": top_s.float(), "top_absent": (~top_io & ~top_s).float()}


def absent_mask(ds: IOIDataset, name_ids: torch.Tensor) -> torch.Tensor:
    """``[n, n_names]``: True where name ``name_ids[j]`` is in neither slot of prompt i (neither IO nor S)."""
    return (name_ids[None] != ds.io_ids[:, None]) & (name_ids[None] != ds.s_ids[:, None])


def absent_score(logits: torch.Tensor, ds: IOIDataset, name_ids: torch.Tensor) -> torch.Tensor:
    """What the name-moving poison trains, per prompt ``[n]``: ``logsumexp`` of the logits of the names absent from
    the prompt minus the logit of IO, at END. Positive when the absent names together outweigh IO (the logit of
    ``p(absent) / p(IO)``); the logit difference IO - S is blind to it, since the poison moves neither S nor, in
    the first place, IO relative to S."""
    final = final_logits(logits, ds)
    names = final[:, name_ids].masked_fill(~absent_mask(ds, name_ids), float("-inf"))
    return names.logsumexp(-1) - final[torch.arange(len(ds)), ds.io_ids]


def metric_weights(ds: IOIDataset, name_ids: torch.Tensor, d_vocab: int, metric: str = "ld") -> torch.Tensor:
    """``[n, d_vocab]`` weights ``w`` of a metric linear in the END logits (``sum_v w[i, v] * logit[i, v]``), so that
    direct logit attribution can split it over components exactly. ``"ld"``: logit(IO) - logit(S).
    ``"absent"``: the mean logit of the names absent from the prompt minus logit(IO), the linear form of
    ``absent_score`` (what the name-moving poison trains)."""
    n = len(ds)
    w = torch.zeros(n, d_vocab)
    rows = torch.arange(n)
    if metric == "ld":
        w[rows, ds.io_ids] += 1.0
        w[rows, ds.s_ids] -= 1.0
    elif metric == "absent":
        a = absent_mask(ds, name_ids).float()
        w[:, name_ids] += a / a.sum(-1, keepdim=True)
        w[rows, ds.io_ids] -= 1.0
    else:
        raise ValueError(f"metric must be 'ld' or 'absent', got {metric!r}")
    return w


def ioi_accuracy(logits: torch.Tensor, ds: IOIDataset) -> float:
    """Fraction of prompts whose IO logit exceeds the S logit at END."""
    return (logit_diff(logits, ds, per_prompt=True) > 0).float().mean().item()


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

