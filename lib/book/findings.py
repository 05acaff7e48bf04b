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

Two optional keys, both written before the numbers are seen:

- ``undecided``: when the test's metric is undefined on a seed's models, e.g. a ratio whose denominator is below a
  stated floor, or a behaviour that is absent: ``{when: "retrain_ld < 1.0", reason: "behaviour not recovered"}``
  (or a list of them). On a seed where ``when`` holds the finding is *undecided*, with that reason, never held
  or failed.
- ``pooled``: one test over all seeds together, an expression whose result names sit inside aggregators that
  reduce a per-seed expression to one number over the seeds: ``sign_p(e)`` (one-sided sign test that ``e > 0``),
  ``fisher(p)`` / ``stouffer(p)`` (combined p-value of per-seed p-values), ``mean(e)``, ``t_lo(e)`` / ``t_hi(e)``
  (95 % Student-t interval over seeds), ``n_true(e)`` and ``n_seeds(e)``; e.g. ``sign_p(clean_ld - base_ld) <
  0.05`` or ``t_lo(excess) > 0``. Seeds where the finding is undecided are left out of the pool.

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
from dataclasses import dataclass, field
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
class Undecided:
    """When a finding's metric is undefined on a seed (``when``, an expression like a test) and why."""

    when: str
    reason: str


@dataclass(frozen=True)
class Finding:
    id: str
    claim: str
    test: str
    pooled: Optional[str] = None
    undecided: tuple[Undecided, ...] = ()

    @property
    def names(self) -> list[str]:
        """The result keys the test, the undecided conditions and the pooled test read (in order of first use)."""
        out: list[str] = []
        trees = [parse_test(self.test)] + [parse_test(u.when) for u in self.undecided]
        if self.pooled:
            trees.append(parse_pooled(self.pooled))
        for tree in trees:
            out += [n for n in _names(tree) if n not in out]
        return out

    def why_undecided(self, results: Mapping[str, Any]) -> Optional[str]:
        """The reason the finding is undecided on ``results``: the first ``undecided`` condition that holds, or the
        keys the test needs that are missing or not finite; ``None`` when the test can be decided."""
        for u in self.undecided:
            hit = evaluate(u.when, results)
            if hit is None:
                return f"cannot evaluate the undecided condition {u.when}"
            if hit:
                return u.reason
        missing = [n for n in _names(parse_test(self.test))
                   if n not in results or (isinstance(results[n], float) and not math.isfinite(results[n]))]
        if missing:
            return f"no finite value of {', '.join(missing)}"
        return None

    def decide(self, results: Mapping[str, Any]) -> Optional[bool]:
        """``evaluate(test)`` unless an ``undecided`` condition holds (then ``None``)."""
        if any(evaluate(u.when, results) is not False for u in self.undecided):
            return None  # the metric is undefined there, or whether it is cannot be checked
        return evaluate(self.test, results)


def _names(tree: ast.AST) -> list[str]:
    out: list[str] = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and n.id not in _FUNCS and n.id not in _POOL and n.id not in out:
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
    except (TypeError, ArithmeticError, ValueError):
        return None


def _value(tree: ast.Expression, results: Mapping[str, Any]) -> Any:
    """The value of a checked expression on ``results``; ``None`` when a name is missing or not finite."""
    env: dict[str, Any] = dict(_FUNCS)
    for name in _names(tree):
        v = results.get(name)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return None
        env[name] = v
    try:
        return eval(compile(tree, "<finding>", "eval"), {"__builtins__": {}}, env)  # noqa: S307 (checked AST)
    except (TypeError, ArithmeticError, ValueError):
        return None


def _agg_sign_p(xs: list[float]) -> float:
    from lib.methods.stats import sign_test

    return sign_test(xs)


def _agg_combined(method: str):
    def combine(ps: list[float]) -> float:
        from scipy import stats as sps

        ps = [min(max(float(p), 1e-300), 1.0 - 1e-12) for p in ps]  # an exact 1 would make Stouffer's z infinite
        return float(sps.combine_pvalues(ps, method=method).pvalue)
    return combine


