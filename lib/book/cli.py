"""Command line: ``python -m lib {list,run,build,sweep,compare,teach,organisms} ...`` (see ``python -m lib -h``)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from lib.book import findings, runner
from lib.organisms.seeding import REPO_ROOT


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


def parameters_markdown(stem: str) -> str:
    """The parameters table (name, default, meaning) and a copy-paste re-run command for chapter ``stem``."""
    params = [p for p in runner.notebook_parameters(stem).values() if p.name != "OUTPUT_DIR"]
    rows = "\n".join(f"| `{p.name}` | `{p.default!r}` | {findings.table_cell(p.meaning)} |" for p in params)
    numeric = [p for p in params if p.name != "SEED" and type(p.default) in (int, float)]
    example = (numeric or [p for p in params if p.name != "SEED"] or params)[0]
    return (f":::{{admonition}} Parameters of this chapter\n:class: tip\n\n"
            f"| parameter | default | meaning |\n|---|---|---|\n{rows}\n\n"
            f"Re-run it with other values (results land in `runs/{stem}/<hash>/`):\n\n"
            f"```bash\n.venv/bin/python -m lib run {stem} -p SEED 1 -p {example.name} {example.default!r}\n```\n:::")


TABLE_NOTES = "**Notes.**"  # a paragraph right after a table that starts so belongs to it (and travels with it)


def _table_block(source: str, marker: str) -> str | None:
    """The contiguous Markdown table (lines starting with ``|``) of ``source`` that contains ``marker``, with the
    paragraph after it if that starts with ``TABLE_NOTES`` (the table's notes: p-values, chance levels, units)."""
    lines = source.splitlines()
    for i, line in enumerate(lines):
        if marker in line and line.lstrip().startswith("|"):
            a = i
            while a > 0 and lines[a - 1].lstrip().startswith("|"):
                a -= 1
            b = i
            while b + 1 < len(lines) and lines[b + 1].lstrip().startswith("|"):
                b += 1
            table = "\n".join(lines[a:b + 1])
            c = b + 1
            while c < len(lines) and not lines[c].strip():
                c += 1
            if c < len(lines) and lines[c].startswith(TABLE_NOTES):
                d = c
                while d + 1 < len(lines) and lines[d + 1].strip():
                    d += 1
                table += "\n\n" + "\n".join(lines[c:d + 1])
            return table
    return None


HEADLINE_FIGURE_TAG = "ftm-headline-figure"  # the page shows it as `tag_ftm-headline-figure` (tests/test_browser.py)


def _output_only(cell, kinds: tuple[str, ...], tags: tuple[str, ...] = (), **mystnb):
    """A copy of an executed code cell that shows only its outputs of ``kinds`` (no glue records), new cell id;
    ``tags`` added to ``remove-input``, ``mystnb`` as the cell's myst-nb rendering options."""
    import copy

    import nbformat

    c = copy.deepcopy(cell)
    c.metadata = {"tags": ["remove-input", *tags], **({"mystnb": mystnb} if mystnb else {})}
    c.outputs = [o for o in c.outputs if o.get("output_type") in kinds and not o.get("metadata", {}).get("scrapbook")]
    if "id" in c:
        c["id"] = nbformat.v4.new_code_cell().get("id", c["id"])
    return c


def headline_cells(stem: str, nb) -> list:
    """Copies of the cells a chapter names in ``ftm.headline`` for the top of its page: ``figure`` (the code cell
    that saves that figure: its output only, shown as wide as the text column) and ``table`` (a paper-vs-ours table:
    the Markdown table with its notes paragraph, or the displayed outputs of the code cell, whose text contains that
    marker). Raises ``ValueError`` if a name matches nothing."""
    import nbformat

    spec = runner.notebook_meta(stem).get("headline") or {}
    out = []
    if spec.get("figure"):
        call = f'OUTPUT_DIR, "{spec["figure"]}")'
        cell = next((c for c in nb.cells if c.cell_type == "code" and call in c.source), None)
        if cell is None:
            raise ValueError(f"{stem}: ftm.headline.figure {spec['figure']!r}: no cell saves that figure")
        # shown as wide as the text column: a headline figure is drawn that wide (lib.book.plotting.page_figure)
        out.append(_output_only(cell, ("display_data", "execute_result"), tags=(HEADLINE_FIGURE_TAG,),
                                image={"width": "100%"}))
    if spec.get("table"):
        marker = spec["table"]
        for c in nb.cells:
            if c.cell_type == "markdown" and (block := _table_block(c.source, marker)):
                out.append(nbformat.v4.new_markdown_cell(f"**The paper and this book, side by side**\n\n{block}"))
                break
            if c.cell_type == "code" and marker in c.source and "remove-cell" not in c.metadata.get("tags", []):
                out += [nbformat.v4.new_markdown_cell("**The paper and this book, side by side**"),
                        _output_only(c, ("display_data", "execute_result"))]  # the table and its notes
                break
        else:
            raise ValueError(f"{stem}: ftm.headline.table {marker!r}: no table or cell contains it")
    return out


def book_copy(stem: str, executed: Path, dest: Path) -> None:
    """Copy an executed chapter into the book, reader first: the page opens (after its title and introduction)
    with what the chapter finds over seeds, its headline figure and its paper-vs-ours table (``ftm.headline``);
    the parameters table with its re-run command and the findings-across-
    seeds tables close the page in a collapsed section. The raw parameters cell (shown as the table) and
    papermill's injected cell are removed from the page."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if ("injected-parameters" in tags or "parameters" in tags) and "remove-cell" not in tags:
            cell.metadata["tags"] = list(tags) + ["remove-cell"]
    results_file = executed.parent / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else None
    summary = findings.summary_markdown(stem, results) if results is not None else ""
    top = ([nbformat.v4.new_markdown_cell(summary)] if summary else []) + headline_cells(stem, nb)
    if top:
        title = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
                      and c.source.lstrip().startswith("# ")), None)
        if title is None:
            nb.cells[0:0] = top
        else:  # the title and the first paragraph, the findings, figure and table, then the rest of the introduction
            paras = nb.cells[title].source.strip().split("\n\n")
            head = 2 if len(paras) > 1 else 1
            nb.cells[title].source = "\n\n".join(paras[:head])
            rest = [nbformat.v4.new_markdown_cell("\n\n".join(paras[head:]))] if paras[head:] else []
            nb.cells[title + 1:title + 1] = top + rest
    details = ["## Parameters, seeds and tests", parameters_markdown(stem)]
    if results is not None:
        table = findings.findings_markdown(stem, results)
        if table:
            details.append(table)
    body = "\n\n".join(details[1:])
    nb.cells.append(nbformat.v4.new_markdown_cell(
        f"{details[0]}\n\n::::{{admonition}} The parameters, the re-run command and every finding per seed\n"
        f":class: dropdown\n\n{body}\n::::"))
    nbformat.write(nb, dest)


def build_order(stems: list[str]) -> list[str]:
    """The order a parallel build starts chapters in: those flagged ``ftm.build_first`` (long chapters that train
    their own world's organisms, so no other chapter's training waits for them), then ``_toc.yml`` order."""
    first = [s for s in stems if runner.notebook_meta(s).get("build_first")]
    return first + [s for s in stems if s not in first]


def run_parallel(stems: list[str], outs: dict[str, str], jobs: int, threads: int, on_done,
                 execute=runner.execute_chapter) -> None:
    """``execute(stem, outs[stem])`` for every stem in ``jobs`` spawned worker processes with ``threads`` torch /
    OpenMP threads each, started in ``stems``' order; ``on_done(stem, result)`` in this process as each finishes.
    ``execute`` must be a module-level function (it is pickled by name). A failing chapter raises here."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from lib.book.sweep import _set_threads

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_set_threads, initargs=(threads,)) as pool:
        futs = {}
        for stem in stems:
            print(f"[book] queued {stem}", flush=True)
            futs[pool.submit(execute, stem, outs[stem])] = stem
        for fut in as_completed(futs):
            on_done(futs[fut], fut.result())


