"""Seeds and comparisons: run a chapter over several seeds in parallel processes and summarise its headline
numbers as mean ± 95% confidence interval (Student t over seeds); put two runs' results side by side.

Seeds run in a local process pool (the default) or, one task per seed, on a Dask cluster (``scheduler=``: a
``LocalCluster`` or a running scheduler's address, e.g. a SLURM or Kubernetes deployment for GPT-2-scale sweeps).
Each seed is an ordinary ``lib.book.runner.run_notebook`` run into ``runs/<stem>/<hash of its parameters>/`` (the
same folder ``python -m lib run`` would use for those parameters, so a sweep reuses nothing and loses nothing);
the summary goes to ``runs/<stem>/sweep-<hash>/summary.json``.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from lib.book import runner
from lib.organisms.seeding import REPO_ROOT

def t_critical(df: int) -> float:
    """``t_{0.975, df}``: the multiplier of the standard error for a two-sided 95% interval."""
    from lib.methods.stats import t_quantile_975

    if df < 1:
        raise ValueError("a t interval needs at least 2 values (df >= 1)")
    return t_quantile_975(df)


@dataclass
class Stat:
    """Mean over seeds of one headline number with its 95% t interval ``mean ± half_width``."""

    key: str
    values: list[float]
    mean: float
    std: Optional[float]
    half_width: Optional[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def lo(self) -> Optional[float]:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def hi(self) -> Optional[float]:
        return None if self.half_width is None else self.mean + self.half_width

    def __str__(self) -> str:
        if self.half_width is None:
            return f"{self.mean:.4g} (n={self.n})"
        return f"{self.mean:.4g} ± {self.half_width:.2g} (n={self.n})"


def mean_ci(values: Sequence[float], key: str = "") -> Stat:
    """Mean, sample std and 95% t half-width ``t_{0.975, n-1} * std / sqrt(n)`` of ``values`` (None if n < 2)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError(f"{key or 'value'}: no finite values")
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return Stat(key, xs, mean, None, None)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return Stat(key, xs, mean, std, t_critical(n - 1) * std / math.sqrt(n))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, Stat]:
    """``{key: Stat}`` for every top-level key that is a finite number in at least one run (``provenance`` and
    non-numeric values skipped; a run where the key is missing or not finite does not count towards its n)."""
    keys: list[str] = []
    for r in results:
        keys += [k for k, v in r.items() if k != "provenance" and _is_number(v) and k not in keys]
    return {k: mean_ci([r[k] for r in results if _is_number(r.get(k))], k) for k in keys}


def holds_on(values: Sequence[Any], predicate: Callable[[Any], bool]) -> tuple[int, int]:
    """``(k, n)``: on how many of ``n`` seeds ``predicate`` holds, for prose like "holds on 4 of 5 seeds"."""
    vals = list(values)
    return sum(bool(predicate(v)) for v in vals), len(vals)


def parse_seeds(spec: str | int | Sequence[int]) -> list[int]:
    """Seeds from ``"0..4"`` (inclusive), ``"0,2,7"``, ``"3"``, mixes like ``"0..2,9"``, or a list."""
    if isinstance(spec, int):
        return [spec]
    if not isinstance(spec, str):
        return [int(s) for s in spec]
    seeds: list[int] = []
    for part in spec.replace(" ", "").split(","):
        m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise ValueError(f"empty seed range {part!r}")
            seeds += list(range(a, b + 1))
        elif re.fullmatch(r"-?\d+", part):
            seeds.append(int(part))
        else:
            raise ValueError(f"cannot read seeds {spec!r}: use 0..4, 0,1,2 or a mix")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat in {spec!r}")
    return seeds


def _set_threads(n: int) -> None:
    """A worker's thread share: the environment its notebook kernels inherit, and its own torch (which may have
    been imported already while the worker unpickled its task, after which the variables alone do not count)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)


def _run_seed(stem: str, params: dict[str, Any], out: str, run_fn: Optional[Callable] = None,
              threads: Optional[int] = None) -> dict[str, Any]:
    """One seed in a worker process (module-level, so it pickles). ``threads``: set the worker's thread share
    first (Dask workers have no initializer of ours)."""
    if threads is not None:
        _set_threads(threads)
    fn = run_fn or runner.run_notebook
    return fn(stem, params, out)


Task = tuple  # (stem, params, out_dir, run_fn): the arguments of one ``_run_seed``
Done = tuple  # (seed, results or None, exception or None), in the order runs finish


def _pool_runs(tasks: dict[int, Task], workers: int, threads: int, start_method: str) -> Iterator[Done]:
    """The seeds' runs in a local process pool of ``workers`` processes."""
    ctx = multiprocessing.get_context(start_method)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_set_threads,
                             initargs=(threads,)) as pool:
        futs = {pool.submit(_run_seed, *task): s for s, task in tasks.items()}
        for fut in as_completed(futs):
            err = fut.exception()
            yield futs[fut], (None if err else fut.result()), err


