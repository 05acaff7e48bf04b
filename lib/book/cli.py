"""Command line: ``python -m lib {list,run,build,sweep,compare,teach,organisms} ...`` (see ``python -m lib -h``)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from lib.book import findings, progress, runner
from lib.organisms.seeding import REPO_ROOT


def _cmd_list(args) -> int:
    for stem in runner.chapters():
        meta = runner.notebook_meta(stem)
        print(f"{stem}")
        for p in runner.notebook_parameters(stem).values():
            print(f"    {p.name:<16} {p.type_name:<6} default {p.default!r:<28} {p.allowed or '-':<24} {p.meaning}")
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
    """The parameters table (name, default, allowed values, meaning) and a copy-paste re-run command for chapter
    ``stem``."""
    params = [p for p in runner.notebook_parameters(stem).values() if p.name not in runner.SET_BY_RUNNER]
    rows = "\n".join(f"| `{p.name}` | `{p.default!r}` | {f'`{p.allowed}`' if p.allowed else '–'} | "
                     f"{findings.table_cell(p.meaning)} |" for p in params)
    numeric = [p for p in params if p.name != "SEED" and type(p.default) in (int, float)]
    example = (numeric or [p for p in params if p.name != "SEED"] or params)[0]
    return (f":::{{admonition}} Parameters of this chapter\n:class: tip\n\n"
            f"| parameter | default | allowed | meaning |\n|---|---|---|---|\n{rows}\n\n"
            f"Re-run it with other values (results land in `runs/{stem}/<hash>/`; a value outside its allowed "
            f"range is refused before anything runs):\n\n"
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
    the page closes with a *Downloads* box (the executed notebook, ``results.json`` and the figures, copied into
    ``dest``'s folder under ``downloads/<stem>/``) and, collapsed, the parameters table with its re-run command and
    the findings-across-seeds tables. The raw parameters cell (shown as the table) and papermill's injected cell
    are removed from the page."""
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
    files = copy_downloads(stem, executed, Path(dest).parent / DOWNLOADS / stem)
    nb.cells.append(nbformat.v4.new_markdown_cell(
        f"{details[0]}\n\n{downloads_markdown(stem, files)}\n\n"
        f"::::{{admonition}} The parameters, the re-run command and every finding per seed\n"
        f":class: dropdown\n\n{body}\n::::"))
    nbformat.write(nb, dest)


DOWNLOADS = "downloads"  # next to the chapters: book/chapters/downloads/<stem>/
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def copy_downloads(stem: str, executed: Path, folder: Path) -> list[Path]:
    """Copy what a reader can download from chapter ``stem``'s page into ``folder`` (emptied first): the executed
    notebook ``executed``, the ``results.json`` beside it and the figures the chapter saved there (``.png``,
    ``.svg``, ``.pdf``). Returns the copies: notebook, results (if any), figures by name."""
    import shutil

    executed = Path(executed)
    run = executed.parent
    figures = sorted(p for p in run.iterdir() if p.suffix in FIGURE_SUFFIXES and p.is_file())
    wanted = [executed] + ([run / "results.json"] if (run / "results.json").exists() else []) + figures
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return [Path(shutil.copy2(p, folder / p.name)) for p in wanted]


def downloads_markdown(stem: str, files: list[Path]) -> str:
    """The page's *Downloads* box: ``{download}`` links (Sphinx copies each file into the site) to the executed
    notebook, ``results.json`` and the figures of ``files`` (``copy_downloads``), relative to the chapter page."""
    def link(p: Path) -> str:
        return f"{{download}}`{p.name} <{DOWNLOADS}/{stem}/{p.name}>`"

    nbs = [p for p in files if p.suffix == ".ipynb"]
    res = [p for p in files if p.name == "results.json"]
    figs = [p for p in files if p.suffix in FIGURE_SUFFIXES]
    lines = [f"- the executed notebook {link(p)}: this page as papermill ran it, parameters cell included"
             for p in nbs]
    lines += [f"- {link(p)}: every number the page reports, with its parameters and provenance" for p in res]
    if figs:
        lines.append("- the figures: " + ", ".join(link(p) for p in figs))
    return ":::{admonition} Downloads\n:class: note\n\n" + "\n".join(lines) + "\n:::"


def build_order(stems: list[str]) -> list[str]:
    """The order a parallel build starts chapters in: by ``ftm.build_rank`` (lower first), then those without one, in
    ``_toc.yml`` order (ties too). The ranks start the chapters that train the most shared organisms early and let
    the short ones fill the end, so that no core waits alone for the longest chapter; ``benchmarks/build_order.py``
    simulates a cold build's organism locks to compare orders (the README's Timings give the measured gain)."""
    rank = {s: runner.notebook_meta(s).get("build_rank") for s in stems}
    bad = {s: r for s, r in rank.items() if r is not None and (not isinstance(r, int) or isinstance(r, bool))}
    if bad:
        raise ValueError(f"ftm.build_rank must be an int: {bad}")
    return sorted(stems, key=lambda s: (rank[s] is None, rank[s] or 0))  # sorted is stable: _toc.yml order kept


