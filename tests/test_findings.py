"""Findings as tests on results.json, the seed record, and the "Findings across seeds" table of each chapter."""
import json
import math

import pytest

from lib.book import findings, runner

STEM = "00_model_organisms"


def test_evaluate_hand_computed():
    r = {"a": 1.0, "b": 2.5, "c": None, "n": 4, "m": 4}
    assert findings.evaluate("b > a > 0", r) is True
    assert findings.evaluate("a > b", r) is False
    assert findings.evaluate("b - a == 1.5 and not a > 2", r) is True
    assert findings.evaluate("n == m", r) is True
    assert findings.evaluate("abs(a - b) < 2 and max(a, b) == 2.5", r) is True
    # None: decided by `is`, undecided by an order comparison
    assert findings.evaluate("c is None or c > a", r) is True
    assert findings.evaluate("a is not None and (c is None or c > a)", r) is True
    assert findings.evaluate("c > a", r) is None
    assert findings.evaluate("c == n", r) is None and findings.evaluate("c != n", r) is None  # not False / True
    # a key the run lacks, or a non-finite number: undecided, never silently False
    assert findings.evaluate("zz > 0", r) is None
    assert findings.evaluate("x > 0", {"x": math.nan}) is None
    assert findings.evaluate("a / (n - m) > 0", r) is None


@pytest.mark.parametrize("test", ["__import__('os')", "a.real > 0", "'x' == 'x'", "[a][0] > 0", "(lambda: 1)()",
                                  "a if b else c", "open('f')", "a > 0; b"])
def test_evaluate_rejects_anything_but_arithmetic_comparisons(test):
    with pytest.raises(findings.FindingError):
        findings.evaluate(test, {"a": 1, "b": 2, "c": 3})


def test_chapter_findings_validate_the_front_matter(monkeypatch):
    def meta(items):
        monkeypatch.setattr(runner, "notebook_meta", lambda stem: {"findings": items})

    meta([{"id": "x", "claim": "c", "test": "a > 0"}])
    assert findings.chapter_findings("any") == [findings.Finding("x", "c", "a > 0")]
    meta([{"id": "x", "claim": "c"}])
    with pytest.raises(findings.FindingError, match=r"findings\[0\]"):
        findings.chapter_findings("any")
    meta([{"id": "x", "claim": "c", "test": "a > 0"}, {"id": "x", "claim": "d", "test": "b > 0"}])
    with pytest.raises(findings.FindingError, match="repeats"):
        findings.chapter_findings("any")
    meta([{"id": "x", "claim": "c", "test": "a.b > 0"}])
    with pytest.raises(findings.FindingError, match="Attribute"):
        findings.chapter_findings("any")


@pytest.mark.parametrize("stem", runner.chapters())
def test_every_chapter_states_its_findings(stem):
    """Each chapter lists its findings (that every key they read is in results.json is checked on the smoke run
    in test_notebooks.py)."""
    fs = findings.chapter_findings(stem)
    assert fs and all(f.names for f in fs), f"{stem} lists no findings (or one that reads no result)"


def _run(seed, **res):
    params = {**findings.default_params(STEM), "SEED": seed, "OUTPUT_DIR": "x"}
    return {**res, "provenance": {"parameters": params, "git_commit": "abc", "seed": seed,
                                  "chapter_hash": findings.chapter_hash(STEM)}}


def _ch0(seed, ld=7.0, acc=0.98, nm=2, **extra):
    """A chapter-0 run: IOI holds iff ``ld > 2 and acc > 0.9``; name mover iff ``nm >= 1``."""
    return _run(seed, ioi_logit_diff=ld, ioi_acc=acc, ld_abba=ld, ld_baba=ld, ld_late_change=0.1 * ld,
                n_name_movers=nm, nm_end_io_max=0.4, n_s_inhibition=1, **extra)


