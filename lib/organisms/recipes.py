"""Model organisms: recipes and the cached ``get_organism``.

A **world** (``lib/worlds/``) owns a tokenizer, data sources (batch functions) and evaluations. A **recipe** says how an organism is made: a world, a data source with its
arguments, a training config, and either an architecture (trained from scratch) or a parent recipe
(fine-tuned from it). ``get_organism(recipe)`` returns the trained model, from the content-addressed cache if it
is there (keyed by the whole recipe chain, the world's version and its vocabulary, not by the recipe's label),
else training it (and its parents) first. Chapters share organisms by building equal recipes.
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch

from lib.organisms.cache import ArtifactCache, CorruptArtifact, content_key
from lib.organisms.models import ModelSpec, build_model, count_params
from lib.organisms.seeding import one_thread, set_seed
from lib.organisms.train import TrainConfig, train
from lib.worlds.base import EvalFn, get_world, world_tokenizer
from lib.worlds.tokenizer import WordTokenizer


@dataclass(frozen=True)
class Recipe:
    """How to make an organism. Exactly one of ``model`` (train from scratch) and ``parent`` (fine-tune) is set."""

    name: str
    world: str
    data: str
    train: TrainConfig
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    model: Optional[ModelSpec] = None
    parent: Optional["Recipe"] = None
    seed: int = 0
    evals: tuple[str, ...] = ()
    eval_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.model is None) == (self.parent is None):
            raise ValueError(f"recipe {self.name!r}: give exactly one of model= (from scratch) or parent= (fine-tune)")
        if self.parent is not None and self.parent.world != self.world:
            raise ValueError(f"recipe {self.name!r}: parent world {self.parent.world!r} != {self.world!r}")

    def derive(self, **changes: Any) -> "Recipe":
        return replace(self, **changes)

    def root_spec(self) -> ModelSpec:
        r = self
        while r.model is None:
            r = r.parent  # type: ignore[assignment]
        return r.model

    def identity(self) -> dict[str, Any]:
        """Everything that determines the trained weights (the label ``name`` excluded). Training on a GPU
        (``lib.organisms.device.use_device``) adds the device type, so GPU- and CPU-trained weights never share a key."""
        from lib.organisms.device import current_device

        world = get_world(self.world)
        tok = world_tokenizer(self.world)
        dev = current_device().type
        return {**({"device": dev} if dev != "cpu" else {}),
            "world": self.world, "world_version": world.version, "vocab": content_key(tok.vocab),
            "data": self.data, "data_kwargs": self.data_kwargs, "train": self.train.to_dict(),
            "model": None if self.model is None else self.model.to_dict(), "seed": self.seed,
            "parent": None if self.parent is None else self.parent.identity(),
        }

    def key(self) -> str:
        return content_key(self.identity())

    def lineage(self) -> list[str]:
        out, r = [], self
        while r is not None:
            out.append(r.name)
            r = r.parent
        return out[::-1]


@dataclass
class Organism:
    """A trained organism: the model (eval mode), its tokenizer, recipe, training history and cache key."""

    recipe: Recipe
    model: torch.nn.Module
    tokenizer: WordTokenizer
    history: dict[str, Any]
    key: str
    trained_now: bool
    step: Optional[int] = None

    @property
    def name(self) -> str:
        return self.recipe.name


def resolve_spec(recipe: Recipe) -> ModelSpec:
    """The root architecture with ``d_vocab`` and ``n_ctx`` filled from the world."""
    spec = recipe.root_spec()
    world = get_world(recipe.world)
    return replace(spec, d_vocab=len(world_tokenizer(recipe.world)), n_ctx=max(spec.n_ctx, world.n_ctx))


def _make_eval(recipe: Recipe, tok: WordTokenizer) -> Optional[EvalFn]:
    if not recipe.evals:
        return None
    world = get_world(recipe.world)
    fns = []
    for name in recipe.evals:
        if name not in world.evals:
            raise ValueError(f"recipe {recipe.name!r}: world {recipe.world!r} has no eval {name!r} "
                             f"(has {sorted(world.evals)})")
        fns.append(world.evals[name](tok, **recipe.eval_kwargs))

    def eval_fn(model: torch.nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for f in fns:
            out.update(f(model))
        return out

    return eval_fn


def _train_recipe(recipe: Recipe, cache: ArtifactCache, progress: Optional[bool]):
    world = get_world(recipe.world)
    tok = world_tokenizer(recipe.world)
    if recipe.data not in world.data:
        raise ValueError(f"recipe {recipe.name!r}: world {recipe.world!r} has no data source {recipe.data!r} "
                         f"(has {sorted(world.data)})")
    spec = resolve_spec(recipe)
    if recipe.parent is None:
        model = build_model(spec)
    else:
        model = get_organism(recipe.parent, cache=cache, progress=progress).model
    set_seed(recipe.seed)
    batch_fn = world.data[recipe.data](tok, seed=recipe.seed, n_ctx=spec.n_ctx, **recipe.data_kwargs)
    ckpts: dict[str, dict[str, torch.Tensor]] = {}

    def on_ckpt(step: int, m: torch.nn.Module) -> None:
        ckpts[f"ckpt_{step}.pt"] = copy.deepcopy(m.state_dict())

    started = time.time()
    with one_thread():  # the cached weights must not depend on who trained them
        hist = train(model, batch_fn, recipe.train, eval_fn=_make_eval(recipe, tok), on_checkpoint=on_ckpt,
                     progress=progress, desc=recipe.name)
    states = {"model.pt": model.state_dict(), **ckpts}
    meta = {"name": recipe.name, "lineage": recipe.lineage(), "identity": recipe.identity(),
            "history": hist, "n_params": count_params(model), "train_wall_time_s": round(time.time() - started, 2),
            "checkpoints": sorted(int(k[5:-3]) for k in ckpts)}
    return states, meta


_LOADED: dict[str, str] = {}  # cache key -> recipe name, of every organism this process has loaded


def loaded_organisms() -> dict[str, str]:
    """``{cache key: recipe name}`` of every organism ``get_organism`` returned in this process (a chapter's
    results record them: a seed record made from other organisms is stale)."""
    return dict(sorted(_LOADED.items()))


def get_organism(recipe: Recipe, step: Optional[int] = None, cache: Optional[ArtifactCache] = None,
                 progress: Optional[bool] = None) -> Organism:
    """The organism ``recipe`` makes, loaded from the cache or trained (with its parents) and cached.

    ``step`` loads an intermediate checkpoint (one of the manifest's ``checkpoints``, saved every
    ``recipe.train.ckpt_every`` steps) instead of the final weights.
    """
    cache = cache or ArtifactCache()
    key = recipe.key()
    create = lambda: _train_recipe(recipe, cache, progress)  # noqa: E731
    state, manifest, created = cache.get_or_create(key, create)
    if step is not None:
        file = f"ckpt_{step}.pt"
        if file not in manifest["files"]:
            raise ValueError(f"organism {recipe.name!r} has no checkpoint at step={step}; "
                             f"saved: {manifest.get('checkpoints')}")
        try:
            state = cache.load_state(key, file)
        except CorruptArtifact as e:
            warnings.warn(f"{e}; retraining it", stacklevel=2)
            cache.evict(key)
            state, manifest, created = cache.get_or_create(key, create, file=file)
    model = build_model(resolve_spec(recipe))
    model.load_state_dict(state)
    model.eval()
    _LOADED[key] = recipe.name
    return Organism(recipe=recipe, model=model, tokenizer=world_tokenizer(recipe.world),
                    history=manifest["history"], key=key, trained_now=created, step=step)


def ckpt_steps(recipe) -> list[int]:
    """The checkpoint steps a recipe saves (``get_organism(recipe, step=k)``), the final step included."""
    cfg = recipe.train
    if not cfg.ckpt_every:
        return [cfg.steps]
    steps = [s for s in range(cfg.ckpt_every, cfg.steps, cfg.ckpt_every)]
    return steps + [cfg.steps]

