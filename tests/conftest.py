"""Shared fixtures. Seeds are set once here; every test that trains gets a private artifact cache."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

# Under pytest-xdist (`make test`: one worker per core) each worker, and every notebook kernel it starts (they
# inherit OMP_NUM_THREADS), gets one thread, so that workers do not oversubscribe the cores. The workers share the
# chapters' smoke runs (``smoke_run`` below).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): many tiny ops run
    faster without thread hand-offs, and the machine's two cores may be shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """A private, empty artifact cache (``FTM_CACHE_DIR``) for this test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("FTM_CACHE_DIR", str(root))
    return root


def _session_dir(tmp_path_factory) -> Path:
    """A folder of this test session that every pytest-xdist worker sees (each worker's own temporary folder lies
    in the session's); without xdist, the session's temporary folder."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _make_once(dest: Path, make, wait: bool = True) -> bool:
    """``make(dest)`` unless it has been made (or has failed) in this session: under a file lock beside ``dest``,
    so that one pytest-xdist worker makes it and the others reuse it. ``wait=False``: return False at once if
    another worker holds the lock. A failure is recorded in ``<dest>.failed`` (``_check_made`` raises it)."""
    import fcntl

    with open(f"{dest}.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            if not _made(dest):
                try:
                    make(dest)
                except BaseException as e:
                    Path(f"{dest}.failed").write_text(f"{type(e).__name__}: {e}")
                    if not isinstance(e, Exception) or wait:
                        raise
                else:
                    Path(f"{dest}.done").write_text("")
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return True


def _made(dest: Path) -> bool:
    return Path(f"{dest}.done").exists() or Path(f"{dest}.failed").exists()


def _check_made(dest: Path) -> Path:
    failed = Path(f"{dest}.failed")
    if failed.exists():
        raise RuntimeError(f"making {dest.name} failed in this test session: {failed.read_text()}")
    return dest


@pytest.fixture(scope="session")
def build_once(tmp_path_factory):
    """``build_once(name, make) -> path``: ``make(path)`` fills the folder ``path`` once per test session, whichever
    pytest-xdist worker asks first; later callers, in any worker, wait for it and get the same folder. If ``make``
    raised, every caller gets its error."""
    def once(name: str, make) -> Path:
        dest = _session_dir(tmp_path_factory) / name

        def fill(d: Path) -> None:
            d.mkdir(parents=True, exist_ok=True)
            make(d)
        _make_once(dest, fill)
        return _check_made(dest)
    return once


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory) -> Path:
    """One artifact cache shared by all notebook smoke runs of a session, in every worker (chapters share
    organisms; the cache's per-organism locks keep two workers from training the same one)."""
    root = _session_dir(tmp_path_factory) / "smoke_cache"
    root.mkdir(exist_ok=True)
    return root


def _smoke_stems(session) -> list[str]:
    """The chapters whose smoke runs the selected tests need, in ``_toc.yml`` order: a test's ``stem`` parameter,
    else its module's ``SMOKE_STEMS`` (default: every chapter)."""
    from lib.book import runner

    chapters, wanted = runner.chapters(), set()
    for item in session.items:
        if "smoke_run" not in getattr(item, "fixturenames", ()):
            continue
        stem = getattr(getattr(item, "callspec", None), "params", {}).get("stem")
        wanted.update([stem] if stem in chapters else getattr(item.module, "SMOKE_STEMS", chapters))
    return [s for s in chapters if s in wanted]


@pytest.fixture(scope="session")
def smoke_run(smoke_cache, tmp_path_factory, request):
    """``smoke_run(stem) -> (results, out_dir)``: chapter ``stem`` executed once per session with its
    ``ftm.smoke`` parameters; every test file, and every pytest-xdist worker, shares these runs and one organism
    cache. A chapter is run by the first worker to need it (a file lock per chapter); a worker that needs a
    chapter another is running meanwhile runs another chapter the session needs, so that the workers split the
    runs instead of waiting on each other. A run that failed fails every test that needs it, with its error."""
    import json
    import time

    from lib.book import runner

    os.environ["FTM_CACHE_DIR"] = str(smoke_cache)
    shared = _session_dir(tmp_path_factory) / "smoke_runs"
    shared.mkdir(exist_ok=True)
    done: dict = {}
    wanted: list[str] = []

    def try_run(stem: str) -> bool:
        """Run ``stem`` unless another worker is running it (False) or it has finished (True)."""
        return _make_once(shared / stem, lambda d: runner.run_notebook(stem, runner.notebook_meta(stem)["smoke"], d),
                          wait=False)

    def get(stem: str):
        if stem not in done:
            if not wanted:
                wanted.extend(_smoke_stems(request.session))
            while not _made(shared / stem):
                if try_run(stem):
                    break
                # another worker is running it: run a chapter the session needs that nobody has started
                if not any(try_run(s) for s in wanted if s != stem and not _made(shared / s)):
                    time.sleep(0.5)
            out = _check_made(shared / stem)
            done[stem] = (json.loads((out / "results.json").read_text()), out)
        return done[stem]
    return get


@pytest.fixture(scope="session")
def default_results(tmp_path_factory):
    """``default_results(stem) -> results`` at the chapter's default parameters (the book's numbers).

    Reuses ``_build/results/<stem>/results.json`` from the last ``make book`` when it was produced by the current
    commit with default parameters; otherwise executes the chapter (minutes; organisms from the default cache).
    """
    import json

    from lib.book import runner
    from lib.organisms.seeding import REPO_ROOT, git_commit

    def get(stem: str):
        path = REPO_ROOT / "_build" / "results" / stem / "results.json"
        if path.exists():
            res = json.loads(path.read_text())
            prov = res.get("provenance", {})
            defaults = runner.default_parameters(stem)
            used = {k: v for k, v in prov.get("parameters", {}).items() if k != "OUTPUT_DIR"}
            if used == defaults and prov.get("git_commit") == git_commit():
                return res
        return runner.run_notebook(stem, {}, tmp_path_factory.mktemp(f"default-{stem}"))
    return get


@pytest.fixture
def tiny_spec():
    """A 2-layer, 4-head, d_model 32 architecture for fast tests."""
    from lib.organisms.models import ModelSpec

    return ModelSpec(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_ctx=24, d_vocab=20)
