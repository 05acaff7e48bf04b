"""Teach mode: exercises generated from solution-tagged cells, and the checks that grade them."""
from __future__ import annotations

import doctest
import json
import re
import textwrap

import nbformat
import pytest
import torch

from lib.book import checks, runner, teach
from lib.organisms.seeding import REPO_ROOT


def _exec(source: str) -> dict:
    ns: dict = {}
    exec(compile(source, "<cell>", "exec"), ns)
    return ns


# --------------------------------------------------------------------------- stubs


SOLUTION = textwrap.dedent('''\
    import math

    SCALE = 2.0


    @staticmethod
    def ignored(x):
        return x


    def scaled_sum(xs: list[float],
                   scale: float = SCALE) -> float:
        """Sum of ``xs`` times ``scale``."""
        # a comment that gives the answer away
        total = math.fsum(xs)
        return total * scale


    def helper(x):
        return x + 1
    ''')


def test_stub_keeps_signature_docstring_and_other_code():
    stub = teach.stub_source(SOLUTION, ["scaled_sum"])
    assert "math.fsum" not in stub and "gives the answer away" not in stub
    assert '"""Sum of ``xs`` times ``scale``."""' in stub
    assert "raise NotImplementedError  # your code" in stub
    assert "SCALE = 2.0" in stub and "import math" in stub
    assert "return x + 1" in stub  # functions not named stay as they are
    ns = _exec(stub)
    with pytest.raises(NotImplementedError):
        ns["scaled_sum"]([1.0, 2.0])
    assert ns["scaled_sum"].__doc__ == "Sum of ``xs`` times ``scale``."
    assert ns["helper"](1) == 2
    import inspect
    assert list(inspect.signature(ns["scaled_sum"]).parameters) == ["xs", "scale"]


def test_stub_of_every_function_and_one_liners():
    stub = teach.stub_source("def f(a): return a * 2\nasync def g():\n    return 1\n")
    assert "a * 2" not in stub and stub.count("raise NotImplementedError") == 2
    with pytest.raises(NotImplementedError):
        _exec(stub)["f"](1)


def test_exercise_markdown_strips_glue_and_labels():
    md = textwrap.dedent("""\
        (sec-results)=
        ## Results
        The loss is {glue:text}`general_loss:.3f` nats and {glue}`n_params` parameters.

        ```{glue:figure} curve_fig
        :name: fig-curve
        The curve.
        ```
        See {ref}`sec-results`.""")
    out = teach.exercise_markdown(md)
    assert "{glue" not in out and "(sec-results)=" not in out and ":name:" not in out
    assert "`general_loss`" in out and "`n_params`" in out and "curve_fig" in out
    assert "See {ref}`sec-results`." in out  # still resolves: to the chapter's label


def _r(text: str) -> str:
    """``text`` with each ○ as the empty place of a rating (``teach.UNMARKED``: ⚪ with the emoji selector)."""
    return text.replace("○", teach.UNMARKED)


META = {"difficulty": 2, "importance": 3, "minutes": 10, "hint": "Use sets.", "expected": "0.5"}


def _cell(source: str, check=None, tags=("solution",), **meta):
    c = nbformat.v4.new_code_cell(source)
    c.metadata["tags"] = list(tags)
    if check is not None:
        c.metadata["check"] = check
    c.metadata.update(META if not meta else {k: v for k, v in {**META, **meta}.items() if v is not None})
    return c


def test_validate_cell_names_what_is_wrong():
    with pytest.raises(teach.TeachError, match="no `:check:`"):
        teach.validate_cell(_cell("def masked_lm_loss(a, b, c): pass"))
    with pytest.raises(teach.TeachError, match="not registered"):
        teach.validate_cell(_cell("def nope(a): pass", "nope"))
    with pytest.raises(teach.TeachError, match="defines no function 'logit_diff'"):
        teach.validate_cell(_cell("def masked_lm_loss(a, b, c): pass", "logit_diff"))
    assert teach.validate_cell(_cell("def logit_diff(l, d): pass\ndef jaccard(a, b): pass",
                                     ["logit_diff", "jaccard"])) == ["logit_diff", "jaccard"]
    assert teach.cell_checks(_cell("", "logit_diff, jaccard")) == ["logit_diff", "jaccard"]


@pytest.mark.parametrize("key", list(teach.EXERCISE_KEYS))
def test_a_missing_exercise_field_is_refused(key):
    with pytest.raises(teach.TeachError, match=f"lacks `{key}`"):
        teach.exercise_of(_cell("def jaccard(a, b): pass", "jaccard", **{key: None}))


