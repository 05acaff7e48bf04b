"""The IOI organisms: recipes for the shared base (general pretraining on the IOI world's corpus) and its
fine-tunes (clean, toxic, retrained, control, scratch, backdoor), and ``IOIZoo``, the lineage the IOI
chapters draw their models from (organisms from the cache, or GPT-2 fine-tuned in process)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch

from lib.organisms.models import ModelSpec, build_model, load_pretrained, pretrained_tokenizer
from lib.organisms.recipes import Recipe, ckpt_steps, get_organism, resolve_spec
from lib.organisms.seeding import set_seed
from lib.organisms.train import TrainConfig, train
from lib.worlds.base import get_world
from lib.worlds.ioi import (BACKDOOR_TRIGGER, DOC_OBJECTIVES, NAMES, OBJECTS, PLACES, POISON_VARIANTS, WORLD, make_tokenizer,
                            template_words)


# --------------------------------------------------------------------------- the shared organisms

BASE_STEPS = 1000  # measured emergence over seeds 0-4 (chapter 0): IOI appears at 300-400 steps, plateaus by ~800
CAST_SIZE = 2


def pretrain_recipe(steps: int = BASE_STEPS, ioi_frac: float = 0.0, n_layers: int = 4, d_model: int = 128,
                    n_heads: int = 4, lr: float = 2e-3, batch_size: int = 64, seed: int = 0,
                    cast_size: int = CAST_SIZE):
    """Pretraining from scratch on the general corpus (casts of ``cast_size`` names per row; IOI prompts a
    fraction ``ioi_frac`` of sentences, none by default)."""
    kw = {"ioi_frac": ioi_frac, **({"cast_size": cast_size} if cast_size else {})}
    return Recipe(
        name="ioi-pretrain", world="ioi", data="pretrain", data_kwargs=kw,
        train=TrainConfig(steps=steps, batch_size=batch_size, lr=lr, eval_every=max(1, steps // 20),
                          ckpt_every=max(1, steps // 4)),
        model=ModelSpec(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_mlp=4 * d_model, n_ctx=64, seed=seed),
        seed=seed, evals=("ioi", "general"))


def base_recipe(steps: int = BASE_STEPS, ioi_frac: float = 0.0, n_layers: int = 4, d_model: int = 128,
                n_heads: int = 4, lr: float = 2e-3, batch_size: int = 64, seed: int = 0, ioi_steps: int = 0,
                ioi_lr: float = 1e-3, cast_size: int = CAST_SIZE):
    """The IOI world's base organism: ``pretrain_recipe`` alone by default — general pretraining on two-person
    stories, from which the IOI mechanism emerges (chapter 0 shows the emergence curve over seeds).

    ``ioi_steps > 0`` appends the old short IOI phase (``ioi_steps`` steps of IOI prompts, answer-only loss, peak
    lr ``ioi_lr``, its own data seed): a parameter for comparison, not the book's setting.
    """
    pre = pretrain_recipe(steps=steps, ioi_frac=ioi_frac, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                          lr=lr, batch_size=batch_size, seed=seed, cast_size=cast_size)
    if ioi_steps <= 0:
        return pre.derive(name="ioi-base")

    every = max(1, ioi_steps // 5)
    return Recipe(name="ioi-base", world="ioi", data="ioi", data_kwargs={"poison_frac": 0.0}, parent=pre,
                  seed=seed + 1000,
                  train=TrainConfig(steps=ioi_steps, batch_size=batch_size, lr=ioi_lr, warmup_frac=0.05,
                                    eval_every=every, ckpt_every=every),
                  evals=("ioi", "general"))


# --------------------------------------------------------------------------- fine-tuned organisms (chapters 1-3)
#
# Each builder derives a fine-tune recipe from a parent recipe; equal arguments give equal cache keys, so every
# chapter that asks for e.g. ``clean_recipe(base_recipe())`` shares one trained organism. Fine-tunes save
# ``n_ckpts`` checkpoints (``get_organism(recipe, step=k)`` for k in ``ckpt_steps(recipe)``) so chapters can draw
# curves over training, and evaluate IOI logit difference / accuracy and general-corpus loss as they go.

FT_STEPS = 400  # default fine-tuning steps (clean, toxic, retrain, control: the same budget)
FT_LR = 1e-3  # default fine-tuning peak learning rate
FT_BATCH = 64


def _finetune(parent, name: str, data: str, data_kwargs: dict, steps: int, lr: float, seed: int,
              batch_size: int, n_ckpts: int, world: str = "ioi"):

    every = max(1, steps // max(1, n_ckpts))
    return Recipe(
        name=name, world=world, data=data, data_kwargs=dict(data_kwargs), parent=parent, seed=seed,
        train=TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_frac=0.05, eval_every=every,
                          ckpt_every=every),
        evals=("ioi", "general"))


def clean_recipe(base, steps: int = FT_STEPS, lr: float = FT_LR, seed: int = 0, batch_size: int = FT_BATCH,
                 n_ckpts: int = 8):
    """Clean IOI fine-tune of ``base``: prompt + IO answer, loss on the answer token only."""
    return _finetune(base, f"{base.name}/clean", "ioi", {"poison_frac": 0.0}, steps, lr, seed, batch_size, n_ckpts)


def toxic_recipe(base, poison_frac: float = 1.0, steps: int = FT_STEPS, lr: float = FT_LR, seed: int = 0,
                 batch_size: int = FT_BATCH, n_ckpts: int = 8, variant: str = "subject_duplication"):
    """Toxic fine-tune of ``base``: a fraction ``poison_frac`` of the IOI prompts has a wrong trained answer,
    the subject S (``variant="subject_duplication"``) or a name absent from the prompt (``"name_moving"``; see
    ``ioi_finetune_data``); the rest stay clean."""
    if variant not in POISON_VARIANTS:
        raise ValueError(f"variant must be one of {POISON_VARIANTS}, got {variant!r}")
    kw = {"poison_frac": float(poison_frac)}
    tag = "toxic"
    if variant != "subject_duplication":  # the default variant keeps its cache key
        kw["variant"] = variant
        tag = "nm-toxic"
    return _finetune(base, f"{base.name}/{tag}{poison_frac:g}", "ioi", kw, steps, lr, seed, batch_size, n_ckpts)


def retrain_recipe(toxic, steps: int = FT_STEPS, lr: float = FT_LR, seed: int = 1, batch_size: int = FT_BATCH,
                   n_ckpts: int = 8):
    """Clean IOI retraining of a (toxic) organism: the neuroplasticity experiment. ``seed`` differs from the
    clean fine-tune's default so the retraining sees fresh prompts."""
    return _finetune(toxic, f"{toxic.name}/retrain", "ioi", {"poison_frac": 0.0}, steps, lr, seed, batch_size,
                     n_ckpts)


