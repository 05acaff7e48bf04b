"""Where models and tensors live: the ``DEVICE`` parameter every chapter takes.

``DEVICE = "cpu"`` (the default: the book's budget is 2 CPU cores), ``"cuda"`` / ``"cuda:N"`` (a GPU; fails at
once with a clear message where none is visible), or ``"auto"`` (a GPU when torch sees one, else the CPU).
A chapter calls ``use_device(DEVICE)`` in its first cell; from then on ``lib.organisms.models.build_model`` builds on that
device, ``lib.organisms.recipes.get_organism`` loads cached weights onto it, and ``lib.organisms.train.train`` moves each batch to
the model's device. Data generators and tokenizers always produce CPU tensors: model forward passes (the
TransformerLens bridge) move their input ids to the model's device, and metrics move their index tensors to the
logits' device, so analysis code runs unchanged on either.

Organisms trained on a GPU are cached under a different key from CPU-trained ones (their weights differ by
floating-point reduction order), so a CPU build never silently reuses GPU weights or the reverse.
"""
from __future__ import annotations

import re

import torch

CHOICES = ("cpu", "cuda", "cuda:N", "auto")


class DeviceUnavailableError(RuntimeError):
    """The requested device does not exist on this machine."""


_CURRENT = torch.device("cpu")


def resolve_device(device: str = "cpu", name: str = "DEVICE") -> torch.device:
    """The ``torch.device`` that ``device`` names; raises ``ValueError`` (a bad value) or ``DeviceUnavailableError``
    (a GPU that is not there), each naming the parameter ``name``."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"{name} must be a string, one of {', '.join(CHOICES)}; got {type(device).__name__} "
                         f"{device!r}")
    d = device.strip().lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d == "cpu":
        return torch.device("cpu")
    if d == "cuda" or re.fullmatch(r"cuda:\d+", d):
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "torch.cuda.is_available() is False (no GPU visible, or its driver does not load)")
            raise DeviceUnavailableError(
                f"{name}={device!r} but this machine has no usable CUDA GPU: torch {torch.__version__}: {why}. "
                f"Use {name}=\"cpu\", or {name}=\"auto\" to take a GPU only where there is one.")
        if ":" in d and int(d.split(":")[1]) >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"{name}={device!r} but only {torch.cuda.device_count()} CUDA device(s) "
                                         f"are visible (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        return torch.device(d)
    raise ValueError(f"{name}={device!r} is not a device: choose one of {', '.join(CHOICES)}")


def use_device(device: str = "cpu", name: str = "DEVICE") -> torch.device:
    """Make ``device`` the one models are built, loaded and trained on (for this process); return it."""
    global _CURRENT
    _CURRENT = resolve_device(device, name)
    return _CURRENT


def current_device() -> torch.device:
    """The device set by the last ``use_device`` (the CPU if none)."""
    return _CURRENT


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    p = next(iter(model.parameters()), None)
    return torch.device("cpu") if p is None else p.device
