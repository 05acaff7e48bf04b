"""The allowed values of a chapter parameter, declared at the start of its comment in the parameters cell.

Each line of a chapter's parameters cell reads ``NAME = default  # <declaration> <meaning>``::

    SEED = 0  # [0, ∞) seed of initialisation and data order
    IOI_FRAC = 0.0  # [0, 1] fraction of general-corpus sentences that are IOI sentences
    LR = 0.002  # (0, ∞) peak AdamW learning rate
    DEVICE = "cpu"  # {cpu, cuda, cuda:N, auto} where models train and run
    D_MODEL = 128  # {4, 8, 12, ...} residual width (4 heads of D_MODEL / 4)
    LAYER = 2  # [0, N_LAYERS) the SAE reads blocks.LAYER.hook_resid_post
    K = 5  # in KS top-k of the intersection
    GRID_LAYERS = [0, 1, 2, 3]  # each in [0, N_LAYERS) IOI layers of the grid

The declarations, one of:

- an **interval** ``[a, b]``, ``[a, b)``, ``(a, b]`` or ``(a, b)``: a number from ``a`` to ``b``, the square bracket
  including that end, the parenthesis excluding it. A bound is a number, ``∞`` / ``-∞`` (``inf`` / ``-inf`` are read
  too), or the name of another numeric parameter of the chapter (its value in the same run): ``[0, N_LAYERS)``.
  Whether the value is an integer is the parameter's type (its default's), not the interval's.
- a **set** ``{x, y, z}``: one of these values (strings without quotes; ``True`` / ``False`` for a flag), or
  ``{a, b, c, ...}``: the integers ``a, b, c, ...`` of that constant step without end (``{4, 8, 12, ...}``: the
  positive multiples of 4).
- **membership** ``in NAME``: one of the values of the chapter's list parameter ``NAME`` (``K = 5  # in KS``).
- for a list parameter, ``each in <interval or set>``: a non-empty list, every element in it.

A comment that opens with ``[``, ``(``, ``{``, ``in NAME`` or ``each`` is read as a declaration and must be a valid
one; the meaning follows it after a space. No declaration may hold ``=`` (papermill's reader of parameters cells
drops a line with a second ``=``), hence ``[0, ∞)`` rather than ``>= 0``.

Nothing here executes the notebook or imports torch: ``lib.book.runner`` reads the declarations from the notebook's
text and checks values against them (``Domain.violation``) before any kernel starts.
"""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

INF_WORDS = {"∞": math.inf, "+∞": math.inf, "inf": math.inf, "+inf": math.inf, "-∞": -math.inf, "-inf": -math.inf}
_NAME = r"[A-Z][A-Z0-9_]*"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(v: Any) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return str(v)


@dataclass(frozen=True)
class Interval:
    """``lo`` to ``hi`` (each a number or a parameter name), each end included if its ``*_closed``."""

    lo: Union[float, str]
    lo_closed: bool
    hi: Union[float, str]
    hi_closed: bool

    def __str__(self) -> str:
        return (f"{'[' if self.lo_closed else '('}{_fmt(self.lo)}, {_fmt(self.hi)}"
                f"{']' if self.hi_closed else ')'}")

    def refs(self) -> set[str]:
        return {b for b in (self.lo, self.hi) if isinstance(b, str)}

    def violation(self, value: Any, env: dict[str, Any]) -> Optional[str]:
        if not _is_number(value):
            return f"is not a number in {self}"
        lo, hi = (env.get(b) if isinstance(b, str) else b for b in (self.lo, self.hi))
        bad_refs = [b for b, v in ((self.lo, lo), (self.hi, hi)) if isinstance(b, str) and not _is_number(v)]
        if bad_refs:
            return f"cannot be checked against {self}: {', '.join(bad_refs)} is not a number"
        inside = ((lo <= value if self.lo_closed else lo < value)
                  and (value <= hi if self.hi_closed else value < hi))  # False for nan
        if inside:
            return None
        refs = sorted(self.refs())
        where = "" if not refs else " with " + ", ".join(f"{r} = {env[r]!r}" for r in refs)
        return f"is outside {self}{where}"


@dataclass(frozen=True)
class Choices:
    """One of ``values``; with ``progression``, the integers ``values[0] + i * step`` for ``i >= 0`` (any size)."""

    values: tuple
    progression: bool = False

    @property
    def step(self) -> int:
        return self.values[1] - self.values[0]

    def __str__(self) -> str:
        return "{" + ", ".join(_fmt(v) for v in self.values) + (", ...}" if self.progression else "}")

    def refs(self) -> set[str]:
        return set()

    def violation(self, value: Any, env: dict[str, Any]) -> Optional[str]:
        if self.progression:
            ok = (isinstance(value, int) and not isinstance(value, bool) and value >= self.values[0]
                  and (value - self.values[0]) % self.step == 0)
        else:
            ok = any(value == v and type(value) is type(v) or (_is_number(value) and _is_number(v) and value == v)
                     for v in self.values)
        return None if ok else f"is not one of {self}"


@dataclass(frozen=True)
class Member:
    """One of the values of the list parameter ``name``."""

    name: str

    def __str__(self) -> str:
        return f"in {self.name}"

    def refs(self) -> set[str]:
        return {self.name}

    def violation(self, value: Any, env: dict[str, Any]) -> Optional[str]:
        pool = env.get(self.name)
        if not isinstance(pool, (list, tuple)):
            return f"cannot be checked: {self.name} = {pool!r} is not a list"
        return None if value in pool else f"is not one of {self.name} = {list(pool)!r}"


