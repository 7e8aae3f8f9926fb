"""Quasi-random search (SPEC §4): mapping, invariants, AlgoPerf files, the CLI, bad input."""
import csv
import io
import json
import math
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastopt
from fastopt import QuasiRandomSearch
from fastopt.__main__ import main as cli_main
from fastopt.halton import halton
from fastopt.search import adam_kwargs, adam_space

from conftest import fastopt_env


SPACE = {
    "lr": {"min": 1e-5, "max": 1e-1, "scaling": "log"},
    "dropout": {"min": 0.0, "max": 0.5, "scaling": "linear"},
    "layers": {"min": 3, "max": 9, "type": "int"},
    "batch": {"min": 16, "max": 1024, "type": "int", "scaling": "log"},
    "act": {"feasible_points": ["relu", "gelu", "silu"]},
}

#: An AlgoPerf-style tuning_search_space.json (the benchmark's own layout and key names).
ALGOPERF_FILE = """{
  "learning_rate": {"min": 2e-4, "max": 5e-3, "scaling": "log"},
  "one_minus_beta1": {"min": 1e-2, "max": 0.2, "scaling": "log"},
  "beta2": {"feasible_points": [0.999]},
  "warmup_factor": {"feasible_points": [0.05]},
  "weight_decay": {"min": 1e-3, "max": 0.5, "scaling": "log"},
  "label_smoothing": {"feasible_points": [0.0, 0.2]},
  "dropout_rate": {"feasible_points": [0.0, 0.1]}
}
"""


def test_trial_is_the_mapped_halton_row():
    """Trial i maps row i of the seeded, scrambled, shifted sequence, parameters in order."""
    s = QuasiRandomSearch(SPACE, seed=3)
    assert s.names == tuple(SPACE) and s.d == 5
    u = halton(40, 5, seed=3, scramble=True, shift=True)
    for i in (0, 1, 17, 39):
        t = s.trial(i)
        assert list(t) == list(SPACE)
        lr_u, drop_u, lay_u, bat_u, act_u = u[i]
        lo, hi = math.log(1e-5), math.log(1e-1)
        assert t["lr"] == min(max(math.exp(lo + lr_u * (hi - lo)), 1e-5), 1e-1)
        assert t["dropout"] == 0.5 * drop_u
        assert t["layers"] == 3 + min(math.floor(lay_u * 7), 6)
        lo, hi = math.log(15.5), math.log(1024.5)
        assert t["batch"] == min(max(round(math.exp(lo + bat_u * (hi - lo))), 16), 1024)
        assert t["act"] == ["relu", "gelu", "silu"][min(math.floor(act_u * 3), 2)]


def test_trial_depends_on_space_seed_and_index_only():
    a = QuasiRandomSearch(SPACE, seed=7)
    b = QuasiRandomSearch(json.loads(json.dumps(SPACE)), seed=7)
    batch = a.trials(50)
    assert batch == [b.trial(i) for i in range(50)]  # any worker computes any trial alone
    assert a.trials(20, start=30) == batch[30:]
    assert a.trial(10**12) == b.trial(10**12)
    assert QuasiRandomSearch(SPACE, seed=8).trials(50) != batch
    assert QuasiRandomSearch(SPACE).trials(5) == QuasiRandomSearch(SPACE, seed=0).trials(5)
    for backend in fastopt.backends():
        if backend in ("cpp", "numba", "numpy"):
            assert QuasiRandomSearch(SPACE, seed=7, backend=backend).trials(50) == batch


def test_scrambled_and_shifted_by_default():
    s = QuasiRandomSearch({"x": {"min": 0.0, "max": 1.0}}, seed=2)
    u = [t["x"] for t in s.trials(8)]
    assert u == halton(8, 1, seed=2, shift=True)[:, 0].tolist()
    assert u != halton(8, 1, seed=2)[:, 0].tolist()
    plain = QuasiRandomSearch({"x": {"min": 0.0, "max": 1.0}}, seed=2, scramble=False, shift=False)
    assert [t["x"] for t in plain.trials(4)] == [0.0, 0.5, 0.25, 0.75]


