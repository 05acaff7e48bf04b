"""Every chapter parameter declares its allowed values, and a value outside them is refused before a kernel starts.

The bad values are generated from each parameter's own declaration (``lib.book.ranges``): a value of the wrong type,
one just outside each finite end of its interval, one outside its set, an empty list, a list with one bad element.
Each must be refused by ``run_notebook`` with papermill unable to start (a test double that fails if called), and
the error must name the parameter.
"""
import math
import time

import pytest

from lib.book import cli, ranges, runner, sweep
from lib.book.ranges import Choices, Each, Interval, Member, parse_declaration
from lib.book.runner import ParameterError, parse_parameters, validate_params

STEMS = runner.chapters()
PARAMS = {s: runner.notebook_parameters(s) for s in STEMS}
DECLARED = [(s, n) for s in STEMS for n in PARAMS[s] if n not in runner.SET_BY_RUNNER]


@pytest.fixture
def no_kernel(monkeypatch):
    """papermill that fails the test if a notebook is ever executed; returns the list of attempted calls."""
    import papermill

    calls = []

    def execute_notebook(*a, **k):
        calls.append((a, k))
        raise AssertionError("a kernel was started for a parameter that should have been refused")

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    return calls


# --------------------------------------------------------------------------- every parameter has a declaration


@pytest.mark.parametrize("stem", STEMS)
def test_every_parameter_declares_its_allowed_values(stem):
    """A parameter added without a declaration fails here (OUTPUT_DIR alone is the runner's, set from --out)."""
    undeclared = [n for n, p in PARAMS[stem].items() if p.domain is None and n not in runner.SET_BY_RUNNER]
    assert not undeclared, f"{stem}: declare the allowed values of {undeclared} (see lib/book/ranges.py)"
    assert all(p.meaning for p in PARAMS[stem].values()), "every parameter still needs a meaning after its range"


@pytest.mark.parametrize("stem", STEMS)
def test_defaults_and_smoke_parameters_are_inside_their_ranges(stem):
    defaults = runner.default_parameters(stem)
    assert validate_params(stem, defaults) == defaults  # every default given explicitly, DEVICE included
    smoke = runner.notebook_meta(stem)["smoke"]
    assert validate_params(stem, smoke) == smoke


def test_declared_choices_match_the_library():
    """The sets a notebook reader sees are the ones the library accepts: one definition each."""
    from lib.organisms.device import CHOICES
    from lib.organisms.models import PRETRAINED
    from lib.worlds.pcfg import PRIORS

    for stem in STEMS:
        p = PARAMS[stem]
        assert p["DEVICE"].domain == Choices(CHOICES), stem  # checked by lib.organisms.device.resolve_device
        if "MODEL" in p:
            assert set(p["MODEL"].domain.values) <= {"organism", *PRETRAINED}, stem
    assert PARAMS["04_wrapper_revival"]["PRIORS"].domain == Each(Choices(tuple(PRIORS)))


# --------------------------------------------------------------------------- bad values from the declarations


def _wrong_types(default):
    if isinstance(default, bool):
        return ["maybe", 1]
    if isinstance(default, int):
        return ["ten", 1.5, True]
    if isinstance(default, float):
        return ["abc", True]
    if isinstance(default, str):
        return [3, ["x"]]
    if isinstance(default, list):
        element = "x" if not isinstance(default[0], str) else 3
        return [5, [*default, element]]
    raise AssertionError(f"no wrong-type case for {default!r}")


def _outside(domain, like, env):
    """Values of ``like``'s type that ``domain`` must refuse, each with what the error must show."""
    if isinstance(domain, Interval):
        lo, hi = (env[b] if isinstance(b, str) else b for b in (domain.lo, domain.hi))
        step = 1 if isinstance(like, int) else 0.5
        out = []
        if not math.isinf(lo):
            out.append(type(like)(lo - step if domain.lo_closed else lo))
        if not math.isinf(hi):
            out.append(type(like)(hi + step if domain.hi_closed else hi))
        if isinstance(like, float):
            out.append(float("nan"))
        return out
    if isinstance(domain, Choices) and domain.progression:
        a, d = domain.values[0], domain.step
        return [a - d, a + 1] if d > 1 else [a - d]
    if isinstance(domain, Choices):
        if isinstance(like, bool):
            return []  # a flag's set is every flag: only the wrong type is refused
        if isinstance(like, str):
            return ["not-a-choice", domain.values[0].upper() + "x"]
        return [type(like)(max(domain.values) + 1), type(like)(min(domain.values) - 1)]
    if isinstance(domain, Member):
        pool = env[domain.name]
        return [type(like)(max(pool) * 10 + 1)]
    raise AssertionError(domain)


