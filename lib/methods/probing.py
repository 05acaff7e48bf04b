"""Linear probes on the residual stream (Jain et al., ICLR 2024): one probe per block boundary at one position
(the answer position), trained to decode a discrete target (e.g. ``count(a)``); if the target stays decodable
after fine-tuning, the information the capability needs is still computed. Residual streams come from the
TransformerLens hook names ``blocks.{L}.hook_resid_pre/post``. ``probe_count_by_block`` and ``probe_chance``
apply them to the PCFG world's counting prompts."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lib.worlds.pcfg import Examples, count_examples
from lib.worlds.tokenizer import WordTokenizer


def resid_names(n_layers: int) -> list[str]:
    """Hook names of the residual stream entering each block and leaving the last one: ``n_layers + 1`` names
    (B0 = embeddings, B{L} = after block L-1)."""
    return [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]


@torch.no_grad()
def residuals_at(model, tokens: torch.Tensor, positions: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Residual stream at ``positions`` ``[n]`` of each row of ``tokens`` ``[n, pos]``, for every block boundary:
    ``[n_layers + 1, n, d_model]``."""
    names = resid_names(model.cfg.n_layers)
    chunks = []
    for i in range(0, tokens.shape[0], batch_size):
        toks, pos = tokens[i: i + batch_size], positions[i: i + batch_size]
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n in names)
        rows = torch.arange(toks.shape[0])
        chunks.append(torch.stack([cache[n][rows, pos] for n in names]).cpu())
    return torch.cat(chunks, dim=1).float()


@dataclass
class Probe:
    """A linear probe ``logits = ((x - mean) / std) @ W.T + b``; ``W`` ``[n_classes, d]``."""

    linear: torch.nn.Linear
    mean: torch.Tensor
    std: torch.Tensor

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, d] -> [n, n_classes]``."""
        return self.linear((x - self.mean) / self.std)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            return (self.logits(x).argmax(-1) == y).float().mean().item()


def train_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int = 500, lr: float = 5e-2,
                weight_decay: float = 1e-4, seed: int = 0) -> Probe:
    """Full-batch AdamW fit of a linear probe on ``x`` ``[n, d]`` -> class ``y`` ``[n]`` (cross-entropy), with the
    paper's schedule (lr x0.1 at 50 %, 75 % and 87.5 % of ``steps``); features are standardised first."""
    g = torch.Generator().manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-5
    lin = torch.nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.01)
        lin.bias.zero_()
    probe = Probe(lin, mean, std)
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [steps // 2, 3 * steps // 4, 7 * steps // 8], gamma=0.1)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(probe.logits(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return probe


def probe_accuracy_by_block(model, train_tokens: torch.Tensor, train_pos: torch.Tensor, train_y: torch.Tensor,
                            test_tokens: torch.Tensor, test_pos: torch.Tensor, test_y: torch.Tensor,
                            n_classes: int, steps: int = 500, lr: float = 5e-2) -> list[float]:
    """Held-out accuracy of one linear probe per block boundary (``n_layers + 1`` values, B0 = embeddings)
    decoding ``y`` from the residual stream at ``pos``."""
    xtr = residuals_at(model, train_tokens, train_pos)
    xte = residuals_at(model, test_tokens, test_pos)
    return [train_probe(xtr[b], train_y, n_classes, steps, lr).accuracy(xte[b], test_y) for b in range(xtr.shape[0])]



def probe_count_by_block(model, tok: WordTokenizer, prompt_operand: str = "a", target: str = "a",
                         n_train: int = 1024, n_test: int = 512, max_len: int = 24, seed: int = 31,
                         steps: int = 500, last: str = "all") -> list[float]:
    """Held-out accuracy of a linear probe per block boundary (B0 = embeddings … B{n_layers}) decoding
    ``count(target)`` from the residual stream at the ``<art>`` position (the one that predicts the answer), on
    natural count prompts whose operand is ``prompt_operand``. Fresh data, disjoint seeds for train and test.
    ``last`` as in ``lib.worlds.pcfg.make_examples``: the count over the whole window or its last ``K`` tokens."""
    tr = count_examples(tok, n_train, seed, prompt_operand, 0.0, max_len, last=last)
    te = _probe_test_set(tok, n_test, prompt_operand, max_len, seed, last)
    return probe_accuracy_by_block(model, tr.tokens, tr.ans_pos - 1, tr.counts[target], te.tokens, te.ans_pos - 1,
                                   te.counts[target], n_classes=max_len + 1, steps=steps)


def _probe_test_set(tok: WordTokenizer, n_test: int, prompt_operand: str, max_len: int, seed: int,
                    last: str = "all") -> Examples:
    return count_examples(tok, n_test, seed + 1, prompt_operand, 0.0, max_len, last=last)


def probe_chance(tok: WordTokenizer, prompt_operand: str = "a", target: str = "a", n_test: int = 512,
                 max_len: int = 24, seed: int = 31, last: str = "all") -> float:
    """The accuracy ``probe_count_by_block`` (same arguments) would score by always answering the most frequent
    ``count(target)`` of its test set: the chance level of that probe."""
    counts = np.asarray(_probe_test_set(tok, n_test, prompt_operand, max_len, seed, last).counts[target])
    return float(np.bincount(counts).max() / len(counts))