def test_bounds_and_types():
    trials = QuasiRandomSearch(SPACE, seed=1).trials(3000)
    for t in trials:
        assert 1e-5 <= t["lr"] <= 1e-1 and isinstance(t["lr"], float)
        assert 0.0 <= t["dropout"] <= 0.5
        assert 3 <= t["layers"] <= 9 and isinstance(t["layers"], int)
        assert 16 <= t["batch"] <= 1024 and isinstance(t["batch"], int)
        assert t["act"] in ("relu", "gelu", "silu")
    assert {t["layers"] for t in trials} == set(range(3, 10))
    assert min(t["batch"] for t in trials) == 16 and max(t["batch"] for t in trials) == 1024


def test_log_scaling_spreads_evenly_over_decades():
    s = QuasiRandomSearch({"lr": {"min": 1e-6, "max": 1e-2, "scaling": "log"}}, seed=5)
    values = np.array([t["lr"] for t in s.trials(4000)])
    decades = Counter(np.floor(np.log10(values)).astype(int).tolist())
    assert sorted(decades) == [-6, -5, -4, -3]
    assert all(abs(c - 1000) <= 5 for c in decades.values()), decades  # quasi-random: even
    # and not linearly: a linear map would put ~90% of the points in the top decade
    lin = QuasiRandomSearch({"lr": {"min": 1e-6, "max": 1e-2}}, seed=5).trials(4000)
    assert sum(t["lr"] >= 1e-3 for t in lin) > 3500


@pytest.mark.parametrize("lo,hi", [(3, 9), (-2, 2), (0, 1)])
def test_int_values_equally_likely(lo, hi):
    m = hi - lo + 1
    s = QuasiRandomSearch({"k": {"min": lo, "max": hi, "type": "int"}, "x": {"min": 0, "max": 1}},
                          seed=11)
    counts = Counter(t["k"] for t in s.trials(700 * m))
    assert sorted(counts) == list(range(lo, hi + 1))
    assert all(abs(c - 700) <= 3 for c in counts.values()), counts


def test_int_log_scaling_on_the_widened_interval():
    s = QuasiRandomSearch({"k": {"min": 1, "max": 100, "type": "int", "scaling": "log"}}, seed=0)
    ks = np.array([t["k"] for t in s.trials(5000)])
    assert ks.min() == 1 and ks.max() == 100
    # log-uniform on [0.5, 100.5]: P(k = 1) = ln(1.5 / 0.5) / ln(100.5 / 0.5) ~ 0.207
    p1 = math.log(3) / math.log(201)
    assert abs((ks == 1).mean() - p1) < 0.01
    assert abs((ks == 100).mean() - math.log(100.5 / 99.5) / math.log(201)) < 0.005


def test_feasible_points_balanced():
    pts = [0.0, 0.1, 0.2, 0.3, 0.5]
    s = QuasiRandomSearch({"p": {"feasible_points": pts}, "q": {"feasible_points": [True, False]}},
                          seed=4)
    trials = s.trials(5000)
    cp = Counter(t["p"] for t in trials)
    cq = Counter(t["q"] for t in trials)
    assert sorted(cp) == pts and all(abs(c - 1000) <= 3 for c in cp.values()), cp
    assert all(abs(c - 2500) <= 3 for c in cq.values()), cq
    single = QuasiRandomSearch({"w": {"feasible_points": [0.05]}}).trials(10)
    assert all(t == {"w": 0.05} for t in single)


def test_algoperf_file_read_unchanged(tmp_path):
    path = tmp_path / "tuning_search_space.json"
    path.write_text(ALGOPERF_FILE)
    s = QuasiRandomSearch.from_json(path, seed=2)
    assert s.names == ("learning_rate", "one_minus_beta1", "beta2", "warmup_factor",
                       "weight_decay", "label_smoothing", "dropout_rate")
    trials = s.trials(100)
    assert trials == QuasiRandomSearch(json.loads(ALGOPERF_FILE), seed=2).trials(100)
    for t in trials:
        assert 2e-4 <= t["learning_rate"] <= 5e-3 and 1e-2 <= t["one_minus_beta1"] <= 0.2
        assert t["beta2"] == 0.999 and t["warmup_factor"] == 0.05
        assert t["label_smoothing"] in (0.0, 0.2) and t["dropout_rate"] in (0.0, 0.1)
    assert Counter(t["label_smoothing"] for t in trials) == {0.0: 50, 0.2: 50}


