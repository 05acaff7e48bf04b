"""Where a cold `make book`'s time goes: each organism's training cost and the chapters that need it.

Reads an organism cache (each ``<key>/manifest.json``: the organism's identity, name and ``train_wall_time_s``) and
a build's results (``<results>/<chapter>/results.json``: ``provenance.organisms``, the organisms the chapter
loaded; ``<results>/../timings.json``: each chapter's wall time). An organism is needed by the chapters that
load it and by those that need one of its descendants (a fine-tune cannot be trained without its parent), so
the tables say what dropping or shrinking an organism would save, and which chapters (hence which seed records)
such a change touches. Training seconds are the cache's, i.e. the machine and load of the build that trained
them: read them next to ``make bench``'s tokens/s of that day.

Prints: every organism the build needed (most expensive first), then per chapter its wall time, the training of
the organisms it needs, and the part of that no other chapter needs; then the totals. Not a test.

    .venv/bin/python benchmarks/build_costs.py [--cache .cache/organisms] [--results _build/results]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.organisms.cache import ArtifactCache, content_key, default_root  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def read_cache(cache: Path) -> dict[str, dict[str, Any]]:
    """``key -> {"name", "train_s", "parent", "steps", "batch", "n_params"}`` for every manifest in ``cache``."""
    store, out = ArtifactCache(cache), {}
    for m in sorted(Path(cache).glob("*/manifest.json")):
        d = store.manifest(m.parent.name)  # None if unreadable: then the organism counts as missing
        if d is None or "identity" not in d:
            continue
        ident = d["identity"]
        parent = ident.get("parent")
        train = ident.get("train") or {}
        out[m.parent.name] = {"name": d.get("name", "?"), "train_s": float(d.get("train_wall_time_s") or 0.0),
                              "parent": content_key(parent) if parent else None, "steps": train.get("steps"),
                              "batch": train.get("batch_size"), "n_params": d.get("n_params")}
    return out


def read_build(results: Path) -> tuple[dict[str, set[str]], dict[str, float]]:
    """``(chapter -> organism keys it loaded, chapter -> wall seconds)`` of the build whose results are in
    ``results`` (wall times from ``timings.json`` beside it; missing ones are absent)."""
    loads = {}
    for r in sorted(Path(results).glob("*/results.json")):
        prov = json.loads(r.read_text()).get("provenance", {})
        loads[r.parent.name] = set(prov.get("organisms", {}))
    timings_file = Path(results).parent / "timings.json"
    walls = {}
    if timings_file.exists():
        walls = {k: float(v) for k, v in json.loads(timings_file.read_text()).items() if not k.startswith("_")}
    return loads, walls


def needed_by(orgs: dict[str, dict], loads: dict[str, set[str]]) -> dict[str, set[str]]:
    """``organism key -> chapters that need it``: the chapters that load it or any of its descendants (ancestors
    are followed through the cache's manifests; an ancestor missing from the cache ends the chain)."""
    need: dict[str, set[str]] = {}
    for chapter, keys in loads.items():
        for key in keys:
            k, seen = key, set()
            while k is not None and k not in seen:
                seen.add(k)
                need.setdefault(k, set()).add(chapter)
                k = orgs[k]["parent"] if k in orgs else None
    return need


def ledger(orgs: dict[str, dict], loads: dict[str, set[str]], walls: dict[str, float]) -> dict[str, Any]:
    """The tables' numbers: organism rows, chapter rows and totals (seconds)."""
    need = needed_by(orgs, loads)
    rows = sorted(({"key": k, **orgs.get(k, {"name": "(not in the cache)", "train_s": 0.0}),
                    "chapters": sorted(cs)} for k, cs in need.items()), key=lambda r: (-r["train_s"], r["name"]))
    chapters = {}
    for c in sorted(set(loads) | set(walls)):
        mine = [r for r in rows if c in r["chapters"]]
        chapters[c] = {"wall_s": walls.get(c), "needs_s": sum(r["train_s"] for r in mine),
                       "alone_s": sum(r["train_s"] for r in mine if r["chapters"] == [c]), "n_organisms": len(mine)}
    train = sum(r["train_s"] for r in rows)
    wall_sum = sum(v for v in walls.values())
    return {"organisms": rows, "chapters": chapters,
            "totals": {"train_s": train, "chapters_wall_sum_s": wall_sum, "rest_s": wall_sum - train,
                       "missing": sum(1 for r in rows if r["name"] == "(not in the cache)")}}


def _short(chapter: str) -> str:
    return chapter.split("_", 1)[0]


def print_ledger(led: dict[str, Any]) -> None:
    print("organisms the build needed (training seconds from the cache's manifests)")
    print(f"{'train s':>8}  {'organism':<44} {'key':<8} {'params':>9} {'steps x batch':>13}  needed by chapters")
    for r in led["organisms"]:
        sb = f"{r.get('steps')} x {r.get('batch')}" if r.get("steps") is not None else "-"
        params = f"{r['n_params']:,}" if r.get("n_params") else "-"
        print(f"{r['train_s']:8.1f}  {r['name'][:44]:<44} {r['key'][:8]:<8} {params:>9} {sb:>13}  "
              f"{', '.join(_short(c) for c in r['chapters'])}")
    print("\nchapters (wall: the build's, two at a time; training of the organisms it needs, and of those no other "
          "chapter needs)")
    print(f"{'chapter':<26} {'wall s':>8} {'organisms':>9} {'needs s':>8} {'alone s':>8}")
    for c, v in led["chapters"].items():
        wall = f"{v['wall_s']:.1f}" if v["wall_s"] is not None else "-"
        print(f"{c:<26} {wall:>8} {v['n_organisms']:>9} {v['needs_s']:8.1f} {v['alone_s']:8.1f}")
    t = led["totals"]
    print(f"\ntraining, every organism once: {t['train_s']:.0f} s; chapters' wall times summed: "
          f"{t['chapters_wall_sum_s']:.0f} s; the rest (analysis, loading, waits on another chapter's training): "
          f"{t['rest_s']:.0f} s; two cores' lower bound of the chapters: {t['chapters_wall_sum_s'] / 2:.0f} s")
    if t["missing"]:
        print(f"({t['missing']} organisms the build loaded are not in this cache: their cost is counted as 0)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=None, help="organism cache (default: $FTM_CACHE_DIR or "
                    ".cache/organisms)")
    ap.add_argument("--results", type=Path, default=ROOT / "_build" / "results", help="the build's results folder")
    a = ap.parse_args(argv)
    cache = a.cache if a.cache is not None else default_root()
    if not Path(cache).is_dir():
        ap.error(f"--cache {cache} is not a folder")
    if not Path(a.results).is_dir():
        ap.error(f"--results {a.results} is not a folder (run `make book` first)")
    led = ledger(read_cache(cache), *read_build(a.results))
    print_ledger(led)
    return led


if __name__ == "__main__":
    main()
