"""Study analysis (fastopt.study) on synthetic studies whose answers are known, and
QuasiRandomSearch.record."""
import csv
import json
import math
import multiprocessing
import os

import numpy as np
import pytest

from fastopt import QuasiRandomSearch
from fastopt import study as study_mod
from fastopt.study import Results, StudyError, analyse, load_results, space_for

SPACE = {
    "lr": {"min": 1e-4, "max": 1e-1, "scaling": "log"},
    "wd": {"min": 1e-5, "max": 1e-1, "scaling": "log"},
    "width": {"min": 16, "max": 256, "type": "int"},
}
STEPS = list(range(0, 1001, 100))


def records_of(objective, n=32, seed=0, steps=STEPS, curve=None, noise=0.0, extra=None):
    """Records (dicts in the JSONL layout) of an n-trial study over SPACE.

    ``objective(params) -> value`` is the trial's level; ``curve(trial, step)`` is added per
    step (default: a bowl with its minimum at step 500); ``noise`` adds seeded normal noise to
    the level; ``extra(trial, step, record)`` may edit each record in place.
    """
    search = QuasiRandomSearch(SPACE, seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for i, hp in enumerate(search.trials(n)):
        level = objective(hp) + noise * rng.normal()
        for k, s in enumerate(steps):
            shape = curve(i, s) if curve else abs(s - 500) / 1000
            rec = {"trial": i, "step": s, "metrics": {"val_error": level + shape,
                                                      "train_loss": level + shape + 0.1}}
            if k == 0:
                rec["params"] = hp
            if extra:
                extra(i, s, rec)
            out.append(rec)
    return out


def write_jsonl(path, records):
    with open(path, "w") as f:
        for rec in records:
            rec = dict(rec, metrics={k: (str(v) if isinstance(v, float) and not math.isfinite(v)
                                         else v)
                                     for k, v in rec["metrics"].items()})
            f.write(json.dumps(rec) + "\n")
    return path


def write_csv(path, records, names=tuple(SPACE)):
    """The same records as a CSV file, params repeated on every row."""
    params = {r["trial"]: r["params"] for r in records if "params" in r}
    metric_names = list(dict.fromkeys(k for r in records for k in r["metrics"]))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "step", *names, *metric_names, "diverged"])
        for r in records:
            m = r["metrics"]
            w.writerow([r["trial"], r["step"], *(repr(params[r["trial"]][n]) for n in names),
                        *("" if m.get(k) is None else repr(m[k]) for k in metric_names),
                        "true" if r.get("diverged") else ""])
    return path


def study(tmp_path, records, **kwargs):
    return load_results(write_jsonl(tmp_path / "results.jsonl", records), **kwargs)


# -- boundary ----------------------------------------------------------------------------------

def test_optimum_past_the_upper_bound_warns_for_lr_only(tmp_path):
    """Lower is better all the way up to lr's max: the top trials crowd lr's upper edge."""
    res = study(tmp_path, records_of(lambda hp: -math.log(hp["lr"]), n=40))
    f = analyse(res, "val_error", space=SPACE)
    lr = f["boundary"]["lr"]
    assert lr["side"] == "upper" and lr["best_position"] > 0.9
    assert "lr" in lr["warning"] and "upper" in lr["warning"] and "0.1" in lr["warning"]
    assert sum(p > 0.9 for p in lr["top_positions"]) * 2 >= len(lr["top_positions"])
    assert f["boundary"]["wd"]["warning"] is None and f["boundary"]["width"]["warning"] is None
    assert lr["warning"] in f["findings"]
    assert len(lr["top_positions"]) == 4  # max(3, ceil(40 / 10))
    assert lr["top_positions"] == sorted(lr["top_positions"], reverse=True)


def test_optimum_past_the_lower_bound_warns_on_the_lower_side(tmp_path):
    res = study(tmp_path, records_of(lambda hp: math.log(hp["lr"]), n=40))
    f = analyse(res, "val_error", space=SPACE)
    lr = f["boundary"]["lr"]
    assert lr["side"] == "lower" and lr["best_position"] < 0.1
    assert "lower" in lr["warning"] and "0.0001" in lr["warning"]
    assert [b["warning"] for n, b in f["boundary"].items() if n != "lr"] == [None, None]


def test_goal_max_mirrors_goal_min(tmp_path):
    res = study(tmp_path, records_of(lambda hp: math.log(hp["lr"]), n=40))
    f = analyse(res, "val_error", goal="max", space=SPACE)
    assert f["boundary"]["lr"]["side"] == "upper" and f["boundary"]["lr"]["warning"]
    values = [t["best_value"] for t in f["trials"]]
    assert f["best"]["value"] == max(values)


