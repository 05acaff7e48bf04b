"""Benchmarks of the book's hot paths, printed as tables in one run (``make bench``):

1. training tokens/s of the organism (TransformerLens bridge) vs a plain PyTorch GPT of the same shape;
2. the achieved training GFLOP/s vs this machine's measured fp32 matmul peak;
3. batched per-head output patching (``lib.methods.patching.head_out_patch``, one forward pass per layer) vs a loop of
   one forward pass per head, and TransformerLens' own per-head loop (``hook_z``);
4. the chapters' cold / warm build times: the last ``make book`` (``_build/timings.json``), or ``--book`` to time
   a cold and a warm ``python -m lib build`` now.

Not a test: numbers depend on the machine (the book's budget assumes 2 CPU cores).

    .venv/bin/python benchmarks/bench_training.py [--steps 30] [--device cpu] [--book]
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

from lib.organisms.device import use_device
from lib.organisms.models import ModelSpec, build_model, count_params

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
        x = self.emb(tok) + self.pos(torch.arange(tok.shape[1], device=tok.device))
        for b in self.blocks:
            x = b(x)
        return self.unembed(self.ln(x))


def throughput(model: nn.Module, spec: ModelSpec, steps: int, batch: int, device: torch.device) -> float:
    """Training tokens/s (AdamW, full-sequence LM loss) over ``steps`` steps after 3 warm-up steps."""
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, spec.d_vocab, (batch, spec.n_ctx), generator=g).to(device) for _ in range(steps + 3)]
    model.train()
    for i, x in enumerate(data):
        if i == 3:
            _sync(device)
            t = time.perf_counter()
        loss = F.cross_entropy(model(x)[:, :-1].reshape(-1, spec.d_vocab), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    _sync(device)
    return steps * batch * spec.n_ctx / (time.perf_counter() - t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_flops_per_token(spec: ModelSpec) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward; Kaplan et al. 2020's count): 2 per weight of
    every matmul (attention q/k/v/o, MLP, unembedding; embeddings are lookups) plus attention scores and mixing
    (2 * 2 * n_ctx * d_model per layer, causal masking not discounted)."""
    d, L = spec.d_model, spec.n_layers
    weights = L * (4 * d * d + (0 if spec.attn_only else 2 * d * spec.d_mlp)) + d * spec.d_vocab
    return 3 * (2 * weights + L * 4 * spec.n_ctx * d)