def test_record_and_tally_join_the_build_with_recorded_seeds(tmp_path):
    # chapter 0's first finding: ioi_logit_diff > 2 and ioi_acc > 0.9; its fourth: a name mover
    runs = {1: _ch0(1, ld=3.0, ld_curve={"step": [0, 1], "ioi_logit_diff": [0.0, 3.0]}), 2: _ch0(2, ld=1.0, nm=0)}
    path = findings.record(STEM, runs, root=tmp_path)
    doc = json.loads(path.read_text())
    assert doc["params"] == findings.default_params(STEM)
    holds = doc["seeds"]["2"]["holds"]
    assert holds["ioi_from_pretraining"] is False and holds["has_name_mover"] is False
    assert holds["has_s_inhibition"] is True
    assert doc["seeds"]["1"]["values"]["ioi_logit_diff"] == 3.0
    # the record keeps the headline results and ftm.record_extra (the curve chapter 0 draws over seeds)
    assert set(findings.record_keys(STEM)) <= set(doc["seeds"]["1"]["values"])
    assert findings.seed_values(STEM, "ld_curve", root=tmp_path) == {1: {"step": [0, 1], "ioi_logit_diff": [0.0, 3.0]}}
    assert findings.seed_values(STEM, "ld_curve", {"BASE_STEPS": 7}, root=tmp_path) == {}

    build = _ch0(0, ld=4.0)
    t = {x.finding.id: x for x in findings.tally(STEM, build, root=tmp_path)}
    assert t["ioi_from_pretraining"].by_seed == {0: True, 1: True, 2: False}
    assert t["ioi_from_pretraining"].sentence().startswith("holds on 2 of 3 seeds; pooled: does not hold")
    # 3 of 3 seeds: a sign test over three seeds cannot go below 1/8, so the pooled test cannot hold yet
    assert t["has_s_inhibition"].sentence().startswith("holds on 3 of 3 seeds; pooled: does not hold")
    md = findings.findings_markdown(STEM, build, root=tmp_path)
    assert "seed 0 (this build) | seed 1 | seed 2 |" in md and "holds on 2 of 3 seeds" in md
    n_find = len(findings.chapter_findings(STEM))
    head, _, values = md.partition("Headline numbers")
    assert head.count("\n|") == 2 + n_find  # header, rule, one row per finding
    # the headline numbers: mean and t-interval over the three seeds (4, 3, 1: mean 8/3, sd 1.528, t 4.303)
    row = next(line for line in values.splitlines() if line.startswith("| `ioi_logit_diff`"))
    half = 4.303 * math.sqrt(((4 - 8 / 3) ** 2 + (3 - 8 / 3) ** 2 + (1 - 8 / 3) ** 2) / 2) / math.sqrt(3)
    assert row == f"| `ioi_logit_diff` | 2.67 | [{8 / 3 - half:.3g}, {8 / 3 + half:.3g}] | 1 – 4 | 3 |"

    # a build at other parameters does not borrow the record
    other = _ch0(0, ld=4.0)
    other["provenance"]["parameters"]["BASE_STEPS"] = 7
    t = findings.tally(STEM, other, root=tmp_path)
    assert t[0].by_seed == {0: True} and t[0].sentence() == "holds on the one seed checked (seed 0)"
    assert "Only the seed of this build" in findings.findings_markdown(STEM, other, root=tmp_path)
    assert "Headline numbers" not in findings.findings_markdown(STEM, other, root=tmp_path)

    # extending the record keeps the old seeds; the build's own seed replaces a recorded one
    findings.record(STEM, {0: _ch0(0, ld=-1.0)}, root=tmp_path)
    assert sorted(json.loads(path.read_text())["seeds"]) == ["0", "1", "2"]
    assert findings.tally(STEM, build, root=tmp_path)[0].by_seed[0] is True

    # recorded seeds are re-decided from their numbers, so a test edited since the sweep is applied to them
    doc = json.loads(path.read_text())
    doc["seeds"]["1"]["holds"]["ioi_from_pretraining"] = False  # what an older, stricter test said
    path.write_text(json.dumps(doc))
    assert findings.tally(STEM, build, root=tmp_path)[0].by_seed[1] is True  # 3.0 > 2
    del doc["seeds"]["1"]["values"]["ioi_logit_diff"]  # numbers missing: the verdict recorded for this test stands
    path.write_text(json.dumps(doc))
    assert findings.tally(STEM, build, root=tmp_path)[0].by_seed[1] is False
    doc["seeds"]["1"]["tests"]["ioi_from_pretraining"] = "ioi_logit_diff > 5"  # ... but not one of another test
    path.write_text(json.dumps(doc))
    t = findings.tally(STEM, build, root=tmp_path)[0]
    assert t.by_seed[1] is None and "re-record" in t.why[1]


