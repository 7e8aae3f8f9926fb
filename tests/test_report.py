"""`fastopt report`: one self-contained HTML page (findings first, plots embedded as PNG data
URLs, nothing fetched from the network) and findings.json equal to the analysis; errors as one
line on stderr with status 2 and nothing written; the page checked in headless Chromium."""
import base64
import json
import math
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("jinja2")
pytest.importorskip("tqdm")

import markupsafe  # noqa: E402  (a dependency of jinja2)
import matplotlib.axes  # noqa: E402

import fastopt  # noqa: E402
from fastopt import __main__ as cli  # noqa: E402
from fastopt import report  # noqa: E402
from fastopt.study import analyse, load_results  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPACE = {"lr": {"min": 1e-4, "max": 1.0, "scaling": "log"},
         "wd": {"min": 0.0, "max": 0.1, "scaling": "linear"},
         "batch": {"feasible_points": [16, 32, 64]}}
STEPS = range(0, 1001, 100)
#: Trials with a learning rate above this diverge: their val_loss is NaN from step 300 on.
DIVERGE_LR = 0.2


def _loss(p, step):
    base = (math.log10(p["lr"]) + 2.5) ** 2 + 3 * p["wd"] + (0.1 if p["batch"] == 64 else 0.0)
    return 0.2 + base + 2.0 * math.exp(-step / 300)


