"""The runner: chapters come from _toc.yml, parameters are validated before anything executes."""
import os

import pytest

from lib import runner
from lib.runner import ParameterError, coerce, parse_parameters, validate_params


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
    from lib.__main__ import main
    assert main(["run", "0", "-p", "NOPE", "1"]) == 2
    assert "unknown parameter 'NOPE'" in capsys.readouterr().err


# --------------------------------------------------------------------------- several chapters (make book --jobs)


def fake_chapter(stem, params, out_dir):
    """Stands in for run_notebook in build workers: records when it ran; fails for $FTM_FAIL_CHAPTER."""
    import json
    import os
    import time

    os.makedirs(out_dir, exist_ok=True)
    start = time.time()
    time.sleep(0.4 if stem in ("00_model_organisms", "04_wrapper_revival") else 0.1)
    if stem == os.environ.get("FTM_FAIL_CHAPTER"):
        raise RuntimeError(f"{stem}: cell 3 failed")
    with open(os.path.join(out_dir, "span.json"), "w") as f:
        json.dump({"start": start, "end": time.time(), "pid": os.getpid()}, f)
    return {}


def _spans(root, stems):
    import json

    return {s: json.loads((root / s / "span.json").read_text()) for s in stems if (root / s / "span.json").exists()}


def test_parallel_build_starts_chapters_after_their_needs(tmp_path):
    stems = runner.chapters()
    finished = []
    timings = runner.run_chapters(stems, lambda s: tmp_path / s, jobs=2, run_fn=fake_chapter,
                                  on_done=lambda s, t: finished.append(s), progress=lambda m: None,
                                  start_method="fork")
    spans = _spans(tmp_path, stems)
    assert set(spans) == set(stems) == set(timings) == set(finished)
    for s in stems:
        for n in runner.chapter_needs(s):
            assert spans[n]["end"] <= spans[s]["start"], f"{s} started before {n} finished"
    edges = sorted([(v["start"], 1) for v in spans.values()] + [(v["end"], -1) for v in spans.values()])
    level = [0]
    for _, d in edges:
        level.append(level[-1] + d)
    assert max(level) == 2  # two at a time, never more
    # the chapters that need nothing run side by side from the start
    assert spans["04_wrapper_revival"]["start"] < spans["00_model_organisms"]["end"]
    assert len({v["pid"] for v in spans.values()} - {os.getpid()}) >= 2


def test_parallel_build_stops_at_a_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("FTM_FAIL_CHAPTER", "01_amplification")
    stems = runner.chapters()
    with pytest.raises(RuntimeError, match="01_amplification: cell 3 failed"):
        runner.run_chapters(stems, lambda s: tmp_path / s, jobs=2, run_fn=fake_chapter, progress=lambda m: None,
                            start_method="fork")
    ran = set(_spans(tmp_path, stems))
    assert "00_model_organisms" in ran and not ran & {"02_localized_corruption", "03_neuroplasticity",
                                                       "05_feature_movement", "07_audit_table"}


def test_sequential_build_runs_in_toc_order(tmp_path):
    stems = runner.chapters()[:3]
    order = []
    runner.run_chapters(stems, lambda s: tmp_path / s, jobs=1, run_fn=fake_chapter,
                        on_done=lambda s, t: order.append(s), progress=lambda m: None)
    assert order == stems


def test_needs_must_name_an_earlier_chapter(monkeypatch):
    monkeypatch.setattr(runner, "notebook_meta", lambda stem: {"needs": ["07_audit_table"]})
    with pytest.raises(runner.ParameterError, match="07_audit_table"):
        runner.chapter_needs("01_amplification")