def test_record_refuses_runs_at_other_parameters(tmp_path):
    run = _ch0(1)
    run["provenance"]["parameters"]["BASE_STEPS"] = 7
    with pytest.raises(ValueError, match="BASE_STEPS"):
        findings.record(STEM, {1: run}, root=tmp_path)
    assert not findings.record_path(STEM, tmp_path).exists()


def test_a_stale_record_is_ignored(tmp_path):
    findings.record(STEM, {1: _ch0(1)}, root=tmp_path)
    p = findings.record_path(STEM, tmp_path)
    doc = json.loads(p.read_text())
    doc["params"]["BASE_STEPS"] = -1  # the chapter's defaults changed since the sweep
    p.write_text(json.dumps(doc))
    assert findings.load_record(STEM, tmp_path) is None
    assert list(findings.tally(STEM, _ch0(0), root=tmp_path)[0]
                .by_seed) == [0]


def test_undecided_seeds_do_not_count():
    f = findings.Finding("x", "c", "a > 0")
    assert findings.Tally(f, {0: True, 1: None, 2: False}).sentence() == "holds on 1 of 2 seeds; undecided on 1"
    assert findings.Tally(f, {0: None}).sentence() == "not decided on any seed"


def test_sweep_record_refuses_overrides(capsys):
    from lib.book.cli import main

    assert main(["sweep", "0", "--seeds", "1", "--record", "-p", "BASE_STEPS", "3"]) == 2
    assert "default-parameter runs only" in capsys.readouterr().err


def test_book_copy_opens_with_the_findings_and_ends_with_the_details(tmp_path, monkeypatch):
    import nbformat

    monkeypatch.setattr(findings, "SEED_DIR", tmp_path / "seeds")  # a record of the current chapter code
    findings.record(STEM, {s: _ch0(s) for s in (1, 2, 3, 4)})

    from lib.book import cli
    from lib.book.cli import book_copy

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Chapter\n\nThe claim in one paragraph.\n\nMore introduction."),
        nbformat.v4.new_code_cell("SEED = 0", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("SEED = 0", metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_markdown_cell("## Analysis"),
        nbformat.v4.new_code_cell('plotting.savefig(fig, OUTPUT_DIR, "training_curve")')])  # ftm.headline.figure
    (tmp_path / "run").mkdir()
    nbformat.write(nb, tmp_path / "run" / f"{STEM}.ipynb")
    (tmp_path / "run" / "results.json").write_text(json.dumps(_ch0(0, nm=0)))
    (tmp_path / "run" / "training_curve.png").write_bytes(b"png")
    (tmp_path / "run" / "notes.txt").write_text("not a download")
    (tmp_path / "downloads" / STEM).mkdir(parents=True)
    (tmp_path / "downloads" / STEM / "stale.png").write_bytes(b"a figure of an earlier build")
    book_copy(STEM, tmp_path / "run" / f"{STEM}.ipynb", tmp_path / "out.ipynb")
    cells = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
    assert cells[0].source == "# Chapter\n\nThe claim in one paragraph."
    assert cells[1].source.startswith(":::{admonition} What this chapter finds")
    summary = [line for line in cells[1].source.splitlines() if line.startswith("| ") and "seed" in line]
    n = len(json.loads((findings.SEED_DIR / f"{STEM}.json").read_text())["seeds"]) + 1  # recorded + the build's
    assert f"| holds on {n} of {n} seeds; pooled: holds" in summary[0]  # IOI holds on every seed
    assert f"| holds on {n - 1} of {n} seeds; pooled: does not hold" in summary[3]  # this seed has no name mover
    assert cells[2].metadata["tags"] == ["remove-input", cli.HEADLINE_FIGURE_TAG]  # the figure
    assert "training_curve" in cells[2].source
    assert cells[3].source == "More introduction."
    assert "remove-cell" in cells[4].metadata["tags"] and "remove-cell" in cells[5].metadata["tags"]
    assert cells[6].source == "## Analysis"
    last = cells[-1].source  # the details close the page, collapsed
    assert last.startswith("## Parameters, seeds and tests") and ":class: dropdown" in last
    # the downloads: copied beside the page, linked with {download} (paths relative to the page)
    assert sorted(p.name for p in (tmp_path / "downloads" / STEM).iterdir()) == \
        sorted([f"{STEM}.ipynb", "results.json", "training_curve.png"])
    assert last.index(":::{admonition} Downloads") < last.index(":class: dropdown")
    for name in (f"{STEM}.ipynb", "results.json", "training_curve.png"):
        assert f"{{download}}`{name} <downloads/{STEM}/{name}>`" in last
    assert last.index(":::{admonition} Parameters of this chapter") < last.index(":::{admonition} Findings across seeds")
    rows = [line for line in last.split("Findings across seeds")[1].splitlines() if line.startswith("| ") and "`" in line]
    marks = [r.split(" | ")[2] for r in rows]
    assert marks[0] == "✓" and marks[3] == "✗"