def run_parallel(stems: list[str], outs: dict[str, str], jobs: int, threads: int, on_done,
                 execute=runner.execute_chapter, console: Optional[progress.BuildConsole] = None,
                 status_dir: Optional[Path] = None, params: Optional[dict[str, dict]] = None,
                 poll_s: float = 1.0) -> dict[str, BaseException]:
    """``execute(stem, outs[stem], params[stem], status=<file>)`` for every stem in ``jobs`` spawned worker processes
    with ``threads`` torch / OpenMP threads each, started in ``stems``' order; ``on_done(stem, result)`` in this
    process as each finishes. ``execute`` must be a module-level function (it is pickled by name).

    Each worker writes its chapter's progress to ``status_dir/<stem>.json`` (``lib.book.progress.StatusFile``);
    ``console`` (a ``BuildConsole``), if given, shows it about every ``poll_s`` seconds and reports each chapter's
    end. A chapter that fails does not stop the others: returns ``{stem: exception}`` of the failures (a
    ``runner.ChapterError`` names the cell and the error), after every chapter has run.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from lib.book.sweep import _set_threads

    status_dir = Path(status_dir) if status_dir is not None else REPO_ROOT / "_build" / "progress"
    status_dir.mkdir(parents=True, exist_ok=True)
    status = {s: status_dir / f"{s}.json" for s in stems}
    for f in status.values():
        f.unlink(missing_ok=True)
    failures: dict[str, BaseException] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_set_threads, initargs=(threads,)) as pool:
        futs = {pool.submit(execute, stem, outs[stem], (params or {}).get(stem), status=str(status[stem])): stem
                for stem in stems}
        pending = set(futs)
        while pending:
            done, pending = wait(pending, timeout=poll_s, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: stems.index(futs[f])):
                stem = futs[fut]
                began = (progress.read_status(status[stem]) or {}).get("started")
                seconds = time.time() - began if began else None
                try:
                    result = fut.result()
                    on_done(stem, result)
                except Exception as e:  # noqa: BLE001 - reported per chapter; the build goes on
                    failures[stem] = e
                    if console is not None:
                        console.failed(stem, seconds, _error_text(e))
                    continue
                if console is not None:
                    console.finished(stem, result if isinstance(result, (int, float)) else seconds)
            if console is not None:
                for stem in stems:  # (finished chapters are ignored)
                    console.update(stem, progress.read_status(status[stem]))
                console.tick()
    for f in status.values():
        f.unlink(missing_ok=True)
    return failures


def _error_text(e: BaseException) -> str:
    """A failure as the console shows it: a ``ChapterError``'s own message, else the exception type and message."""
    if isinstance(e, runner.ChapterError):
        return str(e)
    return f"{type(e).__name__}: {e}"


TIMINGS = REPO_ROOT / "_build" / "timings.json"
SMOKE_TIMINGS = REPO_ROOT / "_build" / "timings-smoke.json"


