"""Seed sweeps (parallel processes, mean ± t interval) and side-by-side comparison of runs."""
from __future__ import annotations

import json
import math
import os

import pytest

from lib.book import runner, sweep
from lib.book.cli import main


def test_t_critical_matches_known_quantiles():
    # Reference values of the Student t 0.975 quantile.
    assert sweep.t_critical(1) == pytest.approx(12.7062, abs=1e-4)
    assert sweep.t_critical(4) == pytest.approx(2.7764, abs=1e-4)
    assert sweep.t_critical(30) == pytest.approx(2.0423, abs=1e-4)
    assert sweep.t_critical(31) == pytest.approx(2.0395, abs=1e-4)
    assert sweep.t_critical(60) == pytest.approx(2.0003, abs=1e-4)
    assert sweep.t_critical(120) == pytest.approx(1.9799, abs=1e-4)
    assert sweep.t_critical(10**6) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError):
        sweep.t_critical(0)


def test_mean_ci_by_hand():
    s = sweep.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0], "x")
    assert s.mean == 3.0 and s.n == 5
    assert s.std == pytest.approx(math.sqrt(2.5))
    assert s.half_width == pytest.approx(2.7764451 * math.sqrt(2.5) / math.sqrt(5))
    assert s.lo == pytest.approx(3.0 - s.half_width) and "±" in str(s)
    one = sweep.mean_ci([7.0])
    assert one.half_width is None and one.lo is None and "n=1" in str(one)
    with pytest.raises(ValueError):
        sweep.mean_ci([])


def test_summarize_takes_numeric_top_level_keys_only():
    runs = [{"loss": 1.0, "acc": 1, "ok": True, "name": "a", "curve": [1, 2], "maybe": None,
             "provenance": {"wall_time_s": 3.0}},
            {"loss": 3.0, "acc": 0, "ok": False, "name": "b", "curve": [3], "maybe": 2.0,
             "provenance": {"wall_time_s": 5.0}}]
    stats = sweep.summarize(runs)
    assert set(stats) == {"loss", "acc", "maybe"}
    assert stats["loss"].mean == 2.0 and stats["loss"].n == 2
    assert stats["maybe"].n == 1  # a run where the value is missing or not finite does not count
    assert sweep.holds_on([0.5, -1.0, 2.0], lambda v: v > 0) == (2, 3)


def test_parse_seeds():
    assert sweep.parse_seeds("0..4") == [0, 1, 2, 3, 4]
    assert sweep.parse_seeds("3") == [3]
    assert sweep.parse_seeds("0, 2,7") == [0, 2, 7]
    assert sweep.parse_seeds("0..2,9") == [0, 1, 2, 9]
    assert sweep.parse_seeds([1, 2]) == [1, 2]
    for bad in ("4..0", "a", "1,1", "0..2,2"):
        with pytest.raises(ValueError):
            sweep.parse_seeds(bad)


def fake_run(stem, params, out_dir):
    """Stands in for run_notebook in worker processes: a result that depends on the seed."""
    seed = params["SEED"]
    if seed == 13:
        raise RuntimeError("cell 4 failed\nValueError: bad seed")
    os.makedirs(out_dir, exist_ok=True)
    res = {"score": 10.0 + seed, "steps": params.get("BASE_STEPS", -1), "pid": os.getpid(), "flag": True,
           "provenance": {"parameters": params}}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(res, f)
    return res


def test_sweep_runs_seeds_in_worker_processes(tmp_path):
    res = sweep.sweep("0", "0..3", {"BASE_STEPS": "40"}, workers=2, run_fn=fake_run, out_root=tmp_path,
                      progress=lambda s: None, start_method="fork")
    assert res.stem == "00_model_organisms" and res.seeds == [0, 1, 2, 3] and not res.failed
    assert res.params == {"BASE_STEPS": 40}  # validated and coerced once, before any process starts
    assert res.stats["score"].mean == pytest.approx(11.5) and res.stats["score"].n == 4
    assert res.stats["score"].half_width == pytest.approx(
        sweep.t_critical(3) * sweep.mean_ci([10, 11, 12, 13]).std / 2)
    assert res.stats["steps"].mean == 40 and "flag" not in res.stats
    assert all(v != os.getpid() for v in res.stats["pid"].values)  # ran in other processes
    # One folder per seed, named like `python -m lib run` would name it.
    for s in res.seeds:
        assert res.runs[s] == str(tmp_path / runner.params_hash({"BASE_STEPS": 40, "SEED": s}))
    summary = json.loads(open(res.summary_path).read())
    assert summary["stats"]["score"]["n"] == 4 and summary["stats"]["score"]["ci"] == 0.95


def test_sweep_reports_a_failed_seed_and_keeps_the_others(tmp_path):
    res = sweep.sweep("0", "12..14", workers=2, run_fn=fake_run, out_root=tmp_path, progress=lambda s: None,
                      start_method="fork")
    assert list(res.failed) == [13] and "bad seed" in res.failed[13]
    assert sorted(res.runs) == [12, 14] and res.stats["score"].n == 2