def _bad_values(stem, name):
    """``[(kind, value)]``: every kind of bad value for parameter ``name`` of ``stem``, from its declaration."""
    p = PARAMS[stem][name]
    env = {k: q.default for k, q in PARAMS[stem].items()}
    cases = [("type", v) for v in _wrong_types(p.default)]
    if isinstance(p.domain, Each):
        cases.append(("range", []))
        cases += [("range", [*p.default, v]) for v in _outside(p.domain.inner, p.default[0], env)]
    else:
        cases += [("range", v) for v in _outside(p.domain, p.default, env)]
    return cases


def test_bad_values_cover_every_kind():
    kinds = {(type(PARAMS[s][n].domain).__name__, k) for s, n in DECLARED for k, _ in _bad_values(s, n)}
    assert {("Interval", "range"), ("Choices", "range"), ("Member", "range"), ("Each", "range"),
            ("Interval", "type"), ("Choices", "type"), ("Member", "type"), ("Each", "type")} <= kinds


@pytest.mark.parametrize("stem,name", DECLARED)
def test_every_bad_value_is_refused_before_a_kernel_starts(stem, name, no_kernel, tmp_path):
    p = PARAMS[stem][name]
    for kind, value in _bad_values(stem, name):
        with pytest.raises(ParameterError) as err:
            runner.run_notebook(stem, {name: value}, tmp_path / "out")
        msg = str(err.value)
        assert name in msg, (value, msg)
        if kind == "range" and name != "DEVICE":  # DEVICE's own message (resolve_device) lists its choices
            shown = {Each: lambda d: str(d.inner),  # a list: its bad element against the element's range
                     Member: lambda d: f"one of {d.name} = "}.get(type(p.domain), str)(p.domain)
            assert f"{name} = {value!r}" in msg and shown in msg, (value, msg)
    assert not no_kernel and not (tmp_path / "out").exists()


@pytest.mark.parametrize("stem,name", DECLARED)
def test_cli_strings_outside_the_range_are_refused(stem, name):
    """The same values as ``-p NAME VALUE`` gives them: strings, parsed as YAML, then checked."""
    import json

    for kind, value in _bad_values(stem, name):
        if kind != "range" or (isinstance(value, float) and math.isnan(value)):
            continue
        text = json.dumps(value) if not isinstance(value, str) else value
        with pytest.raises(ParameterError, match=name):
            validate_params(stem, {name: text})


# --------------------------------------------------------------------------- the cases, through the CLI


@pytest.mark.parametrize("chapter,name,value,allowed", [("0", "SEED", "-1", "[0, ∞)"),
                                                        ("2", "POISON_FRAC", "2.5", "[0, 1]"),
                                                        ("0", "N_LAYERS", "0", "[1, ∞)")])
def test_cli_refuses_out_of_range_at_once(chapter, name, value, allowed, no_kernel, capsys):
    runner.notebook_parameters(runner.resolve(chapter))  # jupytext imported: time only the check itself
    t = time.perf_counter()
    assert cli.main(["run", chapter, "-p", name, value]) == 2
    took = time.perf_counter() - t
    err = capsys.readouterr().err
    assert f"parameter {name} = {value}" in err and allowed in err, err
    assert not no_kernel
    assert took < 1.0, f"refusing {name} {value} took {took:.2f}s"


