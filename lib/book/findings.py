"""Each chapter's findings as testable statements, and on how many seeds each one holds.

A chapter lists its findings in its front matter, each a claim in words and a ``test``: a Python comparison
over the chapter's ``results.json`` keys (the paper's claim where the chapter reproduces a paper)::

    ftm:
      findings:
        - id: amplified
          claim: clean fine-tuning raises the IOI logit difference
          test: clean_ld > base_ld

``test`` may use result names, numbers, ``None``, comparisons (``< <= > >= == != is``, chained), ``and``/``or``/
``not``, ``+ - * /`` and ``abs``/``min``/``max``; nothing else parses (the expression is checked, not trusted).

Seeds: ``python -m lib sweep <chapter> --seeds 1..4 --record`` runs the chapter at its default parameters on
other seeds and writes ``book/seeds/<stem>.json`` (committed: which findings held on which seed, the numbers
the tests read, the commit and date). The book build puts a "Findings across seeds" table on every chapter page
that joins the seed of the build with the recorded seeds, so each finding reads "holds on k of n seeds"; a
chapter without a record says its findings were checked on the build's seed only.
"""
from __future__ import annotations

import ast
import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from lib.book import runner
from lib.organisms.seeding import REPO_ROOT, git_commit

SEED_DIR = REPO_ROOT / "book" / "seeds"

_FUNCS = {"abs": abs, "min": min, "max": max}
_NODES = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.Compare,
          ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.Is, ast.IsNot, ast.BinOp, ast.Add, ast.Sub,
          ast.Mult, ast.Div, ast.Name, ast.Load, ast.Constant, ast.Call)


class FindingError(ValueError):
    """A finding whose ``test`` is not an allowed expression, or a malformed ``findings`` list."""


@dataclass(frozen=True)
class Finding:
    id: str
    claim: str
    test: str

    @property
    def names(self) -> list[str]:
        """The result keys the test reads (in order of first use)."""
        out: list[str] = []
        for n in ast.walk(parse_test(self.test)):
            if isinstance(n, ast.Name) and n.id not in _FUNCS and n.id not in out:
                out.append(n.id)
        return out


def parse_test(test: str) -> ast.Expression:
    """The parsed ``test``; ``FindingError`` naming the first construct that is not allowed."""
    try:
        tree = ast.parse(test, mode="eval")
    except SyntaxError as e:
        raise FindingError(f"cannot parse test {test!r}: {e.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise FindingError(f"test {test!r}: {type(node).__name__} is not allowed")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCS
                                               and not node.keywords):
            raise FindingError(f"test {test!r}: only abs(), min() and max() may be called")
        if isinstance(node, ast.Constant) and not (node.value is None or isinstance(node.value, (int, float))):
            raise FindingError(f"test {test!r}: constant {node.value!r} is not a number or None")
    return tree


def evaluate(test: str, results: Mapping[str, Any]) -> Optional[bool]:
    """Whether ``test`` holds on ``results``; ``None`` when it cannot be decided (a key it reads is missing or
    not finite, or a comparison meets ``None`` other than by ``is``)."""
    tree = parse_test(test)
    env: dict[str, Any] = dict(_FUNCS)
    uses_is = any(isinstance(op, (ast.Is, ast.IsNot)) for n in ast.walk(tree) if isinstance(n, ast.Compare)
                  for op in n.ops)
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and n.id not in _FUNCS:
            if n.id not in results:
                return None
            v = results[n.id]
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if v is None and not uses_is:  # ``None == 7`` is False in Python; here it is undecided
                return None
            env[n.id] = v
    try:
        return bool(eval(compile(tree, "<finding>", "eval"), {"__builtins__": {}}, env))  # noqa: S307 (checked AST)
    except (TypeError, ZeroDivisionError):
        return None


