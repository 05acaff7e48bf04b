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


@pytest.fixture
def tiny_spec():
    """A 2-layer, 4-head, d_model 32 architecture for fast tests."""
    from lib.models import ModelSpec

    return ModelSpec(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_ctx=24, d_vocab=20)
