"""Execute chapter notebooks with parameters: jupytext text -> papermill -> ``results.json``.

Chapters are the notebooks listed in ``_toc.yml`` (entries ``book/chapters/<stem>``, sources
``notebooks/<stem>.md``), so nothing here keeps its own list. Each notebook has exactly one cell tagged
``parameters`` holding plain ``UPPER_CASE = literal  # <allowed values> meaning`` lines, the allowed values
declared as ``lib.book.ranges`` describes (``SEED = 0  # [0, ∞) seed ...``, ``POISON_FRAC = 1.0  # [0, 1] ...``).
``OUTPUT_DIR`` is one of them, the one set by the runner itself (``run_notebook``'s ``out_dir``), with no
declaration; the notebook writes ``results.json`` and its figures there. Its front matter may carry
``ftm.smoke``: the small parameters the tests run it with.

papermill accepts any parameter name and value silently; ``validate_params`` rejects unknown names (suggesting the
closest), wrong types and values outside their declared ranges, naming the parameter, before anything executes.
``DEVICE`` is checked by ``lib.organisms.device.resolve_device`` (the one definition of a device; its declaration
``{cpu, cuda, cuda:N, auto}`` is what the reader sees, and tests keep it equal to ``device.CHOICES``).
"""
from __future__ import annotations

import ast
import difflib
import functools
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from lib.book import ranges
from lib.organisms.seeding import REPO_ROOT

TOC = REPO_ROOT / "_toc.yml"
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
CHAPTER_PREFIX = "book/chapters/"
SET_BY_RUNNER = ("OUTPUT_DIR",)  # parameters the runner sets itself: no declared range


class ParameterError(ValueError):
    """A parameter name or value a chapter does not accept."""


@dataclass
class Param:
    """One parameter of a chapter: its default (whose type values must have), its meaning and its declared allowed
    values (``None`` where its comment declares none)."""

    name: str
    default: Any
    meaning: str
    domain: Optional[ranges.Domain] = None

    @property
    def type_name(self) -> str:
        return type(self.default).__name__

    @property
    def allowed(self) -> str:
        """The declared allowed values as text (``"[0, ∞)"``, ``"{cpu, cuda, cuda:N, auto}"``), or ``""``."""
        return "" if self.domain is None else str(self.domain)


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
    """``{name: Param}`` from a parameters cell; every statement must be ``UPPER = literal``, its comment giving the
    allowed values (``lib.book.ranges``) and the meaning. A range bound must name a numeric parameter of the same
    cell, ``in NAME`` a list parameter."""
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
        comment = (m.group(3) or "").strip() if m else ""
        if "=" in comment:  # papermill's parameter parser misreads such lines and drops the parameter
            raise ParameterError(f"parameter {target.id}: its '# meaning' comment must not contain '=' (a range is "
                                 f"written [0, ∞), not >= 0)")
        try:
            domain, meaning = ranges.parse_declaration(comment, value)
        except ValueError as e:
            raise ParameterError(f"parameter {target.id}: its declared range {comment!r}: {e}") from None
        params[target.id] = Param(target.id, value, meaning, domain)
    for p in params.values():
        for ref in sorted(p.domain.refs() if p.domain is not None else ()):
            other = params.get(ref)
            want_list = isinstance(p.domain, ranges.Member)
            if other is None or want_list != isinstance(other.default, (list, tuple)) or not (
                    want_list or isinstance(other.default, (int, float)) and not isinstance(other.default, bool)):
                raise ParameterError(f"parameter {p.name}: its range {p.domain} names {ref}, which is not a "
                                     f"{'list' if want_list else 'numeric'} parameter of this cell")
    return params