def test_algoperf_list_of_fixed_points(tmp_path):
    path = tmp_path / "discrete_space.json"
    points = [{"learning_rate": 1e-3, "one_minus_beta_1": 0.1},
              {"learning_rate": 1e-2, "one_minus_beta_1": 0.01}]
    path.write_text(json.dumps(points))
    s = QuasiRandomSearch.from_json(path)
    assert s.trials(2) == points and s.trial(1) == points[1]
    with pytest.raises(IndexError, match="trial 2 does not exist.*2 fixed points"):
        s.trial(2)


@pytest.mark.parametrize("budget,names", [
    (1, ["learning_rate"]), (9, ["learning_rate"]),
    (10, ["learning_rate", "one_minus_beta1"]), (24, ["learning_rate", "one_minus_beta1"]),
    (25, ["learning_rate", "one_minus_beta1", "epsilon"]),
    (99, ["learning_rate", "one_minus_beta1", "epsilon"]),
    (100, ["learning_rate", "one_minus_beta1", "epsilon", "one_minus_beta2"]),
])
def test_adam_space_by_budget(budget, names):
    space = adam_space(budget)
    assert list(space) == names
    assert all(spec["scaling"] == "log" and 0 < spec["min"] < spec["max"]
               for spec in space.values())
    trials = QuasiRandomSearch(space, seed=1).trials(budget)
    for t in trials:
        kw = adam_kwargs(t)
        assert kw["lr"] == t["learning_rate"]
        if "one_minus_beta1" in t:
            assert kw["beta1"] == 1.0 - t["one_minus_beta1"] and 0 < kw["beta1"] < 1
        if "epsilon" in t:
            assert kw["eps"] == t["epsilon"]
        if "one_minus_beta2" in t:
            assert 0 < kw["beta2"] < 1
    assert adam_space(30, many=30)["one_minus_beta2"]["scaling"] == "log"


def test_adam_space_beta1_log_spacing():
    """1 - beta1 log-uniform: beta1 in [0.9, 0.99) as often as in [0.99, 0.999)."""
    space = adam_space(20, one_minus_beta1=(1e-3, 1e-1))
    b1 = np.array([adam_kwargs(t)["beta1"] for t in QuasiRandomSearch(space).trials(2000)])
    assert abs(((b1 >= 0.9) & (b1 < 0.99)).sum() - 1000) <= 5


BAD_SPACES = [  # (space, exception, message pattern)
    ({"x": {"min": 0, "max": 1, "scaling": "cubic"}}, ValueError,
     r"space\['x'\]\['scaling'\].*cubic"),
    ({"x": {"min": 1, "max": 1}}, ValueError, r"space\['x'\]: min must be < max"),
    ({"x": {"min": 2, "max": 1}}, ValueError, r"space\['x'\]: min must be < max"),
    ({"x": {"min": 0, "max": 1, "scaling": "log"}}, ValueError,
     r"space\['x'\]: log scaling needs min > 0"),
    ({"x": {"min": -1, "max": 1, "scaling": "log"}}, ValueError, r"log scaling needs min > 0"),
    ({"x": {"min": 0, "max": 5, "type": "int", "scaling": "log"}}, ValueError, r"min >= 1"),
    ({"x": {"min": 0.5, "max": 5, "type": "int"}}, ValueError, r"space\['x'\]: an int parameter"),
    ({"x": {"min": 0, "max": 5, "type": "complex"}}, ValueError, r"space\['x'\]\['type'\]"),
    ({"x": {"min": 0}}, ValueError, r"space\['x'\] needs 'max'"),
    ({"x": {"min": 0, "max": 1, "step": 0.1}}, ValueError, r"unknown keys \['step'\]"),
    ({"x": {"min": "0", "max": 1}}, TypeError, r"space\['x'\]\['min'\] must be a real number"),
    ({"x": {"min": 0, "max": float("inf")}}, ValueError, r"space\['x'\]\['max'\] must be finite"),
    ({"x": {"feasible_points": []}}, ValueError,
     r"space\['x'\]\['feasible_points'\] must be a non-empty"),
    ({"x": {"feasible_points": [1], "min": 0}}, ValueError, r"mixes feasible_points"),
    ({"x": [0, 1]}, TypeError, r"space\['x'\] must be a dict"),
    ({}, ValueError, r"space has no parameters"),
    ([], ValueError, r"empty list"),
    ("lr", TypeError, r"space must be a dict"),
]