def test_interior_optimum_gives_no_boundary_warning(tmp_path):
    res = study(tmp_path, records_of(lambda hp: (math.log10(hp["lr"]) + 2.5) ** 2, n=40))
    f = analyse(res, "val_error", space=SPACE)
    assert all(b["warning"] is None for b in f["boundary"].values())
    assert 0.3 < f["boundary"]["lr"]["best_position"] < 0.7
    assert not any("boundary" in s for s in f["findings"])


def test_best_alone_at_the_edge_is_not_enough(tmp_path):
    """The best trial at the edge but the other top trials far from it: no warning."""
    top_lr = max(hp["lr"] for hp in QuasiRandomSearch(SPACE).trials(40))

    def objective(hp):
        return -10.0 if hp["lr"] == top_lr else (math.log10(hp["lr"]) + 2.5) ** 2
    res = study(tmp_path, records_of(objective, n=40))
    f = analyse(res, "val_error", space=SPACE, top_k=8)
    lr = f["boundary"]["lr"]
    assert lr["best_position"] > 0.9 and lr["side"] == "upper"
    assert sum(p > 0.9 for p in lr["top_positions"]) * 2 < 8
    assert lr["warning"] is None and len(lr["top_positions"]) == 8


def test_feasible_points_parameters_have_no_boundary_entry(tmp_path):
    space = dict(SPACE, act={"feasible_points": ["relu", "gelu"]})
    search = QuasiRandomSearch(space)
    path = tmp_path / "r.jsonl"
    for i in range(10):
        search.record(path, i, 10, {"val_error": i})
    f = analyse(load_results(path, space=space), "val_error", space=space)
    assert set(f["boundary"]) == set(SPACE) and set(f["isolation"]) == set(SPACE)
    assert f["best"]["params"]["act"] in ("relu", "gelu")


# -- infeasible trials -------------------------------------------------------------------------

def test_nan_and_diverged_trials_are_infeasible_and_never_best(tmp_path):
    def extra(i, s, rec):
        if i == 3 and s == 400:
            rec["metrics"]["val_error"] = math.nan
        if i == 4 and s == 700:
            rec["diverged"] = True
        if i == 5:
            rec["metrics"]["val_error"] = None  # never measured
        if i == 6 and s == 200:
            rec["metrics"]["val_error"] = None  # one missing measurement is no failure
        if i == 7 and s == 300:
            rec["metrics"]["val_error"] = math.inf
    # trials 3 and 4 would be the best: lowest levels
    res = study(tmp_path, _levels(extra, best=(3, 4)))
    f = analyse(res, "val_error", space=SPACE)
    assert f["infeasible"] == [3, 4, 5, 7]
    reasons = f["infeasible_reasons"]
    assert "nan" in reasons["3"] and "step 400" in reasons["3"]
    assert "diverged" in reasons["4"] and "step 700" in reasons["4"]
    assert "no finite val_error" in reasons["5"]
    assert "inf" in reasons["7"] and "step 300" in reasons["7"]
    assert f["best"]["trial"] not in (3, 4, 5, 7)
    assert f["n_feasible"] == 8 and f["n_trials"] == 12
    rows = {t["trial"]: t for t in f["trials"]}
    assert rows[6]["feasible"] and rows[3]["best_value"] is None and rows[3]["max_step"] == 1000
    assert any("4 of 12 trials are infeasible" in s and "3, 4, 5, 7" in s for s in f["findings"])
    assert all(3 != t for t in f["curves"]["trials"])


def _levels(extra, best=(), n=12):
    """Records whose trial levels are i (trials in ``best``: -10, the best unless excluded)."""
    search = QuasiRandomSearch(SPACE)
    out = []
    for i, hp in enumerate(search.trials(n)):
        level = -10.0 - i if i in best else float(i)
        for k, s in enumerate(STEPS):
            rec = {"trial": i, "step": s, "metrics": {"val_error": level + abs(s - 500) / 1000,
                                                      "train_loss": 1.0}}
            if k == 0:
                rec["params"] = hp
            extra(i, s, rec)
            out.append(rec)
    return out


def test_diverge_above(tmp_path):
    def extra(i, s, rec):
        if i == 2 and s == 600:
            rec["metrics"]["train_loss"] = 100.0
        if i == 8 and s == 100:
            rec["metrics"]["train_loss"] = math.nan
    res = study(tmp_path, _levels(extra, best=(2,)))
    assert analyse(res, "val_error")["best"]["trial"] == 2  # no threshold: feasible
    f = analyse(res, "val_error", diverge_above=10.0)
    assert f["infeasible"] == [2, 8]
    assert "train_loss" in f["infeasible_reasons"]["2"] and "100" in f["infeasible_reasons"]["2"]
    assert f["best"]["trial"] == 0
    # the objective as the diverge metric: trial i reaches i + 0.5, so 6 and up are out
    f = analyse(res, "val_error", diverge_metric="val_error", diverge_above=5.7)
    assert f["infeasible"] == [6, 7, 8, 9, 10, 11]
    with pytest.raises(StudyError, match="loss"):
        analyse(res, "val_error", diverge_metric="loss", diverge_above=1.0)
    with pytest.raises(ValueError, match="diverge_above"):
        analyse(res, "val_error", diverge_metric="train_loss")