def notebook_parameters(stem: str) -> dict[str, Param]:
    """``{name: Param}`` of chapter ``stem``'s parameters cell (read once per version of the file: validating many
    values, as a sweep over seeds does, reads it once)."""
    path = source_path(stem)
    if not path.exists():
        read_notebook(stem)  # raises, naming the chapter
    st = path.stat()
    return dict(_parameters_of(stem, str(path), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=64)
def _parameters_of(stem: str, path: str, mtime_ns: int, size: int) -> dict[str, Param]:
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
            like = default[0] if default and all(type(d) is type(default[0]) for d in default) else None
            return [v if like is None else coerce(f"{name}[{i}]", v, like) for i, v in enumerate(value)]
    elif default is None:
        return value
    elif isinstance(value, type(default)):
        return value
    raise ParameterError(f"parameter {name} expects {type(default).__name__} (default {default!r}), "
                         f"got {type(value).__name__} {value!r}")


def validate_params(stem: str, params: dict[str, Any]) -> dict[str, Any]:
    """Coerced ``params``; raises ``ParameterError`` naming any unknown parameter, any value of the wrong type and
    any value outside its declared range (with the value and the range).

    Ranges are checked on the run's full set of values (``params`` over the defaults), so a range that names another
    parameter (``LAYER  # [0, N_LAYERS)``) is checked against that parameter's value in this run, and a default
    that an override puts out of range (``-p N_LAYERS 2`` with ``LAYER = 2``) is refused too. ``DEVICE``, when
    given, is checked by ``lib.organisms.device.resolve_device`` (which also refuses a GPU the machine lacks).
    Nothing is executed.
    """
    known = notebook_parameters(stem)
    out = {}
    for k, v in params.items():
        if k not in known:
            close = difflib.get_close_matches(k, list(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ParameterError(f"unknown parameter {k!r} for chapter {stem!r}{hint} "
                                 f"(known: {', '.join(known)})")
        out[k] = coerce(k, v, known[k].default)
    values = {**{k: p.default for k, p in known.items()}, **out}
    for k in [*out, *(k for k in known if k not in out)]:  # what was given first: its error is the one shown
        p = known[k]
        if k == "DEVICE" or p.domain is None:
            continue
        why = p.domain.violation(values[k], values)
        if why:
            given = "" if k in out else " (its default)"
            raise ParameterError(f"chapter {stem!r}: parameter {k} = {values[k]!r}{given} {why}")
    if "DEVICE" in out:  # a GPU that is not there fails here, before a kernel starts
        from lib.organisms.device import resolve_device

        try:
            resolve_device(out["DEVICE"], "DEVICE")
        except (ValueError, RuntimeError) as e:
            raise ParameterError(f"chapter {stem!r}: {e}") from None
    return out


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


class ChapterError(RuntimeError):
    """A chapter stopped in one of its cells: names the chapter, the cell (``cell`` of ``n_cells`` code cells,
    numbered as the executed notebook's ``In [cell]``: the parameters cell is 1, papermill's injected cell 2), its
    first line, and the error (``ename``: the exception type, ``evalue``: its message). ``notebook``: the executed
    notebook, which holds the traceback. Pickles (a build's worker processes send it to the parent)."""

    def __init__(self, stem: str, cell: Optional[int], n_cells: int, line: str, ename: str, evalue: str,
                 notebook: str = ""):
        self.stem, self.cell, self.n_cells, self.line = stem, cell, n_cells, line
        self.ename, self.evalue, self.notebook = ename, evalue, notebook
        super().__init__(self.message())

    def __reduce__(self):
        return (ChapterError, (self.stem, self.cell, self.n_cells, self.line, self.ename, self.evalue,
                               self.notebook))

    def message(self) -> str:
        evalue = "\n".join(self.evalue.strip().splitlines()[:8])
        if len(evalue) > 1000:
            evalue = evalue[:999] + "…"
        where = (f"cell {self.cell} of {self.n_cells}" if self.cell else "before its first cell")
        line = f": {self.line}" if self.cell and self.line else ""
        text = f"chapter {self.stem} failed in {where}{line}\n{self.ename}: {evalue}" if evalue else \
            f"chapter {self.stem} failed in {where}{line}\n{self.ename}"
        return text + (f"\nthe traceback is in the executed notebook {self.notebook}" if self.notebook else "")


def _code_cells(nb) -> list[int]:
    """Indices of the cells a kernel executes (non-empty code cells), in order: their position in this list,
    from 1, is the ``In [n]`` they get."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]


@functools.lru_cache(maxsize=None)
def _engine():
    """papermill's nbclient engine with three additions, registered as papermill engine ``"ftm"``:

    - ``on_cell(cell, n_cells, source)``, called as each code cell starts (``cell`` numbered from 1 as its
      ``In [cell]``), so that a build can show where a chapter is;
    - kernels whose traffic is encrypted (CurveZMQ keys provisioned by jupyter_client, when the kernelspec declares
      support and pyzmq has it). Besides closing the plain-text TCP channel, this is what keeps ipykernel from
      printing "Kernel is running over TCP without encryption" to the console for every chapter;
    - ``kernel_log``: a file for the kernel process's own stdout and stderr (its log lines, e.g. the spurious
      "KeyboardInterrupt caught in kernel" when jupyter_client interrupts a kernel it is shutting down), which
      would otherwise cut through a build's status lines. The cells' output goes to the notebook as always.
    """
    import zmq
    from jupyter_client import AsyncKernelManager
    from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines
    from traitlets import default

    class Manager(NotebookExecutionManager):
        on_cell = None
        current = (0, "")  # the code cell running now: (number, source)

        def cell_start(self, cell, cell_index=None, **kwargs):
            super().cell_start(cell, cell_index, **kwargs)
            if not hasattr(self, "_order"):
                self._order = {i: k + 1 for k, i in enumerate(_code_cells(self.nb))}
            if cell_index in self._order:
                self.current = (self._order[cell_index], cell.source)
                if self.on_cell is not None:
                    self.on_cell(self._order[cell_index], len(self._order), cell.source)

    class KernelManager(AsyncKernelManager):
        kernel_log: Optional[Path] = None

        async def _async_launch_kernel(self, kernel_cmd, **kw):  # jupyter_client's documented override point
            if self.kernel_log is None or "stderr" in kw:
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            with open(self.kernel_log, "ab") as f:  # the kernel keeps its own descriptor
                return await super()._async_launch_kernel(kernel_cmd, **{**kw, "stdout": f, "stderr": f})

    if "transport_encryption" in AsyncKernelManager.class_trait_names():  # a recent jupyter_client (8.10 here)
        class KernelManager(KernelManager):  # noqa: F811 - the same, encrypted
            @default("transport_encryption")
            def _encrypt_when_supported(self):
                return "auto" if zmq.has("curve") else "disabled"

    class Engine(NBClientEngine):
        @classmethod
        def execute_notebook(cls, nb, kernel_name, output_path=None, progress_bar=True, log_output=False,
                             autosave_cell_every=30, on_cell=None, kernel_log=None, **kwargs):
            """``papermill.engines.Engine.execute_notebook`` with ``Manager`` (and ``on_cell``) in place of
            papermill's execution manager and ``KernelManager`` (with ``kernel_log``) in place of jupyter_client's.
            A non-cell failure (the kernel died, a timeout) is raised as ``_KernelFailure`` naming the cell that
            was running."""
            nb_man = Manager(nb, output_path=output_path, progress_bar=progress_bar, log_output=log_output,
                             autosave_cell_every=autosave_cell_every)
            nb_man.on_cell = on_cell
            kwargs.setdefault("kernel_manager_class", type("KernelManager", (KernelManager,),
                                                           {"kernel_log": kernel_log}))
            nb_man.notebook_start()
            try:
                cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
            except Exception as e:
                raise _KernelFailure(nb_man.current[0], len(_code_cells(nb_man.nb)), nb_man.current[1], e) from e
            finally:
                nb_man.cleanup_pbar()
                nb_man.notebook_complete()
            return nb_man.nb

    papermill_engines.register("ftm", Engine)
    return Engine


class _KernelFailure(Exception):
    """Execution stopped outside a cell's own code (the kernel died, a timeout): which cell was running."""

    def __init__(self, cell: int, n_cells: int, source: str, error: BaseException):
        super().__init__(cell, n_cells, source, error)
        self.cell, self.n_cells, self.source, self.error = cell, n_cells, source, error


def run_notebook(name: str, params: Optional[dict[str, Any]] = None, out_dir: Optional[str | os.PathLike] = None,
                 progress: bool = False, log_output: bool = False,
                 on_cell: Optional[Callable[[int, int, str], None]] = None) -> dict[str, Any]:
    """Execute chapter ``name`` with ``params`` via papermill; return its ``results.json`` as a dict.

    The executed notebook is written to ``out_dir/<stem>.ipynb`` and the chapter writes ``results.json`` and
    figures into ``out_dir`` (passed as ``OUTPUT_DIR``). ``out_dir`` defaults to
    ``runs/<stem>/<hash of params>/``. ``on_cell(cell, n_cells, source)`` is called as each code cell starts
    (``cell`` from 1, as the executed notebook's ``In [cell]``). A failing cell raises ``ChapterError`` naming
    the cell (number, first line) and the error.
    """
    stem = resolve(name)
    params = validate_params(stem, dict(params or {}))  # before papermill is even imported
    params.pop("OUTPUT_DIR", None)
    out = Path(out_dir) if out_dir is not None else REPO_ROOT / "runs" / stem / params_hash(params)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    stale = out / "results.json"
    if stale.exists():
        stale.unlink()
    execute_notebook(read_notebook(stem), out / f"{stem}.ipynb", {**params, "OUTPUT_DIR": str(out)}, stem=stem,
                     progress=progress, log_output=log_output, on_cell=on_cell)
    if not stale.exists():
        raise RuntimeError(f"chapter {stem!r} ran but wrote no results.json into {out}")
    return json.loads(stale.read_text())


def execute_notebook(nb, dest: str | os.PathLike, parameters: dict[str, Any], stem: Optional[str] = None,
                     progress: bool = False, log_output: bool = False,
                     on_cell: Optional[Callable[[int, int, str], None]] = None) -> None:
    """Execute the nbformat notebook ``nb`` with papermill (``parameters`` injected, working directory the
    repository root) into ``dest``; the machinery under ``run_notebook``, for any notebook. A failing cell (or a
    kernel that dies in one) raises ``ChapterError`` naming ``stem`` (default: ``dest``'s stem), the cell and the
    error. The kernel process's own log lines go to ``<dest stem>.kernel.log`` beside ``dest`` (removed if empty or
    if it holds only ipykernel's shutdown line); when the kernel dies, their last lines are part of the error."""
    import nbformat
    import papermill as pm

    from lib.book.progress import first_line

    _engine()
    dest = Path(dest)
    stem = stem or dest.stem
    shown = dest.resolve()
    shown = shown.relative_to(REPO_ROOT) if shown.is_relative_to(REPO_ROOT) else shown  # short in messages
    kernel_log = dest.with_name(f"{dest.stem}.kernel.log")
    kernel_log.unlink(missing_ok=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / f"{stem}.ipynb"
            nbformat.write(nb, src)
            pm.execute_notebook(str(src), str(dest), parameters=parameters, kernel_name="python3",
                                cwd=str(REPO_ROOT), progress_bar=progress, log_output=log_output,
                                report_mode=False, engine_name="ftm", on_cell=on_cell,
                                kernel_log=kernel_log.resolve())
    except pm.PapermillExecutionError as e:
        n_cells = len(_code_cells(nbformat.read(dest, as_version=4))) if dest.exists() else 0
        raise ChapterError(stem, e.exec_count, n_cells, first_line(e.source or "", 100), e.ename, str(e.evalue),
                           str(shown)) from None
    except _KernelFailure as e:
        err = e.error
        log = kernel_log.read_text(errors="replace").strip().splitlines()[-5:] if kernel_log.exists() else []
        evalue = "\n".join([str(err)] + ([f"the kernel's last log lines ({kernel_log.name}):"] + log if log else []))
        raise ChapterError(stem, e.cell, e.n_cells, first_line(e.source or "", 100), type(err).__name__, evalue,
                           str(shown) if dest.exists() else "") from err
    finally:
        if kernel_log.exists() and not _log_worth_keeping(kernel_log.read_text(errors="replace")):
            kernel_log.unlink()


# ipykernel's line when jupyter_client interrupts a kernel it is shutting down (a race that shows under load): it says
# nothing about the chapter
_SHUTDOWN_NOISE = re.compile(r"^\[IPKernelApp\] ERROR \| KeyboardInterrupt caught in kernel\.?$")


def _log_worth_keeping(text: str) -> bool:
    """Whether a kernel log says anything: a line that is neither blank nor ipykernel's shutdown noise."""
    return any(line.strip() and not _SHUTDOWN_NOISE.match(line.strip()) for line in text.splitlines())


def execute_chapter(stem: str, out: str, params: Optional[dict[str, Any]] = None,
                    status: Optional[str] = None) -> float:
    """Run chapter ``stem`` (defaults, or ``params``) into ``out`` and return its wall time in seconds. A module-level
    function, so that the parallel book build can hand it to worker processes (``python -m lib build``).
    ``status``: a file the chapter's progress is written to as each code cell starts (``lib.book.progress``)."""
    import time

    from lib.book.progress import StatusFile

    t = time.time()
    run_notebook(stem, dict(params or {}), out, on_cell=StatusFile(status, stem) if status else None)
    return time.time() - t


def worker_report(stem: str, out: str, params: Optional[dict[str, Any]] = None,
                  status: Optional[str] = None) -> dict[str, Any]:
    """What a build worker process sees, for checking the parallel build without executing chapters: its pid, its
    torch thread count and ``OMP_NUM_THREADS``, and the chapter's resolved stem (``out``, ``params`` and ``status``
    are unused)."""
    import torch

    return {"stem": resolve(stem), "pid": os.getpid(), "torch_threads": torch.get_num_threads(),
            "omp": os.environ.get("OMP_NUM_THREADS")}
