"""Where a book build is (lib.book.progress): durations, estimates from a hand-written timings.json, the status
lines on a terminal and in a log, the summary table; a failing chapter names its cell and error."""
from __future__ import annotations

import io
import json
import pickle
import re

import nbformat
import pytest

from lib.book import progress, runner
from lib.book.progress import BuildConsole, build_remaining, chapter_line, estimate, fmt_duration, load_timings


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_durations():
    assert [fmt_duration(s) for s in (0, 4.4, 59.6, 60, 185, 3599, 3600, 3725, -3)] == \
        ["0s", "4s", "1m00s", "1m00s", "3m05s", "59m59s", "1h00m", "1h02m", "0s"]
    assert fmt_duration(None) == "-"


def test_estimates_from_a_timings_file(tmp_path):
    path = tmp_path / "timings.json"  # the format build_book writes
    path.write_text(json.dumps({"00_a": 420.0, "01_b": 95.5, "02_c": 30, "_wall_s": 600.2, "_jobs": 2,
                                "_chapters": 3, "note": "x", "flag": True}))
    t = load_timings(path)
    assert t == {"00_a": 420.0, "01_b": 95.5, "02_c": 30.0, "_wall_s": 600.2, "_jobs": 2.0, "_chapters": 3.0}
    assert load_timings(tmp_path / "missing.json") == {}
    (tmp_path / "bad.json").write_text("{not json")
    assert load_timings(tmp_path / "bad.json") == {}
    # 420 s last time, 170 s in: 250 s = 4m10s left of 7m00s; past it: how far over
    assert estimate(170, t["00_a"]) == "~4m10s left of ~7m00s"
    assert estimate(485, t["00_a"]) == "1m05s over last build's 7m00s"
    assert estimate(10, None) == "no earlier time"
    # the build: 00_a has 420-170 = 250 s left, 01_b runs 100 s (over: 0 left), 02_c queued 30 s; two workers:
    # (250 + 0 + 30) / 2 = 140 s of work each, but 00_a alone needs 250 s more
    assert build_remaining({"00_a": 170, "01_b": 100}, ["02_c"], t, jobs=2) == 250
    assert build_remaining({"00_a": 400}, ["01_b", "02_c"], t, jobs=1) == pytest.approx(20 + 95.5 + 30)
    assert build_remaining({"00_a": 1}, ["99_new"], t, jobs=2) is None


def test_chapter_line():
    st = {"started": 1000.0, "cell": 12, "n_cells": 40, "line": "res = patching.run(model, prompts)"}
    line = chapter_line("01_amplification", st, now=1185.0, last=437.0, stem_width=20)
    assert line == ("01_amplification      cell 12/40    3m05s  ~4m12s left of ~7m17s  "
                    "| res = patching.run(model, prompts)")
    assert chapter_line("01_amplification", None, 0, None, 16) == "01_amplification  queued"
    assert "starting" in chapter_line("x", {"started": 0, "cell": 0, "n_cells": 0}, 5, None)
    assert progress.first_line("\n  # train the organism  \nx = 1") == "# train the organism"
    assert progress.first_line("y = " + "a" * 100, width=10) == "y = aaaaa…"


def test_status_file_round_trip(tmp_path):
    clock = Clock(50.0)
    f = progress.StatusFile(tmp_path / "st" / "01_b.json", "01_b", clock=clock)
    st = progress.read_status(f.path)
    assert st["stem"] == "01_b" and st["cell"] == 0 and st["started"] == 50.0
    clock.t = 80.0
    f(3, 9, "\n# fit the probe\nprobe = fit()")
    st = progress.read_status(f.path)
    assert (st["cell"], st["n_cells"], st["line"], st["started"], st["at"]) == (3, 9, "# fit the probe", 50.0, 80.0)
    assert not list(f.path.parent.glob(".*tmp"))  # written through a temporary file, renamed
    assert progress.read_status(tmp_path / "none.json") is None


def _console(tty: bool, clock: Clock, **kw) -> tuple[BuildConsole, io.StringIO]:
    out = io.StringIO()
    timings = {"00_a": 420.0, "01_b": 95.0, "_wall_s": 500.0}
    return BuildConsole(["00_a", "01_b", "02_c"], timings, jobs=2, stream=out, tty=tty, clock=clock, **kw), out