@pytest.mark.parametrize("key,value", [
    ("difficulty", 0), ("difficulty", 6), ("difficulty", "3"), ("difficulty", 2.5), ("difficulty", True),
    ("importance", -1), ("importance", 9), ("minutes", 0), ("minutes", 121), ("minutes", "10-15"),
    ("hint", ""), ("hint", "   "), ("hint", "x" * 501), ("hint", ["a list"]), ("expected", ""), ("expected", 0.5),
])
def test_an_out_of_range_exercise_field_is_refused(key, value):
    with pytest.raises(teach.TeachError, match=f"`{key}"):
        teach.exercise_of(_cell("def jaccard(a, b): pass", "jaccard", **{key: value}))


def test_exercise_fields_at_the_edges_of_their_ranges_are_accepted():
    ex = teach.exercise_of(_cell("def jaccard(a, b): pass", "jaccard", difficulty=1, importance=5, minutes=120,
                                 hint="  x" * 166, expected=" 0.5\n"))
    assert (ex.difficulty, ex.importance, ex.minutes, ex.expected) == (1, 5, 120, "0.5")
    assert ex.names == ("jaccard",)


def test_info_line_and_durations():
    ex = teach.Exercise(("f",), 2, 4, 75, "h", "e")
    assert teach.info_line(ex) == _r("**Difficulty** 🔴🔴○○○ · **Importance** 🔵🔵🔵🔵○ · **Time** about 1 h 15 min")
    assert [teach.duration(m) for m in (5, 60, 125)] == ["5 min", "1 h", "2 h 5 min"]


# --------------------------------------------------------------------------- a chapter made up for the test

FAKE_CHAPTER = '''\
---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
ftm:
  smoke:
    N: 2
---

# Heads

(sec-heads)=
Intro with {glue:text}`score:.2f`.

```{code-cell} ipython3
:tags: [parameters]
SEED = 0  # seed
N = 5  # size
OUTPUT_DIR = "runs/x"  # out
```

```{code-cell} ipython3
---
tags: [solution]
check: jaccard
difficulty: 1
importance: 3
minutes: 5
hint: >-
  Make sets
  of both.
expected: |-
  >>> jaccard([(0, 1)], [(0, 1), (1, 2)])
  0.5
---
def jaccard(a, b):
    """|a & b| / |a | b| (1.0 if both empty)."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if (sa | sb) else 1.0
```

```{code-cell} ipython3
print(jaccard([(0, 1)], [(0, 1), (1, 2)]))
```
'''


@pytest.fixture
def fake_chapter(tmp_path, monkeypatch):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    (nbdir / "99_heads.md").write_text(FAKE_CHAPTER)
    _use_chapters(tmp_path, monkeypatch, nbdir)
    return "99_heads"


def _use_chapters(tmp_path, monkeypatch, nbdir):
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/chapters/99_heads\n")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", nbdir)
    monkeypatch.setattr(runner, "TOC", toc)
    monkeypatch.setattr(runner.chapters, "__defaults__", (toc,))


def test_exercise_fields_read_from_the_notebook(fake_chapter):
    [ex] = teach.chapter_exercises(fake_chapter)
    assert ex == teach.Exercise(("jaccard",), 1, 3, 5, "Make sets of both.",
                                ">>> jaccard([(0, 1)], [(0, 1), (1, 2)])\n0.5")


@pytest.mark.parametrize("line,replacement,message", [
    ("difficulty: 1\n", "", "lacks `difficulty`"),
    ("minutes: 5\n", "minutes: 500\n", "`minutes: 500` is out of range"),
    ("importance: 3\n", "importance: 0\n", "`importance: 0` is out of range"),
    ("hint: >-\n  Make sets\n  of both.\n", "hint:\n", "`hint` must be non-empty text"),  # an empty option
])
def test_the_exercise_version_refuses_a_broken_cell_naming_chapter_and_cell(fake_chapter, line, replacement,
                                                                            message):
    path = runner.NOTEBOOK_DIR / "99_heads.md"
    assert line in FAKE_CHAPTER
    path.write_text(FAKE_CHAPTER.replace(line, replacement))
    with pytest.raises(teach.TeachError, match=re.escape("chapter 99_heads, solution cell 1 (jaccard): ")) as err:
        teach.exercise_notebook(fake_chapter)
    assert message in str(err.value)
    with pytest.raises(teach.TeachError, match="99_heads"):
        teach.write_exercises(runner.NOTEBOOK_DIR.parent / "exercises")