def test_no_feasible_trial(tmp_path):
    res = study(tmp_path, _levels(lambda i, s, rec: rec.update(diverged=True), n=5))
    f = analyse(res, "val_error", space=SPACE)
    assert f["best"] is None and f["n_feasible"] == 0 and f["infeasible"] == [0, 1, 2, 3, 4]
    assert f["boundary"] == {} and f["curves"] == {"trials": []}
    assert all(b is None for v in f["isolation"].values() for b in v["best"])
    assert f["bootstrap"]["iqr_full"] is None
    assert f["findings"][0].startswith("No trial is feasible")
    json.dumps(f, allow_nan=False)


# -- best step ---------------------------------------------------------------------------------

@pytest.mark.parametrize("best_step, warning", [(50, "first 10 %"), (100, "first 10 %"),
                                                (500, None), (750, None),
                                                (800, "last 25 %"), (1000, "last 25 %")])
def test_best_step_warnings(tmp_path, best_step, warning):
    steps = list(range(0, 1001, 50))
    res = study(tmp_path, records_of(lambda hp: -math.log(hp["lr"]), n=16, steps=steps,
                                     curve=lambda i, s: abs(s - best_step) / 1000))
    f = analyse(res, "val_error")
    best = f["best"]
    assert best["step"] == best_step and best["max_step"] == 1000
    assert best["fraction"] == best_step / 1000
    if warning is None:
        assert best["warnings"] == []
    else:
        assert len(best["warnings"]) == 1 and warning in best["warnings"][0]
        assert f"step {best_step} of 1000" in best["warnings"][0]
        assert f"Trial {best['trial']}" in best["warnings"][0]
        assert best["warnings"][0] == f["findings"][1]


def test_best_step_ties_go_to_the_earliest_step(tmp_path):
    res = study(tmp_path, records_of(lambda hp: 0.0, n=4, curve=lambda i, s: 0.0))
    f = analyse(res, "val_error")
    assert all(t["best_step"] == 0 for t in f["trials"])
    assert f["best"]["trial"] == 0  # ties between trials: the lowest id


def test_records_out_of_step_order(tmp_path):
    recs = records_of(lambda hp: -math.log(hp["lr"]), n=6)
    shuffled = [recs[i] for i in np.random.default_rng(1).permutation(len(recs))]
    for i in range(6):  # params must ride on each trial's first record in the file
        first = next(r for r in shuffled if r["trial"] == i)
        first["params"] = next(r["params"] for r in recs if r["trial"] == i and "params" in r)
    a = analyse(study(tmp_path, recs), "val_error")
    b = analyse(load_results(write_jsonl(tmp_path / "b.jsonl", shuffled)), "val_error")
    assert a["trials"] == b["trials"] and a["best"] == b["best"]


# -- bootstrap ---------------------------------------------------------------------------------

def test_bootstrap_iqr_shrinks_and_follows_the_procedure(tmp_path):
    res = study(tmp_path, records_of(lambda hp: 0.0, n=32, noise=1.0))
    f = analyse(res, "val_error", n_boot=500, seed=7)
    boot = f["bootstrap"]
    assert boot["budgets"] == [1, 2, 4, 8, 16, 32]
    assert boot["iqr"][-1] < boot["iqr"][0]
    assert boot["iqr_full"] == boot["iqr"][-1] and boot["iqr_half"] == boot["iqr"][-2]
    # the documented procedure, step by step
    values = np.array([t["best_value"] for t in f["trials"]])
    rng = np.random.default_rng(7)
    for j, n in enumerate(boot["budgets"]):
        best = values[rng.integers(0, 32, size=(500, n))].min(axis=1)
        q = np.quantile(best, [0.05, 0.25, 0.5, 0.75, 0.95])
        assert [boot["quantiles"][k][j] for k in ("5", "25", "50", "75", "95")] == list(q)
        assert boot["iqr"][j] == q[3] - q[1]
    sentence = next(s for s in f["findings"] if "interquartile" in s)
    assert "With 32 trials" in sentence and "with 16" in sentence


def test_bootstrap_in_blocks_draws_the_same_numbers(tmp_path, monkeypatch):
    res = study(tmp_path, records_of(lambda hp: 0.0, n=24, noise=1.0))
    whole = analyse(res, "val_error", n_boot=301)["bootstrap"]
    monkeypatch.setattr(study_mod, "BOOT_BLOCK", 7)
    assert analyse(res, "val_error", n_boot=301)["bootstrap"] == whole
    assert whole["budgets"] == [1, 2, 4, 8, 12, 16, 24]