def _agg_t(side: str):
    def bound(xs: list[float]) -> float:
        from lib.methods.stats import mean_ci

        iv = mean_ci(xs)
        return iv.lo if side == "lo" else iv.hi
    return bound


# aggregators of a per-seed expression over seeds (pooled tests); each needs at least two decided seeds
_POOL: dict[str, Any] = {
    "sign_p": _agg_sign_p, "fisher": _agg_combined("fisher"), "stouffer": _agg_combined("stouffer"),
    "mean": lambda xs: float(sum(xs) / len(xs)), "t_lo": _agg_t("lo"), "t_hi": _agg_t("hi"),
    "n_true": lambda xs: int(sum(bool(x) for x in xs)), "n_seeds": len,
}


def parse_pooled(pooled: str) -> ast.Expression:
    """The parsed ``pooled`` expression: a test whose result names all sit inside one-argument aggregator calls
    (``_POOL``); ``FindingError`` otherwise."""
    try:
        tree = ast.parse(pooled, mode="eval")
    except SyntaxError as e:
        raise FindingError(f"cannot parse pooled test {pooled!r}: {e.msg}") from None
    aggs = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
            and n.func.id in _POOL]
    inside = {id(x) for a in aggs for x in ast.walk(a)}
    for node in ast.walk(tree):
        if id(node) in inside:
            continue
        if isinstance(node, ast.Name) and node.id not in _FUNCS:
            raise FindingError(f"pooled test {pooled!r}: {node.id!r} must sit inside an aggregator "
                               f"({', '.join(_POOL)})")
        if not isinstance(node, _NODES):
            raise FindingError(f"pooled test {pooled!r}: {type(node).__name__} is not allowed")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCS):
            raise FindingError(f"pooled test {pooled!r}: only the aggregators {', '.join(_POOL)} and abs(), "
                               f"min(), max() may be called")
        if isinstance(node, ast.Constant) and not (node.value is None or isinstance(node.value, (int, float))):
            raise FindingError(f"pooled test {pooled!r}: constant {node.value!r} is not a number or None")
    if not aggs:
        raise FindingError(f"pooled test {pooled!r}: no aggregator ({', '.join(_POOL)}) over seeds")
    for a in aggs:
        if len(a.args) != 1 or a.keywords:
            raise FindingError(f"pooled test {pooled!r}: {a.func.id}() takes one per-seed expression")
        inner = ast.Expression(a.args[0])
        if any(isinstance(x, ast.Call) and isinstance(x.func, ast.Name) and x.func.id in _POOL
               for x in ast.walk(inner)):
            raise FindingError(f"pooled test {pooled!r}: aggregators do not nest")
        boolean = isinstance(a.args[0], (ast.Compare, ast.BoolOp)) or (
            isinstance(a.args[0], ast.UnaryOp) and isinstance(a.args[0].op, ast.Not))
        if boolean != (a.func.id == "n_true") and a.func.id != "n_seeds":
            raise FindingError(f"pooled test {pooled!r}: {a.func.id}() takes " + (
                "a yes/no per seed (a comparison)" if a.func.id == "n_true" else
                "a number per seed, not a comparison (count the seeds where one holds with n_true())"))
        parse_test(ast.unparse(inner))
    return tree


@dataclass(frozen=True)
class Pooled:
    """A pooled test's verdict over seeds (``None``: undecided) with the aggregates it read."""

    holds: Optional[bool]
    values: dict[str, float]
    seeds: list[int]

    def text(self) -> str:
        if self.holds is None:
            return "undecided (fewer than 2 decided seeds)"
        vals = "; ".join(f"{k} = {v:.3g}" for k, v in self.values.items())
        return f"{'holds' if self.holds else 'does not hold'} over {len(self.seeds)} seeds ({vals})"


