"""``lib/`` is four layers, worlds -> organisms -> methods -> book, each importing only the layers below it.

The test reads every module's source (top-level *and* function-level imports, absolute and relative) and fails
on an import that points up a layer, and on a module that sits outside the four packages.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "lib"
LAYERS = ("worlds", "organisms", "methods", "book")


def _module_name(path: Path) -> str:
    parts = path.with_suffix("").parts
    parts = parts[len(parts) - 1 - parts[::-1].index("lib"):]  # from the last "lib" folder down
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every ``lib`` import in ``path``, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "lib"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "lib":
                continue
            if mod == "lib":  # ``from lib import worlds``: each name is a package of lib
                out += [(node.lineno, f"lib.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, mod))
    return out


def layer_of(module: str) -> int | None:
    """0-3 for a module inside a layer package, None for ``lib`` itself and ``lib.__main__``."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return None


def upward_imports(root: Path = LIB) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        me = layer_of(_module_name(path))
        if me is None:
            continue
        for line, mod in imports_of(path):
            target = layer_of(mod)
            if target is None and mod.split(".")[:2] != ["lib"]:
                continue
            if target is None:
                bad.append(f"{path.relative_to(root.parent)}:{line} imports {mod} (lib's root; import the layer)")
            elif target > me:
                bad.append(f"{path.relative_to(root.parent)}:{line} ({LAYERS[me]}) imports {mod} ({LAYERS[target]})")
    return bad


def test_no_module_imports_a_higher_layer():
    assert upward_imports() == []


def test_every_module_lives_in_a_layer():
    stray = [p.name for p in LIB.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert stray == []
    assert sorted(p.name for p in LIB.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(LAYERS)


def test_each_layer_package_says_what_it_holds_and_may_import():
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((LIB / layer / "__init__.py").read_text()))
        assert doc and "Imports:" in doc, layer


def test_the_walker_catches_upward_absolute_relative_and_lazy_imports(tmp_path):
    # a toy lib/ with one upward import of each kind: the test above must be able to fail
    lib = tmp_path / "lib"
    for layer in LAYERS:
        (lib / layer).mkdir(parents=True)
        (lib / layer / "__init__.py").write_text('"""Imports: -"""\n')
    (lib / "__init__.py").write_text("")
    (lib / "worlds" / "a.py").write_text("from lib.methods import stats\n")
    (lib / "worlds" / "b.py").write_text("def f():\n    import lib.book.runner\n")
    (lib / "organisms" / "c.py").write_text("from ..methods import sae\nfrom lib.worlds import a\n")
    (lib / "methods" / "d.py").write_text("from lib import book\nfrom lib.organisms import c\n")
    (lib / "book" / "e.py").write_text("from lib.worlds import a\nfrom lib.methods import d\n")
    got = upward_imports(lib)
    assert len(got) == 4, got
    assert {g.split(":")[0] for g in got} == {"lib/worlds/a.py", "lib/worlds/b.py", "lib/organisms/c.py",
                                              "lib/methods/d.py"}


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_cleanly_on_its_own(layer):
    """Importing a layer's modules must not need a higher layer to have been imported first (no hidden cycles)."""
    import subprocess
    import sys

    mods = [_module_name(p) for p in sorted((LIB / layer).rglob("*.py"))]
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods) + (
        f"higher = [m for m in sys.modules if m.split('.')[:2] in "
        f"{[['lib', l] for l in LAYERS[LAYERS.index(layer) + 1:]]!r}]\n"
        "assert not higher, higher\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=LIB.parent, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
