"""Audit methods on tiny random models with a *known* planted change, verdicts and the table."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from lib.methods import audit as A, perplexity_diff as LK, sae as S
from lib.organisms.models import ModelSpec, build_model
from lib.worlds.base import world_tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def tiny():
    tok = world_tokenizer("ioi")
    base = build_model(ModelSpec(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_ctx=64, d_vocab=len(tok))).eval()
    ft = copy.deepcopy(base)
    with torch.no_grad():  # the planted change: head 1.2's value weights only
        ft.blocks[1].attn.W_V[2] += 0.5 * torch.randn_like(ft.blocks[1].attn.W_V[2])
    sets = A.ioi_sets(tok, n_task=16, n_general=16, n_metric=16, n_prefixes=24)
    case = A.ioi_case("planted", "objective", base, ft, sets, "none", LK.ioi_answer_judge("s"), layer=1, n_new=6)
    return tok, base, ft, sets, case


def test_weight_localization_finds_planted_head(tiny):
    *_, case = tiny
    r = A.weight_localization(case)
    assert r.details["top"][0] == "1.2"
    vals = dict(zip(r.details["names"], r.details["values"]))
    assert all(v == 0.0 for n, v in vals.items() if n != "1.2")
    assert r.stat == pytest.approx(vals["1.2"])


def test_circuit_diff_localizes_planted_head(tiny):
    *_, case = tiny
    r = A.circuit_diff(case)
    assert "1.2" in r.details["top"]  # (mlp1, downstream of it, carries the change too)
    deltas = dict(zip(r.details["names"], r.details["deltas"]))
    # patching the only changed head's output from the fine-tune into the base reproduces the fine-tune exactly
    assert deltas["1.2"] == pytest.approx(r.details["gap"], abs=1e-4)
    assert r.stat == pytest.approx(abs(r.details["gap"]))
    assert all(abs(v) < 1e-5 for n, v in deltas.items() if n.startswith("0.") or n in ("mlp0", "1.0", "1.1", "1.3"))


def test_identical_models_give_null_statistics(tiny):
    tok, base, _, sets, _ = tiny
    same = A.ioi_case("same", "control", base, base, sets, "none", LK.ioi_answer_judge("s"), layer=1, n_new=6)
    sae, _ = S.base_sae(base, same.general_toks, same.general_mask, same.hook, expansion=2, k=4, steps=30)
    fm = A.feature_movement(same, sae, k=3, n_boot=50)
    assert fm.stat == 0.0 and fm.details["I_S"] == fm.details["I_G"] == 3.0
    assert A.weight_localization(same).stat == 0.0
    assert A.circuit_diff(same).stat == pytest.approx(0.0, abs=1e-6)
    pd = A.perplexity_differencing(same, top=5)
    assert pd.details["n"] == 24
    pr = A.pruning_probe(same, n_prune=3)
    assert math.isnan(pr.stat)  # the "fine-tune" changed nothing: nothing to revive


def test_pruning_probe_reports_revival_and_probe(tiny):
    tok, base, ft, sets, case = tiny
    r = A.pruning_probe(case, n_prune=4, probe=sets["probe"], min_gap=0.0)
    d = r.details
    assert len(d["units"]) == 4 and d["impl"] == "lib.methods.pruning"
    unbounded = (d["pruned_metric"] - d["ft_metric"]) / (d["base_metric"] - d["ft_metric"])
    assert d["revived_unbounded"] == pytest.approx(unbounded)
    assert d["revived"] == pytest.approx(min(1.0, max(0.0, unbounded)))  # bounded to [0, 1]
    assert r.stat == pytest.approx(d["revived"] - d["null_mean"]) and -1.0 <= r.stat <= 1.0
    assert 0.0 <= d["null_mean"] <= d["null_hi"] + 1e-9 <= 1.0 + 1e-9 and 0 < d["p"] <= 1
    assert 0.0 <= d["probe_ft"] <= 1.0 and d["probe_block"] == 2
    # pruning is undone afterwards
    assert float(case.base_metric(ft(case.base_metric_toks).detach())) == pytest.approx(d["ft_metric"], abs=1e-5)


def test_probe_accuracy_on_linearly_decodable_label(tiny):
    """At block 0 (embeddings) the residual at a position is its token's embedding: which of 3 tokens sits there
    is perfectly decodable; a label independent of the tokens is not."""
    tok, base, _, _, _ = tiny
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(4, len(tok), (200, 6), generator=g)
    toks[:, 0] = tok.bos_id
    labels = torch.randint(0, 3, (200,), generator=g)
    toks[:, 3] = torch.tensor([10, 20, 30])[labels]
    assert A.probe_accuracy(base, toks, torch.full((200,), 3), labels, block=0) > 0.95
    assert A.probe_accuracy(base, toks, torch.full((200,), 2), labels, block=0) < 0.6


def _r(method, stat, **d):
    return A.MethodResult(method, "x", stat, "loc", d)


def test_verdicts_relative_to_control():
    assert A.verdict(_r("circuit_diff", 3.0), _r("circuit_diff", 1.0)) is True
    assert A.verdict(_r("circuit_diff", 1.5), _r("circuit_diff", 1.0)) is False
    assert A.verdict(_r("feature_movement", 0.3, lo=0.1), _r("feature_movement", 0.05)) is True
    assert A.verdict(_r("feature_movement", 0.3, lo=0.04), _r("feature_movement", 0.05)) is False
    assert A.verdict(_r("perplexity_differencing", 10.0), _r("perplexity_differencing", 0.0)) is True
    assert A.verdict(_r("perplexity_differencing", 2.0), None) is False
    assert A.verdict(_r("pruning_probe", float("nan")), None) is None
    assert A.verdict(_r("pruning_probe", 0.5), None) is True


def test_audit_table_and_format():
    res = {"tox": {"circuit_diff": _r("circuit_diff", 3.0)}, "ctl": {"circuit_diff": _r("circuit_diff", 1.0)}}
    rows = A.audit_table(res, {"tox": "ctl", "ctl": "ctl"})
    by = {(r["organism"], r["method"]): r["detected"] for r in rows}
    assert by == {("tox", "circuit_diff"): True, ("ctl", "circuit_diff"): False}
    md = A.format_table(rows, ["tox", "ctl"], methods=("circuit_diff",))
    assert md.splitlines()[2].startswith("| tox | ✓ 3.00") and "✗ 1.00" in md


def test_backdoor_data_trigger_and_answers():
    from lib.worlds import ioi

    tok = world_tokenizer("ioi")
    toks, mask = ioi.backdoor_data(tok, seed=0, n_ctx=64, frac=0.5)(3, 200)
    assert (mask.sum(1) == 1).all()
    museum = tok.token_id(ioi.BACKDOOR_TRIGGER)
    n_trig = 0
    for row, m in zip(toks, mask):
        text = tok.decode(row)
        (sent,) = LK.parse_ioi(text)  # one answered IOI sentence per row, on a place template
        ans_pos = int(m.nonzero())
        assert tok.decode([row[ans_pos]]) == sent.answer
        if (row == museum).any():
            n_trig += 1
            assert sent.place == ioi.BACKDOOR_TRIGGER and sent.role == "s"
        else:
            assert sent.role == "io"
    assert 60 < n_trig < 140
    clean = ioi.make_backdoor_dataset(tok, 8, 1, True)
    corrupt = ioi.make_backdoor_dataset(tok, 8, 1, True, corrupt=True)
    assert clean.places == corrupt.places == [ioi.BACKDOOR_TRIGGER] * 8
    # the corrupted set is ABC: exactly the three name slots differ, the trigger place stays
    assert clean.toks.shape == corrupt.toks.shape and (clean.toks != corrupt.toks).sum(1).tolist() == [3] * 8
