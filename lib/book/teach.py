"""Teach mode: exercise versions of the chapters, generated from the same source at build time.

Convention in ``notebooks/<stem>.md``: a code cell tagged ``solution`` defines one or more functions whose
reference implementation lives in ``lib`` and is registered in ``lib/book/checks.py``; its ``check`` option names
the check(s), each the name of a function the cell defines. The cell's options also say what a learner needs to
know before starting (``EXERCISE_KEYS``): ``difficulty`` and ``importance`` (integers 1-5), the expected
``minutes``, a ``hint`` (one or two sentences) and the ``expected`` output (what the learner should see when the
code is right; ``>>>`` lines are a worked example, run against the solution by ``tests/test_teach.py``)::

    ```{code-cell} ipython3
    ---
    tags: [solution]
    check: masked_lm_loss
    difficulty: 2
    importance: 4
    minutes: 10
    hint: >-
      The logits at position t predict token t+1 ...
    expected: |-
      >>> masked_lm_loss(logits, tokens, loss_mask)
      tensor(0.6931)
    ---
    def masked_lm_loss(logits, tokens, loss_mask):
        \"\"\"Mean cross-entropy ...\"\"\"
        ...
    ```

A solution cell must be self-contained (it imports what it uses), so it and its check run on their own. The
chapter shows the solution as ordinary code. The exercise version (``book/exercises/<stem>.ipynb``, git-ignored,
written by ``python -m lib build`` before Sphinx runs, or by ``python -m lib teach``) keeps every other cell, puts
before each solution cell a line with its difficulty, importance and time and folded "Hint" and "Expected output"
dropdowns, turns each function of the cell into a stub (signature and docstring, then
``raise NotImplementedError  # your code``), and adds after it a cell tagged ``check`` that calls
``lib.book.checks.check(name, function)``. Glue references (which need the executed chapter) become plain key names,
and label targets are dropped so the chapter's labels stay unique. ``write_exercises`` also writes the two tables
``book/teaching.md`` includes: the exercises (``exercises.inc``) and the course path (``course.inc``).
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from lib.book import runner
from lib.organisms.seeding import REPO_ROOT

SOLUTION_TAG = "solution"
CHECK_TAG = "check"
CHECK_KEY = "check"
STUB_MARK = "# your code"
INFO_TAG = "exercise-info"
EXERCISE_DIR = REPO_ROOT / "book" / "exercises"
COURSE_TABLE = "course.inc"  # included by book/teaching.md; not a Sphinx source, so no page of its own
EXERCISE_TABLE = "exercises.inc"  # likewise: the list of exercises with difficulty, importance and time

# What a solution cell declares about its exercise: option -> what it must be.
EXERCISE_KEYS = {
    "difficulty": "an integer from 1 (a few lines, no trap) to 5 (hard)",
    "importance": "an integer from 1 (optional) to 5 (the rest of the course builds on it)",
    "minutes": "the expected time in minutes, an integer from 1 to 120",
    "hint": "one or two sentences (at most 500 characters)",
    "expected": "what the learner should see when the code is right (a value, or >>> lines with their output)",
}
SCALE = (1, 5)
UNMARKED = "\u26aa\ufe0f"  # ⚪ with the emoji selector: text fonts (DejaVu) have a small ○ for U+26AA alone
MAX_MINUTES = 120
MAX_HINT = 500


class TeachError(ValueError):
    """A solution cell that breaks the convention (no check named, unknown check, function not defined, an
    exercise field missing or out of range)."""


@dataclass(frozen=True)
class Exercise:
    """One exercise: the functions of one solution cell and what the cell declares about them.

    ``difficulty`` and ``importance`` are 1-5, ``minutes`` the expected time, ``hint`` a sentence or two, ``expected``
    the output the learner should see (``>>>`` lines with their output are a worked example).
    """

    names: tuple[str, ...]
    difficulty: int
    importance: int
    minutes: int
    hint: str
    expected: str


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


def cell_label(stem: str, index: int, cell) -> str:
    """How errors name a solution cell: ``chapter <stem>, solution cell <index> (<its functions>): ``."""
    try:
        names = cell_checks(cell) or defined_functions(cell.source)
    except SyntaxError:
        names = []
    return f"chapter {stem}, solution cell {index}" + (f" ({', '.join(names)})" if names else "") + ": "


def _scale_value(cell, key: str, lo: int, hi: int, where: str) -> int:
    v = cell.metadata[key]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise TeachError(f"{where}`{key}: {v!r}` is out of range: it must be {EXERCISE_KEYS[key]}")
    return v


def _text_value(cell, key: str, where: str, limit: Optional[int] = None) -> str:
    v = cell.metadata[key]
    if not isinstance(v, str) or not v.strip():
        raise TeachError(f"{where}`{key}` must be non-empty text ({EXERCISE_KEYS[key]}), got {v!r}")
    if limit is not None and len(v.strip()) > limit:
        raise TeachError(f"{where}`{key}` has {len(v.strip())} characters: it must be {EXERCISE_KEYS[key]}")
    return v.strip()


def exercise_of(cell, where: str = "") -> Exercise:
    """The ``Exercise`` a solution cell declares; raises ``TeachError`` naming ``where`` (the chapter and cell) if a
    field of ``EXERCISE_KEYS`` is missing or out of range, or if the check convention is broken."""
    names = validate_checks(cell, where)
    missing = [k for k in EXERCISE_KEYS if k not in cell.metadata]
    if missing:
        raise TeachError(f"{where}solution cell lacks {', '.join(f'`{k}`' for k in missing)}: every exercise "
                         "declares " + "; ".join(f"`{k}`: {d}" for k, d in EXERCISE_KEYS.items()) +
                         " (see the module docstring of lib/book/teach.py)")
    return Exercise(names=tuple(names),
                    difficulty=_scale_value(cell, "difficulty", *SCALE, where),
                    importance=_scale_value(cell, "importance", *SCALE, where),
                    minutes=_scale_value(cell, "minutes", 1, MAX_MINUTES, where),
                    hint=_text_value(cell, "hint", where, MAX_HINT),
                    expected=_text_value(cell, "expected", where))


def validate_checks(cell, where: str = "") -> list[str]:
    """The cell's check names; raises ``TeachError`` if a check is missing, unknown or names no function."""
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