def matmul_peak(device: torch.device, n: int = 1024, reps: int = 20) -> float:
    """Measured fp32 GFLOP/s of an ``n x n`` matmul (the best of ``reps``), the machine's practical peak."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(reps + 2):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


@torch.no_grad()
def _loop_head_out_patch(model, toks, src_out, metric) -> torch.Tensor:
    """Reference: one forward pass per head, adding (source - own) output of that head to ``hook_attn_out``."""
    from lib.methods.patching import n_layers_heads, z_name

    L, H = n_layers_heads(model)
    out = torch.zeros(L, H)
    for layer in range(L):
        W_O = model.blocks[layer].attn.W_O
        for h in range(H):
            stash = {}

            def grab(z, hook):
                stash["z"] = z
                return z

            def add(a, hook, h=h, W_O=W_O, src=src_out[layer]):
                return a + src[:, :, h] - stash["z"][:, :, h] @ W_O[h]
            logits = model.run_with_hooks(toks, fwd_hooks=[(z_name(layer), grab),
                                                           (f"blocks.{layer}.hook_attn_out", add)])
            out[layer, h] = float(metric(logits))
    return out


@torch.no_grad()
def bench_patching(reps: int = 3, n_prompts: int = 128) -> list[tuple[str, float, float]]:
    """Per-head output patching of a 4-layer, 4-head organism on ``n_prompts`` IOI prompts: seconds (best of
    ``reps``) and the largest disagreement with the batched result."""
    from lib.methods.patching import head_out_patch, head_outputs, head_patch, ld_metric, run_cache
    from lib.worlds import ioi
    from lib.worlds.base import world_tokenizer

    tok = world_tokenizer("ioi")
    spec = ModelSpec(n_layers=4, d_model=128, n_heads=4, d_mlp=512, n_ctx=64, d_vocab=len(tok))
    target, source = build_model(spec), build_model(ModelSpec(**{**spec.to_dict(), "seed": 1}))
    target.eval(), source.eval()
    ds = ioi.make_ioi_dataset(tok, n_prompts, 0)
    metric = ld_metric(ds)
    _, cache = run_cache(source, ds.toks, lambda n: n.endswith("hook_z"))
    src_out = {l: head_outputs(source, cache, l) for l in range(spec.n_layers)}

    def best(fn):
        ts, res = [], None
        for _ in range(reps):
            t = time.perf_counter()
            res = fn()
            ts.append(time.perf_counter() - t)
        return min(ts), res

    t_b, r_b = best(lambda: head_out_patch(target, ds.toks, src_out, metric))
    t_l, r_l = best(lambda: _loop_head_out_patch(target, ds.toks, src_out, metric))
    t_tl, _ = best(lambda: head_patch(target, ds.toks, cache, metric))
    err = float((r_b - r_l).abs().max())
    return [("batched head_out_patch (1 pass / layer)", t_b, err), ("loop: 1 pass / head (head output)", t_l, 0.0),
            ("TransformerLens per-head loop (hook_z)", t_tl, float("nan"))]


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
    ap.add_argument("--device", default="cpu", help='"cpu", "cuda" or "auto" (as the chapters\' DEVICE)')
    ap.add_argument("--book", action="store_true", help="also time a cold and a warm book build (~25 + 5 min)")
    a = ap.parse_args()
    device = use_device(a.device, "--device")
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, batch {a.batch}")
    peak = matmul_peak(device)
    print(f"\n1-2. training throughput; matmul peak (fp32 1024^3) measured at {peak:,.1f} GFLOP/s")
    print(f"{'model':<34}{'params':>10}{'tokens/s':>12}{'TL/plain':>10}{'GFLOP/s':>10}{'of peak':>9}")
    for spec in (ModelSpec(n_layers=4, d_model=128, n_heads=4, d_mlp=512, n_ctx=64, d_vocab=104),
                 ModelSpec(n_layers=2, d_model=64, n_heads=4, d_mlp=256, n_ctx=64, d_vocab=104)):
        torch.manual_seed(0)
        tl, plain = build_model(spec), PlainGPT(spec).to(device)
        r_tl = throughput(tl, spec, a.steps, a.batch, device)
        r_plain = throughput(plain, spec, a.steps, a.batch, device)
        tag = f"L{spec.n_layers} d{spec.d_model}"
        f = train_flops_per_token(spec) / 1e9
        for label, r in (("TransformerBridge (native) ", r_tl), ("plain PyTorch GPT ", r_plain)):
            n = count_params(tl if label.startswith("T") else plain)
            print(f"{label + tag:<34}{n:>10,}{r:>12,.0f}{r / r_plain if label.startswith('T') else 1.0:>10.2f}"
                  f"{r * f:>10.1f}{r * f / peak:>9.1%}")
    print(f"\n3. per-head output patching, 4 layers x 4 heads, 128 IOI prompts (best of 3)")
    print(f"{'method':<42}{'s':>8}{'speed-up':>10}{'max |diff|':>12}")
    rows = bench_patching()
    t_loop = rows[1][1]
    for label, t, err in rows:
        print(f"{label:<42}{t:>8.3f}{t_loop / t:>10.2f}{'' if err != err else f'{err:.1e}':>12}")
    timings = ROOT / "_build" / "timings.json"
    print("\n4. chapter build times")
    if timings.exists():
        t = json.loads(timings.read_text())
        ch = {k: v for k, v in t.items() if not k.startswith("_")}
        print(f"last `make book` per chapter (s): {json.dumps(ch)}; chapters sum {sum(ch.values()):.0f}s, wall "
              f"{t.get('_wall_s', sum(ch.values())):.0f}s with {t.get('_jobs', 1)} at a time "
              "(cold if the organism cache was empty)")
    else:
        print("no _build/timings.json yet: run `make book`, or pass --book")
    if a.book:
        print(f"{'book build':<34}{'wall time (s)':>14}")
        for label, s in bench_book():
            print(f"{label:<34}{s:>14.0f}")


if __name__ == "__main__":
    main()
