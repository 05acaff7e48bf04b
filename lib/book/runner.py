"""Execute chapter notebooks with parameters: jupytext text -> papermill -> ``results.json``.

Chapters are the notebooks listed in ``_toc.yml`` (entries ``book/chapters/<stem>``, sources
``notebooks/<stem>.md``), so nothing here keeps its own list. Each notebook has exactly one cell tagged
``parameters`` holding plain ``UPPER_CASE = literal  # meaning`` lines; ``OUTPUT_DIR`` is one of them and the
notebook writes ``results.json`` and its figures there. Its front matter may carry ``ftm.smoke``: the small
parameters the tests run it with.

papermill accepts any parameter name silently; ``validate_params`` rejects unknown names (suggesting the
closest) and wrong types, naming the parameter, before anything executes.
"""
from __future__ import annotations

import ast
import difflib
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from lib.organisms.seeding import REPO_ROOT

TOC = REPO_ROOT / "_toc.yml"
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
CHAPTER_PREFIX = "book/chapters/"


class ParameterError(ValueError):
    """A parameter name or value a chapter does not accept."""


@dataclass
class Param:
    name: str
    default: Any
    meaning: str

    @property
    def type_name(self) -> str:
        return type(self.default).__name__


def _toc_files(node: Any) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        if "file" in node:
            out.append(str(node["file"]))
        for v in node.values():
            if isinstance(v, (list, dict)):
                out += _toc_files(v)
    elif isinstance(node, list):
        for v in node:
            out += _toc_files(v)
    return out


def chapters(toc: Path = TOC) -> list[str]:
    """Notebook stems in ``_toc.yml`` order (entries under ``book/chapters/``)."""
    files = _toc_files(yaml.safe_load(toc.read_text()))
    return [f[len(CHAPTER_PREFIX):].removesuffix(".ipynb") for f in files if f.startswith(CHAPTER_PREFIX)]


def source_path(stem: str) -> Path:
    return NOTEBOOK_DIR / f"{stem}.md"


def resolve(name: str) -> str:
    """A chapter stem from its stem, its number (``"1"``, ``"01"``) or its name without number."""
    stems = chapters()
    if name in stems:
        return name
    for s in stems:
        num, _, rest = s.partition("_")
        if name == rest or (name.isdigit() and int(name) == int(num)):
            return s
    raise ParameterError(f"unknown chapter {name!r}; chapters: {', '.join(stems)}")


def read_notebook(stem: str):
    """The chapter as an nbformat notebook (jupytext), with the python3 kernelspec papermill needs."""
    import jupytext

    path = source_path(stem)
    if not path.exists():
        raise FileNotFoundError(f"chapter {stem!r} is in _toc.yml but {path} does not exist")
    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def parameter_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]


_ASSIGN = re.compile(r"^([A-Z][A-Z0-9_]*)\s*(?::[^=]+)?=\s*(.+?)\s*(?:#\s*(.*))?$")


def parse_parameters(source: str) -> dict[str, Param]:
    """``{name: Param}`` from a parameters cell; every statement must be ``UPPER = literal`` (comments give meanings)."""
    params: dict[str, Param] = {}
    tree = ast.parse(source)
    lines = source.splitlines()
    for stmt in tree.body:
        if not (isinstance(stmt, (ast.Assign, ast.AnnAssign))):
            raise ParameterError(f"parameters cell line {stmt.lineno}: only `NAME = literal` assignments are allowed")
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) else stmt.target
        if not isinstance(target, ast.Name) or not re.fullmatch(r"[A-Z][A-Z0-9_]*", target.id):
            raise ParameterError(f"parameters cell line {stmt.lineno}: parameter names must be UPPER_CASE")
        try:
            value = ast.literal_eval(stmt.value)
        except ValueError:
            raise ParameterError(f"parameter {target.id}: default must be a literal") from None
        m = _ASSIGN.match(lines[stmt.lineno - 1].strip())
        meaning = (m.group(3) or "").strip() if m else ""
        if "=" in meaning:  # papermill's parameter parser misreads such lines and drops the parameter
            raise ParameterError(f"parameter {target.id}: its '# meaning' comment must not contain '='")
        params[target.id] = Param(target.id, value, meaning)
    return params