def validate_cell(cell, where: str = "") -> list[str]:
    """The cell's check names; raises ``TeachError`` if the convention (checks and exercise fields) is broken."""
    return list(exercise_of(cell, where).names)


def chapter_exercises(stem: str) -> list[Exercise]:
    """The exercises of chapter ``stem`` in order (one per solution cell), validated."""
    sols = solution_cells(runner.read_notebook(stem))
    return [exercise_of(c, cell_label(stem, i, c)) for i, c in enumerate(sols, 1)]


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


def rating(value: int, mark: str, of: int = SCALE[1]) -> str:
    """``value`` out of ``of`` as marks: ``rating(2, "🔴")`` is ``🔴🔴⚪⚪⚪`` (``UNMARKED`` for the empty places)."""
    return mark * value + UNMARKED * (of - value)


def duration(minutes: int) -> str:
    """``50`` -> ``50 min``, ``110`` -> ``1 h 50 min``."""
    h, m = divmod(int(minutes), 60)
    return f"{m} min" if not h else f"{h} h" + (f" {m} min" if m else "")


def info_line(ex: Exercise) -> str:
    """The line shown before an exercise: difficulty, importance and expected time."""
    return (f"**Difficulty** {rating(ex.difficulty, '🔴')} · **Importance** {rating(ex.importance, '🔵')} · "
            f"**Time** about {duration(ex.minutes)}")


def info_markdown(ex: Exercise) -> str:
    """The info line, then folded "Hint" and "Expected output" dropdowns (MyST, with ``colon_fence``)."""
    from lib.book.checks import success_line

    lines = " and ".join(f"`{success_line(n)}`" for n in ex.names)
    expected = ex.expected
    if ">>>" in expected:
        shown = f"On a small example a correct function gives:\n\n```pycon\n{expected}\n```"
    else:
        shown = f"You should see:\n\n```text\n{expected}\n```"
    return (f"{info_line(ex)}\n\n"
            f":::{{dropdown}} Hint\n{ex.hint}\n:::\n\n"
            f":::{{dropdown}} Expected output\nWhen your code is right, the check cell after it prints {lines}.\n\n"
            f"{shown}\n:::")


