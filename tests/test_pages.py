"""Conventions of the chapter pages that need no build: how chapters are titled and numbered."""
from __future__ import annotations

import re

import yaml

from lib.book import runner
from lib.organisms.seeding import REPO_ROOT


def _titles(stem: str) -> list[str]:
    """The level-1 headings (``# ...``) of a chapter's Markdown cells (code comments are not headings)."""
    nb = runner.read_notebook(stem)
    return [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
            if line.startswith("# ")]


def _keys(node) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()


def test_every_chapter_title_carries_its_number_and_the_toc_numbers_nothing():
    """One numbering on every page: chapter N's one title reads "N. ..." (N from its file name, as the prose's
    "chapter 4" does), so the page, the sidebar and the search results show the same number; ``_toc.yml`` must not
    number them a second time (``numbered:`` would put "1." before "0. Model organisms")."""
    assert "numbered" not in _keys(yaml.safe_load((REPO_ROOT / "_toc.yml").read_text()))
    stems = runner.chapters()
    assert stems, "no chapters in _toc.yml"
    for stem in stems:
        number = int(re.match(r"(\d+)_", stem).group(1))
        titles = _titles(stem)
        assert len(titles) == 1, f"notebooks/{stem}.md: {len(titles)} level-1 titles ({titles}); a chapter has one"
        assert re.match(rf"# {number}\. \S", titles[0]), \
            f"notebooks/{stem}.md: title {titles[0]!r} does not start with '# {number}. '"


def test_the_title_check_catches_an_unnumbered_or_misnumbered_title(monkeypatch):
    import nbformat

    def fake(title):
        return lambda stem: nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_markdown_cell(f"{title}\n\nProse."),
            nbformat.v4.new_code_cell("# a comment, not a title\nx = 1")])

    stem = runner.chapters()[-1]
    monkeypatch.setattr(runner, "chapters", lambda: [stem])
    for bad in ("# Objective leakage", f"# {int(stem[:2]) + 1}. Objective leakage", "## 6. A section"):
        monkeypatch.setattr(runner, "read_notebook", fake(bad))
        try:
            test_every_chapter_title_carries_its_number_and_the_toc_numbers_nothing()
        except AssertionError:
            continue
        raise AssertionError(f"{bad!r} passed the title check")
    monkeypatch.setattr(runner, "read_notebook", fake(f"# {int(stem[:2])}. A title"))
    test_every_chapter_title_carries_its_number_and_the_toc_numbers_nothing()