def test_log_lines_are_rate_limited():
    clock = Clock(1000.0)
    con, out = _console(False, clock)
    st = {"started": 1000.0, "cell": 1, "n_cells": 9, "line": "import x"}
    con.update("00_a", st)
    for t in range(1001, 1090):  # polled every second, a new cell every second: a line every 30 s at most
        clock.t = t
        con.update("00_a", {**st, "cell": 1 + (t - 1000) % 9})
        con.tick()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[book] 00_a: started (last build 7m00s)"
    assert len(lines) == 1 + 2 and all("00_a  cell" in ln for ln in lines[1:])  # at 30 s and 60 s
    assert "\x1b" not in out.getvalue()
    clock.t = 1100
    con.update("00_a", {**st, "cell": 5})  # a cell that runs long: silent for quiet_interval (300 s) ...
    n = len(out.getvalue().splitlines())
    for t in range(1101, 1399, 10):
        clock.t = t
        con.update("00_a", {**st, "cell": 5})
    assert len(out.getvalue().splitlines()) == n
    clock.t = 1400
    con.update("00_a", {**st, "cell": 5})  # ... then one line, so that the log never goes quiet for long
    assert len(out.getvalue().splitlines()) == n + 1
    con.finished("00_a", 400.0)
    assert out.getvalue().splitlines()[-1] == \
        "[book] 00_a: done in 6m40s (last build 7m00s); 1 of 3 chapters finished"


def test_terminal_lines_are_redrawn_in_place():
    clock = Clock(1000.0)
    con, out = _console(True, clock)
    con.update("00_a", {"started": 1000.0, "cell": 2, "n_cells": 9, "line": "a = 1"})
    con.update("01_b", {"started": 1000.0, "cell": 0, "n_cells": 0, "line": ""})
    clock.t = 1010
    con.tick()
    first = out.getvalue()
    assert "\x1b[" not in first.split("\x1b[2K")[0]  # nothing to move over the first time
    assert first.count("\x1b[2K") == 3 and first.endswith("\x1b[J")  # two chapters and the build's line
    assert "\x1b[2K01_b  starting        10s  ~1m25s left of ~1m35s\n" in first
    assert "\x1b[2K[book] 0 of 3 chapters finished, 10s elapsed\n" in first  # no estimate: 02_c has no time
    clock.t = 1011
    con.tick()
    second = out.getvalue()[len(first):]
    assert second.startswith("\x1b[3F")  # back up over the three lines, then redraw them
    con.failed("01_b", 11.0, "chapter 01_b failed in cell 4 of 9: x = f()\nValueError: bad")
    third = out.getvalue()[len(first) + len(second):]
    assert third.startswith("\x1b[3F\x1b[J[book] 01_b: FAILED after 11s: chapter 01_b failed in cell 4 of 9")
    assert "\n           ValueError: bad\n" in third  # the message stays, above the redrawn status lines
    assert third.count("\x1b[2K") == 2  # 00_a and the build's line: 01_b is no longer running
    con.close()
    end = out.getvalue()
    assert end.rstrip().splitlines()[-1].startswith("failed: 01_b")
    tail = end[end.rindex("chapter  "):]
    assert "\x1b[2K" not in tail  # no status lines under the summary


def test_summary_table():
    clock = Clock(1000.0)
    con, out = _console(False, clock)
    con.finished("00_a", 399.6)
    con.failed("01_b", 65.0, "boom")
    clock.t = 1500
    table = con.summary().splitlines()
    assert table[0].split() == ["chapter", "status", "wall", "last", "build"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in table[2:5]}
    assert rows == {"00_a": ["ok", "6m40s", "7m00s"], "01_b": ["FAILED", "1m05s", "1m35s"],
                    "02_c": ["not", "run", "-", "-"]}
    assert table[5].split() == ["build", "(wall)", "8m20s", "8m20s"]
    assert table[6].startswith("failed: 01_b")


