"""The benchmark scripts run (tiny sizes, CPU) and report what they claim; their numbers are not asserted."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import bench_gpu, bench_training, build_costs, build_order  # noqa: E402
from lib.organisms.device import DeviceUnavailableError  # noqa: E402
from lib.organisms.models import ModelSpec  # noqa: E402


def test_gpu_bench_runs_gpt2_architecture_on_cpu(capsys, monkeypatch):
    monkeypatch.setattr("lib.organisms.device._CURRENT", torch.device("cpu"))
    out = bench_gpu.main(["--device", "cpu", "--layers", "1", "--steps", "2", "--batch", "2", "--seq", "8",
                          "--prompts", "2"])
    assert out["cmap_components"] == 12 + 1  # GPT-2 small: 12 heads per layer, plus the MLP
    assert out["train_tokens_per_s"] > 0
    assert "CMAP: 12 heads + 1 MLPs" in capsys.readouterr().out


def test_gpu_bench_fails_clearly_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match="--device='cuda'"):
        bench_gpu.main(["--device", "cuda"])


def test_flop_count_by_hand():
    s = ModelSpec(n_layers=1, d_model=4, n_heads=2, d_mlp=8, n_ctx=3, d_vocab=5)
    weights = 4 * 4 * 4 + 2 * 4 * 8 + 4 * 5  # q, k, v, o; MLP in and out; unembedding
    assert bench_training.train_flops_per_token(s) == 3 * (2 * weights + 1 * 4 * 3 * 4)


def test_loop_patching_reference_agrees_with_batched(monkeypatch):
    monkeypatch.setattr("lib.organisms.device._CURRENT", torch.device("cpu"))
    from lib.methods.patching import head_out_patch, head_outputs, ld_metric, run_cache
    from lib.organisms.models import build_model
    from lib.worlds import ioi
    from lib.worlds.base import world_tokenizer

    tok = world_tokenizer("ioi")
    spec = ModelSpec(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_ctx=64, d_vocab=len(tok))
    a, b = build_model(spec), build_model(ModelSpec(**{**spec.to_dict(), "seed": 1}))
    ds = ioi.make_ioi_dataset(tok, 8, 0)
    _, cache = run_cache(b, ds.toks, lambda n: n.endswith("hook_z"))
    src = {l: head_outputs(b, cache, l) for l in range(2)}
    loop = bench_training._loop_head_out_patch(a, ds.toks, src, ld_metric(ds))
    torch.testing.assert_close(head_out_patch(a, ds.toks, src, ld_metric(ds)), loop, atol=1e-4, rtol=1e-4)
    assert loop.abs().sum() > 0


def test_build_order_simulation_by_hand():
    """Two workers; chapters x and y both need organism o (10 s): y waits on x's lock, then loads it (2 s)."""
    chapters = {"x": [("org", "o"), ("cpu", 5)], "y": [("org", "o"), ("cpu", 1)], "z": [("cpu", 4)]}
    train = {"o": 10}
    assert build_order.simulate(["x", "y"], train_s=train, chapters=chapters) == 15  # y: 10 + 2 + 1 = 13
    assert build_order.simulate(["x", "z", "y"], train_s=train, chapters=chapters) == 15  # z, then y: 4 -> 10 + 3
    assert build_order.simulate(["x", "y", "z"], train_s=train, chapters=chapters) == 17  # z after y (13 + 4)
    assert build_order.simulate(["x", "y", "z"], jobs=1, train_s=train, chapters=chapters) == 15 + 2 + 1 + 4


def test_build_costs_ledger_by_hand(tmp_path, capsys):
    """Organisms p (10 s) -> c (3 s, a fine-tune of p) and q (5 s); chapter x loads c, chapter y loads p and q: p is
    needed by both (c cannot be trained without it), c by x alone, q by y alone."""
    import json

    from lib.organisms.cache import content_key

    ident = {"p": {"name": "p", "train": {"steps": 4, "batch_size": 2}}, "q": {"name": "q"}}
    ident["c"] = {"name": "c", "parent": ident["p"]}
    keys = {n: content_key(i) for n, i in ident.items()}
    for n, i in ident.items():
        (tmp_path / "cache" / keys[n]).mkdir(parents=True)
        (tmp_path / "cache" / keys[n] / "manifest.json").write_text(json.dumps(
            {"identity": i, "name": n, "train_wall_time_s": {"p": 10, "c": 3, "q": 5}[n], "n_params": 7}))
    for chapter, loaded in (("x", ["c"]), ("y", ["p", "q"])):
        (tmp_path / "results" / chapter).mkdir(parents=True)
        (tmp_path / "results" / chapter / "results.json").write_text(json.dumps(
            {"provenance": {"organisms": {keys[n]: n for n in loaded}}}))
    (tmp_path / "timings.json").write_text(json.dumps({"x": 20.0, "y": 30.0, "_wall_s": 31}))
    led = build_costs.main(["--cache", str(tmp_path / "cache"), "--results", str(tmp_path / "results")])
    by = {r["name"]: r for r in led["organisms"]}
    assert [r["name"] for r in led["organisms"]] == ["p", "q", "c"]  # most expensive first
    assert by["p"]["chapters"] == ["x", "y"] and by["c"]["chapters"] == ["x"] and by["q"]["chapters"] == ["y"]
    assert led["chapters"]["x"] == {"wall_s": 20.0, "needs_s": 13.0, "alone_s": 3.0, "n_organisms": 2}
    assert led["chapters"]["y"] == {"wall_s": 30.0, "needs_s": 15.0, "alone_s": 5.0, "n_organisms": 2}
    assert led["totals"] == {"train_s": 18.0, "chapters_wall_sum_s": 50.0, "rest_s": 32.0, "missing": 0}
    assert "4 x 2" in capsys.readouterr().out