def notebook_parameters(stem: str) -> dict[str, Param]:
    nb = read_notebook(stem)
    cells = parameter_cells(nb)
    if len(cells) != 1:
        raise ParameterError(f"chapter {stem!r} must have exactly one 'parameters' cell, has {len(cells)}")
    return parse_parameters(cells[0].source)


def default_parameters(stem: str) -> dict[str, Any]:
    """The chapter's parameters at their defaults, without ``OUTPUT_DIR`` (what a default run records)."""
    return {k: p.default for k, p in notebook_parameters(stem).items() if k != "OUTPUT_DIR"}


def notebook_meta(stem: str) -> dict[str, Any]:
    """The ``ftm`` block of the notebook's front matter (``smoke`` parameters etc.)."""
    return dict(read_notebook(stem).metadata.get("ftm", {}))


def coerce(name: str, value: Any, default: Any) -> Any:
    """``value`` converted to the type of ``default`` (strings from the CLI are parsed as YAML first)."""
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
        if isinstance(value, str) and isinstance(default, float):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
    elif default is None:
        return value
    elif isinstance(value, type(default)):
        return value
    raise ParameterError(f"parameter {name} expects {type(default).__name__} (default {default!r}), "
                         f"got {type(value).__name__} {value!r}")


def validate_params(stem: str, params: dict[str, Any]) -> dict[str, Any]:
    """Coerced parameters; raises ``ParameterError`` naming any unknown or mistyped parameter."""
    known = notebook_parameters(stem)
    out = {}
    for k, v in params.items():
        if k not in known:
            close = difflib.get_close_matches(k, list(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ParameterError(f"unknown parameter {k!r} for chapter {stem!r}{hint} "
                                 f"(known: {', '.join(known)})")
        out[k] = coerce(k, v, known[k].default)
    if "DEVICE" in out:  # a GPU that is not there fails here, before a kernel starts
        from lib.organisms.device import resolve_device

        try:
            resolve_device(out["DEVICE"], "DEVICE")
        except (ValueError, RuntimeError) as e:
            raise ParameterError(f"chapter {stem!r}: {e}") from None
    return out


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_notebook(name: str, params: Optional[dict[str, Any]] = None, out_dir: Optional[str | os.PathLike] = None,
                 progress: bool = False, log_output: bool = False) -> dict[str, Any]:
    """Execute chapter ``name`` with ``params`` via papermill; return its ``results.json`` as a dict.

    The executed notebook is written to ``out_dir/<stem>.ipynb`` and the chapter writes ``results.json`` and
    figures into ``out_dir`` (passed as ``OUTPUT_DIR``). ``out_dir`` defaults to
    ``runs/<stem>/<hash of params>/``. A cell error raises ``papermill.PapermillExecutionError``.
    """
    import papermill as pm

    stem = resolve(name)
    params = validate_params(stem, dict(params or {}))
    params.pop("OUTPUT_DIR", None)
    out = Path(out_dir) if out_dir is not None else REPO_ROOT / "runs" / stem / params_hash(params)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    stale = out / "results.json"
    if stale.exists():
        stale.unlink()
    nb = read_notebook(stem)
    import nbformat

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"{stem}.ipynb"
        nbformat.write(nb, src)
        pm.execute_notebook(str(src), str(out / f"{stem}.ipynb"), parameters={**params, "OUTPUT_DIR": str(out)},
                            kernel_name="python3", cwd=str(REPO_ROOT), progress_bar=progress,
                            log_output=log_output, report_mode=False)
    if not stale.exists():
        raise RuntimeError(f"chapter {stem!r} ran but wrote no results.json into {out}")
    return json.loads(stale.read_text())



def execute_chapter(stem: str, out: str, params: Optional[dict[str, Any]] = None) -> float:
    """Run chapter ``stem`` (defaults, or ``params``) into ``out`` and return its wall time in seconds. A module-level
    function, so that the parallel book build can hand it to worker processes (``python -m lib build``)."""
    import time

    t = time.time()
    run_notebook(stem, dict(params or {}), out)
    return time.time() - t


def worker_report(stem: str, out: str) -> dict[str, Any]:
    """What a build worker process sees, for checking the parallel build without executing chapters: its pid, its
    torch thread count and ``OMP_NUM_THREADS``, and the chapter's resolved stem (``out`` is unused)."""
    import torch

    return {"stem": resolve(stem), "pid": os.getpid(), "torch_threads": torch.get_num_threads(),
            "omp": os.environ.get("OMP_NUM_THREADS")}
