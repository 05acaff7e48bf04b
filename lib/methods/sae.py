"""A small top-k sparse autoencoder and SAE feature movement (chapter 5).

The SAE (Gao et al. 2024 style *TopK* SAE) is a pure-function model on a frozen parameter record:

    pre_BF     = ((acts_BD - b_dec) / scale) @ W_enc + b_enc          (dense encoder scores)
    latents_BF = ReLU(pre_BF) kept on its ``k`` largest entries per row, zero elsewhere
    recon_BD   = (latents_BF @ W_dec) * scale + b_dec

``scale`` normalises the inputs to unit mean-square per dimension, so one learning rate suits every hook.

**Feature movement** ("Automating LLM Auditing with Developmental Interpretability", MATS 2024): encode the
base and the fine-tuned model's activations at the same hook with the *same* SAE (trained on the base); per
token, ``I_t = |TopK(SAE(h_base)) ∩ TopK(SAE(h_ft))|``, top-k taken over the **feature** axis (the source's
k-ablation scripts take it over the sequence axis, a bug). The mean over a task-specific set (``I_S``) and over
a general set (``I_G``) are compared; fine-tuning should move the task's features more (``I_S < I_G``).
Rankings use the dense encoder scores ``pre_BF``, which agree with the top-k of ``latents_BF`` wherever those
are active and break ties among inactive latents deterministically, so any ``k`` (even ``k`` > the SAE's own
sparsity) is well defined.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np
import torch

from lib.methods.stats import Interval, bootstrap, ratio_of_sums
from lib.organisms.seeding import one_thread


@dataclass
class SAE:
    """Parameters of a TopK SAE: ``W_enc`` ``[d_in, d_sae]``, ``b_enc`` ``[d_sae]``, ``W_dec`` ``[d_sae, d_in]``
    (unit-norm rows), ``b_dec`` ``[d_in]``, input ``scale`` (scalar), sparsity ``k``; ``meta`` records where the
    training activations came from."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    scale: float
    k: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def parameters(self) -> list[torch.Tensor]:
        return [self.W_enc, self.b_enc, self.W_dec, self.b_dec]


def init_sae(d_in: int, d_sae: int, k: int, seed: int = 0, b_dec: Optional[torch.Tensor] = None,
             scale: float = 1.0) -> SAE:
    """A fresh SAE: random unit-norm decoder rows, encoder = decoder transposed, zero encoder bias."""
    if not 0 < k <= d_sae:
        raise ValueError(f"SAE sparsity k={k} must be in [1, d_sae={d_sae}]")
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    return SAE(W_enc=W_dec.T.clone().contiguous(), b_enc=torch.zeros(d_sae), W_dec=W_dec,
               b_dec=torch.zeros(d_in) if b_dec is None else b_dec.clone().float(), scale=float(scale), k=k)


def pre_acts(sae: SAE, acts_BD: torch.Tensor) -> torch.Tensor:
    """Dense encoder scores ``[..., d_sae]`` of activations ``[..., d_in]`` (before ReLU and top-k)."""
    return ((acts_BD.float() - sae.b_dec) / sae.scale) @ sae.W_enc + sae.b_enc