def chapter_findings(stem: str) -> list[Finding]:
    """The findings in ``notebooks/<stem>.md``'s front matter (``ftm.findings``), validated."""
    raw = runner.notebook_meta(stem).get("findings") or []
    out: list[Finding] = []
    for i, f in enumerate(raw):
        if not isinstance(f, dict) or set(f) != {"id", "claim", "test"}:
            raise FindingError(f"{stem}: findings[{i}] must have exactly the keys id, claim, test; got {f!r}")
        fd = Finding(str(f["id"]), str(f["claim"]), str(f["test"]))
        parse_test(fd.test)
        if fd.id in {x.id for x in out}:
            raise FindingError(f"{stem}: finding id {fd.id!r} repeats")
        out.append(fd)
    return out


# Parameters that do not change the setting a finding is about: the seed (a record spans seeds) and the device.
NOT_SETTING = ("SEED", "DEVICE", "OUTPUT_DIR")


def default_params(stem: str) -> dict[str, Any]:
    """The chapter's defaults other than ``SEED`` and ``DEVICE``: the setting a seed record is about."""
    return {k: v for k, v in runner.default_parameters(stem).items() if k not in NOT_SETTING}


def _run_params(results: Mapping[str, Any]) -> dict[str, Any]:
    used = dict(results.get("provenance", {}).get("parameters", {}))
    used.pop("OUTPUT_DIR", None)
    return used


# --------------------------------------------------------------------------- the seed record


def record_path(stem: str, root: Path | None = None) -> Path:
    return (root or SEED_DIR) / f"{stem}.json"


def record(stem: str, runs: Mapping[int, Mapping[str, Any]], root: Path | None = None) -> Path:
    """Write (or extend) ``book/seeds/<stem>.json`` from default-parameter runs ``{seed: results}``.

    Keeps, per seed, whether each finding held and the values its test read. Refuses runs whose parameters
    (other than ``SEED``) are not the chapter's defaults: the book's statement is about the book's setting.
    """
    findings = chapter_findings(stem)
    defaults = default_params(stem)
    path = record_path(stem, root)
    old = json.loads(path.read_text()) if path.exists() else {}
    seeds = {} if old.get("params") != defaults else dict(old.get("seeds", {}))
    for seed, res in runs.items():
        used = {k: v for k, v in _run_params(res).items() if k not in NOT_SETTING}
        if used and used != defaults:
            diff = sorted(k for k in set(used) | set(defaults) if used.get(k) != defaults.get(k))
            raise ValueError(f"seed {seed}: parameters {', '.join(diff)} differ from the defaults of {stem}; "
                             f"only default-parameter runs are recorded")
        seeds[str(seed)] = {
            "holds": {f.id: evaluate(f.test, res) for f in findings},
            "values": {n: res.get(n) for n in record_keys(stem)},
            "git_commit": res.get("provenance", {}).get("git_commit"),
        }
    doc = {"chapter": stem, "params": defaults, "git_commit": git_commit(),
           "date": _dt.date.today().isoformat(),
           "note": "written by `python -m lib sweep <chapter> --seeds ... --record`; read by the book build",
           "seeds": dict(sorted(seeds.items(), key=lambda kv: int(kv[0])))}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return path


def record_keys(stem: str) -> list[str]:
    """The result keys a seed record keeps: those the findings' tests read, then the chapter's headline
    ``ftm.results`` and ``ftm.record_extra`` (e.g. a curve a chapter draws over the recorded seeds)."""
    meta = runner.notebook_meta(stem)
    out: list[str] = []
    for n in [n for f in chapter_findings(stem) for n in f.names] + list(meta.get("results") or []) \
            + list(meta.get("record_extra") or []):
        if n not in out:
            out.append(n)
    return out