@dataclass(frozen=True)
class Each:
    """A non-empty list whose every element is in ``inner``."""

    inner: Union[Interval, Choices]

    def __str__(self) -> str:
        return f"each in {self.inner}"

    def refs(self) -> set[str]:
        return self.inner.refs()

    def violation(self, value: Any, env: dict[str, Any]) -> Optional[str]:
        if not isinstance(value, (list, tuple)):
            return f"is not a list ({self})"
        if not value:
            return f"is empty: give at least one value, {self}"
        for i, v in enumerate(value):
            why = self.inner.violation(v, env)
            if why:
                return f"has element {i} = {v!r}, which {why}"
        return None


Domain = Union[Interval, Choices, Member, Each]

_INTERVAL = re.compile(r"([\[(])\s*([^,\[\](){}]+?)\s*,\s*([^,\[\](){}]+?)\s*([\])])")
_SET = re.compile(r"\{([^{}]*)\}")


def _bound(text: str) -> Union[float, str]:
    t = text.strip()
    if t in INF_WORDS:
        return INF_WORDS[t]
    if re.fullmatch(_NAME, t):
        return t
    try:
        v = ast.literal_eval(t)
    except (ValueError, SyntaxError):
        v = None
    if not _is_number(v):
        raise ValueError(f"interval bound {t!r} is not a number, ∞ or a parameter name")
    return v


def _item(text: str, like: Any) -> Any:
    """A set item read as the type of ``like`` (the default): a string (quotes optional), a flag or a number."""
    t = text.strip()
    if not t:
        raise ValueError("empty item in a set")
    if isinstance(like, str) or like is None:
        return t[1:-1] if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"" else t
    try:
        v = ast.literal_eval(t)
    except (ValueError, SyntaxError):
        raise ValueError(f"set item {t!r} is not a {type(like).__name__}") from None
    if isinstance(like, bool) != isinstance(v, bool) or (not isinstance(like, bool) and not _is_number(v)):
        raise ValueError(f"set item {t!r} is not a {type(like).__name__}")
    return v


def _interval_or_set(text: str, like: Any) -> tuple[Union[Interval, Choices], str]:
    m = _INTERVAL.match(text)
    if m:
        lo, hi = _bound(m.group(2)), _bound(m.group(3))
        if _is_number(lo) and _is_number(hi) and not lo <= hi:
            raise ValueError(f"empty interval {m.group(0)}")
        ends = ((lo, m.group(1) == "["), (hi, m.group(4) == "]"))
        if any(_is_number(b) and math.isinf(b) and closed for b, closed in ends):
            raise ValueError(f"{m.group(0)}: an infinite end is open, written with a parenthesis")
        return Interval(lo, m.group(1) == "[", hi, m.group(4) == "]"), text[m.end():]
    m = _SET.match(text)
    if m:
        parts = [p.strip() for p in m.group(1).split(",")]
        progression = parts[-1] == "..."
        if progression:
            parts = parts[:-1]
            vals = tuple(_item(p, 0) for p in parts)
            if len(vals) < 2 or not all(isinstance(v, int) for v in vals):
                raise ValueError(f"{m.group(0)}: a progression needs at least two integers before '...'")
            step = vals[1] - vals[0]
            if step <= 0 or any(b - a != step for a, b in zip(vals, vals[1:])):
                raise ValueError(f"{m.group(0)}: a progression needs a constant positive step")
            return Choices(vals, True), text[m.end():]
        vals = tuple(_item(p, like) for p in parts)
        if len(set(map(repr, vals))) != len(vals):
            raise ValueError(f"{m.group(0)}: an item repeats")
        return Choices(vals), text[m.end():]
    raise ValueError(f"cannot read a range or set at {text[:40]!r}")


_OPENS = re.compile(rf"^(?:[\[({{]|in\s+{_NAME}\b|each\b)")


def parse_declaration(comment: str, default: Any) -> tuple[Optional[Domain], str]:
    """``(domain, meaning)`` from a parameter's comment (without the ``#``); ``(None, comment)`` when the comment
    opens with no declaration. ``default`` (the parameter's default) says how set items are read and whether
    ``each`` is needed. Raises ``ValueError`` for a declaration that cannot be read or does not fit the default."""
    text = comment.strip()
    if not _OPENS.match(text):
        return None, text
    is_list = isinstance(default, (list, tuple))
    if text.startswith("each"):
        if not is_list:
            raise ValueError("'each in ...' declares a list parameter's elements, but the default is not a list")
        m = re.match(r"each\s+in\s+", text)
        if not m:
            raise ValueError("write a list parameter's declaration as 'each in [a, b]' or 'each in {x, y}'")
        inner, rest = _interval_or_set(text[m.end():], default[0] if default else None)
        domain: Domain = Each(inner)
    elif is_list:
        raise ValueError("a list parameter's declaration starts with 'each in' (its elements' range or set)")
    elif text.startswith("in"):
        m = re.match(rf"in\s+({_NAME})", text)
        domain, rest = Member(m.group(1)), text[m.end():]
    else:
        domain, rest = _interval_or_set(text, default)
    if rest and not rest[0].isspace():
        raise ValueError(f"put a space between the declaration {domain} and the meaning")
    return domain, rest.strip()
