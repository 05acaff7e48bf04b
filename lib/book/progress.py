"""Where a book build is: one status line per running chapter, a summary table at the end.

Chapters run in worker processes (``lib.book.cli.run_parallel``). Each worker writes a small JSON status file as
its chapter starts each code cell (``StatusFile``); the parent process reads those files about once a second and
shows them (``BuildConsole``):

- on a terminal, one line per running chapter, redrawn in place (ANSI), plus a line for the whole build;
- otherwise (a CI log), a plain line when a chapter starts, at most every ``interval`` seconds per chapter while it
  moves on (and every ``quiet_interval`` seconds while one cell runs long, so that a log never goes silent for
  long), and one when it ends.

Estimates come from the last build's ``_build/timings.json`` (``{stem: seconds, "_wall_s": ..., "_jobs": ...}``,
written by ``lib.book.cli.build_book``): a chapter that took ``T`` seconds last time and has run ``t`` has about
``T - t`` left.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TextIO


def fmt_duration(seconds: Optional[float]) -> str:
    """``42s``, ``3m05s``, ``1h02m`` (``-`` for None); negative durations count as 0."""
    if seconds is None:
        return "-"
    s = int(round(max(0.0, float(seconds))))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def load_timings(path: str | os.PathLike) -> dict[str, float]:
    """The per-chapter seconds (and ``_wall_s``, ``_jobs``) of a ``timings.json``; ``{}`` if it is missing or
    unreadable. Non-numeric entries are dropped."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): float(v) for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def estimate(elapsed: float, last: Optional[float]) -> str:
    """What ``elapsed`` seconds mean against the last build's ``last`` seconds for the same chapter:
    ``~4m10s left of ~7m00s``, ``1m05s over last build's 7m00s``, or ``no earlier time``."""
    if last is None or last <= 0:
        return "no earlier time"
    if elapsed < last:
        return f"~{fmt_duration(last - elapsed)} left of ~{fmt_duration(last)}"
    return f"{fmt_duration(elapsed - last)} over last build's {fmt_duration(last)}"


def build_remaining(running: dict[str, float], queued: list[str], timings: dict[str, float],
                    jobs: int) -> Optional[float]:
    """Seconds the build has left, roughly: what the running chapters have left (last time minus elapsed, at least
    0) plus the queued chapters' last times, shared over ``jobs`` workers; None if a chapter has no earlier time.
    ``running`` maps a stem to its elapsed seconds."""
    stems = list(running) + list(queued)
    if any(timings.get(s) is None for s in stems):
        return None
    work = sum(max(0.0, timings[s] - e) for s, e in running.items()) + sum(timings[s] for s in queued)
    longest = max([max(0.0, timings[s] - e) for s, e in running.items()] + [timings[s] for s in queued] + [0.0])
    return max(work / max(1, jobs), longest)


def first_line(source: str, width: int = 70) -> str:
    """The first non-blank line of a cell's source, stripped and cut to ``width`` characters."""
    line = next((ln.strip() for ln in source.splitlines() if ln.strip()), "")
    return line if len(line) <= width else line[:width - 1] + "…"


def chapter_line(stem: str, status: Optional[dict[str, Any]], now: float, last: Optional[float],
                 stem_width: int = 24) -> str:
    """One chapter's status line: ``01_amplification  cell 12/40     3m05s  ~4m10s left of ~7m15s  | <the running
    cell's first line>``. ``status`` is what ``StatusFile`` wrote (None: queued; cell 0: the kernel is starting)."""
    if status is None:
        return f"{stem:<{stem_width}}  queued"
    elapsed = now - status["started"]
    cell, n = status.get("cell", 0), status.get("n_cells", 0)
    where = f"cell {cell}/{n}" if cell else "starting"
    text = f"{stem:<{stem_width}}  {where:<11}  {fmt_duration(elapsed):>6}  {estimate(elapsed, last)}"
    return text + (f"  | {status['line']}" if cell and status.get("line") else "")


class StatusFile:
    """The worker side: ``StatusFile(path, stem)(cell, n_cells, source)`` records that chapter ``stem`` started its
    ``cell``-th code cell of ``n_cells`` (numbered as the executed notebook's ``In [cell]``). Written atomically
    (a temporary file, then a rename), so the reader never sees half a file; a write that fails is ignored (a
    status line is not worth a chapter)."""

    def __init__(self, path: str | os.PathLike, stem: str, clock: Callable[[], float] = time.time):
        self.path, self.stem, self.clock = Path(path), stem, clock
        self.started = clock()
        self({"cell": 0, "n_cells": 0, "line": ""})

    def __call__(self, cell: int | dict, n_cells: int = 0, source: str = "") -> None:
        state = cell if isinstance(cell, dict) else {"cell": cell, "n_cells": n_cells, "line": first_line(source)}
        state = {"stem": self.stem, "pid": os.getpid(), "started": self.started, "at": self.clock(), **state}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self.path)
        except OSError:
            pass


def read_status(path: str | os.PathLike) -> Optional[dict[str, Any]]:
    """What a ``StatusFile`` last wrote, or None (not started, or unreadable)."""
    try:
        state = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and "started" in state else None


@dataclass
class Outcome:
    """How a chapter's execution ended: ``ok`` or ``FAILED`` (``error``: the message), its wall time."""

    status: str
    seconds: Optional[float]
    error: str = ""