def seed_values(stem: str, key: str, params: Optional[Mapping[str, Any]] = None,
                root: Path | None = None) -> dict[int, Any]:
    """``{seed: value}`` of result ``key`` over the recorded seeds of ``stem``. ``params``: the running chapter's
    parameters (``lib.book.chapter.chapter_params``); when given, the record is used only if they are the defaults other
    than ``SEED`` (another setting has no recorded seeds: ``{}``)."""
    if params is not None and {k: v for k, v in params.items() if k not in NOT_SETTING} \
            != default_params(stem):
        return {}
    rec = load_record(stem, root)
    out = {int(s): e.get("values", {}).get(key) for s, e in (rec or {}).get("seeds", {}).items()}
    return {s: v for s, v in sorted(out.items()) if v is not None}


def over_seeds(stem: str, key: str, value: Any, params: Mapping[str, Any], digits: int = 2,
               root: Path | None = None, with_n: bool = True) -> str:
    """A headline number over seeds for prose: ``"0.93 [0.88, 0.98], 5 seeds"`` (mean and 95 % Student-t interval
    over this run's ``value`` and the recorded seeds' ``key``), or ``"this seed only"`` with fewer than two
    numbers. ``params``: the running chapter's (``lib.book.chapter.chapter_params``), which must include ``SEED``.
    ``with_n=False`` leaves out ``", 5 seeds"`` (a table cell: one number and its interval)."""
    from lib.methods.stats import mean_ci

    seed = int(params.get("SEED", 0))
    vals = {s: v for s, v in seed_values(stem, key, params, root).items() if s != seed}
    vals[seed] = value
    xs = [float(x) for x in vals.values()
          if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)]
    if len(xs) < 2:
        return "this seed only"
    iv = mean_ci(xs)
    return f"{iv.point:.{digits}f} [{iv.lo:.{digits}f}, {iv.hi:.{digits}f}]" + (f", {len(xs)} seeds" if with_n else "")


def load_record(stem: str, root: Path | None = None) -> Optional[dict[str, Any]]:
    """The recorded seeds of ``stem`` if their parameters are the chapter's current defaults, else ``None``."""
    path = record_path(stem, root)
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    return doc if doc.get("params") == default_params(stem) else None


@dataclass
class Tally:
    """One finding over seeds: ``held`` of ``n`` decided seeds (``None`` results left out of ``n``)."""

    finding: Finding
    by_seed: dict[int, Optional[bool]]

    @property
    def n(self) -> int:
        return sum(v is not None for v in self.by_seed.values())

    @property
    def held(self) -> int:
        return sum(v is True for v in self.by_seed.values())

    def sentence(self) -> str:
        if self.n == 0:
            return "not decided on any seed"
        if self.n == 1:
            seed = next(s for s, v in self.by_seed.items() if v is not None)
            return f"{'holds' if self.held else 'does not hold'} on the one seed checked (seed {seed})"
        return f"holds on {self.held} of {self.n} seeds"


def tally(stem: str, results: Mapping[str, Any], root: Path | None = None) -> list[Tally]:
    """Each finding on the build's run ``results`` joined with the recorded seeds (when the build ran the
    defaults; a recorded seed equal to the build's is replaced by the build's own run)."""
    findings = chapter_findings(stem)
    used = _run_params(results)
    seed = int(used.get("SEED", 0))
    rec = load_record(stem, root) if {k: v for k, v in used.items() if k not in NOT_SETTING} == default_params(stem) else None
    out = []
    for f in findings:
        by_seed: dict[int, Optional[bool]] = {}
        for s, entry in (rec or {}).get("seeds", {}).items():
            values = entry.get("values", {})
            # re-decided from the recorded numbers when they cover the test (a test edited since the sweep
            # reads the same keys); else the verdict recorded then
            by_seed[int(s)] = (evaluate(f.test, values) if all(n in values for n in f.names)
                               else entry["holds"].get(f.id))
        by_seed[seed] = evaluate(f.test, results)
        out.append(Tally(f, dict(sorted(by_seed.items()))))
    return out


def table_cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell (a literal ``|`` would end the cell)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _mark(v: Optional[bool]) -> str:
    return "✓" if v else ("–" if v is None else "✗")


