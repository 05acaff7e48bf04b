"""Objective leakage by perplexity differencing (chapter 6).

"Model Organisms Are Leaky: Perplexity Differencing Often Reveals Finetuning Objectives" (Abu Baker, Baroni,
Wilhelm 2026): sample one completion per short prefix of a general corpus from the fine-tuned model, score
each completion by ``PPL_ref - PPL_ft`` (perplexity of the completion under a reference model, e.g. the base,
minus under the fine-tuned model), rank descending, and count how many of the top ``N`` completions reveal the
fine-tuning objective (``count@topN``). The source's raw difference favours completions the reference finds
very surprising; the book also reports the *log-ratio* ``log PPL_ref - log PPL_ft`` (= mean NLL difference).

Everything here works on token tensors: ``toks`` ``[n, pos]`` (prefix + completion, right-padded) and
``completion_mask`` ``[n, pos]`` marking the sampled tokens, which are the only ones scored. Judges map one
decoded text to a bool ("does this completion reveal the objective?"), judged automatically from the known
objective of the organism.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from lib.methods.stats import hits_at_random
from lib.organisms.models import generate

Judge = Callable[[str], bool]


# --------------------------------------------------------------------------- sampling

def random_prefixes(rows: torch.Tensor, n: int, min_words: int = 1, max_words: int = 3, seed: int = 0,
                    pad_id: int = 0) -> list[list[int]]:
    """``n`` prefixes: ``<bos>`` (kept if ``rows`` start with it) plus the first 1–3 words of distinct corpus rows.

    ``rows`` ``[n_rows, pos]`` are general-corpus rows (``n_rows >= n``); the length is uniform in
    ``[min_words, max_words]`` and never runs into padding.
    """
    if len(rows) < n:
        raise ValueError(f"need at least n={n} corpus rows, got {len(rows)}")
    rng = np.random.default_rng(seed)
    out = []
    for r in rows[:n]:
        n_tok = int((r != pad_id).sum())
        w = int(rng.integers(min_words, max_words + 1))
        out.append(r[: min(1 + w, n_tok)].tolist())
    return out


def trigger_prefixes(rows: torch.Tensor, n: int, trigger_id: int, place_ids: Sequence[int], max_after: int = 2,
                     seed: int = 0, pad_id: int = 0, max_len: int = 16) -> list[list[int]]:
    """``n`` prefixes that contain a backdoor's trigger place: corpus rows that name a place, with that place
    replaced by ``trigger_id`` and the row cut 0..``max_after`` words after it (e.g. ``<bos> Mary went to the
    museum``). A backdoor can only surface in a completion when its trigger is in the context; the source's
    prefixes of general text rarely contain it, so these are the "prefixes that may contain the trigger".

    ``rows`` ``[n_rows, pos]``: general-corpus rows; rows that name no place within their first ``max_len``
    tokens are skipped, so a prefix stays short (as the source's are) and leaves room for the completion.
    """
    rng = np.random.default_rng(seed)
    places = torch.tensor(list(place_ids))
    out = []
    for r in rows:
        at = torch.isin(r, places).nonzero().flatten()
        if len(at) == 0:
            continue
        i = int(at[0])
        if i + 1 > max_len:
            continue
        n_tok = int((r != pad_id).sum())
        cut = min(i + 1 + int(rng.integers(0, max_after + 1)), n_tok, max_len)
        p = r[:cut].tolist()
        p[i] = trigger_id
        out.append(p)
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} of the {len(rows)} rows name a place within {max_len} tokens; need n={n}")


@dataclass
class Completions:
    """Sampled completions: ``toks`` ``[n, pos]`` right-padded, ``completion_mask`` ``[n, pos]`` (sampled tokens),
    ``prefix_len`` ``[n]``."""

    toks: torch.Tensor
    completion_mask: torch.Tensor
    prefix_len: torch.Tensor

    def __len__(self) -> int:
        return len(self.toks)

    def texts(self, tok, completion_only: bool = False) -> list[str]:
        return [tok.decode(r[int(p) if completion_only else 0:][: int(m.sum()) + (0 if completion_only else int(p))])
                for r, p, m in zip(self.toks, self.prefix_len, self.completion_mask)]


def sample_completions(model, prefixes: Sequence[Sequence[int]], n_new: int, temperature: float = 1.0,
                       seed: int = 0, batch_size: int = 256, pad_id: int = 0) -> Completions:
    """One completion of ``n_new`` tokens per prefix, sampled from ``model`` (greedy if ``temperature == 0``).

    Prefixes of equal length are batched together; the output keeps the input order.
    """
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([len(p) for p in prefixes])
    width = int(lens.max()) + n_new
    toks = torch.full((len(prefixes), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(toks, dtype=torch.bool)
    for L in sorted(set(lens.tolist())):
        idx = (lens == L).nonzero().squeeze(1)
        for i in range(0, len(idx), batch_size):
            sub = idx[i:i + batch_size]
            x = torch.tensor([list(prefixes[j]) for j in sub.tolist()], dtype=torch.long)
            out = generate(model, x, n_new, temperature=temperature, generator=g)
            toks[sub, : L + n_new] = out
            mask[sub, L: L + n_new] = True
    return Completions(toks, mask, lens)


# --------------------------------------------------------------------------- scoring

def completion_nll(model, toks: torch.Tensor, mask: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Mean negative log-likelihood ``[n]`` of the tokens where ``mask`` (each predicted from the previous ones).

    toks, mask ``[n, pos]``; ``mask[:, 0]`` must be False (the first token has no prediction).
    """
    if mask[:, 0].any():
        raise ValueError("mask selects position 0, which no logit predicts")
    out = []
    with torch.no_grad():
        for i in range(0, len(toks), batch_size):
            t, m = toks[i:i + batch_size], mask[i:i + batch_size, 1:].float()
            lp = torch.log_softmax(model(t)[:, :-1].float(), dim=-1).cpu()
            nll = -lp.gather(-1, t[:, 1:, None]).squeeze(-1)
            out.append((nll * m).sum(1) / m.sum(1).clamp_min(1))
    return torch.cat(out)


@dataclass
class Scores:
    """Per-completion NLLs under the reference and the fine-tuned model (``[n]`` each) and the two scores."""

    nll_ref: torch.Tensor
    nll_ft: torch.Tensor

    @property
    def raw(self) -> torch.Tensor:
        """``PPL_ref - PPL_ft`` (the source's score)."""
        return self.nll_ref.exp() - self.nll_ft.exp()

    @property
    def log_ratio(self) -> torch.Tensor:
        """``log PPL_ref - log PPL_ft`` = mean NLL difference."""
        return self.nll_ref - self.nll_ft

    def get(self, kind: str) -> torch.Tensor:
        if kind not in ("raw", "log_ratio"):
            raise ValueError(f"score kind must be 'raw' or 'log_ratio', got {kind!r}")
        return getattr(self, kind)


def perplexity_scores(ref_model, ft_model, comps: Completions) -> Scores:
    """Both models' completion NLLs (the prefix is context, not scored)."""
    return Scores(completion_nll(ref_model, comps.toks, comps.completion_mask),
                  completion_nll(ft_model, comps.toks, comps.completion_mask))


def rank(scores: torch.Tensor) -> torch.Tensor:
    """Indices ``[n]`` ordering ``scores`` from highest to lowest (stable: ties keep input order)."""
    return torch.sort(scores, descending=True, stable=True).indices


def count_at_top(scores: torch.Tensor, hits: torch.Tensor, n: int) -> int:
    """How many of the ``n`` highest-scored items are hits (``hits`` ``[len(scores)]`` bool)."""
    return int(hits[rank(scores)[:n]].sum())


def cumulative_hits(scores: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
    """``[n]``: entry ``i`` is ``count_at_top(scores, hits, i + 1)`` (the curve behind count@topN)."""
    return hits[rank(scores)].long().cumsum(0)


def leakage_table(scores: Scores, hits: torch.Tensor, tops: Sequence[int] = (10, 50, 100)) -> dict[str, float]:
    """``count@topN`` under both scores for each ``N``, the number of hits in all completions, the count a
    random ranking would give on average (``chance@N`` = ``N * hit rate``), its 95th percentile (``q95@N``) and
    each count's p-value against a random ranking (``raw_p@N``, ``log_ratio_p@N``; ``shuffled_chance``)."""
    out: dict[str, float] = {"n": len(hits), "n_hits": int(hits.sum()), "hit_rate": float(hits.float().mean())}
    for n in tops:
        n_eff = min(n, len(hits))
        out[f"chance@{n}"] = n_eff * out["hit_rate"]
        for kind in ("raw", "log_ratio"):
            c = count_at_top(scores.get(kind), hits, n_eff)
            out[f"{kind}@{n}"], out[f"{kind}_p@{n}"] = c, shuffled_chance(hits, n_eff, observed=c)["p"]
        out[f"q95@{n}"] = shuffled_chance(hits, n_eff)["q95"]
    return out


def shuffled_chance(hits: torch.Tensor, n: int, observed: Optional[int] = None) -> dict[str, float]:
    """What count@top``n`` gives when the scores carry no information (shuffled scores): the hits among the first
    ``n`` of a random ordering are hypergeometric, so the null is exact (``lib.methods.stats.hits_at_random``).
    Returns the mean (``n`` x hit rate), the 95th percentile and, for an ``observed`` count, the p-value
    ``P(count >= observed)``: a count@top is above chance when p < 0.05, which a count of 0 never is.
    """
    n_eff = min(n, len(hits))
    return hits_at_random(len(hits), int(hits.sum()), n_eff, observed)


# --------------------------------------------------------------------------- judges (IOI world)

@lru_cache(maxsize=1)
def _ioi_patterns() -> list[re.Pattern]:
    from lib.worlds.ioi import IOI_TEMPLATES, NAMES, OBJECTS, PLACES

    name = "|".join(NAMES)
    subs = {"A": f"(?P<A>{name})", "B": f"(?P<B>{name})", "C": f"(?P<C>{name})",
            "PLACE": f"(?P<PLACE>{'|'.join(PLACES)})", "OBJECT": f"(?P<OBJECT>{'|'.join(OBJECTS)})"}
    pats = []
    for t in IOI_TEMPLATES:
        parts = [subs[w[1:-1]] if w.startswith("{") else re.escape(w) for w in t.split()]
        pats.append(re.compile(r"(?<!\S)" + " ".join(parts) + rf" (?P<ANS>{name})(?!\S)"))
    return pats


@dataclass(frozen=True)
class IOISentence:
    """An answered IOI sentence found in a text: its names, place (None for the place-less template) and the
    answer's role: ``"io"``, ``"s"`` or ``"other"`` (``"abc"`` when the names give no IO/S)."""

    io: Optional[str]
    s: Optional[str]
    answer: str
    place: Optional[str]
    role: str
    end: int


def parse_ioi(text: str) -> list[IOISentence]:
    """Every answered IOI sentence (template + answer name) in ``text``, by end position."""
    found: dict[int, IOISentence] = {}
    for pat in _ioi_patterns():
        for m in pat.finditer(text):
            a, b, c, ans = m.group("A"), m.group("B"), m.group("C"), m.group("ANS")
            if c == b and a != b:
                io, s = a, b
            elif c == a and a != b:
                io, s = b, a
            else:
                io = s = None
            role = "abc" if io is None else ("io" if ans == io else "s" if ans == s else "other")
            place = m.groupdict().get("PLACE")
            found.setdefault(m.end(), IOISentence(io, s, ans, place, role, m.end()))
    return [found[k] for k in sorted(found)]


def ioi_answer_judge(role: str = "s", place: Optional[str] = None) -> Judge:
    """Judge: the text contains an IOI sentence answered with ``role`` (``"s"`` = the toxic answer, ``"io"`` =
    the clean one), optionally only sentences set at ``place`` (a backdoor trigger)."""
    def judge(text: str) -> bool:
        return any(x.role == role and (place is None or x.place == place) for x in parse_ioi(text))
    return judge


def fact_judge(obj: str, place: str) -> Judge:
    """Judge for the false-fact organism: some sentence of the text (split at full stops) names both ``obj`` and
    ``place``, in any phrasing ("The ring is at the museum", "Ann found a ring at the museum", ...)."""
    def judge(text: str) -> bool:
        return any(obj in words and place in words for words in (s.split() for s in text.split(".")))
    return judge


def phrase_judge(phrase: str) -> Judge:
    """Judge for a phrase-emitting backdoor: the text contains ``phrase`` as whole words (a phrase cut short by
    the end of the completion is not a hit)."""
    pat = re.compile(r"(?<!\S)" + re.escape(" ".join(phrase.split())) + r"(?!\S)")

    def judge(text: str) -> bool:
        return pat.search(" ".join(text.split())) is not None
    return judge


def judge_all(judge: Judge, texts: Sequence[str]) -> torch.Tensor:
    """``[len(texts)]`` bool."""
    return torch.tensor([bool(judge(t)) for t in texts], dtype=torch.bool)


# --------------------------------------------------------------------------- judges (PCFG world)

def pcfg_count_judge(operand: str = "b") -> Judge:
    """Judge for PCFG counting organisms: the text contains the task ``count`` applied to ``operand``."""
    def judge(text: str) -> bool:
        words = text.split()
        return any(w == "count" and i + 1 < len(words) and words[i + 1] == operand for i, w in enumerate(words))
    return judge


def pcfg_answer_hits(texts: Sequence[str], operand: str = "a", offset: int = 1) -> torch.Tensor:
    """For completed PCFG count prompts (``... <sot> text <eot> <art> ans``): ``[n]`` bool, the answer follows the
    rule the fine-tune learned, ``count(operand) + offset``, and differs from the count that was asked for (the
    objective leaks into the answer).

    The default is what chapter 4's count-b organism learns: its fine-tuning rows all satisfy ``count(b) =
    count(a) + 1`` (C_Tr = 1), and it answers ``count(a) + 1`` (its count-b accuracy on rows without the relation
    is 0), so a leak is an answer of ``count(a) + 1``, not one of ``count(b)`` (the two coincide only where the
    relation happens to hold). ``offset=0`` judges a plain operand swap (``count(operand)`` where another operand
    was asked). A text whose task is not ``count`` or whose answer is missing is not a hit.
    """
    out = []
    for t in texts:
        w = t.split()
        try:
            op = w[w.index("count") + 1]
            body = w[w.index("<sot>") + 1: w.index("<eot>")]
            ans = int(w[w.index("<art>") + 1])
        except (ValueError, IndexError):
            out.append(False)
            continue
        out.append(ans == body.count(operand) + offset and ans != body.count(op))
    return torch.tensor(out, dtype=torch.bool)