SCHEDULER_HELP = ("'local' (a Dask LocalCluster on this machine, one single-threaded worker process per --workers) "
                  "or a Dask scheduler's address, tcp://HOST:PORT (a cluster whose workers see this repository at "
                  "the same path, e.g. on a shared file system)")


def check_scheduler(scheduler: Optional[str]) -> Optional[str]:
    """``None`` (the local process pool), ``"local"`` or a ``tcp://`` / ``tls://`` / ``inproc://`` address."""
    if scheduler is None or scheduler == "local" or re.fullmatch(r"(tcp|tls|inproc|ucx)://\S+", scheduler):
        return scheduler
    raise ValueError(f"--scheduler {scheduler!r}: give {SCHEDULER_HELP}")


def _dask_runs(tasks: dict[int, Task], scheduler: str, workers: int, threads: int) -> Iterator[Done]:
    """The seeds' runs as Dask tasks, one chapter run per task: on a ``LocalCluster`` of ``workers`` processes
    (``scheduler="local"``) or on the cluster whose scheduler listens at ``scheduler``. A local cluster gives each
    worker ``cpu_count // workers`` threads, like the pool; on a remote cluster each worker keeps its own
    machine's thread settings (``threads=None``)."""
    from distributed import Client, LocalCluster, as_completed as dask_completed

    cluster = None
    if scheduler == "local":
        # no memory limit: a chapter's kernel is a child process, and Dask must not pause, kill or rerun a worker
        # the local pool would have let finish
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, memory_limit=0)
        client = Client(cluster)
    else:
        client, threads = Client(scheduler), None
    try:
        # a key per run folder (chapter + hash of the parameters and seed): two sweeps on one scheduler never share
        futs = {client.submit(_run_seed, *task, threads, key=f"{task[0]}-{Path(task[2]).name}-seed-{s}",
                              retries=0): s for s, task in tasks.items()}
        for fut in dask_completed(list(futs)):
            err = fut.exception()
            yield futs[fut], (None if err else fut.result()), err
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@dataclass
class SweepResult:
    stem: str
    seeds: list[int]
    params: dict[str, Any]
    runs: dict[int, str]
    stats: dict[str, Stat]
    failed: dict[int, str] = field(default_factory=dict)
    wall_time_s: float = 0.0
    summary_path: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return {"chapter": self.stem, "seeds": self.seeds, "params": self.params,
                "runs": {str(k): v for k, v in self.runs.items()}, "failed": {str(k): v for k, v in self.failed.items()},
                "wall_time_s": round(self.wall_time_s, 1),
                "stats": {k: {**asdict(s), "n": s.n, "lo": s.lo, "hi": s.hi, "ci": 0.95}
                          for k, s in self.stats.items()}}


