"""Benchmark: training throughput of the organism's TransformerLens model vs a plain PyTorch GPT of the same
size, in the same run; optionally (``--book``) cold vs warm ``python -m lib build`` wall time.

Prints a table. Not a test: numbers depend on the machine (the book's budget assumes 2 CPU cores).

    .venv/bin/python benchmarks/bench_training.py [--steps 30] [--book]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lib.models import ModelSpec, build_model, count_params

ROOT = Path(__file__).resolve().parent.parent


class Block(nn.Module):
    def __init__(self, d: int, h: int, d_mlp: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, d_mlp), nn.Linear(d_mlp, d)
        self.h = h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.o(a)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class PlainGPT(nn.Module):
    """A minimal GPT-2-style model with the same shapes as the organism (no hooks)."""

    def __init__(self, s: ModelSpec) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(s.d_vocab, s.d_model), nn.Embedding(s.n_ctx, s.d_model)
        self.blocks = nn.ModuleList(Block(s.d_model, s.n_heads, s.d_mlp) for _ in range(s.n_layers))
        self.ln, self.unembed = nn.LayerNorm(s.d_model), nn.Linear(s.d_model, s.d_vocab)

    def forward(self, tok: torch.Tensor) -> torch.Tensor:
        x = self.emb(tok) + self.pos(torch.arange(tok.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.unembed(self.ln(x))


def throughput(model: nn.Module, spec: ModelSpec, steps: int, batch: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, spec.d_vocab, (batch, spec.n_ctx), generator=g) for _ in range(steps + 3)]
    model.train()
    for i, x in enumerate(data):
        if i == 3:
            t = time.perf_counter()
        loss = F.cross_entropy(model(x)[:, :-1].reshape(-1, spec.d_vocab), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch * spec.n_ctx / (time.perf_counter() - t)


def bench_book() -> list[tuple[str, float]]:
    """Wall time of `python -m lib build` on an empty organism cache, then again on the filled one."""
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "FTM_CACHE_DIR": cache}
        for label in ("cold (empty organism cache)", "warm (cache filled)"):
            t = time.time()
            subprocess.run([sys.executable, "-m", "lib", "build"], cwd=ROOT, env=env, check=True)
            rows.append((label, time.time() - t))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--book", action="store_true", help="also time a cold and a warm book build (~40 + 7 min)")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {a.batch}")
    print(f"{'model':<34}{'params':>10}{'tokens/s':>12}{'relative':>10}")
    for spec in (ModelSpec(n_layers=4, d_model=128, n_heads=4, d_mlp=512, n_ctx=64, d_vocab=104),
                 ModelSpec(n_layers=2, d_model=64, n_heads=4, d_mlp=256, n_ctx=64, d_vocab=104)):
        torch.manual_seed(0)
        tl, plain = build_model(spec), PlainGPT(spec)
        r_tl = throughput(tl, spec, a.steps, a.batch)
        r_plain = throughput(plain, spec, a.steps, a.batch)
        tag = f"L{spec.n_layers} d{spec.d_model}"
        print(f"{'TransformerBridge (native) ' + tag:<34}{count_params(tl):>10,}{r_tl:>12,.0f}{r_tl / r_plain:>10.2f}")
        print(f"{'plain PyTorch GPT ' + tag:<34}{count_params(plain):>10,}{r_plain:>12,.0f}{1.0:>10.2f}")
    timings = ROOT / "_build" / "timings.json"
    if timings.exists():
        t = json.loads(timings.read_text())
        print(f"\nlast `make book` per chapter (s): {json.dumps(t)}  total {sum(t.values()):.0f}s")
    if a.book:
        print(f"\n{'book build':<34}{'wall time (s)':>14}")
        for label, s in bench_book():
            print(f"{label:<34}{s:>14.0f}")


if __name__ == "__main__":
    main()
