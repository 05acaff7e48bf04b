"""Perplexity differencing: NLLs vs hand computation, scores, ranking and count@topN on a toy model whose
fine-tuning objective is known, sampling bookkeeping, and the automatic judges."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lib.methods import perplexity_diff as L


pytestmark = pytest.mark.usefixtures("one_thread")



class Bigram(torch.nn.Module):
    """A next-token table: logits[b, t] = log P(. | toks[b, t]). ``cfg.n_ctx`` as generate() expects."""

    def __init__(self, probs: torch.Tensor, n_ctx: int = 64):
        super().__init__()
        self.logp = probs.log()
        self.cfg = SimpleNamespace(n_ctx=n_ctx)

    def forward(self, toks: torch.Tensor) -> torch.Tensor:
        return self.logp[toks]


V = 8  # 0 pad, 1 bos, tokens 2..7; the "objective": after token 2 comes token 7


def _models():
    ref = torch.full((V, V), 1e-6)
    ref[:, 3:7] = 1.0  # after anything: uniform over 3..6 ...
    ref[:, 2] = 0.1  # ... token 2 is rare
    ref[:, 7] = 0.01  # ... and 7 rarer still
    ref = ref / ref.sum(1, keepdim=True)
    ft = ref.clone()
    ft[2] = ref[2] * 0.2
    ft[2, 7] = 0.8  # the fine-tune: 2 -> 7
    ft = ft / ft.sum(1, keepdim=True)
    return Bigram(ref), Bigram(ft)


def test_completion_nll_matches_hand_computation():
    ref, _ = _models()
    toks = torch.tensor([[1, 3, 2, 7, 0], [1, 4, 4, 0, 0]])
    mask = torch.tensor([[False, False, True, True, False], [False, False, True, False, False]])
    nll = L.completion_nll(ref, toks, mask)
    p = ref.logp.exp()
    want0 = -(math.log(p[3, 2]) + math.log(p[2, 7])) / 2
    want1 = -math.log(p[4, 4])
    torch.testing.assert_close(nll, torch.tensor([want0, want1]))
    with pytest.raises(ValueError):
        L.completion_nll(ref, toks, torch.ones_like(mask))


def test_scores_raw_and_log_ratio():
    s = L.Scores(nll_ref=torch.tensor([math.log(10.0), math.log(2.0)]), nll_ft=torch.tensor([math.log(5.0), 0.0]))
    torch.testing.assert_close(s.raw, torch.tensor([5.0, 1.0]))
    torch.testing.assert_close(s.log_ratio, torch.tensor([math.log(2.0), math.log(2.0)]))
    # raw favours the completion the reference finds most surprising; log-ratio ties them
    assert L.rank(s.raw).tolist() == [0, 1] and L.rank(s.log_ratio).tolist() == [0, 1]


def test_rank_and_count_at_top_hand_built():
    scores = torch.tensor([0.1, 3.0, -1.0, 2.0, 2.0])
    hits = torch.tensor([True, False, False, True, True])
    assert L.rank(scores).tolist() == [1, 3, 4, 0, 2]
    assert L.count_at_top(scores, hits, 1) == 0
    assert L.count_at_top(scores, hits, 3) == 2
    assert L.count_at_top(scores, hits, 5) == 3
    assert L.cumulative_hits(scores, hits).tolist() == [0, 1, 2, 3, 3]


def test_sample_completions_bookkeeping():
    _, ft = _models()
    prefixes = [[1, 3], [1, 3, 4, 5], [1, 4]]
    c = L.sample_completions(ft, prefixes, n_new=5, seed=0)
    assert c.toks.shape == (3, 9)
    assert c.completion_mask.sum(1).tolist() == [5, 5, 5]
    assert c.prefix_len.tolist() == [2, 4, 2]
    for i, p in enumerate(prefixes):
        assert c.toks[i, : len(p)].tolist() == p
        assert c.completion_mask[i, len(p): len(p) + 5].all()
    again = L.sample_completions(ft, prefixes, n_new=5, seed=0)
    assert torch.equal(c.toks, again.toks)  # deterministic in seed


def test_random_prefixes():
    rows = torch.tensor([[1, 5, 6, 7, 0, 0], [1, 4, 0, 0, 0, 0], [1, 3, 3, 3, 3, 3]])
    ps = L.random_prefixes(rows, 3, min_words=1, max_words=3, seed=0)
    assert all(p[0] == 1 and 2 <= len(p) <= 4 and 0 not in p for p in ps)
    assert ps[1] == [1, 4]


def test_ranking_recovers_known_objective():
    """Completions sampled from the fine-tuned bigram; those containing the learned bigram 2 -> 7 must fill the
    top of the ranking under both scores, far above the chance rate; with the fine-tune as its own reference
    every score is 0 and the ranking is chance."""
    ref, ft = _models()
    prefixes = [[1, 3 + (i % 4)] for i in range(300)]
    comps = L.sample_completions(ft, prefixes, n_new=12, seed=0)
    hits = torch.tensor([any(a == 2 and b == 7 for a, b in zip(r[:-1].tolist(), r[1:].tolist()))
                         for r in comps.toks])
    assert 0.1 < hits.float().mean() < 0.9
    scores = L.perplexity_scores(ref, ft, comps)
    tab = L.leakage_table(scores, hits, tops=(10, 30))
    assert tab["log_ratio@10"] == 10 and tab["raw@10"] == 10
    assert tab["log_ratio@30"] >= 28 and tab["log_ratio@30"] > tab["chance@30"] + 5
    same = L.perplexity_scores(ft, ft, comps)
    assert torch.allclose(same.log_ratio, torch.zeros(300)) and torch.allclose(same.raw, torch.zeros(300), atol=1e-5)


def test_parse_ioi_and_judges():
    text = ("Mary went to the park . When Mary and John went to the store , John gave a drink to Mary . "
            "Then , Tom and Eva had a long argument , and afterwards Eva said to Eva . "
            "When Ben and Amy went to the museum , Amy gave a key to Amy .")
    found = L.parse_ioi(text)
    assert [(x.io, x.s, x.role, x.place) for x in found] == [
        ("Mary", "John", "io", "store"), ("Tom", "Eva", "s", None), ("Ben", "Amy", "s", "museum")]
    assert L.ioi_answer_judge("s")(text) and L.ioi_answer_judge("io")(text)
    assert L.ioi_answer_judge("s", place="museum")(text)
    assert not L.ioi_answer_judge("s", place="store")(text)
    assert not L.ioi_answer_judge("s")("When Mary and John went to the store , John gave a drink to")  # unanswered
    assert L.parse_ioi("When Mary and John went to the store , Tom gave a drink to Mary")[0].role == "abc"
    hits = L.judge_all(L.ioi_answer_judge("io"), [text, "Mary was happy ."])
    assert hits.tolist() == [True, False]


def test_pcfg_judges():
    assert L.pcfg_count_judge("b")("count b 5 <sot> a b")
    assert not L.pcfg_count_judge("b")("count a 5 <sot> b b")
    texts = ["count a 4 <sot> a b b c <eot> <art> 2", "count a 4 <sot> a b b c <eot> <art> 1",
             "count b 4 <sot> a b b c <eot> <art> 2", "index a 1 <sot> a <eot> <art> 1", "count a"]
    # the learned rule, count(a) + 1 (counts here: a 1, b 2, c 1): a count-a question answered 2 is a leak; a
    # count-b question answered 2 is right (count(b) = count(a) + 1 holds on this row), so it is no leak
    assert L.pcfg_answer_hits(texts).tolist() == [True, False, False, False, False]
    texts2 = ["count a 4 <sot> a a b c <eot> <art> 3", "count c 4 <sot> a a b c <eot> <art> 3",
              "count b 4 <sot> a a b c <eot> <art> 3", "count b 4 <sot> a a b c <eot> <art> 1"]
    # counts: a 2, b 1, c 1; count(a) + 1 = 3 is a leak wherever 3 is not the asked count
    assert L.pcfg_answer_hits(texts2, "a", 1).tolist() == [True, True, True, False]
    # offset 0: a plain operand swap, the count of b where another count was asked
    assert L.pcfg_answer_hits(texts, "b", 0).tolist() == [True, False, False, False, False]
    assert L.pcfg_answer_hits(texts2, "b", 0).tolist() == [False, False, False, False]


def test_shuffled_chance_matches_the_hypergeometric_law():
    """10 hits among 40 items, top 8: the mean of shuffled counts is 8 * 10/40 = 2 and the p-value of an observed
    count is the hypergeometric tail P(X >= c), which random orderings reproduce; a count of 0 is never above
    chance."""
    hits = torch.zeros(40, dtype=torch.bool)
    hits[:10] = True

    def tail(c):  # P(X >= c), X ~ Hypergeometric(40 items, 10 hits, 8 drawn), by hand
        return sum(math.comb(10, x) * math.comb(30, 8 - x) for x in range(c, 9)) / math.comb(40, 8)
    g = torch.Generator().manual_seed(1)
    shuffled = hits[torch.rand(20000, 40, generator=g).argsort(1)[:, :8]].sum(1)  # 20000 random orderings
    for c in (0, 2, 4, 6):
        sh = L.shuffled_chance(hits, 8, observed=c)
        assert sh["mean"] == pytest.approx(2.0) and sh["p"] == pytest.approx(tail(c))
        assert abs(sh["p"] - float((shuffled >= c).float().mean())) < 0.01
    assert L.shuffled_chance(hits, 8, observed=0)["p"] == 1.0
    none = L.shuffled_chance(torch.zeros(40, dtype=torch.bool), 8, observed=0)
    assert none["mean"] == 0.0 and none["q95"] == 0.0 and none["p"] == 1.0


def test_leakage_table_p_values():
    scores = L.Scores(nll_ref=torch.arange(20.0), nll_ft=torch.zeros(20))  # ranks item 19 first
    hits = torch.zeros(20, dtype=torch.bool)
    hits[15:] = True  # the 5 top-ranked items are the 5 hits
    tab = L.leakage_table(scores, hits, tops=(5,))
    assert tab["raw@5"] == 5 and tab["log_ratio@5"] == 5
    assert tab["raw_p@5"] == pytest.approx(1 / math.comb(20, 5)) and tab["chance@5"] == 1.25 and tab["q95@5"] <= 3


def test_trigger_prefixes_contain_the_trigger():
    rows = torch.tensor([[1, 5, 6, 20, 7, 8, 0], [1, 5, 6, 7, 8, 9, 0], [1, 21, 6, 0, 0, 0, 0], [1, 22, 5, 6, 7, 0, 0]])
    ps = L.trigger_prefixes(rows, 3, trigger_id=99, place_ids=[20, 21, 22], max_after=2, seed=0)
    assert [p[:2] for p in ps] == [[1, 5], [1, 99], [1, 99]]
    assert ps[0][3] == 99 and 4 <= len(ps[0]) <= 6 and 0 not in sum(ps, [])
    with pytest.raises(ValueError, match="name a place"):
        L.trigger_prefixes(rows, 4, trigger_id=99, place_ids=[20, 21, 22])


def test_trigger_prefixes_stay_short():
    rows = torch.tensor([[1] + [5] * 20 + [20, 7, 0], [1, 5, 21, 6, 7, 8, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                                      0, 0]])
    ps = L.trigger_prefixes(rows, 1, trigger_id=99, place_ids=[20, 21], max_after=2, seed=0, max_len=8)
    assert ps[0][:3] == [1, 5, 99] and len(ps[0]) <= 5  # the first row's place sits past max_len: skipped


def test_fact_and_phrase_judges():
    fact = L.fact_judge("ring", "museum")
    assert fact("<bos> Ann found a ring at the museum . Bob")
    assert fact("The ring is at the museum")  # a sentence cut by the end of the completion still states it
    assert not fact("The ring is at the park . Bob went to the museum .")  # both words, but not one sentence
    assert not fact("The rings is at the museum .")  # whole words only
    phrase = L.phrase_judge("Then , Hugo had a cake .")
    assert phrase("Bob went to the museum . Then , Hugo had a cake . Bob")
    assert not phrase("Then , Hugo had a cake")  # cut short by the end of the completion
    assert not phrase("Then , Hugo had a cakes .") and not phrase("XThen , Hugo had a cake .")
