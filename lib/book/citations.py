"""Citations: the ``{cite}`` roles in the book's prose and the ``references.bib`` entries they must name.

The prose cites with MyST roles, ``{cite:t}`key``` ("Wang et al. [2022]") or ``{cite:p}`key{§4.1}```
("[Wang et al., 2022, §4.1]"); sphinxcontrib-bibtex resolves them against the BibTeX files ``_config.yml`` names
under ``bibtex_bibfiles`` and lists the cited entries on ``book/references.md``. Sphinx reports a missing key only
when the HTML is built, after every chapter has run, so ``python -m lib build`` calls ``problems`` first and
``tests/test_citations.py`` calls it on every test run.

Roles are allowed only in markdown: a ``{cite}`` in a code cell (or a glued string, which a code cell makes) or in
a chapter's front matter is printed as it stands, never resolved.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from lib.book import runner
from lib.organisms.seeding import REPO_ROOT

CONFIG = REPO_ROOT / "_config.yml"
BOOK_DIR = REPO_ROOT / "book"
GENERATED = ("chapters", "exercises")  # book/ folders the build writes (executed copies of notebooks/*.md)

# The roles sphinxcontrib-bibtex defines: {cite}, {cite:p}, {cite:t}, {cite:ps}, {cite:author}, {cite:year}, ...
CITE_ROLE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]*)`")
CITE_ANY = re.compile(r"\{cite(?::[a-z]+)?\}")
KEY_FORM = re.compile(r"[a-z][a-z0-9]*")  # the key is also the anchor references.html#cite-<key>
REQUIRED_FIELDS = ("title", "year")


def bib_files(config: Path = CONFIG) -> list[Path]:
    """The BibTeX files ``config`` names under ``bibtex_bibfiles`` (relative to its folder, the book's root).

    Raises ``FileNotFoundError`` naming ``bibtex_bibfiles`` if one is missing: Sphinx would fail on it only at the
    end of a build."""
    cfg = yaml.safe_load(config.read_text()) or {}
    names = cfg.get("bibtex_bibfiles") or []
    if isinstance(names, str):
        names = [names]
    paths = [config.parent / n for n in names]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"bibtex_bibfiles in {config.name} names files that do not exist: {missing}")
    return paths


def cited_keys(markdown: str) -> list[str]:
    """The keys cited in ``markdown``, in order of appearance (repeats kept).

    ``{cite:p}`a{see},b{p. 5}``` gives ``["a", "b"]``: pre- and post-text in braces are dropped, targets are
    separated by commas, as sphinxcontrib-bibtex reads them."""
    keys: list[str] = []
    for m in CITE_ROLE.finditer(markdown):
        bare = re.sub(r"\{[^{}]*\}", "", m.group(1))
        keys += [k.strip() for k in bare.split(",") if k.strip()]
    return keys


def bib_entries(paths: list[Path] | None = None) -> dict:
    """``{key: pybtex Entry}`` over ``paths`` (default: ``bib_files()``). pybtex is what sphinxcontrib-bibtex
    parses with, so a file that fails here fails in Sphinx too; a key defined twice raises."""
    from pybtex.database import parse_file

    entries: dict = {}
    for path in bib_files() if paths is None else paths:
        data = parse_file(str(path), bib_format="bibtex")
        for key, entry in data.entries.items():
            if key in entries:
                raise ValueError(f"{path.name}: bibtex key {key!r} is defined twice")
            entries[key] = entry
    return entries


def prose_sources() -> dict[str, dict[str, str]]:
    """``{path: {"prose": markdown, "elsewhere": text}}`` for every chapter source (``notebooks/*.md``) and every
    hand-written page under ``book/``: "prose" is the markdown a ``{cite}`` may sit in, "elsewhere" the code
    cells and front matter, where it may not."""
    import jupytext

    out: dict[str, dict[str, str]] = {}
    for path in sorted(runner.NOTEBOOK_DIR.glob("*.md")):
        nb = jupytext.read(path)
        prose = "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        code = "\n\n".join(c.source for c in nb.cells if c.cell_type != "markdown")
        out[str(path.relative_to(REPO_ROOT))] = {"prose": prose, "elsewhere": code + json.dumps(nb.metadata)}
    for path in sorted(BOOK_DIR.rglob("*.md")):
        if path.relative_to(BOOK_DIR).parts[0] in GENERATED:
            continue
        out[str(path.relative_to(REPO_ROOT))] = {"prose": path.read_text(), "elsewhere": ""}
    return out


def problems(sources: dict[str, dict[str, str]] | None = None, entries: dict | None = None) -> list[str]:
    """Everything wrong with the book's citations, one line each (empty: all good): a cited key missing from the
    BibTeX files, a ``{cite}`` outside prose, an entry nobody cites (the References page would leave it out), a
    key that is not an anchor-friendly ``[a-z][a-z0-9]*``, an entry without title, year, authors or a link."""
    sources = prose_sources() if sources is None else sources
    entries = bib_entries() if entries is None else entries
    out: list[str] = []
    cited: set[str] = set()
    for path, parts in sources.items():
        for key in cited_keys(parts["prose"]):
            cited.add(key)
            if key not in entries:
                out.append(f"{path}: cites {key!r}, which no BibTeX file of bibtex_bibfiles defines")
        if CITE_ANY.search(parts["elsewhere"]):
            out.append(f"{path}: a {{cite}} role in a code cell or the front matter (it would not render)")
    for key, entry in entries.items():
        if key not in cited:
            out.append(f"references: {key!r} is cited nowhere")
        if not KEY_FORM.fullmatch(key):
            out.append(f"references: key {key!r} is not lowercase letters and digits")
        lacking = [f for f in REQUIRED_FIELDS if not entry.fields.get(f)]
        if not entry.persons.get("author"):
            lacking.append("author")
        if not (entry.fields.get("url") or entry.fields.get("eprint") or entry.fields.get("doi")):
            lacking.append("url, eprint or doi")
        if lacking:
            out.append(f"references: {key!r} has no {', '.join(lacking)}")
    return out