def build_book(chapters: list[str] | None = None, html: bool = True, jobs: int | None = None) -> int:
    """Execute every ``_toc.yml`` chapter with default parameters into book/chapters/, then build the HTML.

    ``jobs`` chapters run at once (default: one per CPU core, at most one per chapter), each kernel with
    ``cores // jobs`` torch threads; chapters that need an organism another is training wait on the cache's
    per-organism lock, so every organism is still trained once. ``jobs=1`` runs them one after another in
    ``_toc.yml`` order. ``_build/timings.json`` records each chapter's wall time and the build's.
    """
    import os

    stems = chapters or runner.chapters()
    dest = REPO_ROOT / "book" / "chapters"
    dest.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    jobs = max(1, min(jobs or cores, len(stems)))
    timings: dict[str, float] = {}
    started = time.time()
    outs = {s: REPO_ROOT / "_build" / "results" / s for s in stems}

    def done(stem: str, seconds: float) -> None:
        timings[stem] = round(seconds, 1)
        book_copy(stem, outs[stem] / f"{stem}.ipynb", dest / f"{stem}.ipynb")
        print(f"[book] {stem}: {timings[stem]}s ({time.time() - started:.0f}s into the build)", flush=True)

    if jobs == 1:
        for stem in stems:
            print(f"[book] executing {stem} ...", flush=True)
            done(stem, runner.execute_chapter(stem, str(outs[stem])))
    else:
        threads = max(1, cores // jobs)
        print(f"[book] {len(stems)} chapters, {jobs} at a time, {threads} torch thread(s) each", flush=True)
        run_parallel(build_order(stems), {s: str(o) for s, o in outs.items()}, jobs, threads, done)
    timings = {s: timings[s] for s in stems}
    (REPO_ROOT / "_build").mkdir(exist_ok=True)
    (REPO_ROOT / "_build" / "timings.json").write_text(json.dumps(
        {**timings, "_wall_s": round(time.time() - started, 1), "_jobs": jobs}, indent=2))
    from lib.book.teach import write_exercises  # exercise versions: generated, never committed (book/exercises/)

    print(f"[book] {len(write_exercises())} exercise notebook(s) -> book/exercises/", flush=True)
    if not html:
        return 0
    # jupyter_book has no __main__ module, so `python -m jupyter_book` fails: call its CLI entry point.
    jb = "import sys; from jupyter_book.cli.main import main; sys.argv[0] = 'jupyter-book'; sys.exit(main())"
    cmd = [sys.executable, "-c", jb, "build", str(REPO_ROOT), "--builder", "html", "-W", "-n", "--keep-going"]
    print("[book]", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=REPO_ROOT)


def _cmd_build(args) -> int:
    return build_book([runner.resolve(c) for c in args.chapters] or None, html=not args.no_html, jobs=args.jobs)


def _cmd_organisms(args) -> int:
    from lib.organisms.cache import ArtifactCache

    cache = ArtifactCache()
    if not cache.root.exists():
        print(f"no cache at {cache.root}")
        return 0
    for d in sorted(p for p in cache.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        man = cache.manifest(d.name) or {}
        print(f"{d.name}  {' -> '.join(man.get('lineage', ['?']))}  "
              f"{man.get('n_params', '?')} params  trained in {man.get('train_wall_time_s', '?')}s")
    return 0


def _cmd_sweep(args) -> int:
    from lib.book import sweep

    params = _parse_kv(args.param)
    if args.record and params:
        print("--record keeps default-parameter runs only: drop the -p overrides", file=sys.stderr)
        return 2
    try:
        scheduler = sweep.check_scheduler(args.scheduler)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = sweep.sweep(args.chapter, args.seeds, params, workers=args.workers, scheduler=scheduler)
    if args.record and res.runs:
        runs = {s: sweep.load_results(d) for s, d in res.runs.items()}
        print(f"recorded {len(runs)} seed(s) -> {findings.record(res.stem, runs)}")
        for t in findings.tally(res.stem, runs[min(runs)]):
            print(f"  {t.finding.id}: {t.sentence()}")
    print(f"{res.stem}: {len(res.runs)} of {len(res.seeds)} seeds in {res.wall_time_s:.0f}s "
          f"(mean ± 95% t interval over seeds) -> {res.summary_path}")
    print(sweep.format_stats(res.stats))
    for s, err in res.failed.items():
        print(f"seed {s} failed: {err}", file=sys.stderr)
    return 1 if res.failed else 0


def _cmd_compare(args) -> int:
    from lib.book import sweep

    print(f"A = {args.run_a}\nB = {args.run_b}")
    print(sweep.format_compare(sweep.compare(args.run_a, args.run_b)))
    return 0


def _cmd_teach(args) -> int:
    from lib.book import teach

    for p in teach.write_exercises(args.out or teach.EXERCISE_DIR):
        print(p)
    return 0


def _add_seed_and_teach_commands(sub) -> None:
    from lib.book.sweep import SCHEDULER_HELP

    s = sub.add_parser("sweep", help="run a chapter over several seeds in parallel; mean ± 95%% CI per result")
    s.add_argument("chapter", help="stem, number or name")
    s.add_argument("--seeds", default="0..4", help="seeds: 0..4 (inclusive), 0,1,2, or a mix (default 0..4)")
    s.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="override a parameter for every seed (repeatable)")
    s.add_argument("--workers", type=int, help="parallel processes (default: number of CPU cores)")
    s.add_argument("--scheduler", help="run the seeds on Dask instead of the local process pool: " +
                   SCHEDULER_HELP)
    s.add_argument("--record", action="store_true",
                   help="write which findings held on each seed to book/seeds/<chapter>.json (defaults only)")
    s.set_defaults(fn=_cmd_sweep)
    c = sub.add_parser("compare", help="two runs' results side by side (run folders or results.json files)")
    c.add_argument("run_a")
    c.add_argument("run_b")
    c.set_defaults(fn=_cmd_compare)
    t = sub.add_parser("teach", help="generate the exercise versions of the chapters (book/exercises/)")
    t.add_argument("--out", help="folder (default book/exercises/)")
    t.set_defaults(fn=_cmd_teach)


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
    b.add_argument("--jobs", type=int, help="chapters executed at once (default: one per CPU core; 1: in order)")
    b.set_defaults(fn=_cmd_build)
    sub.add_parser("organisms", help="list cached organisms").set_defaults(fn=_cmd_organisms)
    _add_seed_and_teach_commands(sub)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except runner.ParameterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

