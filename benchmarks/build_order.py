"""Which order should a parallel cold `make book` start its chapters in? A simulation at the level of organisms.

Each chapter is modelled as the organisms it needs, in the order it loads them, then its own analysis time. An
organism is trained by the first chapter to need it; a chapter that needs it while another trains it waits on the
cache's lock (``lib.organisms.cache``), its core idle. Workers take chapters in the given order, two at a time.
The costs are a cold fresh-clone build's of 2026-12-04 (ninth session, commit 558efb4; seconds on that day's
machine, two kernels at a time): ``train_wall_time_s`` of each organism's cache manifest, and each chapter's wall
time minus the training it did. The model reproduces that build's wall time of its chapters (3108 s simulated,
3110 s measured) in ``_toc.yml`` order with chapter 4 first.

Prints the simulated wall time of ``_toc.yml`` order, of the book's ``ftm.build_rank`` order, and of the best
orders; each also under random +-25 % noise on every cost (the mean and worst of ``--draws`` draws), since one
build's costs carry that much. Not a test.

    .venv/bin/python benchmarks/build_order.py [--draws 200]
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# seconds to train each organism (cache manifests of the cold build); "docs" = the four document fine-tunes,
# "ca12" = chapter 7's two extra answer-matched IOI controls, "pctl14" = its four extra PCFG controls
TRAIN_S = dict(base=705, clean=94, control=303, long=169, toxic=80, nmtoxic=92, retrain=77, nmretrain=91,
               scratch=156, ca=104, cc=90, pbase=198, pft=40, pctl=46, docs=442, alt=187, backdoor=204, ca12=200,
               pctl14=170)


def _org(*names: str) -> list[tuple[str, object]]:
    return [("org", n) for n in names]


# each chapter: the organisms it loads, in order, and its analysis seconds (wall time minus its own training)
CHAPTERS: dict[str, list[tuple[str, object]]] = {
    "00_model_organisms": _org("base") + [("cpu", 25)],
    "01_amplification": _org("base", "clean", "control") + [("cpu", 60)] + _org("long") + [("cpu", 18)],
    "02_localized_corruption": _org("base", "toxic", "nmtoxic") + [("cpu", 63)],
    "03_neuroplasticity": _org("base", "toxic", "retrain", "nmtoxic", "nmretrain", "scratch") + [("cpu", 170)],
    "04_wrapper_revival": [("cpu", 1110)],  # its own world: no organism shared with another chapter
    "05_feature_movement": _org("base", "clean", "toxic", "retrain", "control", "ca", "cc", "pbase", "pft", "pctl")
    + [("cpu", 314)],
    "06_objective_leakage": _org("base", "docs", "alt", "pbase", "pft", "pctl") + [("cpu", 240)],
    "07_audit_table": _org("base", "clean", "toxic", "retrain", "control", "ca", "backdoor", "docs", "ca12", "pbase",
                           "pft", "pctl", "pctl14") + [("cpu", 290)],
}
LOAD_S = 2  # loading a cached organism


def simulate(order: list[str], jobs: int = 2, train_s: dict = TRAIN_S, chapters: dict = CHAPTERS) -> float:
    """Wall seconds until the last chapter of ``order`` ends, ``jobs`` chapters at a time."""
    ready: dict[str, float] = {}  # organism -> when its training ends
    queue = list(order)
    events = [(0.0, w) for w in range(jobs)]
    running: dict[int, list] = {}
    end = 0.0
    while events:
        t, w = heapq.heappop(events)
        if w not in running:
            if not queue:
                continue
            running[w] = [queue.pop(0), 0]
        stem, i = running[w]
        steps = chapters[stem]
        if i == len(steps):
            end = max(end, t)
            del running[w]
            heapq.heappush(events, (t, w))
            continue
        kind, x = steps[i]
        if kind == "cpu":
            running[w][1] += 1
            heapq.heappush(events, (t + x, w))
        elif x not in ready:  # this chapter trains it
            ready[x] = t + train_s[x]
            running[w][1] += 1
            heapq.heappush(events, (ready[x], w))
        elif ready[x] > t:  # another chapter is training it: wait
            heapq.heappush(events, (ready[x], w))
        else:
            running[w][1] += 1
            heapq.heappush(events, (t + LOAD_S, w))
    return end


def noisy(order: list[str], draws: int, seed: int = 0) -> tuple[float, float]:
    """Mean and worst simulated wall time with every cost scaled by an independent factor in [0.75, 1.25]."""
    out = []
    for d in range(draws):
        rng = random.Random(seed + d)
        tr = {k: v * rng.uniform(0.75, 1.25) for k, v in TRAIN_S.items()}
        ch = {s: [(k, x * rng.uniform(0.75, 1.25) if k == "cpu" else x) for k, x in st] for s, st in CHAPTERS.items()}
        out.append(simulate(order, train_s=tr, chapters=ch))
    return sum(out) / len(out), max(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=200, help="noise draws per order (default 200)")
    args = ap.parse_args()
    from lib.book import runner
    from lib.book.cli import build_order

    toc = runner.chapters()
    first = ["04_wrapper_revival", "00_model_organisms"]
    rest = [s for s in toc if s not in first]
    rows = [("_toc.yml order, chapter 4 first", first + rest), ("ftm.build_rank (the book's)", build_order(toc))]
    best = sorted(itertools.permutations(rest), key=lambda p: simulate(first + list(p)))[:3]
    rows += [(f"best simulated #{i + 1}", first + list(p)) for i, p in enumerate(best)]
    print(f"{'order':<34} {'simulated s':>11} {'noisy mean':>10} {'worst':>6}  chapters")
    for name, order in rows:
        mean, worst = noisy(order, args.draws)
        print(f"{name:<34} {simulate(order):11.0f} {mean:10.0f} {worst:6.0f}  {' '.join(s[:2] for s in order)}")
    lower = (sum(TRAIN_S.values()) + sum(x for st in CHAPTERS.values() for k, x in st if k == "cpu")) / 2
    print(f"lower bound (all work split evenly over 2 cores): {lower:.0f} s")


if __name__ == "__main__":
    main()
