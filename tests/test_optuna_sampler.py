"""fastopt.optuna.QuasiRandomSampler: Optuna trials drawn from fastopt's Halton sequence."""
import json
import math
import subprocess
import sys
from collections import Counter

import pytest
from conftest import fastopt_env, fastopt_parent

optuna = pytest.importorskip("optuna")

import fastopt  # noqa: E402
from fastopt.optuna import QuasiRandomSampler  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {
    "lr": {"min": 1e-4, "max": 1e-1, "scaling": "log"},
    "wd": {"min": 0.0, "max": 0.1, "scaling": "linear"},
    "width": {"min": 16, "max": 256, "type": "int"},
    "act": {"feasible_points": ["relu", "gelu", "tanh"]},
    "layers": {"min": 1, "max": 8, "type": "int", "scaling": "log"},
}


def space_objective(trial):
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    wd = trial.suggest_float("wd", 0.0, 0.1)
    width = trial.suggest_int("width", 16, 256)
    act = trial.suggest_categorical("act", ["relu", "gelu", "tanh"])
    layers = trial.suggest_int("layers", 1, 8, log=True)
    return lr + wd + width / 256 + layers / 8 + ["relu", "gelu", "tanh"].index(act)


def free_objective(trial):
    """Every kind of distribution, no space given to the sampler."""
    x = trial.suggest_float("x", -2.0, 3.0)
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    q = trial.suggest_float("q", 0.0, 1.0, step=0.25)
    n = trial.suggest_int("n", 1, 10)
    ln = trial.suggest_int("ln", 1, 64, log=True)
    s = trial.suggest_int("s", 0, 20, step=5)
    act = trial.suggest_categorical("act", ["relu", "gelu", "tanh"])
    return x * x + lr + q + n + ln + s + len(act)


def run(sampler, objective, n):
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=n)
    return study


@pytest.mark.parametrize("seed", [0, 11])
def test_space_trials_equal_quasi_random_search(seed):
    study = run(QuasiRandomSampler(SPACE, seed=seed), space_objective, 40)
    search = fastopt.QuasiRandomSearch(SPACE, seed=seed)
    assert len(study.trials) == 40
    for t in study.trials:
        want = search.trial(t.number)
        assert t.params == want
        assert all(type(t.params[k]) is type(want[k]) for k in want)  # ints stay ints
    assert len({t.params["act"] for t in study.trials}) == 3


def test_space_from_json_file(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(SPACE))
    study = run(QuasiRandomSampler(str(path), seed=3), space_objective, 10)
    search = fastopt.QuasiRandomSearch(SPACE, seed=3)
    assert [t.params for t in study.trials] == search.trials(10)


def test_free_maps_match_search_when_dims_agree():
    # Without a space, max_dims = len(SPACE) and the space's order give the same rows and maps.
    sampler = QuasiRandomSampler(seed=5, max_dims=len(SPACE))
    study = run(sampler, space_objective, 25)
    assert sampler.dimensions == {name: j for j, name in enumerate(SPACE)}
    search = fastopt.QuasiRandomSearch(SPACE, seed=5)
    assert [t.params for t in study.trials] == search.trials(25)


def test_free_reproducible_and_seeded():
    a = [t.params for t in run(QuasiRandomSampler(seed=0), free_objective, 20).trials]
    b = [t.params for t in run(QuasiRandomSampler(seed=0), free_objective, 20).trials]
    c = [t.params for t in run(QuasiRandomSampler(seed=1), free_objective, 20).trials]
    assert a == b
    assert a != c
    assert sum(pa["x"] != pc["x"] for pa, pc in zip(a, c)) == 20


