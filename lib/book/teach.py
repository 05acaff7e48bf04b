"""Teach mode: exercise versions of the chapters, generated from the same source at build time.

Convention in ``notebooks/<stem>.md``: a code cell tagged ``solution`` defines one or more functions whose
reference implementation lives in ``lib`` and is registered in ``lib/book/checks.py``; its ``check`` option names
the check(s), each the name of a function the cell defines::

    ```{code-cell} ipython3
    :tags: [solution]
    :check: masked_lm_loss
    def masked_lm_loss(logits, tokens, loss_mask):
        \"\"\"Mean cross-entropy ...\"\"\"
        ...
    ```

A solution cell must be self-contained (it imports what it uses), so it and its check run on their own. The
chapter shows the solution as ordinary code. The exercise version (``book/exercises/<stem>.ipynb``, git-ignored,
written by ``python -m lib build`` before Sphinx runs, or by ``python -m lib teach``) keeps every other cell, turns
each function of a solution cell into a stub (signature and docstring, then
``raise NotImplementedError  # your code``), and adds after it a cell tagged ``check`` that calls
``lib.book.checks.check(name, function)``. Glue references (which need the executed chapter) become plain key names,
and label targets are dropped so the chapter's labels stay unique.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any, Iterable, Optional

from lib.book import runner
from lib.organisms.seeding import REPO_ROOT

SOLUTION_TAG = "solution"
CHECK_TAG = "check"
CHECK_KEY = "check"
STUB_MARK = "# your code"
EXERCISE_DIR = REPO_ROOT / "book" / "exercises"
COURSE_TABLE = "course.inc"  # included by book/teaching.md; not a Sphinx source, so no page of its own


class TeachError(ValueError):
    """A solution cell that breaks the convention (no check named, unknown check, function not defined)."""


def solution_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code" and SOLUTION_TAG in c.metadata.get("tags", [])]


def cell_checks(cell) -> list[str]:
    """The check names of a solution cell (its ``check`` option: a name, a comma list or a YAML list)."""
    raw = cell.metadata.get(CHECK_KEY)
    if raw is None:
        return []
    names = raw if isinstance(raw, list) else str(raw).split(",")
    return [str(n).strip() for n in names if str(n).strip()]


def defined_functions(source: str) -> list[str]:
    return [n.name for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def validate_cell(cell, where: str = "") -> list[str]:
    """The cell's check names; raises ``TeachError`` if the convention is broken."""
    from lib.book.checks import CHECKS

    names = cell_checks(cell)
    if not names:
        raise TeachError(f"{where}solution cell has no `:{CHECK_KEY}:` option naming its lib.book.checks check")
    defined = defined_functions(cell.source)
    for n in names:
        if n not in CHECKS:
            raise TeachError(f"{where}check {n!r} is not registered in lib/book/checks.py (known: {', '.join(sorted(CHECKS))})")
        if n not in defined:
            raise TeachError(f"{where}solution cell names check {n!r} but defines no function {n!r} "
                             f"(defines: {', '.join(defined) or 'nothing'})")
    return names