def _intro_cell(stem: str, n_exercises: int, smoke: dict[str, Any], minutes: int = 0):
    import nbformat

    smoke_args = " ".join(f"-p {k} {v!r}" for k, v in smoke.items())
    text = (f":::{{admonition}} Exercise version of {{doc}}`this chapter <../chapters/{stem}>`\n:class: note\n\n"
            f"This page is generated from the same source as the chapter. {n_exercises} function"
            f"{'s are' if n_exercises != 1 else ' is'} left for you to write"
            + (f" (about {duration(minutes)} in all)" if minutes else "") + ": each ends in "
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
    minutes = 0
    titled = False
    index = 0
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
            index += 1
            ex = exercise_of(cell, cell_label(stem, index, cell))
            names = list(ex.names)
            info = nbformat.v4.new_markdown_cell(info_markdown(ex))
            info.metadata["tags"] = [INFO_TAG]
            cells.append(info)
            cell.source = stub_source(cell.source, names)
            cell.metadata["tags"] = [t for t in cell.metadata.get("tags", []) if t != SOLUTION_TAG] + ["exercise"]
            cells.append(cell)
            minutes += ex.minutes
            chk = nbformat.v4.new_code_cell(check_source(names))
            chk.metadata["tags"] = [CHECK_TAG]
            cells.append(chk)
            n_ex += len(names)
        else:
            cells.append(cell)
    intro = _intro_cell(stem, n_ex, dict(nb.metadata.get("ftm", {}).get("smoke", {}) or {}), minutes)
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


def course_table(exercises: dict[str, list[Exercise]], timings: Optional[dict[str, float]] = None,
                 stems: Optional[list[str]] = None) -> str:
    """Markdown table of the course path: chapter, its exercise version (functions to write, expected time in all),
    measured execution time at default parameters."""
    timings = _timings() if timings is None else timings
    rows = []
    for stem in stems or runner.chapters():
        exs = exercises.get(stem, [])
        n = sum(len(e.names) for e in exs)
        ex = (f"{{doc}}`{n} function{'s' if n != 1 else ''} <exercises/{stem}>`, "
              f"about {duration(sum(e.minutes for e in exs))}" if exs else "—")
        t = timings.get(stem)
        ts = f"{t / 60:.1f} min" if t is not None else "not measured in this build"
        rows.append(f"| {{doc}}`chapters/{stem}` | {ex} | {ts} |")
    return ("| chapter | exercise version: functions to write, expected time | execution time at default parameters "
            "(this build) |\n|---|---|---|\n" + "\n".join(rows) + "\n")


def exercise_table(exercises: dict[str, list[Exercise]], stems: Optional[list[str]] = None) -> str:
    """Markdown table of every exercise in course order: chapter (on its first exercise), the functions to write
    (linked to the exercise version), difficulty, importance, expected time; a chapter with more than one exercise
    gets a row with its total, and the last row gives the course's."""
    rows = []
    total, n_all = 0, 0
    for stem in stems or runner.chapters():
        exs = exercises.get(stem, [])
        for i, e in enumerate(exs):
            chapter = f"{{doc}}`chapters/{stem}`" if i == 0 else ""
            link = f"{{doc}}`{', '.join(e.names)} <exercises/{stem}>`"
            rows.append(f"| {chapter} | {link} | {rating(e.difficulty, '🔴')} | {rating(e.importance, '🔵')} "
                        f"| {duration(e.minutes)} |")
        m = sum(e.minutes for e in exs)
        if len(exs) > 1:
            rows.append(f"| | *chapter total* | | | *{duration(m)}* |")
        total += m
        n_all += len(exs)
    rows.append(f"| **all chapters** | **{n_all} exercise{'s' if n_all != 1 else ''}** | | | **{duration(total)}** |")
    return ("| chapter | exercise: functions to write | difficulty | importance | time |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def write_exercises(dest: str | Path = EXERCISE_DIR, stems: Optional[list[str]] = None) -> list[Path]:
    """Write ``<stem>.ipynb`` for each chapter with solution cells into ``dest`` (stale ones removed), the exercise
    list ``exercises.inc`` and the course table ``course.inc``; return the notebooks written."""
    import nbformat

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.ipynb"):
        old.unlink()
    written, exercises = [], {}
    stems = stems or runner.chapters()
    for stem in stems:
        nb = exercise_notebook(stem)
        if nb is None:
            continue
        exercises[stem] = chapter_exercises(stem)
        path = dest / f"{stem}.ipynb"
        nbformat.write(nb, path)
        written.append(path)
    (dest / EXERCISE_TABLE).write_text(exercise_table(exercises, stems=stems))
    (dest / COURSE_TABLE).write_text(course_table(exercises, stems=stems))
    return written