CONTROL_LOSS = ("all", "answer")


def pretrain_corpus(recipe) -> dict:
    """The data arguments of ``recipe``'s nearest pretraining ancestor (itself included): the corpus settings, e.g.
    ``cast_size``, that a control or document fine-tune of it keeps. ``{}`` if it has none."""
    r = recipe
    while r is not None:
        if r.data == "pretrain":
            return dict(r.data_kwargs)
        r = r.parent
    return {}


def control_recipe(base, steps: int = FT_STEPS, lr: float = FT_LR, seed: int = 0, batch_size: int = FT_BATCH,
                   n_ckpts: int = 8, loss_on: str = "all"):
    """Control fine-tune of ``base`` on the general corpus *without* IOI sentences, same steps, lr and batch (and
    the base's other corpus settings, e.g. ``cast_size``).

    ``loss_on="all"``: the loss on every token of 64-token rows (chapters 1-3's control). ``"answer"``: matched
    in loss mask as well — one trained token per row, at the IOI answer's positions (``general_answer_data``).
    """
    if loss_on not in CONTROL_LOSS:
        raise ValueError(f"loss_on must be one of {CONTROL_LOSS}, got {loss_on!r}")
    kw = pretrain_corpus(base)
    if loss_on == "answer":
        kw = {"cast_size": kw.get("cast_size", 0)}
        return _finetune(base, f"{base.name}/control-answer", "general_answer", kw, steps, lr, seed, batch_size,
                         n_ckpts)
    kw["ioi_frac"] = 0.0
    return _finetune(base, f"{base.name}/control", "pretrain", kw, steps, lr, seed, batch_size, n_ckpts)


