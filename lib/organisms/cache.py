"""Content-addressed artifact cache.

An artifact (a trained organism) lives in ``<root>/<key>/`` where ``key`` is a hash of everything that
determines it (the full recipe, seed, parent recipe, world version). The folder holds the final weights
``model.pt``, intermediate checkpoints ``ckpt_<step>.pt``, and ``manifest.json`` with the recipe, the training
metrics and the SHA-256 of every weight file. Loading re-hashes the file; a mismatch or an unreadable file
counts as a miss, so a corrupted checkpoint is retrained, never loaded. Writes go to a temporary folder that is
renamed into place, and a per-key lock keeps parallel processes (seed sweeps) from training the same artifact twice.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from lib.organisms.seeding import REPO_ROOT


def default_root() -> Path:
    """``$FTM_CACHE_DIR`` if set, else ``<repo>/.cache/organisms``."""
    return Path(os.environ.get("FTM_CACHE_DIR", REPO_ROOT / ".cache" / "organisms"))


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_key(obj: Any, length: int = 20) -> str:
    """Hex SHA-256 (first ``length`` chars) of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CorruptArtifact(RuntimeError):
    pass


class ArtifactCache:
    """Store and fetch state dicts + metadata under content keys."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def path(self, key: str) -> Path:
        return self.root / key

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive inter-process lock for ``key`` (held while checking and training)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{key}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def manifest(self, key: str) -> dict[str, Any] | None:
        """The artifact's manifest, or None if absent or unreadable."""
        try:
            return json.loads((self.path(key) / "manifest.json").read_text())
        except (OSError, ValueError):
            return None

    def has(self, key: str) -> bool:
        return self.manifest(key) is not None

    def load_state(self, key: str, file: str = "model.pt") -> dict[str, torch.Tensor]:
        """The state dict in ``file``; raises ``CorruptArtifact`` if it is missing, altered or unreadable."""
        man = self.manifest(key)
        if man is None:
            raise CorruptArtifact(f"artifact {key} has no readable manifest")
        p = self.path(key) / file
        want = man.get("files", {}).get(file)
        if want is None or not p.exists():
            raise CorruptArtifact(f"artifact {key} has no file {file}")
        if _sha256_file(p) != want:
            raise CorruptArtifact(f"artifact {key}: {file} does not match its recorded SHA-256 (corrupted)")
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types on truncated/garbled files
            raise CorruptArtifact(f"artifact {key}: {file} cannot be read ({e})") from e

    def save(self, key: str, states: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]) -> Path:
        """Write ``states`` (file name -> state dict) and a manifest atomically under ``key``."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        files = {}
        for name, sd in states.items():
            buf = io.BytesIO()
            torch.save({k: v.detach().cpu().clone() for k, v in sd.items()}, buf)
            (tmp / name).write_bytes(buf.getvalue())
            files[name] = hashlib.sha256(buf.getvalue()).hexdigest()
        (tmp / "manifest.json").write_text(json.dumps({**meta, "key": key, "files": files}, indent=2, default=str))
        dest = self.path(key)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        return dest

    def evict(self, key: str) -> None:
        shutil.rmtree(self.path(key), ignore_errors=True)

    def get_or_create(self, key: str, create, file: str = "model.pt"):
        """``(state, manifest, created)``: the cached state if intact, else ``create() -> (states, meta)`` saved first."""
        with self.lock(key):
            if self.has(key):
                try:
                    return self.load_state(key, file), self.manifest(key), False
                except CorruptArtifact as e:
                    warnings.warn(f"{e}; retraining it", stacklevel=2)
                    self.evict(key)
            states, meta = create()
            self.save(key, states, meta)
            return self.load_state(key, file), self.manifest(key), True