def keep_topk(x_BF: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` with all but the ``k`` largest entries of each row (last axis) set to zero."""
    vals, idx = x_BF.topk(k, dim=-1)
    return torch.zeros_like(x_BF).scatter(-1, idx, vals)


def encode(sae: SAE, acts_BD: torch.Tensor) -> torch.Tensor:
    """Sparse latents ``[..., d_sae]``: ReLU of the encoder scores, kept on the top ``sae.k`` per row."""
    return keep_topk(torch.relu(pre_acts(sae, acts_BD)), sae.k)


def decode(sae: SAE, latents_BF: torch.Tensor) -> torch.Tensor:
    """Reconstruction ``[..., d_in]`` of latents ``[..., d_sae]``."""
    return (latents_BF @ sae.W_dec) * sae.scale + sae.b_dec


def fvu(sae: SAE, acts_BD: torch.Tensor) -> float:
    """Fraction of variance unexplained: ``sum |x - decode(encode(x))|^2 / sum |x - mean(x)|^2`` over ``[N, d_in]``."""
    x = acts_BD.float()
    err = (x - decode(sae, encode(sae, x))).pow(2).sum()
    return float(err / (x - x.mean(0)).pow(2).sum())


def train_sae(acts_ND: torch.Tensor, d_sae: int, k: int, steps: int = 1500, batch_size: int = 512,
              lr: float = 1e-3, seed: int = 0, resample_every: int = 250) -> tuple[SAE, dict[str, list[float]]]:
    """Train a TopK SAE on activations ``[n_tokens, d_in]`` with MSE on normalised inputs; Adam, linear lr decay.

    Every ``resample_every`` steps latents that fired on no token since the last check are re-initialised
    towards the worst-reconstructed inputs (a simple dead-latent resampling). Returns the SAE and its history
    ``{"step", "mse", "dead_frac"}``; ``mse`` is the normalised reconstruction error (1.0 = predicting the mean).
    """
    with torch.enable_grad():
        return _train_sae(acts_ND.detach(), d_sae, k, steps, batch_size, lr, seed, resample_every)


def _train_sae(acts_ND, d_sae, k, steps, batch_size, lr, seed, resample_every):
    x_all = acts_ND.float()
    n, d_in = x_all.shape
    mean = x_all.mean(0)
    scale = float((x_all - mean).pow(2).sum(1).mean().div(d_in).sqrt())
    sae = init_sae(d_in, d_sae, k, seed=seed, b_dec=mean, scale=scale)
    params = sae.parameters()
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    fired = torch.zeros(d_sae, dtype=torch.bool)
    hist: dict[str, list[float]] = {"step": [], "mse": [], "dead_frac": []}
    for step in range(steps):
        for grp in opt.param_groups:
            grp["lr"] = lr * (1 - step / max(1, steps))
        idx = torch.randint(0, n, (min(batch_size, n),), generator=g)
        x = x_all[idx]
        z = encode(sae, x)
        recon = decode(sae, z)
        loss = ((recon - x) / scale).pow(2).sum(-1).mean() / d_in
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # keep decoder rows unit-norm: drop the gradient component along each row
            sae.W_dec.grad -= (sae.W_dec.grad * sae.W_dec).sum(1, keepdim=True) * sae.W_dec
        opt.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
            fired |= (z > 0).any(0)
            if resample_every and (step + 1) % resample_every == 0 and step + 1 < steps * 0.8:
                dead = (~fired).nonzero().squeeze(1)
                if len(dead):
                    err = (recon - x).pow(2).sum(1)
                    pick = torch.multinomial(err + 1e-12, len(dead), replacement=True, generator=g)
                    dirs = (x[pick] - sae.b_dec) / scale
                    dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-8)
                    sae.W_dec[dead] = dirs
                    sae.W_enc[:, dead] = dirs.T * 0.2
                    sae.b_enc[dead] = 0.0
                    for p in params:  # reset Adam moments of the resampled latents
                        st = opt.state.get(p, {})
                        for key in ("exp_avg", "exp_avg_sq"):
                            if key in st:
                                if p is sae.W_dec:
                                    st[key][dead] = 0
                                elif p is sae.W_enc:
                                    st[key][:, dead] = 0
                                elif p is sae.b_enc:
                                    st[key][dead] = 0
                hist["dead_frac"].append(float((~fired).float().mean()))
                fired.zero_()
        if step % 50 == 0 or step == steps - 1:
            hist["step"].append(step)
            hist["mse"].append(float(loss.detach()))
    for p in params:
        p.requires_grad_(False)
    sae.meta = {"n_tokens": n, "d_sae": d_sae, "k": k, "steps": steps, "lr": lr, "seed": seed}
    return sae, hist


# --------------------------------------------------------------------------- activations

def residual_acts(model, toks_BP: torch.Tensor, hook: str, batch_size: int = 128) -> torch.Tensor:
    """Activations ``[batch, pos, d_model]`` of ``model`` at hook ``hook`` (e.g. ``blocks.2.hook_resid_post``).

    A hook inside block ``L`` is read by a forward pass that stops after that block (``stop_at_layer``): the
    blocks above it and the unembedding do not run, and the values are the full pass's, bit for bit."""
    m = re.fullmatch(r"blocks\.(\d+)\..+", hook)
    stop = {"stop_at_layer": int(m.group(1)) + 1} if m and hasattr(model, "blocks") else {}
    out = []
    with torch.no_grad():
        for i in range(0, len(toks_BP), batch_size):
            _, cache = model.run_with_cache(toks_BP[i:i + batch_size], names_filter=lambda n: n == hook, **stop)
            out.append(cache[hook].float().cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------- top-k intersection

def topk_ids(scores_BF: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[..., k]`` of the ``k`` highest-scoring features of each row (top-k over the *feature* axis)."""
    return scores_BF.topk(k, dim=-1).indices


def topk_intersection(scores_a_BF: torch.Tensor, scores_b_BF: torch.Tensor, k: int) -> torch.Tensor:
    """``|TopK(a) ∩ TopK(b)|`` per row: ``[..., d_sae]`` x2 -> ``[...]`` long, each in ``0..k``."""
    if scores_a_BF.shape != scores_b_BF.shape:
        raise ValueError(f"shapes differ: {tuple(scores_a_BF.shape)} vs {tuple(scores_b_BF.shape)}")
    ma = torch.zeros_like(scores_a_BF, dtype=torch.bool).scatter(-1, topk_ids(scores_a_BF, k), True)
    mb = torch.zeros_like(scores_b_BF, dtype=torch.bool).scatter(-1, topk_ids(scores_b_BF, k), True)
    return (ma & mb).sum(-1)


@dataclass
class Intersections:
    """Per-token intersections ``per_token[k]`` ``[n_tokens]`` and the sequence each token came from
    (``seq`` ``[n_tokens]``), for one data set and several ``k``."""

    per_token: dict[int, np.ndarray]
    seq: np.ndarray

    def mean(self, k: int) -> float:
        return float(self.per_token[k].mean())

    def units(self, k: int) -> np.ndarray:
        """``[n_seq, 2]`` rows (sum of I_t, number of tokens): the resampling units of the bootstrap."""
        n_seq = int(self.seq.max()) + 1
        sums = np.bincount(self.seq, weights=self.per_token[k], minlength=n_seq)
        counts = np.bincount(self.seq, minlength=n_seq).astype(float)
        keep = counts > 0
        return np.stack([sums[keep], counts[keep]], axis=1)


def token_intersections(sae: SAE, base_model, ft_model, toks_BP: torch.Tensor, mask_BP: torch.Tensor, hook: str,
                        ks: Iterable[int] = (5,)) -> Intersections:
    """Top-k SAE-feature intersection between ``base_model`` and ``ft_model`` at every token where ``mask_BP``.

    toks and mask ``[batch, pos]``; both models are read at ``hook`` and encoded by the same ``sae``.
    """
    h_base = residual_acts(base_model, toks_BP, hook)
    h_ft = residual_acts(ft_model, toks_BP, hook)
    m = mask_BP.bool()
    s_base, s_ft = pre_acts(sae, h_base[m]), pre_acts(sae, h_ft[m])
    seq = torch.arange(len(toks_BP))[:, None].expand_as(m)[m].numpy()
    return Intersections({int(k): topk_intersection(s_base, s_ft, int(k)).numpy().astype(float) for k in ks}, seq)


def difference_rates(i_s: float, i_g: float, k: int) -> dict[str, float]:
    """Both readings of the source's "intersection difference rate":
    ``relative = (I_G - I_S) / I_G`` and ``nonoverlap = (I_G - I_S) / (k - I_G)`` (nan if ``I_G == k``)."""
    return {"relative": (i_g - i_s) / i_g if i_g else float("nan"),
            "nonoverlap": (i_g - i_s) / (k - i_g) if k != i_g else float("nan")}


def movement_summary(task: Intersections, general: Intersections, k: int, n_boot: int = 1000,
                     seed: int = 0) -> dict[str, Any]:
    """``I_S``, ``I_G``, both difference rates, and bootstrap intervals (sequences resampled) of ``I_G - I_S``
    and of each rate."""
    s, g = task.units(k), general.units(k)
    i_s, i_g = ratio_of_sums(s), ratio_of_sums(g)
    diff = bootstrap(lambda a, b: ratio_of_sums(b) - ratio_of_sums(a), s, g, n_boot=n_boot, seed=seed)
    rel = bootstrap(lambda a, b: difference_rates(ratio_of_sums(a), ratio_of_sums(b), k)["relative"], s, g,
                    n_boot=n_boot, seed=seed)
    non = bootstrap(lambda a, b: difference_rates(ratio_of_sums(a), ratio_of_sums(b), k)["nonoverlap"], s, g,
                    n_boot=n_boot, seed=seed)
    return {"k": k, "I_S": i_s, "I_G": i_g, "diff": diff, "relative": rel, "nonoverlap": non,
            "n_task_tokens": int(s[:, 1].sum()), "n_general_tokens": int(g[:, 1].sum())}


def paired_excess(task_S: Intersections, task_G: Intersections, ctl_S: Intersections, ctl_G: Intersections,
                  k: int, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0, rate: bool = False) -> Interval:
    """How much more a fine-tune moves the task set's features than its control does:
    ``(I_G - I_S)[fine-tune] - (I_G - I_S)[control]``, with a *paired* bootstrap interval. ``rate=True``: the same
    for the rate ``(I_G - I_S) / I_G`` (the movement relative to the general set's overlap, so a model whose
    general features also moved is not floored by its own ``I_G``).

    Both models are read on the same task and general sequences, so each resample draws one set of task
    sequences and one set of general sequences and uses them for both models (the sequence-level noise both
    share cancels). All four ``Intersections`` must come from the same token sets (same mask).
    """
    sS, sG, cS, cG = task_S.units(k), task_G.units(k), ctl_S.units(k), ctl_G.units(k)
    if sS.shape != cS.shape or sG.shape != cG.shape or not (np.array_equal(sS[:, 1], cS[:, 1])
                                                            and np.array_equal(sG[:, 1], cG[:, 1])):
        raise ValueError("paired_excess needs the fine-tune and the control read on the same tokens")

    def gap(S_, G_):
        g, s_ = ratio_of_sums(G_), ratio_of_sums(S_)
        return (g - s_) / g if rate else g - s_

    def stat(iS, iG):
        return gap(sS[iS], sG[iG]) - gap(cS[iS], cG[iG])
    # resampling the units' indices: one draw of task and one of general sequences serves both models
    return bootstrap(stat, np.arange(len(sS)), np.arange(len(sG)), n_boot=n_boot, alpha=alpha, seed=seed)


def dead_fraction(sae: "SAE", acts: torch.Tensor) -> float:
    """Share of latents never among the active top-k on ``acts`` ``[n_tokens, d_in]`` (held-out tokens)."""
    return float(((encode(sae, acts) != 0).sum(0) == 0).float().mean())


def summary_row(name: str, summ: dict[str, Any]) -> dict[str, Any]:
    """A flat table row of ``movement_summary`` output (intervals as point/lo/hi columns)."""
    row: dict[str, Any] = {"organism": name, "k": summ["k"], "I_S": summ["I_S"], "I_G": summ["I_G"]}
    for key in ("diff", "relative", "nonoverlap"):
        iv: Interval = summ[key]
        row[key], row[key + "_lo"], row[key + "_hi"] = iv.point, iv.lo, iv.hi
    return row


def base_sae(model, toks_BP: torch.Tensor, mask_BP: torch.Tensor, hook: str, expansion: int = 4, k: int = 16,
             steps: int = 1500, lr: float = 1e-3, seed: int = 0,
             max_tokens: Optional[int] = None) -> tuple[SAE, dict[str, list[float]]]:
    """Train an SAE of width ``expansion * d_model`` on ``model``'s activations at ``hook`` over the masked tokens."""
    acts = residual_acts(model, toks_BP, hook)[mask_BP.bool()]
    if max_tokens is not None and len(acts) > max_tokens:
        acts = acts[torch.randperm(len(acts), generator=torch.Generator().manual_seed(seed))[:max_tokens]]
    sae, hist = train_sae(acts, d_sae=expansion * acts.shape[1], k=k, steps=steps, lr=lr, seed=seed)
    sae.meta.update({"hook": hook})
    return sae, hist


def cached_base_sae(organism, toks_BP: torch.Tensor, mask_BP: torch.Tensor, hook: str, expansion: int = 4,
                    k: int = 16, steps: int = 1500, lr: float = 1e-3, seed: int = 0, cache=None
                    ) -> tuple[SAE, dict[str, list[float]], bool]:
    """``base_sae`` on an ``Organism``'s model, stored in the artifact cache under a key made of the organism's
    cache key, the training tokens and every SAE setting, so chapters asking for the same SAE share one.

    Returns ``(sae, history, trained_now)``.
    """
    from lib.organisms.cache import ArtifactCache, content_key

    cache = cache or ArtifactCache()
    ident = {"artifact": "topk_sae", "version": 1, "organism": organism.key, "hook": hook, "expansion": expansion,
             "k": k, "steps": steps, "lr": lr, "seed": seed,
             "data": content_key([toks_BP.tolist(), mask_BP.tolist()])}
    key = content_key(ident)

    def create():
        with one_thread():  # as for organisms: the cached SAE must not depend on the trainer's thread count
            sae, hist = base_sae(organism.model, toks_BP, mask_BP, hook, expansion=expansion, k=k, steps=steps,
                                 lr=lr, seed=seed)
        state = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec,
                 "scale": torch.tensor(sae.scale)}
        return {"sae.pt": state}, {"identity": ident, "history": hist, "meta": sae.meta}

    state, manifest, created = cache.get_or_create(key, create, file="sae.pt")
    sae = SAE(W_enc=state["W_enc"], b_enc=state["b_enc"], W_dec=state["W_dec"], b_dec=state["b_dec"],
              scale=float(state["scale"]), k=k, meta=manifest["meta"])
    return sae, manifest["history"], created