def stub_function(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """``node``'s signature and docstring with the body replaced by ``raise NotImplementedError  # your code``."""
    body: list[ast.stmt] = []
    if ast.get_docstring(node, clean=False) is not None:
        body.append(node.body[0])
    body.append(ast.Raise(exc=ast.Name("NotImplementedError", ast.Load()), cause=None))
    stub = type(node)(**{**{f: getattr(node, f) for f in node._fields}, "body": body})
    ast.fix_missing_locations(stub)
    text = ast.unparse(stub)
    lines = text.splitlines()
    lines[-1] += f"  {STUB_MARK}"
    return "\n".join(lines)


def stub_source(source: str, names: Optional[Iterable[str]] = None) -> str:
    """``source`` with every top-level function (or only those in ``names``) reduced to a stub; the rest verbatim."""
    tree = ast.parse(source)
    lines = source.splitlines()
    wanted = None if names is None else set(names)
    out: list[str] = []
    cursor = 0
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if wanted is not None and node.name not in wanted:
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
        out += lines[cursor:start]
        out.append(stub_function(node))
        cursor = node.end_lineno
    out += lines[cursor:]
    return "\n".join(out).rstrip() + "\n"


def check_source(names: list[str]) -> str:
    calls = "\n".join(f'check("{n}", {n})' for n in names)
    return ("# Compares your function with lib's reference on random inputs.\n"
            f"from lib.book.checks import check\n\n{calls}\n")


_GLUE_ROLE = re.compile(r"\{glue(?::[a-z]*)?\}`([^`:]+)(?::[^`]*)?`")
_LABEL = re.compile(r"^\s*\([A-Za-z0-9_.:-]+\)=\s*$")
_FENCE_OPEN = re.compile(r"^(\s*)(`{3,}|:{3,})\{glue(?::[a-z]*)?\}\s*(\S*)")


def exercise_markdown(text: str) -> str:
    """Markdown of the exercise: glue roles -> key names, glue directives -> a note, label targets dropped."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _FENCE_OPEN.match(line)
        if m:
            fence = m.group(2)
            j = i + 1
            while j < len(lines) and lines[j].strip() != fence:
                j += 1
            out.append(f"{m.group(1)}*(`{m.group(3)}` is shown here when you run the notebook)*")
            i = j + 1
            continue
        if _LABEL.match(line):
            i += 1
            continue
        if re.match(r"^\s*:name:", line):
            i += 1
            continue
        out.append(_GLUE_ROLE.sub(lambda mm: f"`{mm.group(1)}`", line))
        i += 1
    return "\n".join(out)


def _intro_cell(stem: str, n_exercises: int, smoke: dict[str, Any]):
    import nbformat

    smoke_args = " ".join(f"-p {k} {v!r}" for k, v in smoke.items())
    text = (f":::{{admonition}} Exercise version of {{doc}}`this chapter <../chapters/{stem}>`\n:class: note\n\n"
            f"This page is generated from the same source as the chapter. {n_exercises} function"
            f"{'s are' if n_exercises != 1 else ' is'} left for you to write: each ends in "
            f"`raise NotImplementedError  {STUB_MARK}`, and the cell after it checks your function against "
            f"`lib`'s reference on random inputs. Download the notebook (button at the top), run it top to "
            f"bottom, and fill in the stubs. Everything else runs as in the chapter.\n\n")
    if smoke:
        text += (f"For a quick run set the small parameters the tests use ({', '.join(f'`{k} = {v!r}`' for k, v in smoke.items())}); "
                 f"the chapter itself can be re-run with them by `python -m lib run {stem} {smoke_args}`.\n")
    text += ":::"
    return nbformat.v4.new_markdown_cell(text)


def exercise_notebook(stem: str):
    """The exercise version of chapter ``stem`` (an nbformat notebook), or None if it has no solution cell."""
    import nbformat

    nb = runner.read_notebook(stem)
    sols = solution_cells(nb)
    if not sols:
        return None
    cells = []
    n_ex = 0
    titled = False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            text = exercise_markdown(cell.source)
            if not titled:
                new = re.sub(r"^# (.+)$", r"# Exercise: \1", text, count=1, flags=re.M)
                if new != text:
                    titled = True
                    cell.source = new
                    cells.append(cell)
                    cells.append(None)  # placeholder for the intro
                    continue
            cell.source = text
            cells.append(cell)
        elif cell.cell_type == "code" and SOLUTION_TAG in cell.metadata.get("tags", []):
            names = validate_cell(cell, f"{stem}: ")
            cell.source = stub_source(cell.source, names)
            cell.metadata["tags"] = [t for t in cell.metadata.get("tags", []) if t != SOLUTION_TAG] + ["exercise"]
            cells.append(cell)
            chk = nbformat.v4.new_code_cell(check_source(names))
            chk.metadata["tags"] = [CHECK_TAG]
            cells.append(chk)
            n_ex += len(names)
        else:
            cells.append(cell)
    intro = _intro_cell(stem, n_ex, dict(nb.metadata.get("ftm", {}).get("smoke", {}) or {}))
    if None in cells:
        cells[cells.index(None)] = intro
    else:
        cells.insert(0, intro)
    nb.cells = cells
    nb.metadata.setdefault("ftm", {})["exercise_of"] = stem
    nb.metadata.pop("jupytext", None)
    return nb


def _timings() -> dict[str, float]:
    path = REPO_ROOT / "_build" / "timings.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def course_table(exercises: dict[str, int], timings: Optional[dict[str, float]] = None,
                 stems: Optional[list[str]] = None) -> str:
    """Markdown table of the course path: chapter, exercises, measured execution time at default parameters."""
    timings = _timings() if timings is None else timings
    rows = []
    for stem in stems or runner.chapters():
        n = exercises.get(stem, 0)
        ex = f"{{doc}}`{n} exercise{'s' if n != 1 else ''} <exercises/{stem}>`" if n else "—"
        t = timings.get(stem)
        ts = f"{t / 60:.1f} min" if t is not None else "not measured in this build"
        rows.append(f"| {{doc}}`chapters/{stem}` | {ex} | {ts} |")
    return ("| chapter | exercise version | execution time at default parameters (this build) |\n"
            "|---|---|---|\n" + "\n".join(rows) + "\n")


def write_exercises(dest: str | Path = EXERCISE_DIR, stems: Optional[list[str]] = None) -> list[Path]:
    """Write ``<stem>.ipynb`` for each chapter with solution cells into ``dest`` (stale ones removed) and the
    course table ``course.inc``; return the notebooks written."""
    import nbformat

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.ipynb"):
        old.unlink()
    written, counts = [], {}
    stems = stems or runner.chapters()
    for stem in stems:
        nb = exercise_notebook(stem)
        if nb is None:
            continue
        counts[stem] = sum(len(cell_checks(c)) for c in nb.cells if "exercise" in c.metadata.get("tags", []))
        path = dest / f"{stem}.ipynb"
        nbformat.write(nb, path)
        written.append(path)
    (dest / COURSE_TABLE).write_text(course_table(counts, stems=stems))
    return written
