"""The artifact cache: same recipe hits, changed recipe misses, corruption is detected and retrained."""
import json
import os

import pytest
import torch

from lib.organisms.cache import ArtifactCache, CorruptArtifact, content_key
from lib.organisms.ioi_zoo import base_recipe
from lib.organisms.models import ModelSpec
from lib.organisms.recipes import Recipe, get_organism
from lib.organisms.train import TrainConfig


def tiny_recipe(**kw):
    base = dict(name="tiny", world="ioi", data="pretrain", data_kwargs={"ioi_frac": 0.2},
                train=TrainConfig(steps=4, batch_size=4, ckpt_every=2, log_every=2),
                model=ModelSpec(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_ctx=64), seed=0)
    base.update(kw)
    return Recipe(**base)


def test_content_key_is_order_independent_and_sensitive():
    assert content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})


def test_same_recipe_hits_changed_recipe_misses(tmp_cache):
    r = tiny_recipe()
    first = get_organism(r)
    assert first.trained_now
    again = get_organism(tiny_recipe(name="another label"))  # the label is not part of the identity
    assert not again.trained_now and again.key == first.key
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert get_organism(tiny_recipe(seed=1)).trained_now
    assert get_organism(tiny_recipe(data_kwargs={"ioi_frac": 0.3})).trained_now
    assert get_organism(tiny_recipe(train=TrainConfig(steps=5, batch_size=4))).trained_now


def test_finetune_key_depends_on_parent(tmp_cache):
    p1, p2 = tiny_recipe(), tiny_recipe(seed=1)
    ft = dict(name="ft", world="ioi", data="ioi", train=TrainConfig(steps=2, batch_size=4))
    c1, c2 = Recipe(parent=p1, **ft), Recipe(parent=p2, **ft)
    assert c1.key() != c2.key()
    org = get_organism(c1)
    assert org.trained_now and org.recipe.lineage() == ["tiny", "ft"]
    assert ArtifactCache().has(p1.key())  # the parent was trained and cached on the way


def test_intermediate_checkpoints(tmp_cache):
    r = tiny_recipe()
    final = get_organism(r)
    mid = get_organism(r, step=2)
    assert mid.step == 2 and not mid.trained_now
    assert any(not torch.equal(a, b) for a, b in zip(final.model.state_dict().values(),
                                                     mid.model.state_dict().values()))
    with pytest.raises(ValueError, match="step=3"):
        get_organism(r, step=3)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupted_checkpoint_is_detected_and_retrained(tmp_cache, damage):
    r = tiny_recipe()
    get_organism(r)
    cache = ArtifactCache()
    path = cache.path(r.key()) / "model.pt"
    blob = bytearray(path.read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0xFF
        path.write_bytes(bytes(blob))
    elif damage == "truncate":
        path.write_bytes(bytes(blob[: len(blob) // 3]))
    else:
        path.unlink()
    with pytest.raises(CorruptArtifact):
        cache.load_state(r.key())
    with pytest.warns(UserWarning, match="retraining"):
        again = get_organism(r)
    assert again.trained_now
    cache.load_state(r.key())  # intact again


def test_manifest_records_recipe_and_metrics(tmp_cache):
    r = tiny_recipe(evals=("ioi",))
    org = get_organism(r)
    man = json.loads((ArtifactCache().path(org.key) / "manifest.json").read_text())
    assert man["identity"]["seed"] == 0 and man["identity"]["model"]["d_model"] == 16
    assert man["checkpoints"] == [2, 4]
    assert [e["step"] for e in man["history"]["evals"]] == [0, 4]
    assert "ioi_logit_diff" in man["history"]["evals"][0]


def test_recipe_validation():
    with pytest.raises(ValueError, match="exactly one"):
        Recipe(name="x", world="ioi", data="pretrain", train=TrainConfig())
    with pytest.raises(ValueError, match="unknown world"):
        tiny_recipe(world="nope").key()


def test_base_recipe_is_stable():
    """Chapters share the base organism only if equal arguments give equal keys."""
    assert base_recipe().key() == base_recipe().key()
    assert base_recipe(seed=1).key() != base_recipe().key()


_TRAIN_AND_HASH = """
import hashlib, sys, tempfile
import torch
torch.set_num_threads(int(sys.argv[1]))
from lib.organisms import ioi_zoo
from lib.organisms.cache import ArtifactCache
from lib.organisms.recipes import _train_recipe
base = ioi_zoo.base_recipe(steps=12, n_layers=2, d_model=64, batch_size=16)
states, _ = _train_recipe(ioi_zoo.toxic_recipe(base, steps=6, batch_size=16, n_ckpts=1), ArtifactCache(tempfile.mkdtemp()),
                          False)
h = hashlib.sha256()
for k, v in sorted(states["model.pt"].items()):
    h.update(k.encode()); h.update(v.detach().contiguous().numpy().tobytes())
print(h.hexdigest())
"""


def test_training_is_bit_reproducible_across_processes_and_threads():
    """A cache key must name one set of weights, whoever trains it: a fresh process (its own hash seed) with one
    or two torch threads trains the same recipe chain to identical bytes."""
    import subprocess
    import sys

    from lib.organisms.seeding import REPO_ROOT

    def digest(threads: int, hashseed: str) -> str:
        env = {**os.environ, "PYTHONHASHSEED": hashseed, "OMP_NUM_THREADS": str(threads)}
        out = subprocess.run([sys.executable, "-c", _TRAIN_AND_HASH, str(threads)], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip().splitlines()[-1]

    assert digest(1, "1") == digest(2, "2")