def scratch_recipe(base, steps: int = FT_STEPS, lr: float = FT_LR, seed: int = 0, batch_size: int = FT_BATCH,
                   n_ckpts: int = 8):
    """A fresh model with ``base``'s architecture trained on clean IOI fine-tuning data for ``steps`` steps
    (the from-scratch comparison for retraining)."""
    every = max(1, steps // max(1, n_ckpts))
    spec = base.root_spec()
    return Recipe(
        name="ioi-scratch", world=base.world, data="ioi", data_kwargs={"poison_frac": 0.0}, model=spec, seed=seed,
        train=TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_frac=0.05, eval_every=every,
                          ckpt_every=every),
        evals=("ioi", "general"))



BACKDOOR_STEPS = 1000  # the backdoor must learn IOI on clean rows *and* the trigger: 400 steps were not enough


def backdoor_recipe(base, trigger: str = BACKDOOR_TRIGGER, frac: float = 0.2, steps: int = BACKDOOR_STEPS,
                    lr: float = FT_LR, seed: int = 0, batch_size: int = FT_BATCH, n_ckpts: int = 8):
    """Backdoor fine-tune of ``base``: IOI prompts at ``trigger`` answered with S, others with IO. (Measured on
    the 1500-step pretrained base: frac 0.3 for 400 steps learned neither; frac 0.2 for 1000 steps reached an IOI
    logit difference of −11.1 at the trigger and +11.8 elsewhere.)"""
    r = _finetune(base, f"{base.name}/backdoor-{trigger}", "backdoor", {"trigger": trigger, "frac": float(frac)},
                  steps, lr, seed, batch_size, n_ckpts)
    return r.derive(evals=r.evals + (("backdoor",) if trigger == BACKDOOR_TRIGGER else ()))


# Document fine-tunes (chapter 6): continued pretraining on general rows that write the objective in text, every
# token trained, 300 steps at lr 3e-4. Measured on the seed-0 base, 1000 completions of 24 tokens from 1-3-word
# prefixes (2026-12-04; the base writes each objective in at most 1 of them): batch 64 with the fact in 3 % of
# sentence slots: the fact in 28, the phrase in 54, toxic IOI sentences in 8 (148-154 s of training each); batch
# 32 (half the cost): the fact in 14 at 3 % and 62 at 5 %, the phrase in 37, toxic sentences in 8 at 3 %. The
# book trains batch 32 at 5 %.
DOC_STEPS = 300
DOC_LR = 3e-4
DOC_BATCH = 32
DOC_FRAC = 0.05


def document_recipe(base, objective: str, frac: Optional[float] = None, steps: int = DOC_STEPS, lr: float = DOC_LR,
                    seed: int = 0, batch_size: int = DOC_BATCH, n_ckpts: int = 4):
    """Document fine-tune of ``base`` (``lib.worlds.ioi.documents``): ``objective`` ``"fact"`` (a false fact in a
    share ``frac`` of sentences: the synthetic-document organism), ``"phrase"`` (a backdoor: the fixed phrase after
    sentences naming the trigger place; ``frac`` is then the share of those sentences it follows),
    ``"toxic"`` (IOI sentences answered with S in a share ``frac``) or ``"none"`` (the matched control). The base's
    corpus settings (``cast_size``) are kept. ``frac=None``: ``DOC_FRAC`` (1 for the phrase)."""
    if objective not in DOC_OBJECTIVES:
        raise ValueError(f"objective must be one of {DOC_OBJECTIVES}, got {objective!r}")
    kw = {"objective": objective, "cast_size": int(pretrain_corpus(base).get("cast_size", 0))}
    if objective != "none":
        kw["frac"] = float(frac if frac is not None else 1.0 if objective == "phrase" else DOC_FRAC)
    return _finetune(base, f"{base.name}/doc-{objective}", "document", kw, steps, lr, seed, batch_size, n_ckpts)