def test_tables_escape_pipes():
    from lib.book.cli import parameters_markdown

    md = parameters_markdown("01_amplification")  # THRESHOLD's meaning says |path-patching effect|
    row = next(line for line in md.splitlines() if line.startswith("| `THRESHOLD`"))
    assert row.count(" | ") == 3 and "\\|path-patching effect\\|" in row  # name, default, allowed, meaning
    assert "-p SEED 1 -p BASE_STEPS 1000" in md  # the example re-run sets a number, not a string
    assert findings.table_cell("a | b\nc") == "a \\| b c"


# What the book reports at its default parameters (seed 0): the findings that hold there; every other finding
# of the chapter is reported as not reproducing. A change that moves one of them changes what the chapters say.
# Taken on 2026-12-04 on an AMD EPYC with AVX2 (``provenance.cpu``): trained weights depend on the CPU's vector
# instructions, and findings near their thresholds on seed 0 (four of them, in an earlier version of chapters 1, 2
# and 6) came out the other way on the machine of the earlier expectations. Chapters 1-3 as of the seed-0 runs of
# their re-recorded sweeps (the findings issue 22 rewrote).
HOLD_AT_DEFAULT = {
    "00_model_organisms": {"ioi_from_pretraining", "not_clause_position", "past_the_plateau", "has_name_mover",
                           "has_s_inhibition"},
    "01_amplification": {"behaviour_amplified", "keeps_amplifying", "classes_amplified", "beyond_control",
                         "change_in_circuit", "name_movers_amplified", "same_circuit"},
    "02_localized_corruption": {"sd_flips", "nm_moves_names", "sd_in_circuit", "nm_in_circuit",
                                "sd_name_movers_flip"},
    "03_neuroplasticity": {"sd_behaviour_recovers", "nm_behaviour_recovers", "sd_ld_restored", "nm_ld_restored",
                           "sd_savings", "nm_savings", "nm_map_returns", "nm_base_circuit_faithful"},
    "04_wrapper_revival": {"capability_pretrained", "wrapper_learned", "pruning_restores", "pruning_beats_random",
                           "revival_beats_scrft", "revival_beats_scratch"},  # the O' regime (issue 23)
    "05_feature_movement": {"task_below_general", "ci_above_zero", "above_control_rate", "above_control_all_token"},
    "06_objective_leakage": {"sdf_leaks", "sdf_log_ratio", "sdf_other_reference", "backdoor_leaks",
                             "backdoor_with_trigger", "toxic_doc_leaks", "controls_clean"},  # not pcfg_leaks
    "07_audit_table": {"no_false_positives", "calibrated_all_detected"},
}
# ... and the findings that are undecided there (a metric undefined on the seed's models), by chapter. Chapter 7
# calibrates its thresholds on the control organisms of the recorded seeds 1-4 (re-recorded 2026-12-04 with its
# current code), so its calibrated findings are decided at seed 0.
UNDECIDED_AT_DEFAULT: dict[str, set[str]] = {"02_localized_corruption": {"sd_negative_name_movers_flip"}}


@pytest.mark.slow
@pytest.mark.parametrize("stem", runner.chapters())
def test_findings_at_default_scale(stem, default_results):
    r = default_results(stem)
    got = {f.id: f.decide(r) for f in findings.chapter_findings(stem)}
    assert {k for k, v in got.items() if v is None} == UNDECIDED_AT_DEFAULT.get(stem, set()), got
    assert {k for k, v in got.items() if v} == HOLD_AT_DEFAULT[stem], got


def test_default_scale_expectations_name_real_findings():
    assert set(HOLD_AT_DEFAULT) == set(runner.chapters())
    for stem, ids in HOLD_AT_DEFAULT.items():
        assert ids <= {f.id for f in findings.chapter_findings(stem)}, stem