def test_a_default_pushed_out_by_another_parameter_is_refused():
    """LAYER's range names N_LAYERS: shrinking N_LAYERS alone leaves the default LAYER = 2 outside it."""
    with pytest.raises(ParameterError, match=r"LAYER = 2 \(its default\) is outside \[0, N_LAYERS\) with "
                                             r"N_LAYERS = 2"):
        validate_params("05_feature_movement", {"N_LAYERS": 2})
    assert validate_params("05_feature_movement", {"N_LAYERS": 2, "LAYER": 1, "GRID_LAYERS": [0, 1]})
    with pytest.raises(ParameterError, match=r"GRID_LAYERS = \[0, 1, 2\] has element 2 = 2"):
        validate_params("05_feature_movement", {"N_LAYERS": 2, "LAYER": 1, "GRID_LAYERS": [0, 1, 2]})
    with pytest.raises(ParameterError, match=r"K = 4 is not one of KS = \[1, 2, 3, 5, 8, 12, 16\]"):
        validate_params("05_feature_movement", {"K": 4})
    with pytest.raises(ParameterError, match=r"MAIN_LR = 0.0003 \(its default\) is not one of LRS = \[1e-05\]"):
        validate_params("04_wrapper_revival", {"LRS": [1e-5]})


def test_list_elements_are_typed():
    assert validate_params("04_wrapper_revival", {"LRS": "[3e-4, 1]"}) == {"LRS": [0.0003, 1.0]}
    with pytest.raises(ParameterError, match=r"parameter KS\[1\] expects int"):
        validate_params("05_feature_movement", {"KS": [1, 2.5]})


def test_sweep_refuses_a_seed_outside_seeds_range_before_any_run(tmp_path):
    def never(*a):
        raise AssertionError("a seed was run")

    with pytest.raises(ParameterError, match=r"SEED = -1 is outside \[0, ∞\)"):
        sweep.sweep("0", "-1..1", run_fn=never, out_root=tmp_path, progress=lambda s: None)
    with pytest.raises(ParameterError, match=r"N_LAYERS = 0"):
        sweep.sweep("0", "0..1", {"N_LAYERS": 0}, run_fn=never, out_root=tmp_path, progress=lambda s: None)
    assert not list(tmp_path.iterdir())


def test_build_checks_every_chapter_before_executing_any(monkeypatch):
    executed = []
    monkeypatch.setattr(runner, "execute_chapter", lambda stem, out, params=None: executed.append(stem) or 0.0)
    real = runner.validate_params

    def validate(stem, params):
        if stem == STEMS[-1]:
            raise ParameterError(f"chapter {stem!r}: parameter X = 1 is outside [2, ∞)")
        return real(stem, params)

    monkeypatch.setattr(runner, "validate_params", validate)
    with pytest.raises(ParameterError, match="outside"):
        cli.build_book(STEMS, html=False, jobs=1)
    assert executed == []


# --------------------------------------------------------------------------- where the ranges are shown


