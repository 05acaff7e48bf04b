"""Citations: every ``{cite}`` key in the prose is in references.bib, and the checks that say so can fail.

Fast (no build): reads notebooks/*.md, book/*.md, _config.yml and references.bib. The rendered links to the
References page are checked by tests/test_browser.py.
"""
from __future__ import annotations

import textwrap

import pytest
import yaml

from lib.book import citations
from lib.organisms.seeding import REPO_ROOT


def test_the_book_cites_only_what_references_bib_defines():
    bad = citations.problems()
    assert not bad, "\n".join(bad)


def test_config_names_references_bib_and_the_toc_lists_the_references_page():
    cfg = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    assert cfg["bibtex_bibfiles"] == ["references.bib"]
    assert citations.bib_files() == [REPO_ROOT / "references.bib"]
    assert cfg["sphinx"]["config"]["bibtex_cite_id"] == "cite-{key}"  # the anchors the browser test follows
    assert "{bibliography}" in (REPO_ROOT / "book" / "references.md").read_text()
    assert "book/references" in (REPO_ROOT / "_toc.yml").read_text()


def test_the_seed_papers_are_in_references_bib_with_their_arxiv_ids():
    entries = citations.bib_entries()
    ids = {k: e.fields.get("eprint") for k, e in entries.items()}
    for arxiv in ("2503.01896", "2311.12786", "2211.00593", "2605.00994"):
        assert arxiv in ids.values(), f"arXiv {arxiv} is not in references.bib"
    assert any("Developmental Interpretability" in e.fields["title"] for e in entries.values())


def test_each_chapter_names_its_paper_with_a_citation():
    sources = citations.prose_sources()
    expect = {"01_amplification": "chhabra2025neuroplasticity", "02_localized_corruption": "chhabra2025neuroplasticity",
              "03_neuroplasticity": "chhabra2025neuroplasticity", "04_wrapper_revival": "jain2024mechanistically",
              "05_feature_movement": "mats2024auditing", "06_objective_leakage": "abubaker2026leaky",
              "00_model_organisms": "wang2022interpretability"}
    for stem, key in expect.items():
        assert key in citations.cited_keys(sources[f"notebooks/{stem}.md"]["prose"]), f"{stem} does not cite {key}"


def test_cited_keys_reads_targets_as_sphinxcontrib_bibtex_does():
    text = "As {cite:t}`wang2022` found, and {cite:p}`a{see},b{§4.1}` and {cite}`c` again {cite:p}`wang2022`."
    assert citations.cited_keys(text) == ["wang2022", "a", "b", "c", "wang2022"]
    assert citations.cited_keys("{glue:text}`x` and `{cite}` without a target") == []


BIB = textwrap.dedent("""\
    @article{known2020paper,
      title = {A Known Paper},
      author = {Doe, Jane},
      year = {2020},
      url = {https://example.org/known},
    }
    @misc{Bad_Key,
      title = {No Link},
      author = {Roe, Richard},
      year = {2021},
    }
    """)


@pytest.fixture
def entries(tmp_path):
    bib = tmp_path / "refs.bib"
    bib.write_text(BIB)
    return citations.bib_entries([bib])


def test_problems_names_a_missing_key_and_a_citation_outside_prose(entries):
    sources = {
        "notebooks/x.md": {"prose": "See {cite:p}`known2020paper` and {cite:t}`missing2019`.",
                           "elsewhere": 'glue("verdict", "as {cite:t}`known2020paper` found")'},
        "book/y.md": {"prose": "{cite}`Bad_Key`", "elsewhere": ""},
    }
    out = citations.problems(sources, entries)
    assert any("notebooks/x.md" in p and "'missing2019'" in p for p in out), out
    assert any("notebooks/x.md" in p and "code cell" in p for p in out), out
    assert any("'Bad_Key'" in p and "lowercase" in p for p in out), out
    assert any("'Bad_Key'" in p and "url, eprint or doi" in p for p in out), out
    assert not any("known2020paper" in p for p in out), out
    clean = {"book/y.md": {"prose": "{cite}`known2020paper` {cite}`Bad_Key`", "elsewhere": ""}}
    assert [p for p in citations.problems(clean, entries) if "known2020paper" in p or "missing" in p] == []


def test_problems_names_an_entry_nobody_cites(entries):
    out = citations.problems({"book/y.md": {"prose": "{cite}`known2020paper`", "elsewhere": ""}}, entries)
    assert any("'Bad_Key' is cited nowhere" in p for p in out), out


def test_a_key_defined_twice_and_a_missing_bib_file_are_errors(tmp_path):
    bib = tmp_path / "refs.bib"
    bib.write_text(BIB + BIB.split("@misc")[0].replace("A Known Paper", "Again"))
    with pytest.raises(Exception, match="known2020paper"):
        citations.bib_entries([bib])
    cfg = tmp_path / "_config.yml"
    cfg.write_text("bibtex_bibfiles: [nowhere.bib]\n")
    with pytest.raises(FileNotFoundError, match="bibtex_bibfiles"):
        citations.bib_files(cfg)


def test_build_stops_on_bad_citations_before_executing_a_chapter(monkeypatch, capsys):
    from lib.book import cli, runner

    def never(*a, **k):
        raise AssertionError("a chapter was executed although the citations were bad")

    monkeypatch.setattr(citations, "problems", lambda: ["notebooks/x.md: cites 'nope2020', which ..."])
    monkeypatch.setattr(runner, "execute_chapter", never)
    monkeypatch.setattr(cli, "run_parallel", never)
    assert cli.build_book(["00_model_organisms"], html=True, jobs=1) == 2
    assert "nope2020" in capsys.readouterr().err