def test_headline_cells_copy_the_figure_output_and_the_paper_table(monkeypatch):
    import nbformat

    from lib.book import cli

    monkeypatch.setattr(runner, "notebook_meta", lambda stem: {"headline": {"figure": "fig1", "table": "| | paper |"}})
    plot = nbformat.v4.new_code_cell('plotting.savefig(fig, OUTPUT_DIR, "fig1")\nglue_all(x)')
    plot.outputs = [nbformat.v4.new_output("display_data", {"image/png": "iVBOR"}),
                    nbformat.v4.new_output("display_data", {"text/plain": "1"}, metadata={"scrapbook": {"name": "x"}}),
                    nbformat.v4.new_output("stream", name="stdout", text="log")]
    nb = nbformat.v4.new_notebook(cells=[
        plot, nbformat.v4.new_markdown_cell("Prose.\n\n| | paper | ours |\n|---|---|---|\n| LD | 1 | 2 |\n\nAfter.")])
    fig, head, = cli.headline_cells("x", nb)[:2]
    assert fig.metadata["tags"] == ["remove-input", cli.HEADLINE_FIGURE_TAG] and fig.get("id") != plot.get("id")
    assert fig.metadata["mystnb"] == {"image": {"width": "100%"}}  # as wide as the text column
    assert [o["output_type"] for o in fig.outputs] == ["display_data"] and "image/png" in fig.outputs[0]["data"]
    assert head.source.endswith("| | paper | ours |\n|---|---|---|\n| LD | 1 | 2 |")
    # a notes paragraph right after the table travels with it; other prose does not
    nb.cells[1].source = ("| | paper | ours |\n|---|---|---|\n| LD | 1 | 2 |\n\n**Notes.** p = 0.01;\nchance 0.5.\n\n"
                          "After.")
    assert cli.headline_cells("x", nb)[1].source.endswith("| LD | 1 | 2 |\n\n**Notes.** p = 0.01;\nchance 0.5.")
    # a table made by a code cell: its displayed outputs (the table, then its notes), not its prints or glue
    monkeypatch.setattr(runner, "notebook_meta", lambda stem: {"headline": {"table": "side = pd.DataFrame("}})
    tab = nbformat.v4.new_code_cell("side = pd.DataFrame(rows)\ndisplay(side)\ndisplay(Markdown(notes))")
    tab.outputs = [nbformat.v4.new_output("stream", name="stdout", text="log"),
                   nbformat.v4.new_output("display_data", {"text/html": "<table/>"}),
                   nbformat.v4.new_output("display_data", {"text/markdown": "**Notes.** p"})]
    title, copy = cli.headline_cells("x", nbformat.v4.new_notebook(cells=[tab]))
    assert [list(o["data"]) for o in copy.outputs] == [["text/html"], ["text/markdown"]]
    assert len(plot.outputs) == 3  # the original is untouched
    monkeypatch.setattr(runner, "notebook_meta", lambda stem: {"headline": {"figure": "nope"}})
    with pytest.raises(ValueError, match="ftm.headline.figure 'nope'"):
        cli.headline_cells("x", nb)


@pytest.mark.parametrize("stem", runner.chapters())
def test_each_chapter_names_a_headline_figure_that_exists(stem):
    from lib.book import cli

    spec = runner.notebook_meta(stem).get("headline") or {}
    assert spec.get("figure"), f"{stem}: ftm.headline.figure is missing (the figure the page opens with)"
    cells = cli.headline_cells(stem, runner.read_notebook(stem))
    assert len(cells) == (1 if "table" not in spec else 2 + (cells[-1].cell_type == "code"))


def test_over_seeds_joins_this_run_with_the_record(tmp_path):
    findings.record(STEM, {1: _ch0(1, ld=3.0), 2: _ch0(2, ld=1.0), 0: _ch0(0, ld=-9.0)}, root=tmp_path)
    params = {**findings.default_params(STEM), "SEED": 0}
    half = 4.303 * math.sqrt(((4 - 8 / 3) ** 2 + (3 - 8 / 3) ** 2 + (1 - 8 / 3) ** 2) / 2) / math.sqrt(3)
    # the recorded seed 0 is replaced by this run's value (4.0), as in the findings box
    assert findings.over_seeds(STEM, "ioi_logit_diff", 4.0, params, root=tmp_path) == \
        f"{8 / 3:.2f} [{8 / 3 - half:.2f}, {8 / 3 + half:.2f}], 3 seeds"
    assert findings.over_seeds(STEM, "ioi_logit_diff", 4.0, params, root=tmp_path, with_n=False) == \
        f"{8 / 3:.2f} [{8 / 3 - half:.2f}, {8 / 3 + half:.2f}]"  # a table cell: the count goes in its notes
    assert findings.over_seeds(STEM, "ioi_logit_diff", 4.0, {**params, "BASE_STEPS": 7}, root=tmp_path) == \
        "this seed only"


