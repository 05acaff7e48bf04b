"""GPU check at the paper's scale: GPT-2 small's architecture (random weights, built offline through the same
``lib.organisms.models.load_pretrained`` path as ``MODEL="gpt2"``) fine-tuned for ``--steps`` steps with ``lib.organisms.train.train``,
then analysed with cross-model activation patching (``lib.methods.patching.cmap``: every head's output and every MLP of
the fine-tune patched into the original). Prints a table of wall times and throughput.

    .venv/bin/python benchmarks/bench_gpu.py --device cuda [--steps 50] [--batch 16] [--seq 128]
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --layers 2 --steps 3 --seq 32   # a CPU smoke run

Not a test: numbers depend on the machine. ``--device cuda`` on a machine without a GPU stops at once.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from benchmarks.bench_training import _sync
from lib.methods.patching import cmap
from lib.organisms.device import model_device, use_device
from lib.organisms.models import count_params, load_pretrained
from lib.organisms.train import TrainConfig, train


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto", help='"cpu", "cuda", "cuda:N" or "auto"')
    ap.add_argument("--layers", type=int, default=None, help="GPT-2 small has 12; fewer for a quick CPU run")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=32, help="prompts for the patching sweep")
    a = ap.parse_args(argv)
    device = use_device(a.device, "--device")
    vocab = 50257
    t = time.perf_counter()
    base = load_pretrained("gpt2", random_init=True, n_layers=a.layers)
    ft = copy.deepcopy(base)
    build_s = time.perf_counter() - t
    assert model_device(ft) == device, f"model on {model_device(ft)}, asked for {device}"
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, vocab, (a.batch, a.seq), generator=g) for _ in range(8)]

    def batch_fn(step: int, b: int):
        x = data[step % len(data)]
        return x, torch.ones_like(x, dtype=torch.bool)

    _sync(device)
    t = time.perf_counter()
    train(ft, batch_fn, TrainConfig(steps=a.steps, batch_size=a.batch, lr=1e-4, log_every=max(1, a.steps)),
          progress=False, desc="gpt2-ft")
    _sync(device)
    train_s = time.perf_counter() - t
    toks = torch.randint(0, vocab, (a.prompts, min(a.seq, 32)), generator=g)

    def metric(logits: torch.Tensor) -> torch.Tensor:  # per prompt: logit of token 0 minus token 1 at the end
        return logits[:, -1, 0] - logits[:, -1, 1]

    _sync(device)
    t = time.perf_counter()
    res = cmap(base, ft, toks, metric)
    _sync(device)
    cmap_s = time.perf_counter() - t
    L, H = res.heads.shape
    out = {"build_s": build_s, "train_s": train_s, "train_tokens_per_s": a.steps * a.batch * a.seq / train_s,
           "cmap_s": cmap_s, "cmap_components": L * H + len(res.mlps)}
    print(f"GPT-2 small architecture ({L} layers x {H} heads, {count_params(base) / 1e6:.0f}M parameters, random "
          f"weights) on {device}, torch {torch.__version__}")
    print(f"{'stage':<46}{'seconds':>10}{'rate':>22}")
    print(f"{'build (random init, offline)':<46}{build_s:>10.2f}")
    print(f"{f'fine-tune {a.steps} steps x {a.batch} x {a.seq} tokens':<46}{train_s:>10.2f}"
          f"{out['train_tokens_per_s']:>16,.0f} tok/s")
    print(f"{f'CMAP: {L * H} heads + {len(res.mlps)} MLPs, {a.prompts} prompts':<46}{cmap_s:>10.2f}"
          f"{out['cmap_components'] / cmap_s:>15.1f} comp/s")
    return out


if __name__ == "__main__":
    main()