def test_bootstrap_sentence_wording(tmp_path):
    # all trials equal: the IQR is 0 at every budget -> sampled enough
    f = analyse(study(tmp_path, records_of(lambda hp: 1.0, n=8)), "val_error")
    assert f["bootstrap"]["iqr_full"] == 0.0
    assert any("sampled enough" in s for s in f["findings"])
    # two outstanding trials among 16 (-19 and -15): 12 % of full-budget resamples miss both,
    # so the IQR spans them only (4); at half the budget 34 % miss both, and the IQR reaches
    # the ordinary trials (~19) -> more trials would narrow it
    recs = _levels(lambda i, s, rec: None, best=(5, 9), n=16)
    f = analyse(study(tmp_path, recs), "val_error", n_boot=4000)
    b = f["bootstrap"]
    assert b["iqr_full"] == 4.0 and b["iqr_half"] > 15
    assert b["iqr_full"] < 0.5 * b["iqr_half"]
    assert any("more trials would still narrow it" in s for s in f["findings"])


def test_determinism_and_seed(tmp_path):
    res = study(tmp_path, records_of(lambda hp: -math.log(hp["lr"]), n=20, noise=0.5))
    dump = lambda f: json.dumps(f, sort_keys=True, allow_nan=False)  # noqa: E731
    a = dump(analyse(res, "val_error", space=SPACE, seed=3))
    assert a == dump(analyse(res, "val_error", space=SPACE, seed=3))
    other = analyse(res, "val_error", space=SPACE, seed=4)
    assert json.loads(a)["bootstrap"]["quantiles"] != other["bootstrap"]["quantiles"]
    assert json.loads(a)["trials"] == other["trials"]


# -- formats -----------------------------------------------------------------------------------

def _mixed_records():
    def extra(i, s, rec):
        if i == 2 and s == 300:
            rec["metrics"]["val_error"] = math.nan
        if i == 3 and s == 500:
            rec["diverged"] = True
        if s == 100:
            rec["metrics"]["train_loss"] = None
        if i == 4 and s == 200:
            rec["metrics"]["val_error"] = math.inf
    recs = records_of(lambda hp: math.log(hp["wd"]) - math.log(hp["lr"]), n=24, noise=0.3,
                      extra=extra)
    params = {r["trial"]: r["params"] for r in recs if "params" in r}
    for r in recs:  # params on every record, as the CSV has them
        r["params"] = params[r["trial"]]
    return recs


def test_csv_and_jsonl_give_identical_findings(tmp_path):
    recs = _mixed_records()
    j = load_results(write_jsonl(tmp_path / "results.jsonl", recs), space=SPACE)
    c = load_results(write_csv(tmp_path / "results.csv", recs), space=SPACE)
    assert j.params == c.params and j.names == c.names
    assert np.array_equal(j.step, c.step) and np.array_equal(j.diverged, c.diverged)
    for kw in ({"space": SPACE}, {}, {"diverge_above": 3.0}):
        fj, fc = analyse(j, "val_error", **kw), analyse(c, "val_error", **kw)
        assert fj.pop("source").endswith("results.jsonl")
        assert fc.pop("source").endswith("results.csv")
        assert json.dumps(fj, sort_keys=True) == json.dumps(fc, sort_keys=True)
    assert analyse(c, "val_error")["infeasible"] == [2, 3, 4]
    # params= instead of a space names the hyperparameter columns
    c2 = load_results(tmp_path / "results.csv", params=list(SPACE))
    assert c2.params == c.params and c2.metric_names == ("val_error", "train_loss")


def test_format_is_sniffed_without_a_known_suffix(tmp_path):
    recs = records_of(lambda hp: 1.0, n=3)
    a = load_results(write_jsonl(tmp_path / "log.txt", recs))
    full = [dict(r, params=a.params[r["trial"]]) for r in recs]
    b = load_results(write_csv(tmp_path / "table.dat", full), space=SPACE)
    assert len(a) == len(b) == 33 and a.params == b.params


def test_results_object(tmp_path):
    recs = records_of(lambda hp: 1.0, n=3)
    recs.append({"trial": 9, "step": 5, "params": recs[0]["params"],
                 "metrics": {"val_error": 2.0, "acc": "-inf"}})
    res = study(tmp_path, recs)
    assert isinstance(res, Results) and len(res) == 34
    assert res.trials.tolist() == [0, 1, 2, 9]
    assert res.trial.dtype == np.int64 and res.step.dtype == np.int64
    assert res.metric_names == ("val_error", "train_loss", "acc")
    assert np.isnan(res.metrics["acc"][:33]).all() and res.metrics["acc"][33] == -np.inf
    assert not res.was_measured("acc")[:33].any() and res.was_measured("acc")[33]
    assert res.names == ("lr", "wd", "width") and list(res.params) == [0, 1, 2, 9]
    assert res.trial[-1] == 9 and res.step[-1] == 5  # file order kept
    with pytest.raises(Exception):
        res.source = "x"