# --------------------------------------------------------------------------- undecided, pooled, stale records


def test_undecided_condition_gives_a_reason_never_a_verdict():
    f = findings.Finding("faithful", "c", "ld_circuit / ld_model > 0.8",
                         undecided=(findings.Undecided("ld_model < 0.5", "behaviour not recovered (LD < 0.5)"),))
    assert f.decide({"ld_circuit": 4.72, "ld_model": 0.08}) is None  # a ratio over nothing is not a pass
    assert f.why_undecided({"ld_circuit": 4.72, "ld_model": 0.08}) == "behaviour not recovered (LD < 0.5)"
    assert f.decide({"ld_circuit": 0.1, "ld_model": 0.04}) is None  # nor a fail
    assert f.decide({"ld_circuit": 3.0, "ld_model": 3.5}) is True
    assert f.decide({"ld_circuit": 1.0, "ld_model": 3.5}) is False and f.why_undecided({"ld_circuit": 1.0,
                                                                                         "ld_model": 3.5}) is None
    assert f.why_undecided({"ld_model": 3.5}) == "no finite value of ld_circuit"
    assert f.names == ["ld_circuit", "ld_model"]


@pytest.mark.parametrize("expr, runs, holds, value", [
    # 5 of 5 seeds positive: one-sided sign test p = 1/32
    ("sign_p(a - b) < 0.05", {s: {"a": 2.0 + s, "b": 1.0} for s in range(5)}, True, 1 / 32),
    # 4 of 5: p = 6/32 = 0.1875
    ("sign_p(a - b) < 0.05", {s: {"a": 2.0 if s else 0.0, "b": 1.0} for s in range(5)}, False, 6 / 32),
    # Fisher: -2 sum log p ~ chi2(2k); p = 0.1 on three seeds: x = 6 ln 10 on 6 df, whose survival function is
    # exp(-x/2) (1 + x/2 + (x/2)^2 / 2) = 0.001 (1 + 3 ln 10 + (3 ln 10)^2 / 2)
    ("fisher(p) < 0.05", {s: {"p": 0.1} for s in range(3)}, True,
     0.001 * (1 + 3 * math.log(10) + (3 * math.log(10)) ** 2 / 2)),
    # the t interval over seeds of (1, 2, 3, 4, 5): mean 3, lower bound 3 - 2.776445 * sqrt(2.5 / 5)
    ("t_lo(x) > 0", {s: {"x": float(s + 1)} for s in range(5)}, True, 3 - 2.776445 * (2.5 / 5) ** 0.5),
    ("n_true(x > 2) >= 3", {s: {"x": float(s + 1)} for s in range(5)}, True, 3.0),
])
def test_pooled_tests_by_hand(expr, runs, holds, value):
    out = findings.evaluate_pooled(expr, runs)
    assert out.holds is holds
    assert list(out.values.values())[0] == pytest.approx(value, rel=1e-4)
    assert out.seeds == sorted(runs)


def test_pooled_leaves_out_undecided_seeds_and_needs_two():
    runs = {0: {"a": 1.0}, 1: {"a": None}, 2: {"a": math.nan}}
    assert findings.evaluate_pooled("mean(a) > 0", runs).holds is None
    assert findings.evaluate_pooled("mean(a) > 0", {**runs, 3: {"a": 3.0}}).values == {"mean(a)": 2.0}


@pytest.mark.parametrize("expr", ["a > 0", "sign_p(a) < 0.05 and b > 1", "sign_p(mean(a)) < 1", "fisher(a, b) < 1",
                                  "sign_p(a.real) < 1", "mean(__import__('os')) > 0", "mean()"])
def test_pooled_rejects_names_outside_aggregators_and_anything_else(expr):
    with pytest.raises(findings.FindingError):
        findings.parse_pooled(expr)


