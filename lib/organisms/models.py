"""Model factory: the book's small TransformerLens organisms, and pretrained models by name.

Organisms are TransformerLens 4 native models (``TransformerBridge.boot_native``): no hub call, canonical hook
names (``blocks.{L}.attn.hook_z`` ``[batch, pos, head, d_head]``, ``blocks.{L}.attn.hook_pattern``
``[batch, head, query, key]``, ``blocks.{L}.hook_resid_pre`` ``[batch, pos, d_model]``,
``blocks.{L}.mlp.hook_post`` ``[batch, pos, d_mlp]``). Pretrained models (``"gpt2"``) go through
``TransformerBridge.boot_transformers`` with compatibility mode on, which exposes the same hook names.
"""
from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lib.worlds.tokenizer import HFWordTokenizer

PRETRAINED = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")


class WeightsUnavailableError(RuntimeError):
    """Raised when a pretrained model's weights are neither cached locally nor downloadable."""


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of an organism. ``d_vocab`` and ``n_ctx`` come from the world it is trained in.

    Defaults give a 4-layer, 4-head, d_model=128 model (~0.9M parameters with a ~300-word vocabulary).
    """

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 64
    d_vocab: int = 512
    act_fn: str = "gelu"
    attn_only: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "d_mlp", "n_ctx", "d_vocab"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"ModelSpec.{name} must be a positive int, got {v!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"ModelSpec.d_model={self.d_model} is not divisible by n_heads={self.n_heads}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_model(spec: ModelSpec, device: str | torch.device | None = None):
    """A freshly initialised native TransformerLens model for ``spec`` (deterministic in ``spec.seed``), on
    ``device`` (default: ``lib.organisms.device.current_device()``, which a chapter's ``DEVICE`` parameter sets)."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    from lib.organisms.device import current_device, resolve_device

    device = current_device() if device is None else resolve_device(device, "device")

    cfg = TransformerBridgeConfig(
        n_layers=spec.n_layers, d_model=spec.d_model, d_head=spec.d_head, n_heads=spec.n_heads,
        d_mlp=spec.d_mlp, n_ctx=spec.n_ctx, d_vocab=spec.d_vocab, act_fn=spec.act_fn,
        attn_only=spec.attn_only, normalization_type="LN", seed=spec.seed,
    )
    return TransformerBridge.boot_native(cfg, device=str(device))


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_locally(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return False
    hit = try_to_load_from_cache(name, "config.json")
    return isinstance(hit, str) and os.path.exists(hit)


def load_pretrained(name: str, random_init: bool = False, n_layers: int | None = None, d_vocab: int | None = None):
    """Load a Hugging Face model (``"gpt2"``) as a ``TransformerBridge`` in compatibility mode.

    ``random_init=True`` builds the same architecture with random weights and no hub access (its config is
    written locally), optionally shrunk to ``n_layers`` and resized to ``d_vocab``; tests use it to exercise the
    pretrained code path offline. Otherwise the weights come from the local Hugging Face cache or the hub; if
    neither is available this raises ``WeightsUnavailableError`` at once instead of retrying for minutes.
    """
    from transformer_lens.model_bridge import TransformerBridge

    if name not in PRETRAINED:
        raise ValueError(f"MODEL={name!r} is not a known pretrained model; choose one of {PRETRAINED} "
                         "or an organism name (see `python -m lib organisms`)")
    if random_init:
        if not name.startswith("gpt2"):
            raise ValueError(f"random_init supports the GPT-2 family only, not {name!r}")
        from transformers import GPT2Config, GPT2LMHeadModel

        sizes = {"gpt2": (12, 768, 12), "gpt2-medium": (24, 1024, 16), "gpt2-large": (36, 1280, 20),
                 "gpt2-xl": (48, 1600, 25)}
        layers, d_model, heads = sizes[name]
        cfg = GPT2Config(n_layer=n_layers or layers, n_embd=d_model, n_head=heads,
                         vocab_size=d_vocab or 50257, n_positions=1024)
        torch.manual_seed(0)
        hf_model = GPT2LMHeadModel(cfg)
        with tempfile.TemporaryDirectory() as d:
            cfg.save_pretrained(d)
            bridge = TransformerBridge.boot_transformers(d, hf_model=hf_model, load_weights=False)
    else:
        if not _cached_locally(name) and not _hub_reachable():
            raise WeightsUnavailableError(
                f"pretrained weights for MODEL={name!r} are unavailable: they are not in the local Hugging Face "
                "cache and the hub cannot be reached from this machine. Download them on a connected machine "
                "(python -c \"from transformers import AutoModelForCausalLM as M; M.from_pretrained('gpt2')\") "
                "and copy ~/.cache/huggingface, or use an organism (the default).")
        if not _hub_reachable():
            os.environ["HF_HUB_OFFLINE"] = "1"
            try:
                import huggingface_hub.constants as hc
                hc.HF_HUB_OFFLINE = True
            except Exception:  # pragma: no cover
                pass
        bridge = TransformerBridge.boot_transformers(name)
    bridge.enable_compatibility_mode()
    from lib.organisms.device import current_device

    if current_device().type != "cpu":
        bridge = bridge.to(current_device())
    bridge.eval()
    return bridge


def pretrained_tokenizer(bridge, words=()) -> HFWordTokenizer:
    """The word-level adapter over a pretrained bridge's tokenizer."""
    return HFWordTokenizer(bridge.tokenizer, words)


@torch.no_grad()
def generate(model, tokens: torch.Tensor, n_new: int, temperature: float = 0.0,
             generator: torch.Generator | None = None, stop_id: int | None = None) -> torch.Tensor:
    """Extend ``tokens`` ``[batch, pos]`` by ``n_new`` tokens: greedy if ``temperature == 0`` else sampled.

    Returns ``[batch, pos + n_new]``; after ``stop_id`` a row keeps emitting ``stop_id``. The context is cut to
    the model's ``n_ctx``.
    """
    from lib.organisms.device import model_device

    out = tokens.to(model_device(model))
    done = torch.zeros(out.shape[0], dtype=torch.bool, device=out.device)
    n_ctx = model.cfg.n_ctx
    for _ in range(n_new):
        logits = model(out[:, -n_ctx:])[:, -1].float()
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            # sampled on the CPU from a CPU generator: the same draws on every device
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(out.device)
        else:
            nxt = logits.argmax(-1)
        if stop_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, stop_id), nxt)
            done |= nxt == stop_id
        out = torch.cat([out, nxt[:, None]], dim=1)
    return out
