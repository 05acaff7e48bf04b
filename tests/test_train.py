import math

import pytest
import torch

from lib.organisms.models import ModelSpec, build_model
from lib.organisms.train import TrainConfig, train
from lib.worlds.base import masked_lm_loss


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_frac=0.1, min_lr_frac=0.1)
    assert cfg.lr_at(0) == pytest.approx(0.1)
    assert cfg.lr_at(9) == pytest.approx(1.0)
    assert cfg.lr_at(10) == pytest.approx(1.0)
    assert cfg.lr_at(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cfg.lr_at(100) == pytest.approx(0.1)
    lrs = [cfg.lr_at(s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_masked_loss_matches_hand_computation():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0] = torch.tensor([0.0, 0.0, math.log(3.0), 0.0])  # predicts token at pos 1
    logits[0, 1] = torch.tensor([5.0, 0.0, 0.0, 0.0])            # predicts pos 2 (masked out)
    tokens = torch.tensor([[1, 2, 3]])
    mask = torch.tensor([[False, True, False]])
    # p(2) = 3 / (3 + 3) = 0.5
    assert masked_lm_loss(logits, tokens, mask).item() == pytest.approx(math.log(2.0))
    with pytest.raises(ValueError):
        masked_lm_loss(logits, tokens, torch.zeros_like(mask))


def _copy_task(step: int, batch: int):
    """Sequences ``x y x y ...``: the second half is learnable by copying from two positions back."""
    g = torch.Generator().manual_seed(step)
    ab = torch.randint(4, 20, (batch, 2), generator=g)
    toks = ab.repeat(1, 6)
    mask = torch.ones_like(toks, dtype=torch.bool)
    mask[:, :3] = False
    return toks, mask


def test_loss_falls_on_learnable_task():
    model = build_model(ModelSpec(n_layers=1, d_model=32, n_heads=2, d_mlp=64, n_ctx=16, d_vocab=20))
    seen = []
    hist = train(model, _copy_task, TrainConfig(steps=150, batch_size=32, lr=3e-3, log_every=10, eval_every=50,
                                                ckpt_every=50),
                 eval_fn=lambda m: {"copy_loss": masked_lm_loss(m(_copy_task(999, 64)[0]), *_copy_task(999, 64)).item()},
                 on_checkpoint=lambda s, m: seen.append(s))
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    evals = [e["copy_loss"] for e in hist["evals"]]
    assert [e["step"] for e in hist["evals"]] == [0, 50, 100, 150]
    assert evals[-1] < 0.2 * evals[0]
    assert seen == [50, 100, 150]
    assert not model.training


def test_same_seed_same_numbers():
    def run():
        torch.manual_seed(0)
        m = build_model(ModelSpec(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_ctx=16, d_vocab=20, seed=3))
        return train(m, _copy_task, TrainConfig(steps=10, batch_size=8, log_every=5))["loss"]
    assert run() == run()


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=-1)
    with pytest.raises(ValueError, match="d_model"):
        ModelSpec(d_model=30, n_heads=4)


def test_provenance_names_the_cpu_kernels_that_trained_the_numbers():
    """Trained weights depend on the vector instructions torch dispatches to (AVX2, AVX-512, none): results say
    which, so a verdict that differs between two machines can be traced to them."""
    import torch

    from lib.organisms.seeding import provenance

    prov = provenance({"SEED": 3})
    assert prov["seed"] == 3 and prov["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert prov["cpu"]["machine"]


def test_early_stop_ends_at_the_first_eval_that_meets_the_threshold_and_changes_no_step_before_it():
    """``stop_when``: a run that stops early has the same losses, evals and weights up to its stop as the full
    run, and stops at the first eval whose metric reaches the threshold."""
    def run(stop_when):
        m = build_model(ModelSpec(n_layers=1, d_model=32, n_heads=2, d_mlp=64, n_ctx=16, d_vocab=20, seed=1))
        ev = lambda mm: {"acc": _accuracy(mm)}  # noqa: E731
        cfg = TrainConfig(steps=120, batch_size=16, lr=3e-3, log_every=10, eval_every=20, stop_when=stop_when)
        return m, train(m, _copy_task, cfg, eval_fn=ev, on_checkpoint=lambda s, mm: seen.append(s))

    seen: list[int] = []
    _, full = run(None)
    accs = [e["acc"] for e in full["evals"]]
    threshold = sorted(accs)[len(accs) // 2]  # met somewhere in the middle of the run
    first = next(e["step"] for e in full["evals"] if e["acc"] >= threshold)
    assert 0 < first < 120
    seen.clear()
    _, early = run(("acc", threshold))
    assert early["stopped_at"] == first and seen == [first]
    assert early["evals"] == full["evals"][: len(early["evals"])] and early["evals"][-1]["step"] == first
    assert early["loss"] == full["loss"][: len(early["loss"])] and early["step"][-1] == first
    assert "stopped_at" not in full  # a run without stop_when keeps its history's keys
    _, never = run(("acc", 2.0))
    assert never["stopped_at"] is None and never["evals"] == full["evals"]


def _accuracy(model) -> float:
    toks, mask = _copy_task(999, 64)
    with torch.no_grad():
        pred = model(toks)[:, :-1].argmax(-1)
    return (pred == toks[:, 1:])[mask[:, 1:]].float().mean().item()


def test_early_stop_settings_are_checked_and_absent_from_the_identity_unless_set():
    assert "stop_when" not in TrainConfig().to_dict()  # every recipe without it keeps its cache key
    assert TrainConfig(eval_every=10, stop_when=("acc_a", 0.8)).to_dict()["stop_when"] == ["acc_a", 0.8]
    with pytest.raises(ValueError, match="eval_every"):
        TrainConfig(stop_when=("acc_a", 0.8))
    with pytest.raises(ValueError, match="stop_when"):
        TrainConfig(eval_every=10, stop_when=("acc_a",))
    m = build_model(ModelSpec(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_ctx=16, d_vocab=20))
    with pytest.raises(KeyError, match="acc_b"):
        train(m, _copy_task, TrainConfig(steps=4, batch_size=4, eval_every=2, stop_when=("acc_b", 0.5)),
              eval_fn=lambda mm: {"acc": 0.0})