def test_chapter_findings_read_pooled_and_undecided(monkeypatch):
    def meta(items):
        monkeypatch.setattr(runner, "notebook_meta", lambda stem: {"findings": items})

    meta([{"id": "x", "claim": "c", "test": "a > 0", "pooled": "sign_p(a) < 0.05",
           "undecided": {"when": "b < 1", "reason": "no behaviour"}}])
    f = findings.chapter_findings("any")[0]
    assert f.pooled == "sign_p(a) < 0.05" and f.undecided == (findings.Undecided("b < 1", "no behaviour"),)
    meta([{"id": "x", "claim": "c", "test": "a > 0", "pooled": "a > 0"}])
    with pytest.raises(findings.FindingError, match="aggregator"):
        findings.chapter_findings("any")
    meta([{"id": "x", "claim": "c", "test": "a > 0", "undecided": {"when": "b < 1"}}])
    with pytest.raises(findings.FindingError, match="undecided"):
        findings.chapter_findings("any")


def test_tally_pools_over_seeds_and_shows_reasons(tmp_path, monkeypatch):
    fs = [findings.Finding("ioi", "IOI", "ioi_logit_diff > 2", "sign_p(ioi_logit_diff - 2) < 0.05",
                           (findings.Undecided("ioi_acc < 0.5", "no IOI behaviour"),))]
    monkeypatch.setattr(findings, "chapter_findings", lambda stem: fs)
    findings.record(STEM, {s: _ch0(s, ld=3.0 + s) for s in (1, 2, 3, 4)}, root=tmp_path)
    t = findings.tally(STEM, _ch0(0, ld=5.0), root=tmp_path)[0]
    assert t.by_seed == {0: True, 1: True, 2: True, 3: True, 4: True}
    assert t.pooled.holds is True and t.pooled.values == {"sign_p(ioi_logit_diff - 2)": pytest.approx(1 / 32)}
    assert t.sentence() == "holds on 5 of 5 seeds; pooled: holds over 5 seeds (sign_p(ioi_logit_diff - 2) = 0.0312)"
    t = findings.tally(STEM, _ch0(0, ld=5.0, acc=0.3), root=tmp_path)[0]  # the build's seed has no IOI
    assert t.by_seed[0] is None and t.why == {0: "no IOI behaviour"} and t.pooled.seeds == [1, 2, 3, 4]
    md = findings.findings_markdown(STEM, _ch0(0, ld=5.0, acc=0.3), root=tmp_path)
    assert "Undecided seeds: ioi: seed 0: no IOI behaviour" in md and "pooled: `sign_p(" in md


def test_a_record_of_other_chapter_code_or_other_organisms_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(findings, "chapter_hash", lambda stem: "h-now")

    def run(seed, h="h-now", orgs=("k1", "k2"), **kw):
        r = _ch0(seed, **kw)
        r["provenance"].update(chapter_hash=h, organisms={k: "name" for k in orgs}, seed=seed)
        return r
    findings.record(STEM, {s: run(s) for s in (0, 1, 2)}, root=tmp_path)
    doc = json.loads(findings.record_path(STEM, tmp_path).read_text())
    assert doc["chapter_hash"] == "h-now" and doc["seeds"]["1"]["organisms"] == ["k1", "k2"]
    assert findings.record_staleness(STEM, doc, run(0)) is None
    assert list(findings.tally(STEM, run(0), root=tmp_path)[0].by_seed) == [0, 1, 2]
    # the build's seed-0 organisms are not the recorded seed 0's: a recipe or world changed since
    assert "organisms" in findings.record_staleness(STEM, doc, run(0, orgs=("k1", "k3")))
    assert list(findings.tally(STEM, run(0, orgs=("k1", "k3")), root=tmp_path)[0].by_seed) == [0]
    # the chapter's code changed since the record
    monkeypatch.setattr(findings, "chapter_hash", lambda stem: "h-later")
    assert "code changed" in findings.record_staleness(STEM, doc)
    assert findings.load_record(STEM, tmp_path) is None
    md = findings.findings_markdown(STEM, run(0, h="h-later"), root=tmp_path)
    assert "are not shown: the chapter's code changed" in md
    # recording with the new code starts the record anew instead of mixing code versions
    findings.record(STEM, {3: run(3, h="h-later")}, root=tmp_path)
    assert list(json.loads(findings.record_path(STEM, tmp_path).read_text())["seeds"]) == ["3"]