def test_json_nan_tokens_and_blank_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('\n{"trial": 0, "step": 0, "params": {"a": 1.5}, "metrics": '
                    '{"m": NaN, "n": Infinity}}\n\n{"trial": 0, "step": 1, "metrics": '
                    '{"m": 1, "n": -Infinity}}\n')
    res = load_results(path)
    assert len(res) == 2 and np.isnan(res.metrics["m"][0]) and res.metrics["n"][0] == np.inf
    f = analyse(res, "m")
    assert f["infeasible"] == [0]


def test_progress_is_called_every_10000_records(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "w") as out:
        out.write('{"trial": 0, "step": 0, "params": {"a": 0}, "metrics": {"m": 0.5}}\n')
        out.writelines(f'{{"trial": {i % 50}, "step": {i}, "params": {{"a": {i % 50}}}, '
                       f'"metrics": {{"m": {i % 7}}}}}\n' for i in range(1, 25_000))
    calls = []
    res = load_results(path, progress=calls.append)
    assert calls == [10_000, 20_000, 25_000]
    assert len(res) == 25_000 and len(res.params) == 50
    f = analyse(res, "m", n_boot=100)
    assert f["n_records"] == 25_000 and f["best"]["value"] == 0.0


# -- malformed input ---------------------------------------------------------------------------

P = '"params": {"lr": 0.01, "wd": 0.001, "width": 64}'
BAD = [
    ("results.csv", "trial,lr,wd,width,val\n0,0.01,0.001,64,1\n", None, "missing column 'step'"),
    ("results.jsonl", f'{{"trial": 0, "step": 0, {P}, "metrics": {{}}}}\n'
     '{"trial": 1, "step": 0, "params": {"lr": 0.01, "wd": 0.001, "width": 64, "momentum": 0.9},'
     ' "metrics": {}}\n', 2, "unknown hyperparameter 'momentum' (not in the space)"),
    ("results.jsonl", '{"trial": 1, "step": 0, "params": {"lr": 0.01, "wd": 0.001}, '
     '"metrics": {}}\n', 1, "no value for hyperparameter 'width'"),
    ("results.csv", "trial,step,lr,wd,width,val\n0,0,0.01,0.001,64,1\n\n0,1,abc,0.001,64,1\n",
     4, "column 'lr' is not a number: 'abc'"),
    ("results.csv", "trial,step,lr,wd,width,val\n0,0,0.01,0.001,64,xyz\n", 2,
     "column 'val' is not a number: 'xyz'"),
    ("results.jsonl", "\n  \n", None, "empty file (no records)"),
    ("results.csv", "trial,step,lr,wd,width,val\n", None, "empty file (no records)"),
    ("results.jsonl", f'{{"trial": 0, "step": 0, {P}, "metrics": {{}}}}\n\n'
     '{"trial": 2, "step": 0, "metrics": {}}\n', 3,
     "trial 2 has no params (its first record must carry them)"),
    ("results.jsonl", f'{{"trial": 0, "step": 0, {P}, "metrics": {{}}}}\n{{"trial": 1,\n', 2,
     "not JSON"),
    ("results.jsonl", f'{{"trial": 0, "step": 0, {P}, "metrics": {{}}}}\n'
     '{"trial": 0, "step": 1, "params": {"lr": 0.02, "wd": 0.001, "width": 64}, '
     '"metrics": {}}\n', 2, "trial 0 has params"),
    ("results.jsonl", f'{{"trial": 0, "step": 1.5, {P}, "metrics": {{}}}}\n', 1,
     "step is not an integer: 1.5"),
    ("results.jsonl", f'{{"trial": "a", "step": 1, {P}, "metrics": {{}}}}\n', 1,
     "trial is not an integer"),
    ("results.jsonl", f'{{"trial": 0, "step": -3, {P}, "metrics": {{}}}}\n', 1,
     "step is negative"),
    ("results.jsonl", f'{{"trial": 0, "step": 0, {P}, "metrics": {{"v": "abc"}}}}\n', 1,
     "metric 'v' is not a number"),
    ("results.jsonl", '{"trial": 0, "step": 0, "params": {"lr": "big", "wd": 0.001, '
     '"width": 64}, "metrics": {}}\n', 1, "hyperparameter 'lr' is not a number"),
    ("results.jsonl", '{"trial": 0, "step": 0, "params": {"lr": 0.5, "wd": 0.001, '
     '"width": 64}, "metrics": {}}\n', 1, "outside the space's range"),
    ("results.jsonl", f'{{"trial": 0, "step": 0, {P}}}\n', 1, "no 'metrics'"),
    ("results.jsonl", "[1, 2]\n", 1, "must be a JSON object"),
    ("results.jsonl", f'{{"trial": 0, "step": 0, {P}, "metrics": {{}}, "diverged": "yes"}}\n',
     1, "diverged must be true or false"),
    ("results.csv", "trial,step,lr,wd,width,val\n0,0,0.01,0.001,64,1,7\n", 2,
     "7 fields where the header has 6"),
    ("results.csv", "trial,step,lr,wd,width,val,diverged\n0,0,0.01,0.001,64,1,maybe\n", 2,
     "column 'diverged'"),
    ("results.csv", "trial,step,lr,wd,width,val\n0,x,0.01,0.001,64,1\n", 2,
     "step is not an integer: 'x'"),
]