def test_exercise_notebook_from_tags(fake_chapter):
    nb = teach.exercise_notebook(fake_chapter)
    srcs = [c.source for c in nb.cells]
    assert srcs[0].startswith("# Exercise: Heads")
    assert "Exercise version of {doc}`this chapter <../chapters/99_heads>`" in srcs[1]
    assert "`N = 2`" in srcs[1]  # the smoke parameters are offered
    assert not any("len(sa & sb)" in s for s in srcs), "the solution leaked into the exercise"
    ex = [c for c in nb.cells if "exercise" in c.metadata.get("tags", [])]
    chk = [c for c in nb.cells if teach.CHECK_TAG in c.metadata.get("tags", [])]
    assert len(ex) == 1 and len(chk) == 1
    assert nb.cells.index(chk[0]) == nb.cells.index(ex[0]) + 1
    # Before the exercise: the line with difficulty, importance and time, then the hint and expected output, folded.
    info = nb.cells[nb.cells.index(ex[0]) - 1]
    assert info.cell_type == "markdown" and info.metadata["tags"] == [teach.INFO_TAG]
    assert info.source.splitlines()[0] == _r("**Difficulty** 🔴○○○○ · **Importance** 🔵🔵🔵○○ · **Time** about 5 min")
    assert ":::{dropdown} Hint\nMake sets of both.\n:::" in info.source
    assert ":::{dropdown} Expected output\n" in info.source
    assert f"prints `{checks.success_line('jaccard')}`." in info.source  # what the check prints when it is right
    assert "```pycon\n>>> jaccard([(0, 1)], [(0, 1), (1, 2)])\n0.5\n```" in info.source
    assert info.source.count(":::") == 4  # two dropdowns, each closed
    assert "(about 5 min in all)" in srcs[1]
    assert 'check("jaccard", jaccard)' in chk[0].source
    assert all("solution" not in c.metadata.get("tags", []) for c in nb.cells)
    assert not any("{glue" in s or "(sec-heads)=" in s for s in srcs)
    # The stub fails its check with a message saying what to do; the solution passes it.
    ns = _exec(ex[0].source)
    with pytest.raises(checks.CheckFailed, match="not implemented yet"):
        exec(chk[0].source, ns)
    sol = teach.solution_cells(runner.read_notebook(fake_chapter))[0]
    assert checks.check("jaccard", _exec(sol.source)["jaccard"], quiet=True)


def test_write_exercises_replaces_stale_and_writes_course_table(fake_chapter, tmp_path):
    dest = tmp_path / "exercises"
    dest.mkdir()
    (dest / "stale.ipynb").write_text("{}")
    paths = teach.write_exercises(dest)
    assert [p.name for p in paths] == ["99_heads.ipynb"]
    assert not (dest / "stale.ipynb").exists()
    nb = json.loads((dest / "99_heads.ipynb").read_text())
    assert nb["metadata"]["ftm"]["exercise_of"] == "99_heads"
    table = (dest / teach.COURSE_TABLE).read_text()
    assert "{doc}`chapters/99_heads`" in table and "{doc}`1 function <exercises/99_heads>`, about 5 min" in table
    ex = teach.chapter_exercises("99_heads")
    assert "3.0 min" in teach.course_table({"99_heads": ex}, {"99_heads": 180.0})
    rows = (dest / teach.EXERCISE_TABLE).read_text().splitlines()
    assert rows[2] == _r("| {doc}`chapters/99_heads` | {doc}`jaccard <exercises/99_heads>` | 🔴○○○○ | 🔵🔵🔵○○ "
                          "| 5 min |")
    assert rows[3] == "| **all chapters** | **1 exercise** | | | **5 min** |"


def test_exercise_table_totals_chapters_with_several_exercises():
    a, b = teach.Exercise(("f", "g"), 1, 2, 40, "h", "e"), teach.Exercise(("k",), 5, 5, 30, "h", "e")
    rows = teach.exercise_table({"x": [a, b], "y": [b]}, stems=["x", "y", "z"]).splitlines()[2:]
    assert rows == [_r("| {doc}`chapters/x` | {doc}`f, g <exercises/x>` | 🔴○○○○ | 🔵🔵○○○ | 40 min |"),
                    "|  | {doc}`k <exercises/x>` | 🔴🔴🔴🔴🔴 | 🔵🔵🔵🔵🔵 | 30 min |",
                    "| | *chapter total* | | | *1 h 10 min* |",
                    "| {doc}`chapters/y` | {doc}`k <exercises/y>` | 🔴🔴🔴🔴🔴 | 🔵🔵🔵🔵🔵 | 30 min |",
                    "| **all chapters** | **3 exercises** | | | **1 h 40 min** |"]