def build_book(chapters: list[str] | None = None, html: bool = True, jobs: int | None = None,
               smoke: bool = False, stream=None) -> int:
    """Execute every ``_toc.yml`` chapter (or ``chapters``) with default parameters into book/chapters/, then build
    the HTML. Returns the exit status: 1 if a chapter failed (then no HTML is built).

    ``jobs`` chapters run at once (default: one per CPU core, at most one per chapter), each in a worker process
    whose kernel has ``cores // jobs`` torch threads; chapters that need an organism another is training wait on
    the cache's per-organism lock, so every organism is still trained once. ``jobs=1`` runs them one after another
    in ``_toc.yml`` order. While chapters run, the console shows where each one is (``lib.book.progress``),
    against the last build's times; a summary table closes the execution.

    ``_build/timings.json`` records each chapter's wall time and the build's (``_wall_s``, with ``_jobs`` at a time,
    for ``_chapters`` chapters); a chapter this build did not run keeps its earlier time. ``smoke``: each chapter at
    its ``ftm.smoke`` parameters (a quick check of the machinery; the numbers are not the book's), timed in
    ``_build/timings-smoke.json`` instead. ``stream``: where the progress goes (default stdout). With ``html``, the
    citations are checked first (``lib.book.citations.problems``: the BibTeX files ``_config.yml`` names exist and
    define every cited key), since Sphinx would fail on them only after every chapter has run.
    """
    import os

    if html:
        from lib.book import citations

        bad = citations.problems()
        if bad:
            print("[book] fix the citations first:\n  " + "\n  ".join(bad), file=sys.stderr, flush=True)
            return 2
    stems = chapters or runner.chapters()
    for stem in stems:  # every chapter's defaults against its declared ranges, before any chapter starts
        runner.validate_params(stem, {})
    dest = REPO_ROOT / "book" / "chapters"
    dest.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    jobs = max(1, min(jobs or cores, len(stems)))
    threads = max(1, cores // jobs)
    timings_file = SMOKE_TIMINGS if smoke else TIMINGS
    last = progress.load_timings(timings_file)
    if last.get("_chapters") != len(stems):  # the build's total is compared with a build of as many chapters only
        last.pop("_wall_s", None)
    params = {s: runner.notebook_meta(s)["smoke"] for s in stems} if smoke else None
    timings: dict[str, float] = {}
    outs = {s: REPO_ROOT / "_build" / "results" / s for s in stems}
    order = build_order(stems) if jobs > 1 else stems
    console = progress.BuildConsole(order, last, jobs, **({"stream": stream} if stream is not None else {}))
    console.message(f"{len(stems)} chapter(s), {jobs} at a time, {threads} torch thread(s) each"
                    + (", smoke parameters (not the book's numbers)" if smoke else "")
                    + (f"; the last build of as many took {progress.fmt_duration(last['_wall_s'])}"
                       if "_wall_s" in last else ""))
    started = time.time()

    def done(stem: str, seconds: float) -> None:
        timings[stem] = round(seconds, 1)
        book_copy(stem, outs[stem] / f"{stem}.ipynb", dest / f"{stem}.ipynb")

    failures = run_parallel(order, {s: str(o) for s, o in outs.items()}, jobs, threads, done, console=console,
                            params=params)
    console.close()
    merged = {**{s: v for s, v in last.items() if not s.startswith("_")}, **timings}
    timings = {s: merged[s] for s in runner.chapters() + sorted(merged) if s in merged}  # _toc.yml order
    (REPO_ROOT / "_build").mkdir(exist_ok=True)
    timings_file.write_text(json.dumps({**timings, "_wall_s": round(time.time() - started, 1), "_jobs": jobs,
                                        "_chapters": len(stems)}, indent=2))
    if failures:
        console.message(f"{len(failures)} chapter(s) failed: {', '.join(failures)}; no HTML built")
        return 1
    from lib.book.teach import write_exercises  # exercise versions: generated, never committed (book/exercises/)

    console.message(f"{len(write_exercises())} exercise notebook(s) -> book/exercises/")
    if not html:
        return 0
    # jupyter_book has no __main__ module, so `python -m jupyter_book` fails: call its CLI entry point.
    jb = "import sys; from jupyter_book.cli.main import main; sys.argv[0] = 'jupyter-book'; sys.exit(main())"
    cmd = [sys.executable, "-c", jb, "build", str(REPO_ROOT), "--builder", "html", "-W", "-n", "--keep-going"]
    console.message(" ".join(cmd))
    return subprocess.call(cmd, cwd=REPO_ROOT)


def _cmd_build(args) -> int:
    return build_book([runner.resolve(c) for c in args.chapters] or None, html=not args.no_html, jobs=args.jobs,
                      smoke=args.smoke)


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
    sub.add_parser("list", help="chapters and their parameters: type, default, allowed values, meaning"
                   ).set_defaults(fn=_cmd_list)
    r = sub.add_parser("run", help="execute one chapter with parameters")
    r.add_argument("chapter", help="stem (01_amplification), number (1) or name (amplification)")
    r.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="override a parameter (repeatable); values are parsed as YAML and checked against the "
                        "parameter's allowed values (python -m lib list) before anything runs")
    r.add_argument("--out", help="output folder (default runs/<chapter>/<hash of parameters>/)")
    r.add_argument("--log", action="store_true", help="stream the notebook's output")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(fn=_cmd_run)
    b = sub.add_parser("build", help="execute chapters with defaults and build the HTML book")
    b.add_argument("chapters", nargs="*", help="only these chapters (default: all in _toc.yml)")
    b.add_argument("--no-html", action="store_true", help="execute only")
    b.add_argument("--jobs", type=int, help="chapters executed at once (default: one per CPU core; 1: in order)")
    b.add_argument("--smoke", action="store_true",
                   help="each chapter at its small test parameters (ftm.smoke): checks the build in minutes; the "
                        "numbers are not the book's")
    b.set_defaults(fn=_cmd_build)
    sub.add_parser("organisms", help="list cached organisms").set_defaults(fn=_cmd_organisms)
    _add_seed_and_teach_commands(sub)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except runner.ParameterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except runner.ChapterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