@pytest.mark.parametrize("name, text, line, message", BAD,
                         ids=[f"{i}-{b[3][:24]}" for i, b in enumerate(BAD)])
def test_malformed_input(tmp_path, name, text, line, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(StudyError) as e:
        load_results(path, space=SPACE)
    msg = str(e.value)
    assert "\n" not in msg and message in msg
    where = f"{name} line {line}:" if line is not None else f"{name}:"
    assert where in msg


def test_malformed_input_without_a_space(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"trial": 0, "step": 0, "params": {"a": 1}, "metrics": {}}\n'
                    '{"trial": 1, "step": 0, "params": {"b": 1}, "metrics": {}}\n')
    with pytest.raises(StudyError, match=r"results\.jsonl line 2: unknown hyperparameter 'b'"):
        load_results(path)
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("trial,step,a,m\n0,0,1,2\n")
    with pytest.raises(StudyError, match="pass params="):
        load_results(csv_path)
    with pytest.raises(StudyError, match="cannot read"):
        load_results(tmp_path / "missing.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b'{"trial": 0, "step": 0, "metrics": {"m": "\xff"}}\n')
    with pytest.raises(StudyError, match="not UTF-8"):
        load_results(tmp_path / "bin.jsonl")


def test_feasible_points_in_csv_and_jsonl(tmp_path):
    space = {"lr": SPACE["lr"], "act": {"feasible_points": ["relu", "gelu"]},
             "drop": {"feasible_points": [0.0, 0.1]}}
    p = tmp_path / "r.csv"
    p.write_text("trial,step,lr,act,drop,val\n0,0,0.01,gelu,0.1,1\n1,0,0.02,relu,0.0,2\n")
    res = load_results(p, space=space)
    assert res.params == {0: {"lr": 0.01, "act": "gelu", "drop": 0.1},
                          1: {"lr": 0.02, "act": "relu", "drop": 0.0}}
    p.write_text("trial,step,lr,act,drop,val\n0,0,0.01,tanh,0.1,1\n")
    with pytest.raises(StudyError, match=r"r\.csv line 2: hyperparameter 'act' is 'tanh', "
                                         "not one of its feasible points"):
        load_results(p, space=space)


def test_analyse_argument_errors(tmp_path):
    res = study(tmp_path, records_of(lambda hp: 1.0, n=3))
    with pytest.raises(StudyError, match="'val_loss'.*'val_error', 'train_loss'"):
        analyse(res, "val_loss")
    with pytest.raises(ValueError, match="goal"):
        analyse(res, "val_error", goal="median")
    with pytest.raises(ValueError, match="n_boot"):
        analyse(res, "val_error", n_boot=0)
    with pytest.raises(TypeError, match="results"):
        analyse({"trial": []}, "val_error")
    with pytest.raises(StudyError, match="unknown hyperparameter 'width'"):
        analyse(res, "val_error", space={"lr": SPACE["lr"], "wd": SPACE["wd"]})


# -- space_for ---------------------------------------------------------------------------------

def test_space_for_observed_ranges_and_scaling(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [{"lr": 1e-4, "mom": 0.5, "width": 16, "act": "relu", "beta": 0.9, "ratio": 1.0,
             "shift": -2.0},
            {"lr": 3e-3, "mom": 0.9, "width": 256, "act": "gelu", "beta": 0.9, "ratio": 100.0,
             "shift": 5.0},
            {"lr": 1e-1, "mom": 0.7, "width": 64, "act": "relu", "beta": 0.9, "ratio": 50,
             "shift": 300.0}]
    path.write_text("".join(json.dumps({"trial": i, "step": 0, "params": p,
                                        "metrics": {"m": i}}) + "\n"
                            for i, p in enumerate(rows)))
    space, origin = space_for(load_results(path))
    assert origin == "observed"
    assert space["lr"] == {"min": 1e-4, "max": 1e-1, "scaling": "log", "type": "float"}
    assert space["mom"] == {"min": 0.5, "max": 0.9, "scaling": "linear", "type": "float"}
    assert space["width"] == {"min": 16, "max": 256, "scaling": "linear", "type": "int"}
    assert space["act"] == {"feasible_points": ["gelu", "relu"]}
    assert space["beta"] == {"feasible_points": [0.9]}
    assert space["ratio"]["scaling"] == "log" and space["ratio"]["type"] == "float"  # 100x
    assert space["shift"]["scaling"] == "linear"  # a negative value: never log
    assert list(space) == list(rows[0])
    f = analyse(load_results(path), "m")
    assert f["space_from"] == "observed" and f["space"] == space
    assert any("No search space was given" in s for s in f["findings"])
    assert set(f["boundary"]) == {"lr", "mom", "width", "ratio", "shift"}


def test_space_for_from_a_file(tmp_path):
    res = study(tmp_path, records_of(lambda hp: 1.0, n=3))
    space_path = tmp_path / "space.json"
    space_path.write_text(json.dumps(SPACE))
    space, origin = space_for(res, space_path)
    assert origin == "file"
    assert space == {k: {"scaling": "linear", "type": "float", **v} for k, v in SPACE.items()}
    assert space_for(res, SPACE) == (space, "file")
    # a list of fixed points has no ranges: the observed space
    points = tmp_path / "points.json"
    points.write_text(json.dumps([{"lr": 0.01}, {"lr": 0.02}]))
    assert space_for(res, points)[1] == "observed"
    narrow = dict(SPACE, lr={"min": 1e-3, "max": 1e-2, "scaling": "log"})
    with pytest.raises(StudyError, match="outside the space's range"):
        space_for(res, narrow)
    f = analyse(res, "val_error", space=space_path)
    assert f["space_from"] == "file"
    assert not any("No search space" in s for s in f["findings"])


# -- other sections ----------------------------------------------------------------------------

def test_isolation_bins_hold_their_best_trial(tmp_path):
    res = study(tmp_path, records_of(lambda hp: (math.log10(hp["lr"]) + 2) ** 2, n=40,
                                     noise=0.1))
    f = analyse(res, "val_error", space=SPACE)
    iso = f["isolation"]["lr"]
    assert iso["edges"] == pytest.approx(np.logspace(-4, -1, 11).tolist(), rel=1e-12)
    assert iso["edges"][0] == 1e-4 and iso["edges"][-1] == 1e-1
    for b in range(10):
        inside = [t for t in f["trials"] if t["feasible"]
                  and iso["edges"][b] <= t["params"]["lr"] < iso["edges"][b + 1] + (b == 9)]
        if not inside:
            assert iso["trial"][b] is None and iso["best"][b] is None
            continue
        top = min(inside, key=lambda t: t["best_value"])
        assert iso["trial"][b] == top["trial"] and iso["best"][b] == top["best_value"]
    w = f["isolation"]["width"]
    assert w["edges"][0] == 16 and w["edges"][-1] == 256 and w["edges"][1] == 40


def test_curves_grad_norm_and_findings_order(tmp_path):
    def extra(i, s, rec):
        rec["metrics"]["grad_norm"] = float(s) / 100 + i
    res = study(tmp_path, records_of(lambda hp: -math.log(hp["lr"]), n=20, extra=extra))
    f = analyse(res, "val_error", space=SPACE, curves=3)
    ranked = sorted((t for t in f["trials"] if t["feasible"]),
                    key=lambda t: (t["best_value"], t["trial"]))
    assert f["curves"]["trials"] == [t["trial"] for t in ranked[:3]]
    g = f["grad_norm"]
    best = f["best"]["trial"]
    expect = np.arange(0, 11, dtype=float) + best
    assert g == {"trial": best, "count": 11, "p90": float(np.percentile(expect, 90)),
                 "median": float(np.median(expect))}
    text = f["findings"]
    assert text[0].startswith("The best val_error (minimised) is")
    assert f"trial {best}" in text[0] and "lr=" in text[0] and "width=" in text[0]
    assert "gradient norm" in text[-1]
    assert analyse(study(tmp_path, records_of(lambda hp: 1.0, n=3)),
                   "val_error")["grad_norm"] is None


def test_params_are_rendered_with_4_significant_digits(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"trial": 0, "step": 0, "params": {"lr": 0.000123456, "n": 7, '
                    '"act": "relu"}, "metrics": {"m": 1.23456789}}\n')
    f = analyse(load_results(path), "m")
    assert "is 1.235" in f["findings"][0]
    assert "(lr=0.0001235, n=7, act=relu)" in f["findings"][0]
    assert "single trial" in " ".join(f["findings"])


# -- QuasiRandomSearch.record ------------------------------------------------------------------

def _append(path, worker, count):
    search = QuasiRandomSearch(SPACE, seed=5)
    wide = {f"m{j:03d}": float(j) * worker for j in range(300)}  # ~9 KB lines: > PIPE_BUF
    for k in range(count):
        search.record(path, worker * 1000 + k, k, dict(wide, val_error=1.0 / (k + 1)),
                      diverged=(k == 7))


def test_record_from_many_processes(tmp_path):
    path = str(tmp_path / "shared.jsonl")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append, args=(path, w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with open(path) as f:
        lines = f.read().split("\n")
    assert lines[-1] == "" and len(lines) == 201
    recs = [json.loads(line) for line in lines[:-1]]
    assert sorted((r["trial"], r["step"]) for r in recs) == sorted(
        (w * 1000 + k, k) for w in range(4) for k in range(50))
    search = QuasiRandomSearch(SPACE, seed=5)
    assert all(r["params"] == search.trial(r["trial"]) for r in recs[::17])
    assert sum(r.get("diverged", False) for r in recs) == 4
    res = load_results(path, space=SPACE)
    assert len(res) == 200 and len(res.trials) == 200
    f = analyse(res, "val_error", space=SPACE, n_boot=50)
    assert f["n_feasible"] == 196 and len(f["infeasible"]) == 4


def test_record_writes_strict_json_with_nonfinite_metrics(tmp_path):
    search = QuasiRandomSearch(SPACE)
    path = tmp_path / "r.jsonl"
    search.record(path, 3, 10, {"a": math.nan, "b": math.inf, "c": -math.inf,
                                "d": np.float32(0.5), "e": 2})
    search.record(str(path), 3, 20, {"a": 1.0}, diverged=True)
    first, second = path.read_text().splitlines()

    def strict(name):
        raise AssertionError(f"{name} in the file")
    rec = json.loads(first, parse_constant=strict)
    assert rec == {"trial": 3, "step": 10, "params": search.trial(3),
                   "metrics": {"a": "nan", "b": "inf", "c": "-inf", "d": 0.5, "e": 2.0}}
    assert json.loads(second)["diverged"] is True and "diverged" not in rec
    assert oct(os.stat(path).st_mode & 0o777) in ("0o644", oct(0o644 & ~_umask()))
    res = load_results(path, space=SPACE)
    assert np.isnan(res.metrics["a"][0]) and res.metrics["c"][0] == -np.inf
    assert res.diverged.tolist() == [False, True]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("args, kwargs, error, name", [
    ((-1, 0, {"a": 1.0}), {}, ValueError, "trial"),
    ((1.5, 0, {"a": 1.0}), {}, TypeError, "trial"),
    ((True, 0, {"a": 1.0}), {}, TypeError, "trial"),
    ((0, -5, {"a": 1.0}), {}, ValueError, "step"),
    ((0, "3", {"a": 1.0}), {}, TypeError, "step"),
    ((0, 0, [("a", 1.0)]), {}, TypeError, "metrics"),
    ((0, 0, {"a": "1.0"}), {}, TypeError, "metrics['a']"),
    ((0, 0, {"a": True}), {}, TypeError, "metrics['a']"),
    ((0, 0, {"a": 10**400}), {}, ValueError, "metrics['a']"),
    ((0, 0, {1: 1.0}), {}, TypeError, "metrics keys"),
    ((0, 0, {"a": 1.0}), {"diverged": "yes"}, TypeError, "diverged"),
])
def test_record_rejects_bad_arguments_before_writing(tmp_path, args, kwargs, error, name):
    search = QuasiRandomSearch(SPACE)
    fresh = tmp_path / "new.jsonl"
    with pytest.raises(error, match=name.replace("[", r"\[").replace("]", r"\]")):
        search.record(fresh, *args, **kwargs)
    assert not fresh.exists()
    existing = tmp_path / "old.jsonl"
    search.record(existing, 0, 0, {"a": 1.0})
    before = existing.read_bytes()
    with pytest.raises(error):
        search.record(existing, *args, **kwargs)
    assert existing.read_bytes() == before


def test_record_rejects_a_bad_path_and_a_missing_trial(tmp_path):
    search = QuasiRandomSearch(SPACE)
    with pytest.raises(TypeError, match="path"):
        search.record(3, 0, 0, {"a": 1.0})
    points = QuasiRandomSearch([{"lr": 0.1}, {"lr": 0.2}])
    target = tmp_path / "p.jsonl"
    with pytest.raises(IndexError):
        points.record(target, 2, 0, {"a": 1.0})
    assert not target.exists()
    points.record(target, 1, 0, {"a": 1.0})
    assert load_results(target).params == {1: {"lr": 0.2}}
