"""Command line: ``python -m lib {list,run,build,compare,organisms} ...`` (see ``python -m lib -h``)."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lib import runner
from lib.seeding import REPO_ROOT


def _cmd_list(args) -> int:
    for stem in runner.chapters():
        meta = runner.notebook_meta(stem)
        print(f"{stem}")
        for p in runner.notebook_parameters(stem).values():
            print(f"    {p.name:<16} {p.type_name:<6} default {p.default!r:<28} {p.meaning}")
        if meta.get("smoke"):
            print(f"    (smoke test parameters: {meta['smoke']})")
    return 0


def _parse_kv(pairs) -> dict:
    return {k: v for k, v in (pairs or [])}


def _cmd_run(args) -> int:
    stem = runner.resolve(args.chapter)
    params = _parse_kv(args.param)
    out = Path(args.out) if args.out else None
    t = time.time()
    results = runner.run_notebook(stem, params, out, progress=not args.quiet, log_output=args.log)
    out = out or REPO_ROOT / "runs" / stem / runner.params_hash(runner.validate_params(stem, params))
    print(f"{stem}: done in {time.time() - t:.0f}s -> {out}")
    headline = {k: v for k, v in results.items() if k != "provenance" and not isinstance(v, (dict, list))}
    print(json.dumps(headline, indent=2))
    return 0


def build_book(chapters: list[str] | None = None, html: bool = True) -> int:
    """Execute every ``_toc.yml`` chapter with default parameters into book/chapters/, then build the HTML."""
    stems = chapters or runner.chapters()
    dest = REPO_ROOT / "book" / "chapters"
    dest.mkdir(parents=True, exist_ok=True)
    timings = {}
    for stem in stems:
        t = time.time()
        print(f"[book] executing {stem} ...", flush=True)
        out = REPO_ROOT / "_build" / "results" / stem
        runner.run_notebook(stem, {}, out)
        shutil.copy(out / f"{stem}.ipynb", dest / f"{stem}.ipynb")
        timings[stem] = round(time.time() - t, 1)
        print(f"[book] {stem}: {timings[stem]}s", flush=True)
    (REPO_ROOT / "_build").mkdir(exist_ok=True)
    (REPO_ROOT / "_build" / "timings.json").write_text(json.dumps(timings, indent=2))
    if not html:
        return 0
    cmd = [sys.executable, "-m", "jupyter_book", "build", str(REPO_ROOT), "--builder", "html", "-W", "-n",
           "--keep-going"]
    print("[book]", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=REPO_ROOT)


def _cmd_build(args) -> int:
    return build_book([runner.resolve(c) for c in args.chapters] or None, html=not args.no_html)


def _cmd_organisms(args) -> int:
    from lib.cache import ArtifactCache

    cache = ArtifactCache()
    if not cache.root.exists():
        print(f"no cache at {cache.root}")
        return 0
    for d in sorted(p for p in cache.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        man = cache.manifest(d.name) or {}
        print(f"{d.name}  {' -> '.join(man.get('lineage', ['?']))}  "
              f"{man.get('n_params', '?')} params  trained in {man.get('train_wall_time_s', '?')}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="chapters and their parameters with defaults").set_defaults(fn=_cmd_list)
    r = sub.add_parser("run", help="execute one chapter with parameters")
    r.add_argument("chapter", help="stem (01_amplification), number (1) or name (amplification)")
    r.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="override a parameter (repeatable); values are parsed as YAML")
    r.add_argument("--out", help="output folder (default runs/<chapter>/<hash of parameters>/)")
    r.add_argument("--log", action="store_true", help="stream the notebook's output")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(fn=_cmd_run)
    b = sub.add_parser("build", help="execute chapters with defaults and build the HTML book")
    b.add_argument("chapters", nargs="*", help="only these chapters (default: all in _toc.yml)")
    b.add_argument("--no-html", action="store_true", help="execute only")
    b.set_defaults(fn=_cmd_build)
    sub.add_parser("organisms", help="list cached organisms").set_defaults(fn=_cmd_organisms)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except runner.ParameterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
