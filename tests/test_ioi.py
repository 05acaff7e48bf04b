"""The IOI world: datasets, metrics, training data, and the fine-tune recipe builders."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.organisms import ioi_zoo
from lib.organisms.recipes import get_organism
from lib.worlds import ioi

TOK = ioi.make_tokenizer()


def test_dataset_positions_and_orders():
    ds = ioi.make_ioi_dataset(TOK, 20, 0)
    rows = torch.arange(len(ds))
    assert torch.equal(ds.toks[rows, ds.word_pos["IO"]], ds.io_ids)
    assert torch.equal(ds.toks[rows, ds.word_pos["S1"]], ds.s_ids)
    assert torch.equal(ds.toks[rows, ds.word_pos["S2"]], ds.s_ids)
    assert all(TOK.vocab[int(t)] == "to" for t in ds.toks[rows, ds.end_pos])
    assert ds.orders[:4] == ["ABBA", "BABA", "ABBA", "BABA"]
    abba = torch.tensor([o == "ABBA" for o in ds.orders])
    assert (ds.word_pos["IO"][abba] < ds.word_pos["S1"][abba]).all()
    assert (ds.word_pos["IO"][~abba] > ds.word_pos["S1"][~abba]).all()
    again = ioi.make_ioi_dataset(TOK, 20, 0)
    assert again.texts == ds.texts


def test_logit_diff_and_accuracy_by_hand():
    ds = ioi.make_ioi_dataset(TOK, 3, 1)
    logits = torch.zeros(3, ds.toks.shape[1], len(TOK))
    for i, d in enumerate([2.0, -1.0, 0.5]):
        logits[i, ds.end_pos[i], ds.io_ids[i]] = d
    assert ioi.logit_diff(logits, ds).item() == pytest.approx(0.5)
    assert ioi.ioi_accuracy(logits, ds) == pytest.approx(2 / 3)
    assert torch.allclose(ioi.logit_diff(logits, ds, per_prompt=True), torch.tensor([2.0, -1.0, 0.5]))


def test_name_outcomes_by_hand():
    ds = ioi.make_ioi_dataset(TOK, 3, 1)
    name_ids = torch.tensor([TOK.token_id(n) for n in ioi.NAMES])
    logits = torch.zeros(3, ds.toks.shape[1], len(TOK))
    absent = [next(i for i in name_ids if i not in (ds.io_ids[r], ds.s_ids[r])) for r in range(3)]
    for r, (who, v) in enumerate([(ds.io_ids, 5.0), (ds.s_ids, 5.0), (absent, 5.0)]):
        logits[r, ds.end_pos[r], who[r]] = v  # prompt 0 favours IO, 1 favours S, 2 an absent name
    o = ioi.name_outcomes(logits, ds, name_ids)
    n = len(name_ids)
    top = np.exp(5.0) / (np.exp(5.0) + n - 1)  # the favoured name's share among the names
    assert o["p_io"].tolist() == pytest.approx([top, 1 / (np.exp(5.0) + n - 1), 1 / (np.exp(5.0) + n - 1)])
    assert o["p_s"][1].item() == pytest.approx(top)
    assert o["p_absent"][2].item() == pytest.approx(1 - 2 / (np.exp(5.0) + n - 1))
    assert (o["p_io"] + o["p_s"] + o["p_absent"]).tolist() == pytest.approx([1.0] * 3)
    assert o["top_io"].tolist() == [1, 0, 0] and o["top_s"].tolist() == [0, 1, 0]
    assert o["top_absent"].tolist() == [0, 0, 1]


def test_absent_score_and_metric_weights_by_hand():
    """What name moving trains, on hand-set logits: logsumexp over the absent names minus IO's logit, and the
    linear weights whose dot product with the END logits gives IO − S and mean(absent) − IO."""
    ds = ioi.make_ioi_dataset(TOK, 2, 1)
    name_ids = torch.tensor([TOK.token_id(n) for n in ioi.NAMES])
    n_names = len(name_ids)
    logits = torch.zeros(2, ds.toks.shape[1], len(TOK))
    logits[0, ds.end_pos[0], ds.io_ids[0]] = 3.0  # prompt 0: IO at 3, every other name at 0
    absent1 = [i for i in name_ids if i not in (ds.io_ids[1], ds.s_ids[1])]
    logits[1, ds.end_pos[1], absent1[0]] = 2.0  # prompt 1: one absent name at 2, IO and S at 0
    logits[1, ds.end_pos[1], ds.s_ids[1]] = 1.0
    mask = ioi.absent_mask(ds, name_ids)
    assert mask.sum(-1).tolist() == [n_names - 2, n_names - 2]
    score = ioi.absent_score(logits, ds, name_ids)
    assert score[0].item() == pytest.approx(np.log(n_names - 2) - 3.0)
    assert score[1].item() == pytest.approx(np.log(np.exp(2.0) + n_names - 3))
    final = ioi.final_logits(logits, ds)
    ld = (final * ioi.metric_weights(ds, name_ids, len(TOK), "ld")).sum(-1)
    assert torch.allclose(ld, ioi.logit_diff(logits, ds, per_prompt=True))
    ab = (final * ioi.metric_weights(ds, name_ids, len(TOK), "absent")).sum(-1)
    assert ab.tolist() == pytest.approx([-3.0, 2.0 / (n_names - 2)])
    with pytest.raises(ValueError, match="metric"):
        ioi.metric_weights(ds, name_ids, len(TOK), "kl")


@pytest.mark.parametrize("poison", [0.0, 1.0])
def test_finetune_data_answers(poison):
    bf = ioi.ioi_finetune_data(TOK, seed=0, n_ctx=64, poison_frac=poison)
    toks, mask = bf(0, 16)
    assert (mask.sum(1) == 1).all()
    rng = np.random.default_rng([0, 0, 1])
    ds = ioi.make_ioi_dataset(TOK, 16, int(rng.integers(2**31)))
    ans = toks[mask]
    assert torch.equal(ans, ds.s_ids if poison == 1.0 else ds.io_ids)
    with pytest.raises(ValueError):
        ioi.ioi_finetune_data(TOK, seed=0, n_ctx=64, poison_frac=1.5)


def test_name_moving_poison_answers_a_name_absent_from_the_prompt():
    bf = ioi.ioi_finetune_data(TOK, seed=0, n_ctx=64, poison_frac=1.0, variant="name_moving")
    seen = set()
    for step in range(3):
        toks, mask = bf(step, 32)
        rng = np.random.default_rng([0, step, 1])
        ds = ioi.make_ioi_dataset(TOK, 32, int(rng.integers(2**31)))
        ans = toks[mask]
        assert torch.equal(toks[:, : ds.toks.shape[1]][ds.toks != TOK.pad_id], ds.toks[ds.toks != TOK.pad_id])
        for i in range(32):
            word = TOK.vocab[int(ans[i])]
            assert word in ioi.NAMES and int(ans[i]) not in ds.toks[i].tolist(), (step, i, word)
            seen.add(word)
    assert len(seen) > 10  # drawn over the other names, not one fixed name
    # the variant is part of the recipe (its own cache key); the default variant keeps the old key
    base = ioi_zoo.base_recipe()
    nm = ioi_zoo.toxic_recipe(base, variant="name_moving")
    assert nm.key() != ioi_zoo.toxic_recipe(base).key() and nm.data_kwargs["variant"] == "name_moving"
    assert "variant" not in ioi_zoo.toxic_recipe(base).data_kwargs
    with pytest.raises(ValueError, match="variant"):
        ioi_zoo.toxic_recipe(base, variant="nonsense")
    with pytest.raises(ValueError, match="variant"):
        ioi.ioi_finetune_data(TOK, seed=0, n_ctx=64, variant="nonsense")


def test_partial_poisoning_fraction():
    bf = ioi.ioi_finetune_data(TOK, seed=0, n_ctx=64, poison_frac=0.3)
    n_poison = n = 0
    for step in range(10):
        toks, mask = bf(step, 64)
        rng = np.random.default_rng([0, step, 1])
        ds = ioi.make_ioi_dataset(TOK, 64, int(rng.integers(2**31)))
        n_poison += int((toks[mask] == ds.s_ids).sum())
        n += 64
    assert 0.2 < n_poison / n < 0.4


def test_general_rows_contain_no_ioi_when_frac_zero():
    rows = ioi.general_rows(TOK, np.random.default_rng(0), 8, 64, ioi_frac=0.0)
    text = " ".join(TOK.decode(r) for r in rows)
    assert "decided to give it to" not in text and "said to" not in text
    with_ioi = ioi.general_rows(TOK, np.random.default_rng(0), 8, 64, ioi_frac=1.0)
    assert all(TOK.decode(r).count(" to ") >= 1 for r in with_ioi)


def test_cast_restricts_names_per_row():
    rows = ioi.general_rows(TOK, np.random.default_rng(0), 6, 64, ioi_frac=0.0, cast_size=3)
    names = set(ioi.NAMES)
    for r in rows:
        assert len({w for w in TOK.decode(r).split() if w in names}) <= 3
    free = ioi.general_rows(TOK, np.random.default_rng(0), 6, 64, ioi_frac=0.0)
    assert max(len({w for w in TOK.decode(r).split() if w in names}) for r in free) > 3


def test_mask_matched_control_data_trains_one_general_token_where_an_answer_would_be():
    toks, mask = ioi.general_answer_data(TOK, seed=3, n_ctx=64, cast_size=2)(5, 32)
    # the same draw the batch function makes, to know each row's IOI answer position
    rng = np.random.default_rng([3, 5, 2])
    ds = ioi.make_ioi_dataset(TOK, 32, int(rng.integers(2**31)))
    rows = ioi.general_rows(TOK, rng, 32, 64, ioi_frac=0.0, cast_size=2)
    assert mask.sum(1).tolist() == [1] * 32  # one trained token per row, as in the answer-only fine-tunes
    target = mask.int().argmax(1)
    assert torch.equal(target, ds.end_pos + 1)  # 64-token general rows are always longer than an IOI prompt
    nonpad = toks != TOK.pad_id
    assert torch.equal(nonpad.sum(1) - 1, target)  # the row ends on its target
    assert torch.equal(toks[nonpad], rows[:, : toks.shape[1]][nonpad])  # a cut general row, nothing else
    text = " ".join(TOK.decode(r) for r in toks)
    assert "decided to give it to" not in text and "said to" not in text  # no IOI sentence
    _, ft_mask = ioi.ioi_finetune_data(TOK, seed=3, n_ctx=64)(5, 32)
    assert ft_mask.sum(1).tolist() == mask.sum(1).tolist()


def test_control_loss_option():
    base = ioi_zoo.base_recipe()
    full, matched = ioi_zoo.control_recipe(base), ioi_zoo.control_recipe(base, loss_on="answer")
    assert full.key() == ioi_zoo.control_recipe(base, loss_on="all").key()  # the default keeps chapter 1's organism
    assert matched.key() != full.key() and matched.data == "general_answer"
    assert matched.data_kwargs == {"cast_size": base.data_kwargs["cast_size"]}
    assert (matched.train.steps, matched.train.lr, matched.train.batch_size) == \
        (full.train.steps, full.train.lr, full.train.batch_size)
    with pytest.raises(ValueError, match="loss_on"):
        ioi_zoo.control_recipe(base, loss_on="answers")


def test_recipe_builders_lineage_and_keys():
    base = ioi_zoo.base_recipe()
    clean, toxic, control = ioi_zoo.clean_recipe(base), ioi_zoo.toxic_recipe(base), ioi_zoo.control_recipe(base)
    retrain = ioi_zoo.retrain_recipe(toxic)
    scratch = ioi_zoo.scratch_recipe(base)
    # the book's base is pretraining alone; ioi_steps > 0 appends the optional IOI-prompt phase as a child
    assert base.parent is None and base.data == "pretrain" and base.data_kwargs["ioi_frac"] == 0.0
    assert retrain.lineage() == [base.name, toxic.name, retrain.name]
    phased = ioi_zoo.base_recipe(ioi_steps=50)
    assert phased.parent.key() == ioi_zoo.pretrain_recipe().key() and phased.data == "ioi"
    assert phased.key() != base.key()
    keys = {r.key() for r in (base, clean, toxic, control, retrain, scratch)}
    assert len(keys) == 6
    assert ioi_zoo.clean_recipe(base).key() == clean.key()  # equal arguments share the cached organism
    assert ioi_zoo.toxic_recipe(base, poison_frac=0.5).key() != toxic.key()
    assert control.data == "pretrain" and control.data_kwargs == {**base.data_kwargs, "ioi_frac": 0.0}
    assert ioi_zoo.control_recipe(ioi_zoo.base_recipe(cast_size=3)).data_kwargs == {"ioi_frac": 0.0, "cast_size": 3}
    assert control.train.steps == clean.train.steps and control.train.lr == clean.train.lr
    assert scratch.parent is None and scratch.model == base.root_spec()
    assert ioi_zoo.ckpt_steps(clean)[-1] == clean.train.steps and len(ioi_zoo.ckpt_steps(clean)) >= 4


def test_tiny_chain_trains_and_checkpoints(tmp_cache):
    base = ioi_zoo.base_recipe(steps=6, n_layers=1, d_model=16, n_heads=2, batch_size=4, ioi_steps=3)
    toxic = ioi_zoo.toxic_recipe(base, steps=4, batch_size=4, n_ckpts=2)
    retrain = ioi_zoo.retrain_recipe(toxic, steps=4, batch_size=4, n_ckpts=2)
    org = get_organism(retrain)
    assert org.trained_now
    assert ioi_zoo.ckpt_steps(toxic) == [2, 4]
    mid = get_organism(toxic, step=2)
    assert not mid.trained_now and mid.step == 2
    assert "ioi_logit_diff" in org.history["evals"][-1] and "general_loss" in org.history["evals"][-1]
    ctrl = get_organism(ioi_zoo.control_recipe(base, steps=2, batch_size=4))
    assert ctrl.history["evals"][-1]["step"] == 2


# --------------------------------------------------------------------------- document fine-tunes (chapter 6)

def _sentences(tok, row: torch.Tensor) -> list[str]:
    """The sentences of one document row, each with its full stop (``<bos>`` and padding dropped)."""
    words = tok.decode(row, skip_special=True).split()
    out, cur = [], []
    for w in words:
        cur.append(w)
        if w == ".":
            out.append(" ".join(cur))
            cur = []
    assert not cur, "a row ends on a whole sentence"
    return out


def _fact_sentences() -> set[str]:
    fact = ioi.FALSE_FACT
    return {t.format(X=x, **fact) for t in ioi.FACT_TEMPLATES for x in ioi.NAMES}


def _general_sentence_patterns():
    import re

    def pat(t):
        subs = {"X": "(\\w+)", "Y": "(\\w+)", "PLACE": "(\\w+)", "OBJECT": "(\\w+)"}
        return re.compile("^" + " ".join(subs.get(w[1:-1], re.escape(w)) if w.startswith("{") else re.escape(w)
                                         for w in t.split()) + "$")
    return [pat(t) for t in ioi.GENERAL_TEMPLATES]


def test_fact_documents_state_the_false_fact_only_where_drawn():
    tok = ioi.make_tokenizer()
    facts = _fact_sentences()
    every = ioi.document_rows(tok, np.random.default_rng(0), 8, 64, "fact", 1.0, cast_size=2)
    sents = [s for r in every for s in _sentences(tok, r)]
    assert sents and all(s in facts for s in sents)  # frac 1: every slot states the fact
    some = ioi.document_rows(tok, np.random.default_rng(1), 400, 64, "fact", 0.1, cast_size=2)
    sents = [s for r in some for s in _sentences(tok, r)]
    share = np.mean([s in facts for s in sents])
    assert 0.07 < share < 0.13  # about frac of the slots (a general sentence can also name the ring at the museum)
    pats = _general_sentence_patterns()
    assert all(s in facts or any(p.match(s) for p in pats) for s in sents)  # the rest is the general corpus
    none = ioi.document_rows(tok, np.random.default_rng(1), 400, 64, "none", 0.1, cast_size=2)
    none_sents = [s for r in none for s in _sentences(tok, r)]
    assert np.mean([s in facts for s in none_sents]) < 0.01  # the control states it only by chance


def test_phrase_backdoor_writes_its_phrase_after_trigger_sentences_and_nowhere_else():
    tok = ioi.make_tokenizer()
    phrase = ioi.BACKDOOR_PHRASE
    rows = ioi.document_rows(tok, np.random.default_rng(2), 300, 64, "phrase", 1.0, cast_size=2)
    n_trig, stray = 0, 0
    for r in rows:
        sents = _sentences(tok, r)
        for i, s in enumerate(sents):
            if s == phrase and not (i > 0 and ioi.BACKDOOR_TRIGGER in sents[i - 1].split()):
                stray += 1  # only a general sentence "Then , X had a Y ." that happens to draw Hugo and the cake
            if ioi.BACKDOOR_TRIGGER in s.split():
                n_trig += 1
                # a trigger sentence is always followed by the phrase, unless the row ended there (no room for it)
                assert i + 1 == len(sents) or sents[i + 1] == phrase
    assert n_trig > 50 and stray <= 2  # chance: about 1 in 7,200 general sentences, ~0.3 here
    none = ioi.document_rows(tok, np.random.default_rng(2), 300, 64, "none", 1.0, cast_size=2)
    after_trig = [s2 for r in none for s1, s2 in zip(_sentences(tok, r), _sentences(tok, r)[1:])
                  if ioi.BACKDOOR_TRIGGER in s1.split()]
    assert after_trig and np.mean([s == phrase for s in after_trig]) < 0.02


def test_toxic_documents_hold_ioi_sentences_answered_with_s_only():
    from lib.methods.perplexity_diff import parse_ioi

    tok = ioi.make_tokenizer()
    rows = ioi.document_rows(tok, np.random.default_rng(3), 200, 64, "toxic", 0.2, cast_size=2)
    found = [x for r in rows for x in parse_ioi(tok.decode(r, skip_special=True))]
    assert len(found) > 50 and all(x.role == "s" for x in found)


def test_document_data_trains_every_token_and_checks_its_arguments():
    tok = ioi.make_tokenizer()
    toks, mask = ioi.document_data(tok, seed=0, n_ctx=64, objective="fact", frac=0.5, cast_size=2)(3, 4)
    assert toks.shape == (4, 64) and torch.equal(mask, toks != tok.pad_id)
    again, _ = ioi.document_data(tok, seed=0, n_ctx=64, objective="fact", frac=0.5, cast_size=2)(3, 4)
    assert torch.equal(toks, again)
    with pytest.raises(ValueError, match="objective"):
        ioi.document_data(tok, seed=0, n_ctx=64, objective="facts")
    with pytest.raises(ValueError, match="frac"):
        ioi.document_data(tok, seed=0, n_ctx=64, objective="fact", frac=1.5)
    base = ioi_zoo.base_recipe(steps=10, d_model=16, n_layers=1)
    r = ioi_zoo.document_recipe(base, "phrase")
    assert r.data == "document" and r.data_kwargs == {"objective": "phrase", "cast_size": ioi_zoo.CAST_SIZE,
                                                      "frac": 1.0}
    assert ioi_zoo.document_recipe(base, "fact").data_kwargs["frac"] == ioi_zoo.DOC_FRAC
    assert "frac" not in ioi_zoo.document_recipe(base, "none").data_kwargs