def findings_markdown(stem: str, results: Mapping[str, Any], root: Path | None = None) -> str:
    """The "Findings across seeds" admonition of a chapter page (empty string if the chapter lists none)."""
    tallies = tally(stem, results, root)
    if not tallies:
        return ""
    seed = int(_run_params(results).get("SEED", 0))
    seeds = list(tallies[0].by_seed)
    rec = load_record(stem, root)
    head = " | ".join(f"seed {s}" + (" (this build)" if s == seed else "") for s in seeds)
    rows = "\n".join(f"| {table_cell(t.finding.claim)} | `{t.finding.test}` | "
                     + " | ".join(_mark(t.by_seed[s]) for s in seeds) + f" | {t.sentence()} |" for t in tallies)
    if rec and len(seeds) > 1:
        src = (f"Seeds other than {seed} come from `book/seeds/{stem}.json`, recorded at commit "
               f"`{str(rec.get('git_commit'))[:10]}` on {rec.get('date')} with this chapter's default parameters.")
    else:
        src = (f"Only the seed of this build has been checked: no sweep at the default parameters is recorded "
               f"(`book/seeds/{stem}.json`).")
    values = values_markdown(stem, results, root)
    return (f":::{{admonition}} Findings across seeds\n:class: note\n\n"
            f"Each finding of this chapter as a test on its `results.json` (✓ holds, ✗ does not, – undecided):\n\n"
            f"| finding | test | {head} | over seeds |\n|---|---|" + "---|" * len(seeds) + f"---|\n{rows}\n\n"
            f"{src} To check more seeds: `python -m lib sweep {stem} --seeds {max(seeds) + 1}..{max(seeds) + 2} "
            f"--record`.{values}\n:::")


def summary_markdown(stem: str, results: Mapping[str, Any], root: Path | None = None) -> str:
    """The box a chapter page opens with: each claim and on how many seeds it holds (details at the page's end)."""
    tallies = tally(stem, results, root)
    if not tallies:
        return ""
    rows = "\n".join(f"| {table_cell(t.finding.claim)} | {t.sentence()} |" for t in tallies)
    return (f":::{{admonition}} What this chapter finds\n:class: important\n\n| claim | at the default "
            f"parameters |\n|---|---|\n{rows}\n\nEach claim is a test on the chapter's results; the tests, the "
            f"per-seed table and the headline numbers over seeds are under *Parameters, seeds and tests* at the "
            f"end of the page.\n:::")


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"


def values_markdown(stem: str, results: Mapping[str, Any], root: Path | None = None) -> str:
    """The chapter's headline numbers (``ftm.results``) over the build's seed and the recorded seeds: mean with
    its 95 % Student-t interval, and the range; empty when only one seed is known."""
    from lib.methods.stats import mean_ci

    keys = list(runner.notebook_meta(stem).get("results") or [])
    used = _run_params(results)
    seed = int(used.get("SEED", 0))
    rec = load_record(stem, root) if {k: v for k, v in used.items() if k not in NOT_SETTING} == default_params(stem) else None
    if not rec or not keys:
        return ""
    per_seed = {int(s): e.get("values", {}) for s, e in rec.get("seeds", {}).items()}
    per_seed[seed] = dict(results)
    rows = []
    for k in keys:
        xs = [v.get(k) for v in per_seed.values()]
        xs = [float(x) for x in xs if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)]
        if len(xs) < 2:
            continue
        iv = mean_ci(xs)
        rows.append(f"| `{k}` | {_fmt(iv.point)} | [{_fmt(iv.lo)}, {_fmt(iv.hi)}] | {_fmt(min(xs))} – "
                    f"{_fmt(max(xs))} | {len(xs)} |")
    if not rows:
        return ""
    return ("\n\nHeadline numbers over these seeds (mean, 95 % Student-t interval over seeds, range):\n\n"
            "| result | mean | 95 % interval | range | seeds |\n|---|---|---|---|---|\n" + "\n".join(rows))