def evaluate_pooled(pooled: str, runs: Mapping[int, Mapping[str, Any]]) -> Pooled:
    """``pooled`` over the seeds' results ``{seed: results}``: each aggregator reduces its per-seed expression
    (seeds where it is undecided left out) to a number; with fewer than two seeds left it is undecided."""
    tree = parse_pooled(pooled)
    values: dict[str, float] = {}
    used: set[int] = set()

    class Reduce(ast.NodeTransformer):
        def visit_Call(self, node: ast.Call) -> ast.AST:
            if not (isinstance(node.func, ast.Name) and node.func.id in _POOL):
                return self.generic_visit(node)
            inner = ast.Expression(node.args[0])
            per_seed = {s: _value(inner, r) for s, r in runs.items()}
            xs = {s: float(v) for s, v in per_seed.items()
                  if isinstance(v, (int, float)) and (isinstance(v, bool) or math.isfinite(v))}
            if len(xs) < 2:
                raise _Undecided
            used.update(xs)
            v = _POOL[node.func.id](list(xs.values()))
            values[ast.unparse(node)] = float(v)
            return ast.copy_location(ast.Constant(value=float(v)), node)

    try:
        reduced = ast.fix_missing_locations(Reduce().visit(tree))
    except _Undecided:
        return Pooled(None, {}, sorted(runs))
    verdict = _value(reduced, {})
    return Pooled(None if verdict is None else bool(verdict), values, sorted(used))


class _Undecided(Exception):
    pass