def test_sweep_rejects_bad_parameters_before_starting(tmp_path):
    with pytest.raises(runner.ParameterError, match="BASE_STEP"):
        sweep.sweep("0", "0..1", {"BASE_STEP": 3}, run_fn=fake_run, out_root=tmp_path)
    assert not any(tmp_path.iterdir())


def _write_run(d, params, **results):
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({**results, "provenance": {"parameters": params}}))
    return d


def test_compare_two_runs(tmp_path, capsys):
    a = _write_run(tmp_path / "a", {"SEED": 0, "LR": 0.002, "OUTPUT_DIR": "x"}, loss=2.5, acc=0.5, key="k1")
    b = _write_run(tmp_path / "b", {"SEED": 1, "LR": 0.002, "OUTPUT_DIR": "y"}, loss=2.0, acc=0.75, extra=1)
    table = sweep.compare(a, b / "results.json")
    assert [(r.key, r.a, r.b) for r in table["parameters"]] == [("SEED", 0, 1)]
    rows = {r.key: r for r in table["results"]}
    assert list(rows) == ["loss", "acc", "key", "extra"]
    assert rows["loss"].diff == pytest.approx(-0.5) and rows["acc"].diff == pytest.approx(0.25)
    assert rows["key"].b is None and rows["key"].diff is None and rows["extra"].a is None
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "SEED: 0 -> 1" in out and "-0.5" in out and "+0.25" in out
    with pytest.raises(FileNotFoundError):
        sweep.compare(a, tmp_path / "missing")


@pytest.mark.slow
def test_sweep_of_a_real_chapter(tmp_path, smoke_cache, monkeypatch):
    """Two seeds of chapter 0 at its smoke parameters, executed by papermill in two worker processes."""
    monkeypatch.setenv("FTM_CACHE_DIR", str(smoke_cache))
    res = sweep.sweep("0", "0..1", runner.notebook_meta("00_model_organisms")["smoke"], workers=2,
                      out_root=tmp_path, progress=lambda s: None)
    assert not res.failed and res.stats["n_params"].std == 0
    assert res.stats["general_loss"].n == 2 and res.stats["general_loss"].half_width > 0
    for s, d in res.runs.items():
        prov = json.loads(open(os.path.join(d, "results.json")).read())["provenance"]
        assert prov["seed"] == s


def test_sweep_on_a_dask_local_cluster_matches_the_process_pool(tmp_path):
    """Each seed one Dask task on a LocalCluster of 2 worker processes: the same runs, statistics and failures
    as the local pool's."""
    pytest.importorskip("distributed")
    kw = dict(workers=2, run_fn=fake_run, progress=lambda s: None)
    pool = sweep.sweep("0", "12..15", {"BASE_STEPS": "40"}, out_root=tmp_path / "pool", start_method="fork", **kw)
    dask = sweep.sweep("0", "12..15", {"BASE_STEPS": "40"}, out_root=tmp_path / "dask", scheduler="local", **kw)
    assert list(dask.failed) == list(pool.failed) == [13] and dask.failed == pool.failed
    assert sorted(dask.runs) == sorted(pool.runs) == [12, 14, 15]
    for key in ("score", "steps"):
        assert dask.stats[key] == pool.stats[key]
    assert all(p != os.getpid() for p in dask.stats["pid"].values)  # ran in the cluster's worker processes
    for s in dask.runs:
        a = json.loads(open(os.path.join(pool.runs[s], "results.json")).read())
        b = json.loads(open(os.path.join(dask.runs[s], "results.json")).read())
        assert {k: v for k, v in a.items() if k != "pid"} == {k: v for k, v in b.items() if k != "pid"}


def test_sweep_refuses_an_unreadable_scheduler_before_starting(tmp_path, capsys):
    with pytest.raises(ValueError, match="scheduler"):
        sweep.sweep("0", "0..1", scheduler="localhost:8786", run_fn=fake_run, out_root=tmp_path)
    assert not any(tmp_path.iterdir())
    assert main(["sweep", "0", "--seeds", "0..1", "--scheduler", "my-cluster"]) == 2
    assert "tcp://HOST:PORT" in capsys.readouterr().err


@pytest.mark.notebooks
def test_sweep_of_a_real_chapter_on_a_dask_local_cluster(tmp_path, smoke_cache, monkeypatch):
    """Two seeds of chapter 0 at its smoke parameters, executed by papermill on a Dask LocalCluster of 2 workers;
    each seed's results are the ones ``python -m lib run`` writes (same folder name, same provenance seed)."""
    pytest.importorskip("distributed")
    monkeypatch.setenv("FTM_CACHE_DIR", str(smoke_cache))
    res = sweep.sweep("0", "0..1", runner.notebook_meta("00_model_organisms")["smoke"], workers=2,
                      out_root=tmp_path, progress=lambda s: None, scheduler="local")
    assert not res.failed and sorted(res.runs) == [0, 1] and res.stats["n_params"].std == 0
    assert res.stats["general_loss"].n == 2 and res.stats["general_loss"].half_width > 0
    for s, d in res.runs.items():
        prov = json.loads(open(os.path.join(d, "results.json")).read())["provenance"]
        assert prov["seed"] == s and d == str(tmp_path / runner.params_hash({**res.params, "SEED": s}))