def sweep(chapter: str, seeds: str | Sequence[int], params: Optional[dict[str, Any]] = None,
          workers: Optional[int] = None, run_fn: Optional[Callable] = None, out_root: Optional[Path] = None,
          progress: Callable[[str], None] = print, start_method: str = "spawn",
          scheduler: Optional[str] = None) -> SweepResult:
    """Run ``chapter`` once per seed (``params`` + ``SEED``) in up to ``workers`` processes; summarise.

    ``scheduler=None`` runs the seeds in a local process pool; ``"local"`` on a Dask ``LocalCluster`` of
    ``workers`` processes; ``"tcp://HOST:PORT"`` on a running Dask cluster (whose workers then decide how many
    seeds run at once: ``workers`` is ignored). Each seed is one task; the results and records are the same
    whichever runs them.

    Parameters and every seed are validated before any process starts. Each worker gets ``cpu_count // workers`` torch
    threads. A seed whose run fails is reported in ``failed`` and left out of the statistics. ``run_fn`` (a
    picklable ``(stem, params, out_dir) -> results``) replaces ``run_notebook``, for tests. Workers are started
    with ``start_method`` ("spawn": fresh interpreters, safe after torch has started threads).
    """
    stem = runner.resolve(chapter)
    seed_list = parse_seeds(seeds)
    scheduler = check_scheduler(scheduler)
    base = runner.validate_params(stem, {k: v for k, v in (params or {}).items() if k != "SEED"})
    for s in seed_list:  # each seed against SEED's declared range (and the rest again with it), before any run
        runner.validate_params(stem, {**base, "SEED": s})
    base.pop("OUTPUT_DIR", None)
    workers = max(1, min(workers or (os.cpu_count() or 1), len(seed_list)))
    root = Path(out_root) if out_root is not None else REPO_ROOT / "runs" / stem
    outs = {s: root / runner.params_hash({**base, "SEED": s}) for s in seed_list}
    t0 = time.time()
    results: dict[int, dict[str, Any]] = {}
    failed: dict[int, str] = {}
    threads = max(1, (os.cpu_count() or 1) // workers)
    tasks = {s: (stem, {**base, "SEED": s}, str(outs[s]), run_fn) for s in seed_list}
    runs = (_pool_runs(tasks, workers, threads, start_method) if scheduler is None
            else _dask_runs(tasks, scheduler, workers, threads))
    for s, result, err in runs:
        if err is None:
            results[s] = result
            progress(f"[sweep] {stem} seed {s}: done ({time.time() - t0:.0f}s) -> {outs[s]}")
        else:  # reported, not fatal: the other seeds still count
            failed[s] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
            progress(f"[sweep] {stem} seed {s}: FAILED {failed[s]}")
    ok = [s for s in seed_list if s in results]
    res = SweepResult(stem, seed_list, base, {s: str(outs[s]) for s in ok},
                      summarize([results[s] for s in ok]) if ok else {}, failed, time.time() - t0)
    summary_dir = root / f"sweep-{runner.params_hash({**base, 'SEEDS': seed_list})}"
    summary_dir.mkdir(parents=True, exist_ok=True)
    path = summary_dir / "summary.json"
    path.write_text(json.dumps(res.to_dict(), indent=2, default=str))
    res.summary_path = str(path)
    return res


def format_stats(stats: dict[str, Stat]) -> str:
    """A plain-text table: key, mean ± 95% CI half-width, [lo, hi], n."""
    if not stats:
        return "(no numeric results)"
    w = max(len(k) for k in stats)
    lines = [f"{'result':<{w}}  {'mean ± 95% CI':>24}  {'interval':>26}  n"]
    for k, s in stats.items():
        pm = f"{s.mean:.4g} ± {s.half_width:.2g}" if s.half_width is not None else f"{s.mean:.4g}"
        iv = f"[{s.lo:.4g}, {s.hi:.4g}]" if s.half_width is not None else ""
        lines.append(f"{k:<{w}}  {pm:>24}  {iv:>26}  {s.n}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- compare two runs


def load_results(run: str | os.PathLike) -> dict[str, Any]:
    """``results.json`` of a run folder (or the file itself)."""
    p = Path(run)
    if p.is_dir():
        p = p / "results.json"
    if not p.exists():
        raise FileNotFoundError(f"no results.json at {p}")
    return json.loads(p.read_text())


@dataclass
class Row:
    key: str
    a: Any
    b: Any

    @property
    def diff(self) -> Optional[float]:
        return self.b - self.a if _is_number(self.a) and _is_number(self.b) else None


def compare(run_a: str | os.PathLike, run_b: str | os.PathLike) -> dict[str, list[Row]]:
    """Two runs side by side: ``{"parameters": rows that differ, "results": every top-level result}``.

    Results rows cover the union of keys (missing -> None); ``Row.diff`` is ``b - a`` for numbers.
    """
    ra, rb = load_results(run_a), load_results(run_b)
    pa = ra.get("provenance", {}).get("parameters", {})
    pb = rb.get("provenance", {}).get("parameters", {})
    params = [Row(k, pa.get(k), pb.get(k)) for k in sorted(set(pa) | set(pb))
              if k != "OUTPUT_DIR" and pa.get(k) != pb.get(k)]
    keys = [k for k in ra if k != "provenance"] + [k for k in rb if k != "provenance" and k not in ra]
    return {"parameters": params, "results": [Row(k, ra.get(k), rb.get(k)) for k in keys]}


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        s = json.dumps(v)
        return s if len(s) <= 28 else s[:25] + "..."
    return str(v)


def format_compare(table: dict[str, list[Row]], names: tuple[str, str] = ("A", "B")) -> str:
    """Plain-text rendering of ``compare``: differing parameters, then results with ``B - A``."""
    out = []
    rows = table["parameters"]
    out.append("parameters that differ:" if rows else "parameters: identical")
    for r in rows:
        out.append(f"  {r.key}: {_fmt(r.a)} -> {_fmt(r.b)}")
    res = table["results"]
    w = max([len(r.key) for r in res] + [6])
    out.append(f"{'result':<{w}}  {names[0]:>14}  {names[1]:>14}  {'B - A':>12}")
    for r in res:
        d = r.diff
        out.append(f"{r.key:<{w}}  {_fmt(r.a):>14}  {_fmt(r.b):>14}  {'' if d is None else f'{d:+.4g}':>12}")
    return "\n".join(out)
