"""Deterministic seeding and run provenance."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

PACKAGES = ("torch", "transformer-lens", "transformers", "numpy", "scipy", "matplotlib", "papermill", "jupytext",
            "jupyter-book")
REPO_ROOT = Path(__file__).resolve().parents[2]  # lib/organisms/seeding.py -> the repository


def set_seed(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a fresh ``torch.Generator`` seeded with ``seed`` for data sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch thread (then restore the count). Everything that fills the artifact cache
    trains inside it: a CPU matmul's reduction order depends on the thread count, so weights trained with two
    threads differ in their last bits from weights trained with one, and a cache key must name one set of weights
    whoever trains it (a book worker, a sweep worker, a single ``python -m lib run``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def git_commit() -> str | None:
    """The repository's HEAD commit (with ``+dirty`` if the tree has uncommitted changes), or None outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def _cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def provenance(params: dict[str, Any], started: float | None = None) -> dict[str, Any]:
    """Provenance block recorded in every ``results.json``: parameters, seed, commit, versions, wall time."""
    return {
        "parameters": params,
        "seed": params.get("SEED"),
        "git_commit": git_commit(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        # the vector instructions torch's CPU kernels dispatch to: a CPU with other ones (AVX-512, or none) sums in
        # another order, so trained weights and borderline verdicts differ between machines (measured: the same
        # recipe trained with ATEN_CPU_CAPABILITY=avx2 and =default gives different bytes)
        "cpu": {"capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
                "processor": _cpu_model()},
        "wall_time_s": None if started is None else round(time.time() - started, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def write_results(out_dir: str | os.PathLike, results: dict[str, Any], params: dict[str, Any],
                  started: float | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``results.json`` (headline numbers + provenance, with ``extra`` provenance fields) into ``out_dir``
    and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = dict(_jsonable(results))
    payload["provenance"] = _jsonable({**provenance(params, started), **(extra or {})})
    path = out / "results.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))
    return path