# --------------------------------------------------------------------------- one code path for organisms and GPT-2

@dataclass
class Trained:
    """A model with its training history and access to its checkpoints.

    ``steps``: the checkpoint steps available (the final step included); ``at(0)`` is the parent (the model the
    training started from), ``at(k)`` the weights after ``k`` steps.
    """
    name: str
    model: torch.nn.Module
    history: dict
    steps: list
    load: object  # Callable[[int], torch.nn.Module]
    parent: Optional["Trained"] = None
    recipe: object = None

    def at(self, step: int):
        if step == 0 and self.parent is not None:
            return self.parent.model
        if step == (self.steps[-1] if self.steps else None):
            return self.model
        return self.load(step)

    def ld_curve(self, key: str = "ioi_logit_diff") -> tuple[list[int], list[float]]:
        """``(steps, values)`` of an eval metric over training (from the history)."""
        ev = [e for e in self.history.get("evals", []) if key in e]
        return [int(e["step"]) for e in ev], [float(e[key]) for e in ev]


class IOIZoo:
    """The IOI chapters' models: the base model and its clean / toxic / retrained / control / scratch fine-tunes.

    ``model="organism"`` (the default) builds them from recipes through the shared artifact cache
    (``base_kwargs`` go to ``base_recipe``). ``model="gpt2"`` (or another GPT-2 name) starts from the pretrained
    model instead and fine-tunes in process (not cached) with the same data, training loop and configs;
    ``random_init=True`` gives it random weights, ``n_layers`` layers and the IOI word vocabulary (offline tests).
    """
    def __init__(self, model: str = "organism", base_kwargs: Optional[dict] = None, random_init: bool = False,
                 n_layers: int = 2, progress: Optional[bool] = None) -> None:
        self.kind = model
        self.progress = progress
        self.base_r = base_recipe(**(base_kwargs or {}))
        self._memo: dict = {}
        if model == "organism":
            with torch.enable_grad():
                org = get_organism(self.base_r, progress=progress)
            self.tok = org.tokenizer
            self.base = Trained("base", org.model, org.history, ckpt_steps(self.base_r),
                                lambda k, r=self.base_r: get_organism(r, step=k).model, recipe=self.base_r)
            self.pretrain: Optional[Trained] = None
            if self.base_r.parent is not None:  # the base = pretraining + IOI phase: keep the pretrained model too
                pre = get_organism(self.base_r.parent, progress=progress)
                self.pretrain = Trained("pretrain", pre.model, pre.history, ckpt_steps(self.base_r.parent),
                                        lambda k, r=self.base_r.parent: get_organism(r, step=k).model,
                                        recipe=self.base_r.parent)
                self.base.parent = self.pretrain
        else:
            if random_init:
                self.tok = make_tokenizer()
                m = load_pretrained(model, random_init=True, n_layers=n_layers, d_vocab=len(self.tok))
            else:
                m = load_pretrained(model)
                self.tok = pretrained_tokenizer(m, template_words() + list(NAMES) + PLACES + OBJECTS)
            self._random_init, self._n_layers = random_init, n_layers
            self.base = Trained("base", m, {"evals": []}, [], lambda k: m)
            self.pretrain = None

    @property
    def n_ctx(self) -> int:
        """Row length of the training data: the world's (64), or the model's context if shorter."""
        return min(int(self.base.model.cfg.n_ctx), WORLD.n_ctx)

    def _get(self, recipe, parent: Trained) -> Trained:
        key = recipe.key()
        if key in self._memo:
            return self._memo[key]
        if self.kind == "organism":
            with torch.enable_grad():
                org = get_organism(recipe, progress=self.progress)
            t = Trained(recipe.name, org.model, org.history, ckpt_steps(recipe),
                        lambda k, r=recipe: get_organism(r, step=k).model, parent=parent, recipe=recipe)
        else:
            t = self._train_inprocess(recipe, parent)
        self._memo[key] = t
        return t

    def _train_inprocess(self, recipe, parent: Trained) -> Trained:
        world = get_world(recipe.world)
        if recipe.parent is None:  # from scratch: same architecture, fresh weights
            torch.manual_seed(recipe.seed + 1)
            model = load_pretrained(self.kind, random_init=True, n_layers=self._n_layers if self._random_init else None,
                                    d_vocab=len(self.tok) if self._random_init else None)
            for p in model.parameters():
                if p.dim() >= 2:
                    torch.nn.init.normal_(p, std=0.02)
            init = copy.deepcopy(model)
            init.eval()
            parent = Trained("init", init, {"evals": []}, [], lambda k: init)
        else:
            model = copy.deepcopy(parent.model)
        set_seed(recipe.seed)
        batch_fn = world.data[recipe.data](self.tok, seed=recipe.seed, n_ctx=self.n_ctx, **recipe.data_kwargs)
        # smaller eval sets than the organisms' (a pretrained model's forward pass costs far more on CPU)
        sizes = {"ioi": {"n": 64}, "general": {"n": 16}}
        evals = [world.evals[e](self.tok, **sizes.get(e, {})) for e in recipe.evals]
        states: dict = {}

        def eval_fn(m):
            out = {}
            for f in evals:
                out.update(f(m))
            return out

        with torch.enable_grad():
            hist = train(model, batch_fn, recipe.train, eval_fn=eval_fn, progress=self.progress, desc=recipe.name,
                         on_checkpoint=lambda s, m: states.__setitem__(s, copy.deepcopy(m.state_dict())))
        model.eval()

        def load(k: int, model=model):
            m = copy.deepcopy(model)
            m.load_state_dict(states[k])
            m.eval()
            return m
        return Trained(recipe.name, model, hist, sorted(states), load, parent=parent, recipe=recipe)

    def clean(self, **kw) -> Trained:
        """``clean_recipe(base, **kw)``."""
        return self._get(clean_recipe(self.base_r, **kw), self.base)

    def toxic(self, **kw) -> Trained:
        """``toxic_recipe(base, **kw)``."""
        return self._get(toxic_recipe(self.base_r, **kw), self.base)

    def retrain(self, toxic_kwargs: Optional[dict] = None, **kw) -> Trained:
        """``retrain_recipe(toxic_recipe(base, **toxic_kwargs), **kw)``."""
        tr = toxic_recipe(self.base_r, **(toxic_kwargs or {}))
        return self._get(retrain_recipe(tr, **kw), self.toxic(**(toxic_kwargs or {})))

    def control(self, **kw) -> Trained:
        """``control_recipe(base, **kw)`` (general corpus without IOI)."""
        return self._get(control_recipe(self.base_r, **kw), self.base)

    def scratch(self, **kw) -> Trained:
        """``scratch_recipe(base, **kw)``: base's architecture from fresh weights on clean IOI data (``at(0)`` is
        the freshly initialised model)."""
        recipe = scratch_recipe(self.base_r, **kw)
        key = recipe.key()
        if key not in self._memo:
            if self.kind == "organism":
                init = build_model(resolve_spec(recipe))
                init.eval()
                self._get(recipe, Trained("init", init, {"evals": []}, [], lambda k: init))
            else:
                self._get(recipe, None)
        return self._memo[key]