@dataclass
class BuildConsole:
    """The parent side: the status lines and the closing summary of a build of ``stems``.

    Call ``update(stem, status)`` with what each running chapter's ``StatusFile`` holds, ``finished(stem,
    seconds)`` / ``failed(stem, seconds, message)`` as chapters end, ``message(text)`` for anything else, and
    ``close()`` at the end. ``tty`` (default: whether ``stream`` is a terminal) chooses between redrawing lines in
    place and plain, rate-limited lines. ``timings``: the last build's (``load_timings``).
    """

    stems: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    jobs: int = 1
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    tty: Optional[bool] = None
    interval: float = 30.0
    quiet_interval: float = 300.0
    clock: Callable[[], float] = time.time
    prefix: str = "[book] "

    def __post_init__(self) -> None:
        if self.tty is None:
            self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"
        self.t0 = self.clock()
        self.status: dict[str, dict] = {}  # running chapters: their last status
        self.outcomes: dict[str, Outcome] = {}
        self._printed: dict[str, tuple[float, Any]] = {}  # plain mode: when, and at which cell, a chapter was shown
        self._drawn = 0  # tty mode: how many status lines are on screen below the log
        self._closed = False
        self._width = max(len(s) for s in self.stems) if self.stems else 10

    # ------------------------------------------------------------------ what the build reports

    def update(self, stem: str, status: Optional[dict[str, Any]]) -> None:
        """Chapter ``stem``'s current status (None: not started yet)."""
        if status is None or stem in self.outcomes:
            return
        new = stem not in self.status
        self.status[stem] = status
        if self.tty:
            return
        now = self.clock()
        when, cell = self._printed.get(stem, (None, None))
        moved = status.get("cell") != cell
        if new or when is None:
            last = self.timings.get(stem)
            self._write(f"{self.prefix}{stem}: started (last build {fmt_duration(last)})" if last else
                        f"{self.prefix}{stem}: started (no earlier time)")
            self._printed[stem] = (now, status.get("cell"))
        elif now - when >= (self.interval if moved else self.quiet_interval):
            self._write(self.prefix + self._line(stem, now).rstrip())
            self._printed[stem] = (now, status.get("cell"))

    def finished(self, stem: str, seconds: float) -> None:
        self.outcomes[stem] = Outcome("ok", seconds)
        self.status.pop(stem, None)
        last = self.timings.get(stem)
        than = f" (last build {fmt_duration(last)})" if last else ""
        self.message(f"{stem}: done in {fmt_duration(seconds)}{than}; {self._progress_words()}")

    def failed(self, stem: str, seconds: Optional[float], error: str) -> None:
        self.outcomes[stem] = Outcome("FAILED", seconds, error)
        self.status.pop(stem, None)
        lines = str(error).strip().splitlines() or ["(no message)"]
        self.message(f"{stem}: FAILED after {fmt_duration(seconds)}: " + lines[0]
                     + "".join(f"\n{' ' * len(self.prefix)}    {ln}" for ln in lines[1:]))

    def message(self, text: str) -> None:
        """A line of the log (above the status lines on a terminal)."""
        self._write(self.prefix + text)

    def tick(self) -> None:
        """Redraw the status lines (terminal only; plain mode prints from ``update``)."""
        if not self.tty or self._closed:
            return
        now = self.clock()
        lines = [self._line(s, now) for s in self.status] + [self._build_line(now)]
        cols = shutil.get_terminal_size((120, 24)).columns
        out = [f"\x1b[{self._drawn}F" if self._drawn else ""]
        for ln in lines:
            out.append("\x1b[2K" + _cut(ln, cols - 1) + "\n")
        out.append("\x1b[J")
        self.stream.write("".join(out))
        self.stream.flush()
        self._drawn = len(lines)

    def close(self) -> None:
        """Clear the status lines and print the summary table."""
        self._clear()
        self._closed = True
        self._write(self.summary())

    # ------------------------------------------------------------------ text

    def summary(self) -> str:
        """The table that closes a build: chapter, status, wall time, last build's time, and the build's total."""
        w = max([self._width, len("chapter"), len("build (wall)")])
        rows = [f"{'chapter':<{w}}  {'status':<8}  {'wall':>7}  {'last build':>10}",
                f"{'-' * w}  {'-' * 8}  {'-' * 7}  {'-' * 10}"]
        for s in self.stems:
            o = self.outcomes.get(s) or Outcome("running" if s in self.status else "not run", None)
            rows.append(f"{s:<{w}}  {o.status:<8}  {fmt_duration(o.seconds):>7}  "
                        f"{fmt_duration(self.timings.get(s)):>10}")
        rows.append(f"{'build (wall)':<{w}}  {'':<8}  {fmt_duration(self.clock() - self.t0):>7}  "
                    f"{fmt_duration(self.timings.get('_wall_s')):>10}")
        failed = [s for s in self.stems if self.outcomes.get(s, Outcome('', None)).status == "FAILED"]
        if failed:
            rows.append(f"failed: {', '.join(failed)} (the messages above name the cell and the error)")
        return "\n".join(rows)

    def _line(self, stem: str, now: float) -> str:
        return chapter_line(stem, self.status.get(stem), now, self.timings.get(stem), self._width)

    def _progress_words(self) -> str:
        done = len(self.outcomes)
        failed = sum(o.status == "FAILED" for o in self.outcomes.values())
        return f"{done} of {len(self.stems)} chapters finished" + (f", {failed} failed" if failed else "")

    def _build_line(self, now: float) -> str:
        running = {s: now - st["started"] for s, st in self.status.items()}
        queued = [s for s in self.stems if s not in self.outcomes and s not in self.status]
        left = build_remaining(running, queued, self.timings, self.jobs) if running or queued else 0.0
        eta = f", ~{fmt_duration(left)} left" if left is not None else ""
        return f"{self.prefix}{self._progress_words()}, {fmt_duration(now - self.t0)} elapsed{eta}"

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _write(self, text: str) -> None:
        self._clear()
        self.stream.write(text + "\n")
        self.stream.flush()
        self.tick()


def _cut(line: str, width: int) -> str:
    return line if len(line) <= width else line[:max(0, width - 1)] + "…"