def test_free_values_in_bounds_and_on_grids():
    sampler = QuasiRandomSampler(seed=2)
    study = run(sampler, free_objective, 60)
    assert list(sampler.dimensions) == ["x", "lr", "q", "n", "ln", "s", "act"]
    for t in study.trials:
        p = t.params
        assert -2.0 <= p["x"] <= 3.0
        assert 1e-5 <= p["lr"] <= 1e-1
        assert p["q"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert isinstance(p["n"], int) and 1 <= p["n"] <= 10
        assert isinstance(p["ln"], int) and 1 <= p["ln"] <= 64
        assert p["s"] in (0, 5, 10, 15, 20)
        assert p["act"] in ("relu", "gelu", "tanh")


def test_free_discrete_dims_vary_and_spread_evenly():
    n = 60
    study = run(QuasiRandomSampler(seed=4), free_objective, n)
    params = [t.params for t in study.trials]
    for name in ("q", "n", "ln", "s", "act"):
        assert len({p[name] for p in params}) > 1, name
    counts = Counter(p["act"] for p in params)
    assert set(counts) == {"relu", "gelu", "tanh"}
    for choice, k in counts.items():
        assert abs(k - n / 3) <= 0.3 * n / 3, (choice, counts)
    # linear ints: each of 1..10 about n/10 times (a low-discrepancy sequence, not a random one)
    ints = Counter(p["n"] for p in params)
    assert set(ints) == set(range(1, 11))
    assert max(ints.values()) - min(ints.values()) <= 3
    # the grid floats too: 5 points
    grid = Counter(p["q"] for p in params)
    assert len(grid) == 5 and max(grid.values()) - min(grid.values()) <= 3


def test_free_trial_independent_of_other_trials():
    long = run(QuasiRandomSampler(seed=7), free_objective, 20)
    short = run(QuasiRandomSampler(seed=7), lambda t: -free_objective(t), 10)
    assert [t.params for t in long.trials[:10]] == [t.params for t in short.trials]


def test_free_all_dims_from_one_row():
    # trial i is row i of halton(., max_dims, seed, scramble, shift): check x and act against it
    sampler = QuasiRandomSampler(seed=9, max_dims=8)
    study = run(sampler, free_objective, 12)
    rows = fastopt.halton(12, 8, seed=9, scramble=True, shift=True)
    j_x, j_act = sampler.dimensions["x"], sampler.dimensions["act"]
    for t, row in zip(study.trials, rows):
        assert t.params["x"] == pytest.approx(-2.0 + 5.0 * row[j_x], abs=1e-12)
        assert t.params["act"] == ["relu", "gelu", "tanh"][min(int(row[j_act] * 3), 2)]


def test_too_many_dimensions():
    def objective(trial):
        return sum(trial.suggest_float(f"p{k}", 0, 1) for k in range(3))

    with pytest.raises(ValueError, match="p2.*max_dims=2"):
        run(QuasiRandomSampler(seed=0, max_dims=2), objective, 1)


def test_end_to_end_quadratic():
    def objective(trial):
        x = trial.suggest_float("x", -5.0, 5.0)
        y = trial.suggest_float("y", -5.0, 5.0)
        return (x - 1.0) ** 2 + (y + 2.0) ** 2

    study = run(QuasiRandomSampler(seed=0), objective, 30)
    assert len(study.trials) == 30
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert math.isfinite(study.best_value)
    assert study.best_value < study.trials[0].value
    assert study.best_value < 2.0  # 30 well-spread points in a 10 x 10 square


def test_parallel_jobs_same_trials():
    # n_jobs > 1 calls reseed_rng and runs trials concurrently: the trials stay row i
    serial = run(QuasiRandomSampler(seed=6), free_objective, 16)
    study = optuna.create_study(sampler=QuasiRandomSampler(seed=6))
    study.optimize(free_objective, n_trials=16, n_jobs=4)
    by_number = {t.number: t.params for t in study.trials}
    # the dimension order is fixed by the objective, so trial numbers map to the same rows
    assert by_number == {t.number: t.params for t in serial.trials}


def test_enqueued_trials():
    sampler = QuasiRandomSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial({"x": 0.5, "act": "gelu"})
    study.optimize(free_objective, n_trials=8)
    assert study.trials[0].params["x"] == 0.5
    assert study.trials[0].params["act"] == "gelu"
    # the fixed parameters keep their place in the order of first appearance, so the trials
    # after the enqueued one are those of a study without it
    assert list(sampler.dimensions) == ["x", "lr", "q", "n", "ln", "s", "act"]
    plain = run(QuasiRandomSampler(seed=0), free_objective, 8)
    assert [t.params for t in study.trials[1:]] == [t.params for t in plain.trials[1:]]
    free = {k: v for k, v in study.trials[0].params.items() if k not in ("x", "act")}
    assert free == {k: plain.trials[0].params[k] for k in free}


def test_enqueued_trial_with_space():
    study = optuna.create_study(sampler=QuasiRandomSampler(SPACE, seed=1))
    study.enqueue_trial({"width": 100})
    study.optimize(space_objective, n_trials=5)
    search = fastopt.QuasiRandomSearch(SPACE, seed=1)
    assert study.trials[0].params == {**search.trial(0), "width": 100}
    assert [t.params for t in study.trials[1:]] == search.trials(4, 1)


@pytest.mark.parametrize("suggest, match", [
    (lambda t: t.suggest_float("lr", 1e-4, 1e-1), "'lr'"),  # log=False
    (lambda t: t.suggest_float("lr", 1e-5, 1e-1, log=True), "'lr'"),  # bounds
    (lambda t: t.suggest_float("wd", 0.0, 0.1, step=0.01), "'wd'"),  # step
    (lambda t: t.suggest_float("width", 16, 256), "'width'"),  # float for an int
    (lambda t: t.suggest_int("width", 16, 256, step=2), "'width'"),  # step
    (lambda t: t.suggest_categorical("act", ["relu", "gelu"]), "'act'"),  # choices
    (lambda t: t.suggest_int("layers", 1, 8), "'layers'"),  # log=False
])
def test_incompatible_distribution(suggest, match):
    study = optuna.create_study(sampler=QuasiRandomSampler(SPACE, seed=0))
    with pytest.raises(ValueError, match=match):
        study.optimize(suggest, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.FAIL


def test_unknown_parameter():
    study = optuna.create_study(sampler=QuasiRandomSampler(SPACE, seed=0))
    with pytest.raises(ValueError, match="'momentum'.*not in"):
        study.optimize(lambda t: t.suggest_float("momentum", 0.0, 1.0), n_trials=1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="enqueue_trial"):
        QuasiRandomSampler([{"lr": 0.1}])
    with pytest.raises(TypeError, match="seed"):
        QuasiRandomSampler(seed=1.5)
    with pytest.raises(ValueError, match="seed"):
        QuasiRandomSampler(seed=-1)
    with pytest.raises(ValueError, match="max_dims"):
        QuasiRandomSampler(max_dims=0)
    with pytest.raises(ValueError):
        QuasiRandomSampler({"lr": {"min": 1, "max": 0}})
    drawn = QuasiRandomSampler(seed=None)
    assert isinstance(drawn.seed, int) and drawn.seed >= 0
    assert drawn.infer_relative_search_space(None, None) == {}
    assert drawn.sample_relative(None, None, {}) == {}


def test_import_fastopt_does_not_import_optuna():
    code = ("import sys, fastopt; fastopt.QuasiRandomSearch; "
            "print('optuna' in sys.modules, 'fastopt.optuna' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120, env=fastopt_env(), cwd=fastopt_parent())
    assert out.stdout.split() == ["False", "False"]


def test_missing_optuna_message():
    code = ("import sys; sys.modules['optuna'] = None\n"
            "try:\n    import fastopt.optuna\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120, env=fastopt_env(), cwd=fastopt_parent())
    assert "pip install optuna" in out.stdout
