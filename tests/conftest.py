"""Shared fixtures. Seeds are set once here; every test that trains gets a private artifact cache."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


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


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory) -> Path:
    """One artifact cache shared by all notebook smoke runs of a session (chapters share organisms)."""
    root = tmp_path_factory.mktemp("smoke_cache")
    return root


@pytest.fixture(scope="session")
def smoke_run(smoke_cache, tmp_path_factory):
    """``smoke_run(stem) -> (results, out_dir)``: chapter ``stem`` executed once per session with its
    ``ftm.smoke`` parameters; every test file shares these runs and one organism cache."""
    from lib.book import runner

    os.environ["FTM_CACHE_DIR"] = str(smoke_cache)
    done: dict = {}

    def get(stem: str):
        if stem not in done:
            out = tmp_path_factory.mktemp(stem)
            done[stem] = (runner.run_notebook(stem, runner.notebook_meta(stem)["smoke"], out), out)
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