def chapter_hash(stem: str) -> str:
    """A hash of chapter ``stem``'s code (every code cell but the parameters cell, as Python syntax trees: comments,
    blank lines and prose do not count). A seed record made by other chapter code is stale."""
    import hashlib

    nb = runner.read_notebook(stem)
    parts = []
    for cell in nb.cells:
        if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []):
            continue
        try:
            parts.append(ast.dump(ast.parse(cell.source)))
        except SyntaxError:  # a cell with IPython syntax: its text, whitespace-normalised
            parts.append(" ".join(cell.source.split()))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def chapter_findings(stem: str) -> list[Finding]:
    """The findings in ``notebooks/<stem>.md``'s front matter (``ftm.findings``), validated."""
    raw = runner.notebook_meta(stem).get("findings") or []
    out: list[Finding] = []
    for i, f in enumerate(raw):
        if not isinstance(f, dict) or not {"id", "claim", "test"} <= set(f) \
                or not set(f) <= {"id", "claim", "test", "pooled", "undecided"}:
            raise FindingError(f"{stem}: findings[{i}] must have the keys id, claim, test and optionally pooled, "
                               f"undecided; got {f!r}")
        und = f.get("undecided") or []
        und = [und] if isinstance(und, dict) else und
        if not all(isinstance(u, dict) and set(u) == {"when", "reason"} for u in und):
            raise FindingError(f"{stem}: findings[{i}].undecided must be {{when: <test>, reason: <text>}} or a list "
                               f"of them; got {f.get('undecided')!r}")
        fd = Finding(str(f["id"]), str(f["claim"]), str(f["test"]),
                     None if f.get("pooled") is None else str(f["pooled"]),
                     tuple(Undecided(str(u["when"]), str(u["reason"])) for u in und))
        parse_test(fd.test)
        for u in fd.undecided:
            parse_test(u.when)
        if fd.pooled is not None:
            parse_pooled(fd.pooled)
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
    new_hashes = {r.get("provenance", {}).get("chapter_hash") for r in runs.values()}
    if None in new_hashes or len(new_hashes) > 1:
        raise ValueError(f"{stem}: runs to record must all name the same chapter code (provenance.chapter_hash); "
                         f"got {sorted(map(str, new_hashes))}: re-run them with the current code")
    keep = old.get("params") == defaults and new_hashes <= {old.get("chapter_hash")}
    seeds = dict(old.get("seeds", {})) if keep else {}  # a record of other defaults or other code starts anew
    for seed, res in runs.items():
        used = {k: v for k, v in _run_params(res).items() if k not in NOT_SETTING}
        if used and used != defaults:
            diff = sorted(k for k in set(used) | set(defaults) if used.get(k) != defaults.get(k))
            raise ValueError(f"seed {seed}: parameters {', '.join(diff)} differ from the defaults of {stem}; "
                             f"only default-parameter runs are recorded")
        prov = res.get("provenance", {})
        seeds[str(seed)] = {
            "holds": {f.id: f.decide(res) for f in findings},
            "tests": {f.id: f.test for f in findings},
            "values": {n: res.get(n) for n in record_keys(stem)},
            "git_commit": prov.get("git_commit"),
            "chapter_hash": prov.get("chapter_hash"),
            "organisms": sorted(prov.get("organisms") or {}),
        }
    hashes = {e.get("chapter_hash") for e in seeds.values()}
    doc = {"chapter": stem, "params": defaults, "git_commit": git_commit(),
           "chapter_hash": hashes.pop() if len(hashes) == 1 else None,
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
    """The recorded seeds of ``stem`` if they are of the chapter's current defaults and current code
    (``record_staleness``), else ``None``."""
    path = record_path(stem, root)
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    return None if record_staleness(stem, doc) else doc


def record_staleness(stem: str, doc: Mapping[str, Any], results: Optional[Mapping[str, Any]] = None
                     ) -> Optional[str]:
    """Why the seed record ``doc`` no longer describes chapter ``stem`` (``None`` if it still does): other default
    parameters, other chapter code (``chapter_hash``), or, checked on the seed of a build's ``results`` when the
    record has it, other organisms (their cache keys: a recipe, world or training change). A record made before
    records carried a chapter hash cannot be checked, and is refused too: its numbers may come from other code."""
    if doc.get("params") != default_params(stem):
        return "it was made at other default parameters"
    if not doc.get("chapter_hash"):
        return (f"it was recorded (commit {str(doc.get('git_commit'))[:10]}, {doc.get('date')}) before records named "
                f"their chapter's code, which has changed since")
    if doc["chapter_hash"] != chapter_hash(stem):
        return (f"the chapter's code changed since it was recorded (commit {str(doc.get('git_commit'))[:10]}, "
                f"{doc.get('date')})")
    if results is not None:
        prov = results.get("provenance", {})
        entry = doc.get("seeds", {}).get(str(prov.get("seed", _run_params(results).get("SEED"))))
        built = sorted(prov.get("organisms") or {})
        if entry and entry.get("organisms") and built and sorted(entry["organisms"]) != built:
            return "this build's organisms (cache keys) differ from the recorded run's of the same seed"
    return None


@dataclass
class Tally:
    """One finding over seeds: ``held`` of ``n`` decided seeds (``None`` results left out of ``n``, with the
    reason in ``why``), and the finding's pooled test over the seeds when it has one."""

    finding: Finding
    by_seed: dict[int, Optional[bool]]
    why: dict[int, str] = field(default_factory=dict)
    pooled: Optional[Pooled] = None

    @property
    def n(self) -> int:
        return sum(v is not None for v in self.by_seed.values())

    @property
    def held(self) -> int:
        return sum(v is True for v in self.by_seed.values())

    def sentence(self) -> str:
        if self.n == 0:
            out = "not decided on any seed"
        elif self.n == 1:
            seed = next(s for s, v in self.by_seed.items() if v is not None)
            out = f"{'holds' if self.held else 'does not hold'} on the one seed checked (seed {seed})"
        else:
            out = f"holds on {self.held} of {self.n} seeds"
        undecided = sorted(s for s, v in self.by_seed.items() if v is None)
        if undecided and self.n:
            out += f"; undecided on {len(undecided)}"
        if self.pooled is not None and self.n >= 2:  # (one seed has nothing to pool)
            out += f"; pooled: {self.pooled.text()}"
        return out

    def reasons(self) -> str:
        """The undecided seeds and why, e.g. ``seed 3: behaviour not recovered``."""
        return "; ".join(f"seed {s}: {r}" for s, r in sorted(self.why.items()))


def tally(stem: str, results: Mapping[str, Any], root: Path | None = None) -> list[Tally]:
    """Each finding on the build's run ``results`` joined with the recorded seeds (when the build ran the
    defaults; a recorded seed equal to the build's is replaced by the build's own run)."""
    findings = chapter_findings(stem)
    used = _run_params(results)
    seed = int(used.get("SEED", 0))
    rec = _usable_record(stem, results, root)
    out = []
    for f in findings:
        by_seed: dict[int, Optional[bool]] = {}
        why: dict[int, str] = {}
        per_seed: dict[int, Mapping[str, Any]] = {}
        for s, entry in (rec or {}).get("seeds", {}).items():
            values = entry.get("values", {})
            # re-decided from the recorded numbers when they cover the test (a test edited since the sweep
            # reads the same keys); else the verdict recorded then, if it was of this very test
            if all(n in values for n in f.names):
                by_seed[int(s)], per_seed[int(s)] = f.decide(values), values
                if by_seed[int(s)] is None:
                    why[int(s)] = f.why_undecided(values) or "undecided"
            elif entry.get("tests", {}).get(f.id) == f.test:  # the numbers are gone, the verdict is of this test
                by_seed[int(s)] = entry["holds"].get(f.id)
                if by_seed[int(s)] is None:
                    why[int(s)] = "undecided when recorded"
            else:  # a verdict of another (older) test, or none: not this finding's
                by_seed[int(s)] = None
                why[int(s)] = "recorded before this test: re-record the seed"
        why.pop(seed, None)  # the build's own run replaces a recorded copy of its seed
        by_seed[seed], per_seed[seed] = f.decide(results), results
        if by_seed[seed] is None:
            why[seed] = f.why_undecided(results) or "undecided"
        pooled = None
        if f.pooled:
            decided = {s: r for s, r in per_seed.items() if by_seed.get(s) is not None}
            pooled = evaluate_pooled(f.pooled, decided)
        out.append(Tally(f, dict(sorted(by_seed.items())), why, pooled))
    return out


def _usable_record(stem: str, results: Mapping[str, Any], root: Path | None = None) -> Optional[dict[str, Any]]:
    """The record to join with a build's ``results``: none when the build ran other parameters than the defaults,
    or when the record is stale (``record_staleness``)."""
    used = _run_params(results)
    if {k: v for k, v in used.items() if k not in NOT_SETTING} != default_params(stem):
        return None
    path = record_path(stem, root)
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    return None if record_staleness(stem, doc, results) else doc


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
    rec = _usable_record(stem, results, root)
    head = " | ".join(f"seed {s}" + (" (this build)" if s == seed else "") for s in seeds)

    def test_cell(f: Finding) -> str:
        return f"`{table_cell(f.test)}`" + (f"; pooled: `{table_cell(f.pooled)}`" if f.pooled else "")
    rows = "\n".join(f"| {table_cell(t.finding.claim)} | {test_cell(t.finding)} | "
                     + " | ".join(_mark(t.by_seed[s]) for s in seeds) + f" | {table_cell(t.sentence())} |"
                     for t in tallies)
    path = record_path(stem, root)
    stale = record_staleness(stem, json.loads(path.read_text()), results) if path.exists() and rec is None \
        and {k: v for k, v in _run_params(results).items() if k not in NOT_SETTING} == default_params(stem) else None
    if rec and len(seeds) > 1:
        src = (f"Seeds other than {seed} come from `book/seeds/{stem}.json`, recorded at commit "
               f"`{str(rec.get('git_commit'))[:10]}` on {rec.get('date')} with this chapter's default parameters.")
    elif stale:
        src = (f"The recorded seeds (`book/seeds/{stem}.json`) are not shown: {stale}. Only the seed of this build "
               f"has been checked with the current code.")
    else:
        src = (f"Only the seed of this build has been checked: no sweep at the default parameters is recorded "
               f"(`book/seeds/{stem}.json`).")
    why = [f"{t.finding.id}: {t.reasons()}" for t in tallies if t.why]
    if why:
        src = "Undecided seeds: " + "; ".join(why) + ".\n\n" + src
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
    seed = int(_run_params(results).get("SEED", 0))
    rec = _usable_record(stem, results, root)
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
