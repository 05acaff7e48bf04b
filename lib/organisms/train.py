"""The training loop shared by every organism: AdamW, linear warmup then cosine decay, masked next-token loss.

A *batch function* ``batch_fn(step, batch_size) -> (tokens [batch, pos] long, loss_mask [batch, pos] bool)``
supplies data; ``loss_mask[b, t]`` marks the tokens whose prediction is trained (the logits at ``t-1``
predict ``tokens[b, t]``), so the same loop does language-model pretraining (mask = non-padding) and
answer-only fine-tuning (mask = the answer token). Batch functions are deterministic in ``step`` and return CPU
tensors; each batch is moved to the model's device (``lib.organisms.device``).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import torch

from lib.worlds.base import BatchFn, EvalFn, masked_lm_loss


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``warmup_frac`` of ``steps`` ramps the lr up linearly, then cosine decay to
    ``lr * min_lr_frac``. ``eval_every``/``ckpt_every`` of 0 mean only at the end."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    eval_every: int = 0
    ckpt_every: int = 0
    log_every: int = 10
    stop_when: Optional[tuple[str, float]] = None

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"TrainConfig.steps must be an int >= 0, got {self.steps!r}")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"TrainConfig.batch_size must be a positive int, got {self.batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"TrainConfig.warmup_frac must be in [0, 1), got {self.warmup_frac!r}")
        if self.stop_when is not None:
            if (len(self.stop_when) != 2 or not isinstance(self.stop_when[0], str)
                    or not isinstance(self.stop_when[1], (int, float))):
                raise ValueError(f"TrainConfig.stop_when must be (eval metric, threshold), got {self.stop_when!r}")
            if not self.eval_every:
                raise ValueError("TrainConfig.stop_when needs eval_every > 0 (it is checked at evals)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        if self.stop_when is None:
            del d["stop_when"]  # absent unless set: the identities (cache keys) of every other recipe are unchanged
        else:
            d["stop_when"] = [self.stop_when[0], float(self.stop_when[1])]
        return d

    def lr_at(self, step: int) -> float:
        """Learning rate at ``step`` (0-based): linear warmup, then cosine to ``lr * min_lr_frac``."""
        warm = max(1, int(round(self.warmup_frac * self.steps)))
        if step < warm:
            return self.lr * (step + 1) / warm
        span = max(1, self.steps - warm)
        progress = min(1.0, (step - warm) / span)
        floor = self.lr * self.min_lr_frac
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _progress(total: int, desc: str, enabled: Optional[bool]):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    # disable=None: shown on a terminal, hidden where stderr is not a TTY (papermill kernels, CI logs).
    return tqdm(total=total, desc=desc, disable=(None if enabled is None else not enabled), file=sys.stderr,
                mininterval=2.0)


def train(model: torch.nn.Module, batch_fn: BatchFn, cfg: TrainConfig, *, eval_fn: Optional[EvalFn] = None,
          on_checkpoint: Optional[Callable[[int, torch.nn.Module], None]] = None, progress: Optional[bool] = None,
          desc: str = "train") -> dict[str, Any]:
    """Train ``model`` in place for ``cfg.steps`` steps and return its history.

    History: ``{"step": [...], "loss": [...], "lr": [...], "evals": [{"step": s, **eval_fn(model)}], "wall_time_s"}``,
    the loss logged every ``cfg.log_every`` steps as the mean since the last log. ``eval_fn`` runs (in eval
    mode, no grad) at step 0, every ``cfg.eval_every`` steps and at the end; ``on_checkpoint(step, model)``
    every ``cfg.ckpt_every`` steps and at the end.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device if params else torch.device("cpu")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    hist: dict[str, Any] = {"step": [], "loss": [], "lr": [], "evals": []}
    t0 = time.time()

    def run_eval(step: int) -> bool:
        """Evaluate; True when ``cfg.stop_when`` is met."""
        if eval_fn is None:
            return False
        model.eval()
        with torch.no_grad():
            hist["evals"].append({"step": step, **{k: float(v) for k, v in eval_fn(model).items()}})
        model.train()
        if cfg.stop_when is None:
            return False
        metric, threshold = cfg.stop_when
        if metric not in hist["evals"][-1]:
            raise KeyError(f"TrainConfig.stop_when names {metric!r}, not among the evals {sorted(hist['evals'][-1])}")
        return hist["evals"][-1][metric] >= threshold

    if cfg.stop_when is not None and eval_fn is None:
        raise ValueError("TrainConfig.stop_when needs an eval_fn")
    stopped = run_eval(0)
    stopped_at: Optional[int] = 0 if stopped else None
    model.train()
    bar = _progress(cfg.steps, desc, progress)
    running, n_running = 0.0, 0
    with torch.enable_grad():  # notebooks often disable grad globally for analysis
        for step in range(0 if stopped else cfg.steps):
            lr = cfg.lr_at(step)
            for g in opt.param_groups:
                g["lr"] = lr
            tokens, mask = batch_fn(step, cfg.batch_size)
            tokens, mask = tokens.to(device, non_blocking=True), mask.to(device, non_blocking=True)
            loss = masked_lm_loss(model(tokens), tokens, mask)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step} ({desc}); lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            running += loss.item()
            n_running += 1
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                hist["step"].append(done)
                hist["loss"].append(running / n_running)
                hist["lr"].append(lr)
                if bar is not None:
                    bar.set_postfix(loss=f"{running / n_running:.3f}")
                running, n_running = 0.0, 0
            if bar is not None:
                bar.update(1)
            if cfg.eval_every and done % cfg.eval_every == 0 and done != cfg.steps:
                if run_eval(done):
                    stopped_at = done
                    break
            if on_checkpoint is not None and cfg.ckpt_every and done % cfg.ckpt_every == 0 and done != cfg.steps:
                on_checkpoint(done, model)
    if bar is not None:
        bar.close()
    last = cfg.steps if stopped_at is None else stopped_at
    if cfg.steps and stopped_at is None and run_eval(cfg.steps):
        stopped_at = cfg.steps
    if cfg.stop_when is not None:
        hist["stopped_at"] = stopped_at
    if on_checkpoint is not None:
        on_checkpoint(last, model)
    model.eval()
    hist["wall_time_s"] = round(time.time() - t0, 2)
    return hist
