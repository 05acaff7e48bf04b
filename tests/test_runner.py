"""The runner: chapters come from _toc.yml, parameters are validated before anything executes."""
import pytest

from lib.book import runner
from lib.book.runner import ParameterError, coerce, parse_parameters, validate_params


def test_chapters_come_from_toc():
    stems = runner.chapters()
    assert stems[0] == "00_model_organisms"
    assert len(stems) == len(set(stems))
    for s in stems:
        assert runner.source_path(s).exists(), s


@pytest.mark.parametrize("stem", runner.chapters())
def test_every_chapter_has_one_parameters_cell_and_smoke_entry(stem):
    nb = runner.read_notebook(stem)
    assert len(runner.parameter_cells(nb)) == 1
    params = runner.notebook_parameters(stem)
    assert "SEED" in params and "OUTPUT_DIR" in params
    assert all(p.meaning for p in params.values()), "every parameter needs a '# meaning' comment"
    meta = runner.notebook_meta(stem)
    assert meta.get("smoke"), f"{stem} has no ftm.smoke parameters"
    validate_params(stem, meta["smoke"])  # smoke parameters must themselves be valid
    assert meta.get("results"), f"{stem} declares no ftm.results keys"


def test_unknown_parameter_is_named_with_suggestion():
    with pytest.raises(ParameterError, match=r"unknown parameter 'BASE_STEP'.*did you mean BASE_STEPS"):
        validate_params("00_model_organisms", {"BASE_STEP": 10})


@pytest.mark.parametrize("value", ["ten", 1.5, True, [1]])
def test_wrong_type_is_named(value):
    with pytest.raises(ParameterError, match="parameter BASE_STEPS expects int"):
        validate_params("00_model_organisms", {"BASE_STEPS": value})


def test_cli_strings_are_coerced():
    assert validate_params("00_model_organisms", {"BASE_STEPS": "12", "LR": "1e-3", "IOI_FRAC": "1"}) == \
        {"BASE_STEPS": 12, "LR": 0.001, "IOI_FRAC": 1.0}
    assert coerce("X", "true", False) is True
    assert coerce("X", "abc", "s") == "abc"


def test_parameters_cell_must_be_plain_literals():
    with pytest.raises(ParameterError, match="UPPER_CASE"):
        parse_parameters("steps = 3")
    with pytest.raises(ParameterError, match="literal"):
        parse_parameters("STEPS = 3 * N")
    with pytest.raises(ParameterError, match="assignments"):
        parse_parameters("import os")
    p = parse_parameters("STEPS = 3  # how many\nNAME = 'x'")
    assert p["STEPS"].default == 3 and p["STEPS"].meaning == "how many" and p["NAME"].meaning == ""


def test_resolve_by_number_and_name():
    assert runner.resolve("0") == runner.resolve("00") == runner.resolve("model_organisms") == "00_model_organisms"
    with pytest.raises(ParameterError, match="unknown chapter"):
        runner.resolve("99")


def test_cli_reports_parameter_errors(capsys):
    from lib.book.cli import main
    assert main(["run", "0", "-p", "NOPE", "1"]) == 2
    assert "unknown parameter 'NOPE'" in capsys.readouterr().err



def test_parallel_build_runs_chapters_in_spawned_workers_with_their_thread_share():
    """The machinery of `make book`'s parallel build (lib.book.cli.run_parallel), with a worker that reports
    instead of executing a chapter: each runs in its own process with the thread count it was given."""
    import os

    from lib.book.cli import build_order, run_parallel

    stems = runner.chapters()[:3]
    got = {}
    run_parallel(stems, {s: "unused" for s in stems}, jobs=2, threads=1, on_done=got.__setitem__,
                 execute=runner.worker_report)
    assert set(got) == set(stems) and all(got[s]["stem"] == s for s in stems)
    assert all(r["torch_threads"] == 1 and r["omp"] == "1" for r in got.values())
    assert len({r["pid"] for r in got.values()}) <= 2 and all(r["pid"] != os.getpid() for r in got.values())
    order = build_order(runner.chapters())
    assert sorted(order) == sorted(runner.chapters())
    assert order[:2] == ["04_wrapper_revival", "00_model_organisms"]  # ftm.build_rank: its own world; the IOI base


def test_build_order_follows_build_rank_then_toc(monkeypatch):
    from lib.book import cli

    meta = {"a": {"build_rank": 2}, "b": {}, "c": {"build_rank": 0}, "d": {}, "e": {"build_rank": 2}}
    monkeypatch.setattr(cli.runner, "notebook_meta", lambda s: meta[s])
    assert cli.build_order(list("abcde")) == ["c", "a", "e", "b", "d"]  # ties and unranked keep _toc.yml order
    meta["b"] = {"build_rank": "1"}
    with pytest.raises(ValueError, match="build_rank must be an int"):
        cli.build_order(list("abcde"))
