"""Every chapter in _toc.yml executes end to end with its small (``ftm.smoke``) parameters.

The chapter list and the parameters come from the notebooks themselves; there is no list here to drift.
Organisms trained by one chapter's smoke run are shared with the next through one session cache.
"""
import json
import math

import pytest

from lib.book import findings, runner

pytestmark = pytest.mark.notebooks


def _finite_numbers(x):
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return True
    if isinstance(x, (int, float)):
        return math.isfinite(x)
    if isinstance(x, dict):
        return all(_finite_numbers(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite_numbers(v) for v in x)
    return False


@pytest.mark.parametrize("stem", runner.chapters())
def test_chapter_executes_with_smoke_parameters(stem, smoke_run):
    results, out = smoke_run(stem)
    for key in runner.notebook_meta(stem)["results"]:
        assert key in results, f"{stem}: results.json lacks {key!r}"
        assert _finite_numbers(results[key]), f"{stem}: {key} = {results[key]!r} is not finite"
    for f in findings.chapter_findings(stem):  # the book's findings table reads these keys
        missing = [n for n in f.names if n not in results]
        assert not missing, f"{stem}: finding {f.id!r} reads {missing}, which results.json lacks"
    prov = results["provenance"]
    assert prov["parameters"]["SEED"] == runner.notebook_parameters(stem)["SEED"].default
    for k, v in runner.notebook_meta(stem)["smoke"].items():
        assert prov["parameters"][k] == v, f"{stem}: provenance does not record {k}={v}"
    assert prov["packages"]["torch"].startswith("2.13") and prov["wall_time_s"] > 0
    assert (out / f"{stem}.ipynb").exists()
    assert list(out.glob("*.png")), f"{stem} saved no figure into OUTPUT_DIR"
    nb = json.loads((out / f"{stem}.ipynb").read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_template_chapter_values(smoke_run):
    results, out = smoke_run("00_model_organisms")
    assert results["n_params"] > 1000
    assert 0 < results["general_loss"] < 10 and 0 <= results["ioi_acc"] <= 1
    # A second run with the same parameters, DEVICE named explicitly, goes through lib.organisms.device's code path and
    # trains nothing: the organism comes from the cache (a CPU run shares the key of the default).
    again = runner.run_notebook("00_model_organisms",
                                {**runner.notebook_meta("00_model_organisms")["smoke"], "DEVICE": "cpu"}, out / "again")
    assert again["provenance"]["parameters"]["DEVICE"] == "cpu"
    assert again["trained_now"] is False and again["cache_key"] == results["cache_key"]
    assert again["general_loss"] == pytest.approx(results["general_loss"], abs=1e-6)


def test_run_rejects_bad_parameters_before_executing(tmp_path, monkeypatch):
    with pytest.raises(runner.ParameterError, match="NOT_A_PARAM"):
        runner.run_notebook("00_model_organisms", {"NOT_A_PARAM": 1}, tmp_path)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # a CPU-only machine, wherever this runs
    with pytest.raises(runner.ParameterError, match=r"DEVICE='cuda'.*no usable CUDA GPU"):
        runner.run_notebook("00_model_organisms", {"DEVICE": "cuda"}, tmp_path)
    assert not (tmp_path / "00_model_organisms.ipynb").exists()