# --------------------------------------------------------------------------- the real chapters


def _solution_cells():
    out = []
    for stem in runner.chapters():
        for i, cell in enumerate(teach.solution_cells(runner.read_notebook(stem))):
            out.append(pytest.param(stem, cell, id=f"{stem}-{i}"))
    return out


@pytest.mark.parametrize("stem,cell", _solution_cells())
def test_every_solution_passes_its_check_and_every_stub_fails_it(stem, cell):
    names = teach.validate_cell(cell, f"{stem}: ")
    ns = _exec(cell.source)  # solution cells are self-contained
    stub = _exec(teach.stub_source(cell.source, names))
    for name in names:
        assert checks.check(name, ns[name], quiet=True)
        with pytest.raises(checks.CheckFailed, match="not implemented"):
            checks.check(name, stub[name], quiet=True)


@pytest.mark.parametrize("stem,cell", _solution_cells())
def test_every_exercise_declares_its_fields_and_its_expected_output_is_right(stem, cell):
    ex = teach.exercise_of(cell, f"{stem}: ")
    assert 1 <= ex.difficulty <= 5 and 1 <= ex.importance <= 5 and 1 <= ex.minutes <= teach.MAX_MINUTES
    assert len(ex.hint) >= 40 and ex.hint.count(". ") <= 2, f"{stem}: the hint is not one or two sentences"
    # The expected output is a worked example: run its >>> lines against the solution, output compared verbatim.
    examples = doctest.DocTestParser().get_examples(ex.expected)
    assert examples, f"{stem}: `expected` has no >>> example"
    ns = {"torch": torch, **_exec(cell.source)}
    test = doctest.DocTest(examples, ns, f"{stem}:expected", None, 0, ex.expected)
    runner_ = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    result = runner_.run(test, out=out.append)
    assert result.failed == 0, f"{stem}: the expected output is not what the solution gives:\n" + "".join(out)
    # ... and the stub does not give it.
    stub = {"torch": torch, **_exec(teach.stub_source(cell.source, ex.names))}
    result = doctest.DocTestRunner().run(doctest.DocTest(examples, stub, stem, None, 0, ex.expected),
                                         out=lambda s: None)
    assert result.failed > 0


def test_the_teaching_page_lists_every_exercise_of_the_notebooks(tmp_path):
    """book/teaching.md includes the generated list; the list is what the notebooks' solution cells declare."""
    page = (REPO_ROOT / "book" / "teaching.md").read_text()
    assert f"```{{include}} exercises/{teach.EXERCISE_TABLE}\n```" in page
    assert f"```{{include}} exercises/{teach.COURSE_TABLE}\n```" in page
    teach.write_exercises(tmp_path)
    rows = [r for r in (tmp_path / teach.EXERCISE_TABLE).read_text().splitlines()[2:]]
    course = (tmp_path / teach.COURSE_TABLE).read_text()
    listed, total = [], 0
    for stem in runner.chapters():
        sols = teach.solution_cells(runner.read_notebook(stem))  # the declared fields, read straight from the source
        for c in sols:
            listed.append((stem, ", ".join(teach.cell_checks(c)), "🔴" * c.metadata["difficulty"],
                           "🔵" * c.metadata["importance"], c.metadata["minutes"]))
        minutes = sum(c.metadata["minutes"] for c in sols)
        total += minutes
        if sols:  # the chapter's total
            assert f"<exercises/{stem}>`, about {teach.duration(minutes)} |" in course, stem
    table, empty = [], re.escape(teach.UNMARKED)
    for r in rows:
        m = re.match(r"\| [^|]* \| \{doc\}`([^<`]+) <exercises/(\w+)>` \| (🔴*)(?:%s)* \| (🔵*)(?:%s)* \| (.+) \|$"
                     % (empty, empty), r)
        if m:
            table.append((m.group(2), m.group(1), m.group(3), m.group(4), m.group(5)))
    assert [(s, n, d, i, teach.duration(t)) for s, n, d, i, t in listed] == table
    assert len(listed) >= 8, "every chapter with a solution cell is listed"
    assert rows[-1] == f"| **all chapters** | **{len(listed)} exercises** | | | **{teach.duration(total)}** |"


