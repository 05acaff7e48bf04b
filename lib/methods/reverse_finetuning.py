"""Reverse fine-tuning (Jain et al., ICLR 2024): how many iterations a model needs to recover a metric, read
from a training history's evals (reFT from the fine-tuned model against training from scratch)."""
from __future__ import annotations

from typing import Optional


def steps_to_reach(history: dict, metric: str, threshold: float) -> Optional[int]:
    """First eval step at which ``history["evals"][i][metric] >= threshold``; None if never reached."""
    for e in history["evals"]:
        if metric in e and e[metric] >= threshold:
            return int(e["step"])
    return None


def eval_series(history: dict, metric: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of an eval metric in a training history."""
    ev = [e for e in history["evals"] if metric in e]
    return [int(e["step"]) for e in ev], [float(e[metric]) for e in ev]