@pytest.mark.parametrize("space,exc,pattern", BAD_SPACES, ids=[str(b[0])[:40] for b in BAD_SPACES])
def test_bad_space(space, exc, pattern):
    with pytest.raises(exc, match=pattern):
        QuasiRandomSearch(space)


def test_bad_arguments():
    s = QuasiRandomSearch(SPACE)
    with pytest.raises(ValueError, match=r"\bi must be >= 0"):
        s.trial(-1)
    with pytest.raises(TypeError, match=r"\bi must be an integer"):
        s.trial(1.0)
    with pytest.raises(ValueError, match=r"\bn must be >= 0"):
        s.trials(-2)
    with pytest.raises(ValueError, match=r"\bstart must be >= 0"):
        s.trials(2, start=-1)
    with pytest.raises(ValueError, match=r"\bseed must be >= 0"):
        QuasiRandomSearch(SPACE, seed=-1)
    with pytest.raises(TypeError, match=r"\bseed must be a non-negative integer"):
        QuasiRandomSearch(SPACE, seed=None)
    with pytest.raises(ValueError, match=r"\bbudget must be >= 1"):
        adam_space(0)
    with pytest.raises(TypeError, match=r"learning_rate must be a \(min, max\) pair"):
        adam_space(5, learning_rate=1e-3)
    with pytest.raises(ValueError, match=r"space\['learning_rate'\]: min must be < max"):
        adam_space(5, learning_rate=(1e-1, 1e-3))


def test_bad_json_file(tmp_path):
    path = tmp_path / "space.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        QuasiRandomSearch.from_json(path)


# -- command line ------------------------------------------------------------------------------

@pytest.fixture()
def space_file(tmp_path):
    path = tmp_path / "tuning_search_space.json"
    path.write_text(ALGOPERF_FILE)
    return path