def test_chapter_hash_ignores_prose_comments_and_parameters_but_not_code(monkeypatch):
    import nbformat

    def nb(*cells):
        return nbformat.v4.new_notebook(cells=list(cells))
    code = nbformat.v4.new_code_cell
    params = code("SEED = 0  # seed", metadata={"tags": ["parameters"]})
    base = nb(nbformat.v4.new_markdown_cell("text"), params, code("x = f(SEED)\n"))
    variants = {
        "same": nb(nbformat.v4.new_markdown_cell("other text"), code("SEED = 1  # other", metadata={
            "tags": ["parameters"]}), code("x = f(SEED)  # a comment\n\n")),
        "other": nb(params, code("x = g(SEED)\n")),
    }
    hashes = {}
    for name, book in [("base", base), *variants.items()]:
        monkeypatch.setattr(runner, "read_notebook", lambda stem, b=book: b)
        hashes[name] = findings.chapter_hash("any")
    assert hashes["base"] == hashes["same"] != hashes["other"]


@pytest.mark.parametrize("stem", runner.chapters())
def test_committed_seed_records_are_of_the_current_chapter_code(stem):
    """A record that names its chapter code (every record made since records carry it) must match the chapter as
    committed: change a chapter's code and its seeds are re-recorded in the same change."""
    path = findings.record_path(stem)
    if not path.exists():
        pytest.skip("no record")
    doc = json.loads(path.read_text())
    assert doc.get("chapter_hash") in (None, findings.chapter_hash(stem)), (
        f"book/seeds/{stem}.json was recorded with other chapter code: "
        f"python -m lib sweep {stem[:2]} --seeds 0..4 --record")


def test_a_record_made_before_records_named_their_code_is_refused(tmp_path):
    findings.record(STEM, {1: _ch0(1)}, root=tmp_path)
    p = findings.record_path(STEM, tmp_path)
    doc = json.loads(p.read_text())
    doc["chapter_hash"] = None  # as every record written before this change
    p.write_text(json.dumps(doc))
    assert "before records named their chapter's code" in findings.record_staleness(STEM, doc)
    assert list(findings.tally(STEM, _ch0(0), root=tmp_path)[0].by_seed) == [0]
    no_hash = _ch0(2)
    del no_hash["provenance"]["chapter_hash"]
    with pytest.raises(ValueError, match="chapter code"):
        findings.record(STEM, {2: no_hash}, root=tmp_path)


def test_the_builds_own_seed_drops_the_reason_recorded_for_it(tmp_path, monkeypatch):
    fs = [findings.Finding("ioi", "IOI", "ioi_logit_diff > 2", None,
                           (findings.Undecided("ioi_acc < 0.5", "no IOI behaviour"),))]
    monkeypatch.setattr(findings, "chapter_findings", lambda stem: fs)
    findings.record(STEM, {0: _ch0(0, acc=0.3), 1: _ch0(1)}, root=tmp_path)  # seed 0 recorded undecided
    t = findings.tally(STEM, _ch0(0), root=tmp_path)[0]  # ... and built decided
    assert t.by_seed == {0: True, 1: True} and t.why == {}


def test_an_undecided_condition_that_cannot_be_checked_leaves_the_seed_undecided():
    f = findings.Finding("x", "c", "a > 0", undecided=(findings.Undecided("b < 1", "no b"),))
    assert f.decide({"a": 1.0, "b": math.nan}) is None
    assert "cannot evaluate" in f.why_undecided({"a": 1.0})


def test_pooled_aggregators_take_numbers_and_survive_exact_p_values_of_one():
    with pytest.raises(findings.FindingError, match="comparison"):
        findings.parse_pooled("sign_p(a > 0) < 0.05")  # a False would be a tie, dropped: use n_true
    with pytest.raises(findings.FindingError, match="yes/no"):
        findings.parse_pooled("n_true(a) >= 3")
    with pytest.raises(findings.FindingError, match="constant"):
        findings.parse_pooled("mean(a) > 0 and 'x' * 9")
    # one seed at p = 1 (a count of 0 hits) must not veto Stouffer's combination of strong evidence
    out = findings.evaluate_pooled("stouffer(p) < 0.05", {0: {"p": 1.0}, 1: {"p": 1e-12}, 2: {"p": 1e-12}})
    assert out.holds is True
    # a list-valued result is not a number: left out, not a crash
    assert findings.evaluate_pooled("mean(a) > 0", {0: {"a": [1]}, 1: {"a": 2.0}, 2: {"a": 3.0}}).seeds == [1, 2]