def test_the_book_has_exercises_and_no_solution_survives(tmp_path):
    import ast

    paths = teach.write_exercises(tmp_path)
    assert paths, "no chapter has a solution cell: teach mode would generate nothing"
    for p in paths:
        nb = nbformat.read(p, as_version=4)
        stem = nb.metadata["ftm"]["exercise_of"]
        n_sol = len(teach.solution_cells(runner.read_notebook(stem)))
        stubs = [c for c in nb.cells if "exercise" in c.metadata.get("tags", [])]
        assert len(stubs) == n_sol and n_sol > 0
        for cell in stubs:
            for fn in (n for n in ast.parse(cell.source).body if isinstance(n, ast.FunctionDef)):
                if fn.name not in teach.cell_checks(cell):
                    continue
                body = fn.body[1:] if ast.get_docstring(fn) is not None else fn.body
                assert len(body) == 1 and isinstance(body[0], ast.Raise), f"{stem}: {fn.name} keeps its solution"
                assert "raise NotImplementedError  # your code" in cell.source


# --------------------------------------------------------------------------- checks


@pytest.mark.parametrize("name", sorted(checks.CHECKS))
def test_reference_passes_its_own_check(name):
    assert checks.check(name, checks.CHECKS[name].reference, quiet=True)


def test_checks_catch_wrong_functions():
    # Cross-entropy over every position instead of the masked targets.
    def unmasked(logits, tokens, loss_mask):
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())

    with pytest.raises(checks.CheckFailed, match="masked_lm_loss differs"):
        checks.check("masked_lm_loss", unmasked)

    # Sign error: logit(S) - logit(IO).
    from lib.worlds import ioi

    with pytest.raises(checks.CheckFailed, match="logit_diff differs"):
        checks.check("logit_diff", lambda logits, ds, per_prompt=False: -ioi.logit_diff(logits, ds, per_prompt))

    with pytest.raises(checks.CheckFailed, match="shape"):
        checks.check("keep_topk", lambda x, k: x.topk(k, dim=-1).values)

    with pytest.raises(checks.CheckFailed, match="raised ZeroDivisionError"):
        checks.check("jaccard", lambda a, b: len(set(a) & set(b)) / len(set(a) | set(b)), trials=50)

    # Alg. 3 without the bias term: differs on the first model that has biases in its blocks.
    from lib.methods import audit, pruning

    def no_bias(model, loss_fn, layers=None):
        layers = pruning.linear_layers(model) if layers is None else layers
        ws = [m.weight for m in layers.values()]
        grads = torch.autograd.grad(loss_fn(model), ws)
        units = [pruning.Unit(n, r) for n, m in layers.items() for r in range(m.weight.shape[0])]
        return units, torch.cat([(w.detach() * g).sum(1) for w, g in zip(ws, grads)])

    with pytest.raises(checks.CheckFailed, match="unit_scores differs"):
        checks.check("unit_scores", no_bias, trials=20)
    # Ignores the control fine-tune: detects whatever moved at all.
    with pytest.raises(checks.CheckFailed, match="verdict differs"):
        checks.check("verdict", lambda r, c, ratio=2.0: audit.verdict(r, None, ratio))


def test_check_does_not_let_in_place_changes_leak():
    def sneaky(x, k):
        out = x.clone()
        x.zero_()  # modifies its input: the reference must not see it
        return torch.zeros_like(out).scatter(-1, out.topk(k, -1).indices, out.topk(k, -1).values)

    assert checks.check("keep_topk", sneaky, quiet=True)


def test_same_compares_structures():
    assert checks.same({"a": [1, 2.0]}, {"a": [1, 2.0 + 1e-9]}, 1e-6, 1e-6) is None
    assert "['a']" in checks.same({"a": 1.0}, {"a": 2.0}, 1e-6, 1e-6)
    assert checks.same(torch.tensor(3.0), 3.0, 1e-6, 1e-6) is None
    assert checks.same(3, 3, 0, 0) is None and checks.same(2, 3, 0, 0)
    assert "shape" in checks.same(torch.zeros(2), torch.zeros(3), 0, 0)
    assert checks.same(float("nan"), float("nan"), 0, 0) is None
    with pytest.raises(KeyError, match="no check named"):
        checks.check("nonexistent", lambda: None)