def test_cli_one_trial_json(space_file, capsys):
    assert cli_main(["search", str(space_file), "--seed", "3", "--trial", "5"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == QuasiRandomSearch.from_json(space_file, seed=3).trial(5)


def test_cli_trials_json_lines_and_csv(space_file, capsys):
    want = QuasiRandomSearch.from_json(space_file, seed=1).trials(4, start=6)
    args = ["search", str(space_file), "--seed", "1", "--trials", "4", "--start", "6"]
    assert cli_main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == want  # floats round-trip exactly
    assert cli_main(args + ["--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["trial"]) for r in rows] == [6, 7, 8, 9]
    for r, t in zip(rows, want):
        assert {k: float(v) for k, v in r.items() if k != "trial"} == t


def test_cli_errors(space_file, tmp_path, capsys):
    assert cli_main(["search", str(tmp_path / "missing.json"), "--trial", "0"]) == 2
    assert "fastopt search: error" in capsys.readouterr().err
    assert cli_main(["search", str(space_file), "--trial", "-1"]) == 2
    assert "--trial must be >= 0" in capsys.readouterr().err
    assert cli_main(["search", str(space_file), "--trial", "1", "--start", "3"]) == 2
    assert "--start goes with --trials" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --trial and --trials are exclusive, one is required
        cli_main(["search", str(space_file)])
    with pytest.raises(SystemExit):
        cli_main(["search", str(space_file), "--trial", "1", "--trials", "2"])
    with pytest.raises(SystemExit):
        cli_main(["search", str(space_file), "--trial", "1", "--bogus"])


def test_python_dash_m_fastopt_search(space_file):
    env = fastopt_env()
    cmds = [[sys.executable, "-m", "fastopt"]]
    if shutil.which("fastopt"):
        cmds.append(["fastopt"])
    for cmd in cmds:
        run = subprocess.run(cmd + ["search", str(space_file), "--seed", "9", "--trial", "2"],
                             capture_output=True, text=True, env=env, cwd=space_file.parent)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout) == QuasiRandomSearch.from_json(space_file, seed=9).trial(2)


# -- hardening: bad input anywhere is a named TypeError/ValueError -------------------------------

BAD_SPACES_MORE = [
    ({"x": {"min": -1e308, "max": 1e308}}, ValueError, r"space\['x'\]: max - min overflows"),
    ({"x": {"min": 0, "max": 2**60, "type": "int"}}, ValueError, r"within \+-2\*\*53"),
    ({"x": {"min": -10**308, "max": 10**308, "type": "int"}}, ValueError, r"within \+-2\*\*53"),
    ({"x": {"min": 0, "max": 10**400}}, ValueError, r"space\['x'\]\['max'\] must be a finite"),
    ({"x": {"min": float("nan"), "max": 1}}, ValueError, r"space\['x'\]\['min'\] must be finite"),
    ({"x": {"min": True, "max": 2}}, TypeError, r"space\['x'\]\['min'\] must be a real number"),
    ({"x": {"min": 0, "max": 1, "scaling": ["log"]}}, ValueError, r"space\['x'\]\['scaling'\]"),
    ({"x": {"min": 0, "max": 1, "type": None}}, ValueError, r"space\['x'\]\['type'\]"),
    ({"x": {"min": 0, "max": 1, 1: 2, "z": 3}}, ValueError, r"unknown keys \['z', 1\]"),
    ({"x": {"feasible_points": [1], 2: 3}}, ValueError, r"mixes feasible_points with \[2\]"),
    ({"x": {"feasible_points": "abc"}}, TypeError, r"\['feasible_points'\] must be a non-empty list"),
    ({"x": {"feasible_points": None}}, TypeError, r"\['feasible_points'\] must be a non-empty list"),
    ({1: {"min": 0, "max": 1}}, TypeError, r"space: parameter names must be non-empty strings"),
    ({"": {"min": 0, "max": 1}}, TypeError, r"space: parameter names must be non-empty strings"),
    ([{"lr": 1}, {2: 1}], TypeError, r"space\[1\]: parameter names must be"),
    ([{"lr": 1}, 5], TypeError, r"space\[1\] must be a non-empty dict"),
    (None, TypeError, r"space must be a dict"),
]


@pytest.mark.parametrize("space,exc,pattern", BAD_SPACES_MORE,
                         ids=[str(b[0])[:40] for b in BAD_SPACES_MORE])
def test_bad_space_more(space, exc, pattern):
    with pytest.raises(exc, match=pattern):
        QuasiRandomSearch(space)


@pytest.mark.parametrize("kwargs,exc,pattern", [
    (dict(scramble="no"), TypeError, r"\bscramble must be a bool"),
    (dict(shift=1), TypeError, r"\bshift must be a bool"),
    (dict(backend="fortran"), ValueError, r"\bbackend must be None or one of"),
    (dict(backend=1), ValueError, r"\bbackend must be None or one of"),
    (dict(seed=1.0), TypeError, r"\bseed must be a non-negative integer"),
    (dict(seed=True), TypeError, r"\bseed must be a non-negative integer"),
])
def test_bad_search_arguments(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        QuasiRandomSearch(SPACE, **kwargs)


def test_trial_indices_beyond_64_bits_and_absurd_counts():
    s = QuasiRandomSearch(SPACE)
    assert s.trial(2**64 - 1) == s.trials(1, 2**64 - 1)[0]
    with pytest.raises(ValueError, match=r"\bi must be <= "):
        s.trial(2**64)
    with pytest.raises(ValueError, match=r"\bi must be <= "):
        s.trial(10**400)
    with pytest.raises(ValueError, match=r"start \+ n must be <= 2\*\*64"):
        s.trials(2, 2**64 - 1)
    with pytest.raises(ValueError, match=r"n=10000000000000 trials of 5 parameters would need"):
        s.trials(10**13)
    with pytest.raises(TypeError, match=r"\bn must be an integer"):
        s.trials(np.float64(3))
    assert s.trials(np.int32(2), np.uint64(3)) == s.trials(2, 3)
    points = QuasiRandomSearch([{"a": 1}, {"a": 2}])
    with pytest.raises(IndexError, match="trial 2 does not exist"):
        points.trials(10**12)  # at once: the list is not walked 10**12 times


def test_log_scaling_up_to_the_float_limit():
    top = 1.7976931348623157e308
    s = QuasiRandomSearch({"x": {"min": 1e300, "max": top, "scaling": "log"}}, seed=3)
    values = [t["x"] for t in s.trials(2000)]
    assert all(1e300 <= v <= top for v in values) and max(values) > 1e307


def test_wide_but_finite_linear_range_is_uniform():
    s = QuasiRandomSearch({"x": {"min": -8e307, "max": 8e307}}, seed=1)
    values = np.array([t["x"] for t in s.trials(1000)])
    assert np.isfinite(values).all() and abs((values > 0).mean() - 0.5) < 0.01


def test_from_json_bad_paths(tmp_path):
    for path in (0, 1, None, True, 3.5, ["a"]):  # an int would be a file descriptor: stdin
        with pytest.raises(TypeError, match=r"\bpath must be a str"):
            QuasiRandomSearch.from_json(path)
    with pytest.raises(ValueError, match=r"path .*missing\.json.: cannot read it"):
        QuasiRandomSearch.from_json(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"path .*: cannot read it"):
        QuasiRandomSearch.from_json(tmp_path)
    bad = tmp_path / "bad.json"
    for text, pattern in (("[" * 5000 + "]" * 5000, "nested 5000 deep"),
                          ('{"x": 1, "x": 2}', "appears twice"),
                          ('{"x": {"min": 0, "max": Infinity}}', "Infinity is not JSON"),
                          ('{"x": {"min": 0, "max": 2}', "not valid JSON"),
                          ('{"x": {"min": 2, "max": 1}}', r"space\['x'\]: min must be < max")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=pattern):
            QuasiRandomSearch.from_json(bad)
    bad.write_bytes(b"\xef\xbb\xbf" + json.dumps(SPACE).encode())  # a BOM is fine
    assert QuasiRandomSearch.from_json(bad).names == tuple(SPACE)
    bad.write_text('{"x": {"feasible_points": ["[[[[", "}}}}"]}}')  # brackets in strings
    assert QuasiRandomSearch.from_json(bad).trial(0)["x"] in ("[[[[", "}}}}")


def test_adam_kwargs_bad_trials():
    with pytest.raises(TypeError, match=r"\btrial must be a dict"):
        adam_kwargs(5)
    with pytest.raises(ValueError, match=r"\btrial has no 'learning_rate'"):
        adam_kwargs({})


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True), st.text(max_size=4),
                    st.lists(st.integers(), max_size=3))
_SPEC = st.one_of(
    st.dictionaries(st.sampled_from(["min", "max", "scaling", "type", "feasible_points", "x"]),
                    _VALUES | st.sampled_from(["log", "linear", "int", "float"]), max_size=5),
    _VALUES)


@given(space=st.one_of(st.dictionaries(st.text(max_size=3) | st.integers(), _SPEC, max_size=4),
                       st.lists(st.dictionaries(st.text(max_size=3), _VALUES, max_size=2),
                                max_size=3), _VALUES))
def test_random_spaces_raise_only_named_errors(space):
    try:
        s = QuasiRandomSearch(space)
    except (TypeError, ValueError) as e:
        assert "space" in str(e), str(e)
        return
    for t in s.trials(min(5, len(s.points)) if s.points is not None else 5):
        if s.space is not None:
            for name, spec in s.space.items():
                if "min" in spec:
                    assert spec["min"] <= t[name] <= spec["max"]


_GOOD_SPEC = st.one_of(
    st.tuples(st.floats(-1e6, 1e6), st.floats(1e-6, 1e6)).map(
        lambda p: {"min": p[0], "max": p[0] + p[1]}),
    st.tuples(st.floats(1e-8, 1e3), st.floats(1.001, 1e6)).map(
        lambda p: {"min": p[0], "max": p[0] * p[1], "scaling": "log"}),
    st.tuples(st.integers(-1000, 1000), st.integers(1, 1000)).map(
        lambda p: {"min": p[0], "max": p[0] + p[1], "type": "int"}),
    st.tuples(st.integers(1, 1000), st.integers(1, 1000)).map(
        lambda p: {"min": p[0], "max": p[0] + p[1], "type": "int", "scaling": "log"}),
    st.lists(st.integers(), min_size=1, max_size=5).map(lambda p: {"feasible_points": p}))


@given(space=st.dictionaries(st.text(min_size=1, max_size=3), _GOOD_SPEC, min_size=1, max_size=6),
       seed=st.integers(0, 2**64), start=st.integers(0, 2**64 - 20), n=st.integers(0, 20))
def test_good_random_spaces_equal_the_reference_on_every_backend(space, seed, start, n):
    want = QuasiRandomSearch(space, seed, backend="numpy").trials(n, start)
    assert want == [QuasiRandomSearch(space, seed, backend="numpy").trial(start + k)
                    for k in range(n)]
    for backend in fastopt.backends():
        if backend in ("cpp", "numba"):
            assert QuasiRandomSearch(space, seed, backend=backend).trials(n, start) == want
