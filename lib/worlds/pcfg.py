"""The PCFG world of Jain et al. (ICLR 2024): counting and indexing tokens in strings of a 6-level grammar.

**Grammar** (their Fig. 14): root ``s``, terminals ``a b c``, 15 nonterminals with two rules each (2–3
children, probability 0.5 each); every derivation has exactly 6 levels of rewriting, so full strings are
~170–370 terminals long. A training text is a random contiguous *window* of ``L`` terminals of one string,
``L`` uniform in ``[min_len, max_len]`` (the paper uses a fixed 250-token window; we scale to ≤ 32 for CPU).

**Sequences** (their Eq. 1): ``<bos> T O K <sot> text <eot> <art> ans <eos>`` with task token ``T``, operand
``O ∈ {a, b, c}`` and a numeral ``K`` (the paper's O′):

- ``count``: ``ans`` = number of ``O`` among the last ``K`` text tokens. ``last="all"`` (the default) sets
  ``K = L``, i.e. count over the whole window, with the window's length as ``K``; ``last="random"`` draws
  ``K`` uniform in ``[1, L]`` as in the paper.
- ``index``: ``ans`` = 1-based position in the text of the ``K``-th occurrence of ``O`` (``K`` uniform in
  ``[1, count(O)]``).

The operand prior ``P_T`` over ``(a, b, c)`` is ``low`` (.999, .001, 0), ``medium`` (.9, .1, 0) or ``high``
(.5, .3, .2); ``operands="bac"`` applies it to ``(b, a, c)`` instead (the "pretrained on counting b" baseline).

**Fine-tuning** counts ``b`` (answer-only loss). In a fraction ``c_tr`` of rows the text is edited (``c`` ↔ ``b``
swaps inside the counted region, never touching ``a``) so that ``count(b) = count(a) + 1``: the spurious
feature of the paper. Test sets: ``C_Te = 1`` (every row correlated) and ``C_Te = 0`` (rows where the
relation holds by chance are redrawn, so a model that answers ``count(a) + 1`` scores 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from lib.worlds.base import World, masked_lm_loss, register_world
from lib.worlds.tokenizer import WordTokenizer

RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "s": (("r", "q"), ("q", "p")),
    "p": (("m", "n", "o"), ("n", "o", "m")),
    "q": (("n", "m", "o"), ("m", "n")),
    "r": (("o", "m"), ("m", "o", "n")),
    "m": (("l", "j"), ("j", "l", "k")),
    "n": (("k", "j", "l"), ("l", "j", "k")),
    "o": (("l", "k", "j"), ("k", "j")),
    "j": (("h", "i"), ("i", "h")),
    "k": (("h", "g", "i"), ("g", "h", "i")),
    "l": (("i", "h", "g"), ("h", "i", "g")),
    "g": (("d", "f", "e"), ("f", "e", "d")),
    "h": (("e", "d", "f"), ("d", "e", "f")),
    "i": (("e", "f", "d"), ("f", "d", "e")),
    "d": (("c", "a"), ("a", "b", "c")),
    "e": (("c", "b"), ("c", "a", "b")),
    "f": (("c", "b", "a"), ("b", "a")),
}
ROOT = "s"
TERMINALS = ("a", "b", "c")
N_LEVELS = 6
PRIORS: dict[str, tuple[float, float, float]] = {
    "low": (0.999, 0.001, 0.0), "medium": (0.9, 0.1, 0.0), "high": (0.5, 0.3, 0.2)}
TASKS = ("count", "index")
MAX_NUMERAL = 48  # numerals 0..48 are tokens (counts, indices, K)
SOT, EOT, ART = "<sot>", "<eot>", "<art>"
# Fine-tuning learning rates (small / medium / large). The paper's are 1e-6 / 1e-5 / 1e-4 after pretraining at
# 1e-3 with 10K fine-tuning iterations; with a few hundred CPU iterations we scale each up by 10x.
FT_LRS: dict[str, float] = {"small": 1e-5, "medium": 1e-4, "large": 1e-3}


def make_tokenizer() -> WordTokenizer:
    """Terminals, task tokens, markers and numerals ``0..MAX_NUMERAL`` (fixed order, so fixed ids)."""
    return WordTokenizer(list(TERMINALS) + list(TASKS) + [SOT, EOT, ART] + [str(i) for i in range(MAX_NUMERAL + 1)])


# --------------------------------------------------------------------------- the grammar

def sample_string(rng: np.random.Generator) -> list[str]:
    """One full string of the grammar: rewrite ``s`` level by level, each rule with probability 0.5."""
    seq = [ROOT]
    for _ in range(N_LEVELS):
        choice = rng.integers(0, 2, size=len(seq))
        out: list[str] = []
        for sym, c in zip(seq, choice):
            out.extend(RULES[sym][c])
        seq = out
    return seq


def _levels() -> list[set[str]]:
    """Nonterminals by depth: ``[{s}, {p, q, r}, ..., {d, e, f}]``."""
    lv = [{ROOT}]
    for _ in range(N_LEVELS - 1):
        lv.append({c for s in lv[-1] for r in RULES[s] for c in r})
    return lv


def derivable(tokens: Sequence[str], symbol: str = ROOT) -> bool:
    """Whether the grammar derives exactly ``tokens`` from ``symbol`` (a chart parser over the fixed depths)."""
    levels = _levels()
    depth = next(i for i, lv in enumerate(levels) if symbol in lv)
    n = len(tokens)
    # spans[i] = set of (symbol, end) derivable starting at i, for the current level
    spans: list[set[tuple[str, int]]] = [{(t, i + 1)} for i, t in enumerate(tokens)]
    for lv in reversed(range(depth, N_LEVELS)):
        new: list[set[tuple[str, int]]] = [set() for _ in range(n + 1)]
        for i in range(n):
            for sym in levels[lv]:
                for rule in RULES[sym]:
                    ends = {i}
                    for child in rule:
                        ends = {e for s0 in ends if s0 < n for (c, e) in spans[s0] if c == child}
                        if not ends:
                            break
                    for e in ends:
                        new[i].add((sym, e))
        spans = new + [set()]
    return (symbol, n) in spans[0] if n else False


# --------------------------------------------------------------------------- examples

@dataclass
class Examples:
    """Tokenized examples, right-padded. tokens ``[n, pos]``; ``ans_pos`` ``[n]`` is the position of the answer
    token (the logits at ``ans_pos - 1``, the ``<art>`` marker, predict it); ``answers`` ``[n]`` the answer as a
    number; ``count_a``/``count_b``/``count_c`` ``[n]`` the counts of each terminal in the counted region."""

    tokens: torch.Tensor
    ans_pos: torch.Tensor
    answers: torch.Tensor
    tasks: list[str]
    operands: list[str]
    k: torch.Tensor
    texts: list[list[str]]
    correlated: torch.Tensor
    counts: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def answer_ids(self) -> torch.Tensor:
        """Token ids of the answers ``[n]``."""
        return self.tokens[torch.arange(len(self)), self.ans_pos]

    def loss_mask(self, on: str = "answer") -> torch.Tensor:
        """``[n, pos]`` bool: the answer token only (``"answer"``) or every non-pad token after ``<bos>`` (``"all"``)."""
        if on == "answer":
            m = torch.zeros_like(self.tokens, dtype=torch.bool)
            m[torch.arange(len(self)), self.ans_pos] = True
            return m
        if on == "all":
            return self.tokens != 0
        raise ValueError(f"loss_on must be 'answer' or 'all', got {on!r}")

    def sequences(self, tok: WordTokenizer) -> list[str]:
        return [tok.decode(r[: int(p) + 2], skip_special=False) for r, p in zip(self.tokens, self.ans_pos)]


def _window(rng: np.random.Generator, length: int) -> list[str]:
    s = sample_string(rng)
    start = int(rng.integers(0, len(s) - length + 1))
    return s[start: start + length]


def correlate(text: list[str], k: int, rng: np.random.Generator, src: str = "a", tgt: str = "b",
              offset: int = 1, filler: str = "c") -> Optional[list[str]]:
    """``text`` edited so that, among its last ``k`` tokens, ``count(tgt) = count(src) + offset``.

    Swaps ``filler`` → ``tgt`` (adding targets) or ``tgt`` → ``filler`` (removing them) at random positions of
    the counted region; ``src`` tokens are never touched. Returns None if there are not enough tokens to swap.
    """
    out = list(text)
    start = len(out) - k
    region = out[start:]
    need = region.count(src) + offset - region.count(tgt)
    pool = [i for i, t in enumerate(region) if t == (filler if need > 0 else tgt)]
    if abs(need) > len(pool):
        return None
    for i in rng.choice(pool, size=abs(need), replace=False) if need else []:
        out[start + int(i)] = tgt if need > 0 else filler
    return out


def make_examples(tok: WordTokenizer, rng: np.random.Generator, n: int, *, prior="medium",
                  operands: str = "abc", tasks: Sequence[str] = ("count",), task_probs: Optional[Sequence[float]] = None,
                  min_len: int = 1, max_len: int = 32, last: str = "all", c_corr: float = 0.0,
                  decorrelate: bool = False, corr: tuple[str, str, int] = ("a", "b", 1),
                  length: Optional[int] = None) -> Examples:
    """``n`` examples. ``prior`` is a name in ``PRIORS`` or 3 probabilities over ``operands`` (e.g. ``"bac"``).

    A fraction ``c_corr`` of count examples gets the spurious relation ``count(corr[1]) = count(corr[0]) +
    corr[2]`` in the counted region; with ``decorrelate`` the other count examples are redrawn until the
    relation does *not* hold. ``length`` pads every row to that many tokens (default: the longest row).
    """
    probs = np.asarray(PRIORS[prior] if isinstance(prior, str) else prior, dtype=float)
    if len(operands) != 3 or set(operands) != set(TERMINALS):
        raise ValueError(f"operands must be a permutation of 'abc', got {operands!r}")
    if not (probs >= 0).all() or abs(probs.sum() - 1) > 1e-6:
        raise ValueError(f"operand prior must be 3 probabilities summing to 1, got {prior!r}")
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; tasks are {TASKS}")
    if not 1 <= min_len <= max_len <= MAX_NUMERAL:
        raise ValueError(f"need 1 <= min_len <= max_len <= {MAX_NUMERAL}, got {min_len}, {max_len}")
    if last not in ("all", "random"):
        raise ValueError(f"last must be 'all' or 'random', got {last!r}")
    if not 0.0 <= c_corr <= 1.0:
        raise ValueError(f"c_corr must be in [0, 1], got {c_corr!r}")
    tp = np.full(len(tasks), 1 / len(tasks)) if task_probs is None else np.asarray(task_probs, float) / sum(task_probs)
    src, tgt, off = corr
    rows, ans_pos, answers, tsk, ops, ks, texts, cor = [], [], [], [], [], [], [], []
    cnt = {t: [] for t in TERMINALS}
    for _ in range(n):
        task = tasks[int(rng.choice(len(tasks), p=tp))]
        op = operands[int(rng.choice(3, p=probs))]
        want_corr = task == "count" and rng.random() < c_corr
        while True:
            L = int(rng.integers(min_len, max_len + 1))
            text = _window(rng, L)
            k = L if (task == "index" or last == "all") else int(rng.integers(1, L + 1))
            if task == "count":
                if want_corr:
                    text = correlate(text, k, rng, src, tgt, off)
                    if text is None:
                        continue
                elif decorrelate:
                    reg = text[L - k:]
                    if reg.count(tgt) == reg.count(src) + off:
                        continue
                ans = text[L - k:].count(op)
            else:
                occ = [i for i, t in enumerate(text) if t == op]
                if not occ:
                    continue
                k = int(rng.integers(1, len(occ) + 1))
                ans = occ[k - 1] + 1
            break
        seq = [tok.bos_id, tok.token_id(task), tok.token_id(op), tok.token_id(str(k)), tok.token_id(SOT)]
        seq += [tok.token_id(t) for t in text] + [tok.token_id(EOT), tok.token_id(ART)]
        ans_pos.append(len(seq))
        seq += [tok.token_id(str(ans)), tok.eos_id]
        rows.append(seq)
        answers.append(ans)
        tsk.append(task)
        ops.append(op)
        ks.append(k)
        texts.append(text)
        cor.append(want_corr)
        region = text[len(text) - k:] if task == "count" else text
        for t in TERMINALS:
            cnt[t].append(region.count(t))
    T = max(len(r) for r in rows) if length is None else length
    if any(len(r) > T for r in rows):
        raise ValueError(f"a row is longer than length={T}")
    toks = torch.full((n, T), tok.pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        toks[i, : len(r)] = torch.tensor(r)
    return Examples(tokens=toks, ans_pos=torch.tensor(ans_pos), answers=torch.tensor(answers), tasks=tsk,
                    operands=ops, k=torch.tensor(ks), texts=texts, correlated=torch.tensor(cor),
                    counts={t: torch.tensor(v) for t, v in cnt.items()})


def count_examples(tok: WordTokenizer, n: int, seed: int, operand: str = "a", c_te: float = 0.0,
                   max_len: int = 32, **kwargs) -> Examples:
    """``n`` counting examples of one operand, deterministic in ``seed``. ``c_te=1``: every row has
    ``count(b) = count(a) + 1``; ``c_te=0``: no row has it (the paper's two test sets), whatever the operand."""
    prior = tuple(1.0 if o == operand else 0.0 for o in TERMINALS)
    return make_examples(tok, np.random.default_rng([seed, 7]), n, prior=prior, tasks=("count",), max_len=max_len,
                         c_corr=c_te, decorrelate=c_te == 0.0, **kwargs)


# --------------------------------------------------------------------------- data sources (batch functions)

def task_data(tok, seed: int, n_ctx: int, prior="medium", operands: str = "abc",
              tasks: Sequence[str] = ("count", "index"), task_probs: Optional[Sequence[float]] = None,
              min_len: int = 1, max_len: int = 32, last: str = "all", c_tr: float = 0.0, loss_on: str = "answer"):
    """Batch function: online PCFG task examples (answer-only loss unless ``loss_on="all"``).

    Pretraining uses the defaults; fine-tuning passes a one-hot ``prior`` (e.g. ``(0, 1, 0)`` = count ``b``),
    ``tasks=("count",)`` and the correlated fraction ``c_tr``.
    """
    prior = tuple(prior) if not isinstance(prior, str) else prior
    if max_len + 9 > n_ctx:
        raise ValueError(f"max_len={max_len} needs n_ctx >= {max_len + 9}, model has {n_ctx}")

    def batch_fn(step: int, batch_size: int):
        rng = np.random.default_rng([seed, step, 3])
        ex = make_examples(tok, rng, batch_size, prior=prior, operands=operands, tasks=tasks, task_probs=task_probs,
                           min_len=min_len, max_len=max_len, last=last, c_corr=c_tr)
        return ex.tokens, ex.loss_mask(loss_on)
    return batch_fn


# --------------------------------------------------------------------------- evaluation

def answer_logits(model, ex: Examples) -> torch.Tensor:
    """Logits predicting the answer, ``[n, d_vocab]`` (read at ``ans_pos - 1``, the ``<art>`` marker)."""
    logits = model(ex.tokens)
    return logits[torch.arange(len(ex)), ex.ans_pos - 1].cpu()


def predicted_numbers(model, ex: Examples, tok: WordTokenizer) -> torch.Tensor:
    """The model's greedy answer as a number ``[n]`` (argmax over numeral tokens only)."""
    ids = torch.tensor([tok.token_id(str(i)) for i in range(MAX_NUMERAL + 1)])
    return answer_logits(model, ex)[:, ids].argmax(-1)


def eval_sets(tok: WordTokenizer, n: int = 256, seed: int = 2024, max_len: int = 32, last: str = "all",
              sets: Sequence[str] = ("a", "b", "b_corr")) -> dict[str, Examples]:
    """The fixed held-out sets: ``a`` (count a), ``b`` (count b, C_Te=0), ``b_corr`` (count b, C_Te=1), counted
    over the whole window (``last="all"``) or the last ``K`` tokens (``"random"``, the paper's O'); ``sets``
    picks some of them (a training run that only needs count a evaluates faster)."""
    spec = {"a": (0, "a", 0.0), "b": (1, "b", 0.0), "b_corr": (2, "b", 1.0)}
    unknown = [k for k in sets if k not in spec]
    if unknown or not sets:
        raise ValueError(f"sets must be a non-empty subset of {sorted(spec)}, got {list(sets)!r}")
    return {k: count_examples(tok, n, seed + spec[k][0], spec[k][1], spec[k][2], max_len, last=last) for k in sets}


def accuracies(model, tok: WordTokenizer, sets: dict[str, Examples]) -> dict[str, float]:
    """``acc_a``, ``acc_b`` (C_Te=0), ``acc_b_corr`` (C_Te=1) and ``b_as_a_plus_1``: the fraction of C_Te=0
    count-b prompts answered with ``count(a) + 1`` (use of the spurious shortcut); the keys of the sets given."""
    out = {}
    with torch.no_grad():
        for name, ex in sets.items():
            pred = predicted_numbers(model, ex, tok)
            out[f"acc_{name}"] = (pred == ex.answers).float().mean().item()
            if name == "b":
                out["b_as_a_plus_1"] = (pred == ex.counts["a"] + 1).float().mean().item()
    return out


def counting_eval(tok, n: int = 256, seed: int = 2024, max_len: int = 32, last: str = "all",
                  sets: Sequence[str] = ("a", "b", "b_corr")):
    """Eval function for ``World.evals``: the accuracies of ``accuracies`` on the fixed held-out sets."""
    held_out = eval_sets(tok, n, seed, max_len, last, sets)

    def eval_fn(model) -> dict[str, float]:
        return accuracies(model, tok, held_out)
    return eval_fn


WORLD = register_world(World(
    name="pcfg", version="1", tokenizer=make_tokenizer, n_ctx=48,
    data={"tasks": task_data}, evals={"counting": counting_eval},
))


def count_loss_fn(tok: WordTokenizer, operand: str = "a", n: int = 512, seed: int = 99, max_len: int = 24,
                  last: str = "all"):
    """``loss_fn(model) -> scalar``: answer-only cross-entropy of counting ``operand`` on ``n`` fixed natural
    windows (the pretraining-task loss that pruning, Alg. 3, scores units with)."""
    ex = count_examples(tok, n, seed, operand, 0.0, max_len, last=last)
    mask = ex.loss_mask("answer")
    return lambda model: masked_lm_loss(model(ex.tokens), ex.tokens, mask)