def _tiny_notebook(*sources: str):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("X = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_markdown_cell("# A tiny chapter"), nbformat.v4.new_code_cell("")]
    nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def test_a_failing_cell_is_named_with_its_error(tmp_path):
    """A cell that raises: the error names the cell as the executed notebook numbers it (In [n]; the injected
    parameters cell is 2, the empty cell is not counted), its first line, the exception type and message. The
    progress hook saw every cell start, in order."""
    nb = _tiny_notebook("# fine\nY = X + 1", "\n\nZ = {'a': 1}[f'b{X}']  # a KeyError\nprint('never')")
    seen = []
    with pytest.raises(runner.ChapterError) as info:
        runner.execute_notebook(nb, tmp_path / "tiny.ipynb", {"X": 5}, on_cell=lambda *a: seen.append(a[:2]))
    e = info.value
    assert (e.stem, e.cell, e.n_cells, e.ename) == ("tiny", 4, 4, "KeyError")
    assert str(e).splitlines() == ["chapter tiny failed in cell 4 of 4: Z = {'a': 1}[f'b{X}']  # a KeyError",
                                   "KeyError: 'b5'",
                                   f"the traceback is in the executed notebook {tmp_path / 'tiny.ipynb'}"]
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert str(pickle.loads(pickle.dumps(e))) == str(e)  # it crosses from a build's worker to the parent
    executed = nbformat.read(tmp_path / "tiny.ipynb", as_version=4)
    assert any(o.get("ename") == "KeyError" for c in executed.cells for o in c.get("outputs", []))


def test_the_kernel_keeps_its_log_lines_off_the_console(tmp_path, capfd):
    """The kernel's own stderr (ipykernel's log lines: the TCP-encryption warning of an unencrypted kernel, the
    "KeyboardInterrupt caught in kernel" of a shutdown) goes to a log file beside the notebook, not the console;
    the kernel runs encrypted, so that warning is not even in the log; a log with nothing else is removed. A kernel
    that dies is named with its cell and the log's last lines."""
    nb = _tiny_notebook("import sys\nprint('kernel-level noise', file=sys.__stderr__, flush=True)")
    runner.execute_notebook(nb, tmp_path / "quiet.ipynb", {})
    err = capfd.readouterr().err
    assert "kernel-level noise" not in err and "without encryption" not in err
    log = (tmp_path / "quiet.kernel.log").read_text()
    assert "kernel-level noise" in log and "without encryption" not in log
    runner.execute_notebook(_tiny_notebook("Y = 2"), tmp_path / "silent.ipynb", {})
    assert not (tmp_path / "silent.kernel.log").exists()  # an empty log is removed
    # so is one that holds only ipykernel's line of a shutdown race (it shows under load)
    noise = "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel."
    runner.execute_notebook(_tiny_notebook(f"import sys\nprint({noise!r}, file=sys.__stderr__, flush=True)"),
                            tmp_path / "noise.ipynb", {})
    assert not (tmp_path / "noise.kernel.log").exists()
    assert not runner._log_worth_keeping(f"\n{noise}\n\n{noise}\n") and runner._log_worth_keeping(f"{noise}\nx\n")
    nb = _tiny_notebook("import os, sys\nprint('about to die', file=sys.__stderr__, flush=True); os._exit(3)")
    with pytest.raises(runner.ChapterError) as info:
        runner.execute_notebook(nb, tmp_path / "dies.ipynb", {})
    lines = str(info.value).splitlines()
    assert lines[0] == "chapter dies failed in cell 2 of 2: import os, sys"  # no parameters: none injected
    assert lines[1] == "DeadKernelError: Kernel died"
    assert lines[2:4] == ["the kernel's last log lines (dies.kernel.log):", "about to die"]


def fail_in_cell(stem: str, out: str, params=None, status=None) -> float:
    """A build worker whose chapter ``"01_b"`` fails in its third cell (module level: it is pickled by name)."""
    write = progress.StatusFile(status, stem)
    write(3, 7, "fit = train(recipe)")
    if stem == "01_b":
        raise runner.ChapterError(stem, 3, 7, "fit = train(recipe)", "RuntimeError", "loss is nan", "x.ipynb")
    return 1.5


def test_a_failing_chapter_is_reported_and_the_others_finish(tmp_path):
    from lib.book.cli import run_parallel

    out = io.StringIO()
    con = BuildConsole(["00_a", "01_b", "02_c"], {}, jobs=2, stream=out, tty=False)
    done = {}
    failures = run_parallel(["00_a", "01_b", "02_c"], {s: "unused" for s in ("00_a", "01_b", "02_c")}, jobs=2,
                            threads=1, on_done=done.__setitem__, execute=fail_in_cell, console=con,
                            status_dir=tmp_path, poll_s=0.2)
    con.close()
    assert set(failures) == {"01_b"} and isinstance(failures["01_b"], runner.ChapterError)
    assert done == {"00_a": 1.5, "02_c": 1.5}
    text = out.getvalue()
    failed = next(ln for ln in text.splitlines() if "01_b: FAILED" in ln)
    assert re.search(r"FAILED after \d+s: chapter 01_b failed in cell 3 of 7: fit = train\(recipe\)$", failed)
    assert "RuntimeError: loss is nan" in text
    rows = {ln.split()[0]: ln.split()[1] for ln in text.splitlines() if ln.startswith(("00_a ", "01_b ", "02_c "))}
    assert rows == {"00_a": "ok", "01_b": "FAILED", "02_c": "ok"}