def test_list_and_chapter_page_show_the_ranges(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    seed = next(line for line in out.splitlines() if line.strip().startswith("SEED"))
    assert "[0, ∞)" in seed
    assert any("GRID_LAYERS" in line and "each in [0, N_LAYERS)" in line for line in out.splitlines())
    md = cli.parameters_markdown("02_localized_corruption")
    assert "| parameter | default | allowed | meaning |" in md
    assert "| `POISON_FRAC` | `1.0` | `[0, 1]` | fraction of toxic" in md
    assert "| `DEVICE` | `'cpu'` | `{cpu, cuda, cuda:N, auto}` |" in md
    assert "OUTPUT_DIR" not in md


# --------------------------------------------------------------------------- the declaration syntax


@pytest.mark.parametrize("comment,default,domain,meaning", [
    ("[0, ∞) seed", 0, Interval(0, True, math.inf, False), "seed"),
    ("[0, inf) seed", 0, Interval(0, True, math.inf, False), "seed"),
    ("(0, 1) rate", 0.5, Interval(0, False, 1, False), "rate"),
    ("[-1.5, 2.5] x", 0.0, Interval(-1.5, True, 2.5, True), "x"),
    ("[0, N_LAYERS) block", 2, Interval(0, True, "N_LAYERS", False), "block"),
    ("{cpu, cuda, cuda:N, auto} where", "cpu", Choices(("cpu", "cuda", "cuda:N", "auto")), "where"),
    ("{'a b', c} quoted", "c", Choices(("a b", "c")), "quoted"),
    ("{False, True} flag", False, Choices((False, True)), "flag"),
    ("{0, 1} layer", 0, Choices((0, 1)), "layer"),
    ("{4, 8, 12, ...} width", 128, Choices((4, 8, 12), True), "width"),
    ("in KS top-k", 5, Member("KS"), "top-k"),
    ("each in [1, ∞) tops", [10, 50], Each(Interval(1, True, math.inf, False)), "tops"),
    ("each in {low, high} priors", ["low"], Each(Choices(("low", "high"))), "priors"),
    ("seed of the data", 0, None, "seed of the data"),
    ("inside: not a declaration", 0, None, "inside: not a declaration"),
])
def test_declarations_are_read(comment, default, domain, meaning):
    assert parse_declaration(comment, default) == (domain, meaning)
    if domain is not None:  # what `list` and the page show reads back as the same declaration
        assert parse_declaration(str(domain), default)[0] == domain


@pytest.mark.parametrize("comment,default,why", [
    ("[0, 1 fraction", 0.5, "cannot read"),
    ("[1, 0] empty", 0.5, "empty interval"),
    ("[0, ∞] closed at infinity", 0, "infinite end is open"),
    ("[0, one) word", 0, "not a number"),
    ("{a, b}meaning", "a", "space"),
    ("{a, a} twice", "a", "repeats"),
    ("{1, x} mixed", 1, "not a int"),
    ("{4, 8, 13, ...} uneven", 4, "constant positive step"),
    ("{4, ...} one", 4, "at least two"),
    ("[0, 1] a list", [0.5], "each in"),
    ("each in [0, 1] not a list", 0.5, "not a list"),
    ("each [0, 1] no in", [0.5], "each in"),
])
def test_bad_declarations_are_named(comment, default, why):
    with pytest.raises(ValueError, match=why):
        parse_declaration(comment, default)


def test_a_cell_with_a_bad_declaration_names_the_parameter():
    with pytest.raises(ParameterError, match=r"parameter FRAC: its declared range"):
        parse_parameters("FRAC = 0.5  # [0, 1 fraction")
    with pytest.raises(ParameterError, match=r"parameter LAYER: its range \[0, N_LAYERS\) names N_LAYERS, which is "
                                             r"not a numeric parameter"):
        parse_parameters("LAYER = 2  # [0, N_LAYERS) block")
    with pytest.raises(ParameterError, match=r"K: its range in KS names KS, which is not a list parameter"):
        parse_parameters("KS = 3  # [1, ∞) ks\nK = 5  # in KS top-k")
    with pytest.raises(ParameterError, match="must not contain '='"):
        parse_parameters("SEED = 0  # [>= 0] seed")  # papermill would drop this line: hence [0, ∞)
    p = parse_parameters("N_LAYERS = 4  # [1, ∞) blocks\nLAYER = 2  # [0, N_LAYERS) block")
    assert p["LAYER"].allowed == "[0, N_LAYERS)" and p["LAYER"].meaning == "block"


def test_violations_say_what_is_wrong():
    env = {"N_LAYERS": 4, "KS": [1, 5]}
    assert Interval(0, True, "N_LAYERS", False).violation(3, env) is None
    assert Interval(0, True, "N_LAYERS", False).violation(4, env) == "is outside [0, N_LAYERS) with N_LAYERS = 4"
    assert Interval(0, False, 1, True).violation(0.0, env) == "is outside (0, 1]"
    assert Interval(0, False, 1, True).violation(float("nan"), env) == "is outside (0, 1]"
    assert Choices((4, 8, 12), True).violation(1024, env) is None
    assert Choices((4, 8, 12), True).violation(6, env) == "is not one of {4, 8, 12, ...}"
    assert Choices((0, 1)).violation(1, env) is None and Choices((0, 1)).violation(2, env)
    assert Member("KS").violation(5, env) is None
    assert Member("KS").violation(2, env) == "is not one of KS = [1, 5]"
    assert Each(Choices(("a",))).violation([], env).startswith("is empty")
    assert ranges.Each(Interval(1, True, math.inf, False)).violation([3, 0], env) == \
        "has element 1 = 0, which is outside [1, ∞)"