def make_study(tmp_path, n=24, *, grad_norm=True, all_diverge=False, fmt="jsonl"):
    """A synthetic study of ``n`` quasi-random trials; returns (results path, space path,
    sorted ids of the trials that diverge)."""
    trials = fastopt.QuasiRandomSearch(SPACE, seed=0).trials(n)
    space_path = tmp_path / "space.json"
    space_path.write_text(json.dumps(SPACE))
    records, bad = [], []
    for i, p in enumerate(trials):
        diverges = all_diverge or p["lr"] > DIVERGE_LR
        if diverges:
            bad.append(i)
        for step in STEPS:
            loss = math.nan if diverges and step >= 300 else _loss(p, step)
            metrics = {"val_loss": loss, "val_acc": 1.0 - loss / 10}
            if grad_norm:  # deterministic, with a few spikes
                metrics["grad_norm"] = 1.0 + 0.5 * math.sin(i + step / 70) ** 2 + (
                    4.0 if step % 400 == 0 else 0.0)
            records.append((i, step, p, metrics))
    path = tmp_path / f"results.{fmt}"
    with open(path, "w") as f:
        if fmt == "jsonl":
            for i, step, p, metrics in records:
                rec = {"trial": i, "step": step,
                       "metrics": {k: ("nan" if math.isnan(v) else v)
                                   for k, v in metrics.items()}}
                if step == 0:
                    rec["params"] = p
                f.write(json.dumps(rec) + "\n")
        else:
            names = list(records[0][3])
            f.write(",".join(["trial", "step", *SPACE, *names]) + "\n")
            for i, step, p, metrics in records:
                f.write(",".join(map(str, [i, step, *(p[k] for k in SPACE),
                                           *(metrics[k] for k in names)])) + "\n")
    return path, space_path, bad


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The default study analysed and written once: (results, findings, index path, html)."""
    tmp = tmp_path_factory.mktemp("study")
    path, space_path, bad = make_study(tmp)
    results = load_results(path, space=space_path)
    findings = analyse(results, "val_loss", space=space_path)
    index = report.write_report(results, findings, tmp / "out")
    return {"results": results, "findings": findings, "index": index,
            "html": index.read_text(encoding="utf-8"), "bad": bad, "path": path,
            "space": space_path}


def _imgs(html):
    return re.findall(r"<img\b[^>]*>", html)


def _srcs(html):
    return re.findall(r'\bsrc="([^"]*)"', html)


# -- write_report --------------------------------------------------------------------------------

def test_write_report_writes_index_and_findings_equal_to_the_analysis(study):
    index = study["index"]
    assert index.name == "index.html" and index.is_file()
    written = json.loads((index.parent / "findings.json").read_text())
    again = analyse(study["results"], "val_loss", space=study["space"])
    assert written == json.loads(json.dumps(again)) == json.loads(json.dumps(study["findings"]))
    assert written["n_trials"] == 24 and written["objective"] == "val_loss"


def test_page_leads_with_every_findings_sentence(study):
    html, findings = study["html"], study["findings"]
    assert findings["findings"]
    for sentence in findings["findings"]:
        assert str(markupsafe.escape(sentence)) in html, sentence
    # findings come before the best trial's table and before any plot
    first = html.index(str(markupsafe.escape(findings["findings"][0])))
    assert first < html.index('id="best"') < html.index("<img")
    # the best-step warning (training still improving at the end) is marked as a warning
    warnings = findings["best"]["warnings"]
    assert warnings, "the synthetic study's best step is its last: a warning is expected"
    for w in warnings:
        assert f'<li class="warning">{markupsafe.escape(w)}</li>' in html
    assert html.count('class="warning"') == len(warnings) + sum(
        1 for b in findings["boundary"].values() if b["warning"])


def test_page_has_the_best_trial_table(study):
    html, best = study["html"], study["findings"]["best"]
    table = html[html.index('<table class="best">'):]
    table = table[:table.index("</table>")]
    assert f"<td class=\"num\">{best['trial']}</td>" in table
    assert f"{best['step']} / {best['max_step']}" in table
    for name, value in best["params"].items():
        assert f"<th>{name}</th><td class=\"num\">{report._num(value)}</td>" in table


def test_every_plot_is_an_embedded_png(study):
    html, findings = study["html"], study["findings"]
    # axis plots (3), bootstrap (1), isolation per range parameter (2), curves (1), grad norm (2)
    assert len(findings["isolation"]) == 2
    assert len(_imgs(html)) == 3 + 1 + 2 + 1 + 2
    srcs = _srcs(html)
    assert len(srcs) == len(_imgs(html))
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == PNG_MAGIC and len(png) > 5_000
    # every plot has a caption saying what to look for
    assert html.count("<figcaption>") == len(srcs)


def test_page_refers_to_nothing_outside_itself(study):
    html = study["html"]
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html and "@import" not in html and "url(" not in html
    for ref in re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', html):
        assert ref.startswith(("data:", "#")), ref
    assert 'src="' not in html.split("<script>", 1)[1]  # the one script is inline


def test_infeasible_trials_are_found_and_listed(study):
    findings, html, bad = study["findings"], study["html"], study["bad"]
    assert bad, "the synthetic study should have diverging trials"
    assert findings["infeasible"] == bad
    table = html[html.index('<table class="infeasible">'):]
    table = table[:table.index("</table>")]
    for t in bad:
        assert f'<td class="num">{t}</td>' in table
        assert "val_loss is nan at step 300" in table


def test_axis_plots_draw_infeasible_trials_at_the_top(study, monkeypatch):
    calls = []
    real = matplotlib.axes.Axes.scatter

    def spy(self, x, y, *args, **kwargs):
        calls.append((self, list(np.atleast_1d(x)), list(np.atleast_1d(y)), kwargs))
        return real(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", spy)
    findings = study["findings"]
    png = report._axis_plot(findings, "lr", findings["space"]["lr"])
    assert png[:8] == PNG_MAGIC
    crosses = [c for c in calls if c[3].get("marker") == "x"]
    assert len(crosses) == 1
    ax, xs, ys, kwargs = crosses[0]
    want = sorted(findings["trials"][t]["params"]["lr"] for t in study["bad"])
    assert sorted(xs) == pytest.approx(want)
    assert ys == [0.97] * len(want)
    # data x, axes y: the blended transform maps (x, 0.97) to the top of the axes
    assert kwargs["transform"] is not ax.transData
    top = kwargs["transform"].transform([[want[0], 0.97]])[0][1]
    assert top == pytest.approx(ax.transAxes.transform([[0, 0.97]])[0][1])
    assert ax.get_xscale() == "log"
    stars = [c for c in calls if c[3].get("marker") == "*"]
    assert stars and stars[0][1] == [findings["best"]["params"]["lr"]]
    assert stars[0][2] == [findings["best"]["value"]]


def test_axis_plot_of_fixed_points_is_categorical(study, monkeypatch):
    ticks = {}
    real = matplotlib.axes.Axes.set_xticks

    def spy(self, positions, labels=None, **kwargs):
        ticks["positions"], ticks["labels"] = list(positions), labels
        return real(self, positions, labels, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_xticks", spy)
    findings = study["findings"]
    assert report._axis_plot(findings, "batch", findings["space"]["batch"])[:8] == PNG_MAGIC
    assert ticks == {"positions": [0, 1, 2], "labels": ["16", "32", "64"]}


def test_bootstrap_boxes_are_the_quantiles(study, monkeypatch):
    got = {}
    real = matplotlib.axes.Axes.bxp

    def spy(self, bxpstats, *args, **kwargs):
        got["stats"], got["positions"] = bxpstats, kwargs.get("positions")
        return real(self, bxpstats, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bxp", spy)
    findings = study["findings"]
    report._bootstrap_plot(findings)
    boot = findings["bootstrap"]
    q = boot["quantiles"]
    assert [s["label"] for s in got["stats"]] == [str(n) for n in boot["budgets"]]
    finite = [i for i in range(len(boot["budgets"])) if q["50"][i] is not None]
    assert finite
    for i in finite:
        s = got["stats"][i]
        assert (s["q1"], s["med"], s["q3"]) == (q["25"][i], q["50"][i], q["75"][i])
        if q["95"][i] is not None:
            assert s["whishi"] == q["95"][i]


def test_log_y_only_for_positive_values_spanning_more_than_20x():
    assert report._log_y([1.0, 30.0])
    assert report._log_y([None, 0.01, 0.5, float("nan")])
    assert not report._log_y([1.0, 10.0])
    assert not report._log_y([-1.0, 100.0])
    assert not report._log_y([0.0, 100.0])
    assert not report._log_y([5.0])


def test_progress_bar_over_the_plots_only_when_asked(study, tmp_path, capsys):
    report.write_report(study["results"], study["findings"], tmp_path / "quiet")
    assert capsys.readouterr().err == ""
    report.write_report(study["results"], study["findings"], tmp_path / "loud", progress=True)
    err = capsys.readouterr().err
    assert "plots" in err and "9/9" in err
    assert (tmp_path / "quiet" / "index.html").read_bytes() == \
        (tmp_path / "loud" / "index.html").read_bytes()


def test_maximised_objective_observed_space_and_no_grad_norm(tmp_path):
    path, _, bad = make_study(tmp_path, n=16, grad_norm=False, fmt="csv")
    results = load_results(path, params=list(SPACE))
    findings = analyse(results, "val_acc", goal="max")
    assert findings["space_from"] == "observed" and findings["grad_norm"] is None
    html = report.write_report(results, findings, tmp_path / "out").read_text()
    # observed, batch's 16, 32, 64 are an integer range like the others
    assert findings["space"]["batch"]["type"] == "int" and len(findings["isolation"]) == 3
    # axis plots (3), bootstrap, isolation of the three observed ranges, curves; no gradient norm
    assert len(_imgs(html)) == 3 + 1 + 3 + 1
    assert 'id="grad_norm"' not in html
    assert "(maximised)" in html and "search space taken from the values observed" in html
    assert findings["infeasible"] == bad


def test_a_study_without_a_feasible_trial_still_gives_a_page(tmp_path):
    path, space_path, bad = make_study(tmp_path, n=6, all_diverge=True)
    results = load_results(path, space=space_path)
    findings = analyse(results, "val_loss", space=space_path)
    assert findings["best"] is None and findings["infeasible"] == bad == list(range(6))
    html = report.write_report(results, findings, tmp_path / "out").read_text()
    assert "No feasible trial" in html
    for sentence in findings["findings"]:
        assert str(markupsafe.escape(sentence)) in html
    srcs = _srcs(html)
    assert srcs and all(base64.b64decode(s.split(",", 1)[1])[:8] == PNG_MAGIC for s in srcs)


def test_html_in_the_data_is_escaped(study, tmp_path):
    findings = json.loads(json.dumps(study["findings"]))
    findings["findings"].append('A <script>alert("x")</script> & <b>bold</b> sentence.')
    html = report.write_report(study["results"], findings, tmp_path / "out").read_text()
    assert "<script>alert" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold" in html


# -- the command line ----------------------------------------------------------------------------

def _run(argv, capsys):
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_writes_the_report_and_prints_the_findings(tmp_path, capsys):
    path, space_path, bad = make_study(tmp_path)
    out_dir = tmp_path / "rep"
    rc, out, err = _run(["report", str(path), "--space", str(space_path), "--objective",
                         "val_loss", "--out", str(out_dir), "--seed", "3", "--bootstrap",
                         "500"], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[-1] == str(out_dir / "index.html")
    written = json.loads((out_dir / "findings.json").read_text())
    assert lines[:-1] == written["findings"]
    assert written["bootstrap"]["seed"] == 3 and written["bootstrap"]["n_boot"] == 500
    assert written["infeasible"] == bad
    expect = analyse(load_results(path, space=space_path), "val_loss", space=space_path,
                     n_boot=500, seed=3)
    assert written == json.loads(json.dumps(expect))
    assert len(_imgs((out_dir / "index.html").read_text())) == 9


def test_cli_options_reach_the_analysis(tmp_path, capsys):
    path, _, _ = make_study(tmp_path, n=12)
    out_dir = tmp_path / "rep"
    rc, out, err = _run(["report", str(path), "--objective", "val_acc", "--goal", "max",
                         "--params", "lr,wd,batch", "--diverge-above", "2.5",
                         "--diverge-metric", "grad_norm", "--top-k", "2", "--out",
                         str(out_dir)], capsys)
    assert rc == 0, err
    written = json.loads((out_dir / "findings.json").read_text())
    assert written["goal"] == "max" and written["objective"] == "val_acc"
    # grad_norm spikes to 5 at steps 0, 400 and 800 of every trial: all are infeasible
    assert written["n_feasible"] == 0 and len(written["infeasible"]) == 12
    assert "grad_norm is" in written["infeasible_reasons"]["0"]


def test_cli_is_deterministic(tmp_path, capsys):
    path, space_path, _ = make_study(tmp_path)
    outs = []
    for k in range(2):
        out_dir = tmp_path / f"rep{k}"
        rc, _, err = _run(["report", str(path), "--space", str(space_path), "--objective",
                           "val_loss", "--out", str(out_dir)], capsys)
        assert rc == 0, err
        outs.append(out_dir)
    a, b = (o / "findings.json" for o in outs)
    assert a.read_bytes() == b.read_bytes() and len(a.read_bytes()) > 1000
    assert (outs[0] / "index.html").read_bytes() == (outs[1] / "index.html").read_bytes()


def test_cli_shows_progress_for_large_files(tmp_path, capsys, monkeypatch):
    path, space_path, _ = make_study(tmp_path, n=8)
    monkeypatch.setattr(report, "PROGRESS_BYTES", 0)
    rc, _, err = _run(["report", str(path), "--space", str(space_path), "--objective",
                       "val_loss", "--out", str(tmp_path / "rep")], capsys)
    assert rc == 0
    assert "reading" in err and "88" in err  # 8 trials x 11 steps


def _bad_inputs(tmp_path):
    """name -> (file content, suffix, extra arguments): each must be refused."""
    good = {"trial": 0, "step": 0, "params": {"lr": 0.01, "wd": 0.05, "batch": 32},
            "metrics": {"val_loss": 1.0}}
    line = json.dumps(good) + "\n"
    return {
        "csv missing column": ("trial,lr,wd,batch,val_loss\n0,0.01,0.05,32,1.0\n", "csv",
                               ["--params", "lr,wd,batch"]),
        "empty file": ("", "jsonl", []),
        "unknown hyperparameter": (json.dumps({**good, "params": {**good["params"],
                                                                  "momentum": 0.9}}) + "\n",
                                   "jsonl", ["--space", "SPACE"]),
        "non-numeric metric": (line + json.dumps({**good, "step": 1,
                                                  "metrics": {"val_loss": "low"}}) + "\n",
                               "jsonl", []),
        "non-numeric csv cell": ("trial,step,lr,wd,batch,val_loss\n0,0,0.01,0.05,32,abc\n",
                                 "csv", ["--params", "lr,wd,batch"]),
        "trial without params": (json.dumps({k: v for k, v in good.items() if k != "params"})
                                 + "\n", "jsonl", []),
        "value outside the space": (json.dumps({**good, "params": {**good["params"],
                                                                   "lr": 5.0}}) + "\n",
                                    "jsonl", ["--space", "SPACE"]),
        "objective not logged": (line, "jsonl", ["--objective", "val_error"]),
        "not json": ("{trial: 0}\n", "jsonl", []),
        "missing file": (None, "jsonl", []),
    }


@pytest.mark.parametrize("case", list(_bad_inputs(pathlib.Path("."))))
def test_cli_malformed_input_is_one_line_status_2_nothing_written(case, tmp_path, capsys):
    content, suffix, extra = _bad_inputs(tmp_path)[case]
    path = tmp_path / f"results.{suffix}"
    if content is not None:
        path.write_text(content)
    space_path = tmp_path / "space.json"
    space_path.write_text(json.dumps(SPACE))
    extra = [str(space_path) if a == "SPACE" else a for a in extra]
    out_dir = tmp_path / "rep"
    argv = ["report", str(path), "--objective", "val_loss", "--out", str(out_dir)] + extra
    rc, out, err = _run(argv, capsys)
    assert rc == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert err.startswith("fastopt report: error: "), err
    assert len(err) > len("fastopt report: error: ") + 10
    assert not out_dir.exists()


def test_cli_bad_options_are_refused_before_any_work(tmp_path, capsys):
    path, _, _ = make_study(tmp_path, n=4)
    for extra in (["--top-k", "0"], ["--bootstrap", "0"], ["--seed", "-1"],
                  ["--diverge-above", "nan"], ["--diverge-metric", "grad_norm"],
                  ["--params", "lr,,wd"]):
        out_dir = tmp_path / "rep"
        rc, out, err = _run(["report", str(path), "--objective", "val_loss", "--out",
                             str(out_dir)] + extra, capsys)
        assert rc == 2 and out == "", extra
        assert err.startswith("fastopt report: error: ") and len(err.splitlines()) == 1, err
        assert not out_dir.exists()
    # argparse's own usage errors keep the same one-line form
    with pytest.raises(SystemExit) as e:
        cli.main(["report", str(path), "--objective", "val_loss", "--goal", "best"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fastopt report: error: ") and len(err.splitlines()) == 1


def test_cli_without_the_plotting_packages_says_what_to_install(tmp_path, capsys, monkeypatch):
    path, _, _ = make_study(tmp_path, n=4)
    monkeypatch.setitem(sys.modules, "jinja2", None)  # import jinja2 -> ImportError
    out_dir = tmp_path / "rep"
    rc, out, err = _run(["report", str(path), "--objective", "val_loss", "--out",
                         str(out_dir)], capsys)
    assert rc == 2 and out == ""
    assert err.startswith("fastopt report: error: ") and len(err.splitlines()) == 1
    assert "pip install 'fastopt[report]'" in err
    assert not out_dir.exists()


def test_report_is_listed_in_the_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    assert "fastopt report RESULTS" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["report", "--help"])
    out = capsys.readouterr().out
    for option in ("--objective", "--space", "--params", "--goal", "--diverge-above",
                   "--diverge-metric", "--top-k", "--seed", "--bootstrap", "--out"):
        assert option in out


# -- in a browser --------------------------------------------------------------------------------

def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("headless Chromium is not installed (chromium / chromium-browser)")
    return exe


def _browser(exe, *args):
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", *args],
                          capture_output=True, timeout=120)


def test_page_renders_in_headless_chromium(study, tmp_path):
    exe = _chromium()
    shot = tmp_path / "shot.png"
    run = _browser(exe, "--hide-scrollbars", "--window-size=1280,2400",
                   f"--screenshot={shot}", study["index"].resolve().as_uri())
    assert shot.is_file(), run.stderr.decode(errors="replace")[-2000:]
    assert shot.read_bytes()[:8] == PNG_MAGIC and shot.stat().st_size > 20_000
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1280)
    assert float(pixels[..., :3].std()) > 0.01


def test_every_image_loads_in_headless_chromium(study):
    exe = _chromium()
    run = _browser(exe, "--virtual-time-budget=5000", "--dump-dom",
                   study["index"].resolve().as_uri())
    dom = run.stdout.decode("utf-8", errors="replace")
    ok = re.search(r'data-images-ok="(\d+)"', dom)
    total = re.search(r'data-images="(\d+)"', dom)
    assert ok and total, (dom[:500], run.stderr.decode(errors="replace")[-2000:])
    assert int(ok.group(1)) == int(total.group(1)) == len(_imgs(study["html"])) > 0
