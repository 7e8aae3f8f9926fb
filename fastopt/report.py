"""One static HTML page that explains a quasi-random study's results (``fastopt report``).

:func:`fastopt.study.analyse` turns a results file into findings (a JSON-compatible dict);
:func:`write_report` writes them as ``findings.json`` next to ``index.html``, a single page that
opens from disk with nothing else: the plots are PNGs embedded as ``data:`` URLs, the style is
inline and nothing refers to the network. The page leads with the findings in plain sentences,
then the best trial, then one plot per question, each captioned with what to look for::

    from fastopt.study import load_results, analyse
    from fastopt.report import write_report

    results = load_results("results.jsonl")
    findings = analyse(results, "val_loss", goal="min")
    write_report(results, findings, "report")  # -> report/index.html

or from the shell: ``fastopt report results.jsonl --objective val_loss --out report``.

The plots need matplotlib and the page jinja2 (``pip install 'fastopt[report]'``); both are
imported only when a report is written, so the rest of fastopt does not need them.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import pathlib
import sys

import numpy as np

__all__ = ["write_report", "add_report_command", "run_report_command"]

#: Size, in inches, and resolution of every plot: 550 x 360 pixels, two side by side on the page.
FIGSIZE = (5.5, 3.6)
DPI = 100
#: Results files larger than this get a progress bar while they are read.
PROGRESS_BYTES = 5 * 2**20
#: Outer fraction of each range (in its own scaling) shaded on the axis plots.
BAND = 0.10

_INSTALL_HINT = "the report needs matplotlib and jinja2: pip install 'fastopt[report]'"

# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
 body { margin: 0; background: #f4f5f7; color: #1d2430;
        font: 16px/1.5 "Helvetica Neue", Helvetica, Arial, "DejaVu Sans", sans-serif; }
 main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 48px; background: #fff;
        min-height: 100vh; box-sizing: border-box; }
 h1 { font-size: 26px; margin: 0 0 6px; }
 h2 { font-size: 20px; margin: 32px 0 10px; border-bottom: 1px solid #dde1e6;
      padding-bottom: 4px; }
 .lede { color: #4a5463; margin: 0 0 8px; }
 code { font-size: 14px; background: #eef0f3; padding: 1px 4px; border-radius: 3px; }
 ul.findings { padding-left: 0; list-style: none; margin: 0; }
 ul.findings li { padding: 7px 12px; margin: 6px 0; border-left: 4px solid #3b7dd8;
                  background: #f2f6fc; }
 ul.findings li.warning { border-left-color: #d9822b; background: #fdf4e7; }
 ul.findings li.warning::before { content: "\\26A0\\FE0E  "; color: #b5651d; font-weight: bold; }
 table { border-collapse: collapse; font-size: 15px; margin: 4px 0; }
 th, td { text-align: left; padding: 4px 14px 4px 0; border-bottom: 1px solid #e4e7eb;
          vertical-align: top; }
 th { color: #4a5463; font-weight: 600; }
 td.num { font-variant-numeric: tabular-nums; }
 .plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr));
          gap: 18px 24px; }
 figure { margin: 0; }
 figure img { display: block; width: 100%; height: auto; max-width: 550px;
              border: 1px solid #e4e7eb; }
 figcaption { font-size: 14px; color: #3c4553; margin-top: 6px; max-width: 550px; }
 figcaption b { color: #1d2430; }
 .none { color: #6b7482; font-style: italic; }
 footer { margin-top: 36px; font-size: 13px; color: #6b7482; }
</style>
</head>
<body>
<main>
<h1>{{ title }}</h1>
<p class="lede">{{ description }}</p>

<h2 id="findings">Findings</h2>
{% if sentences %}
<ul class="findings">
{% for s in sentences %}  <li{% if s.warning %} class="warning"{% endif %}>{{ s.text }}</li>
{% endfor %}</ul>
{% else %}
<p class="none">The analysis produced no findings.</p>
{% endif %}

<h2 id="best">Best trial</h2>
{% if best_rows %}
<table class="best">
{% for name, value in best_rows %}  <tr><th>{{ name }}</th><td class="num">{{ value }}</td></tr>
{% endfor %}</table>
{% else %}
<p class="none">No feasible trial: there is no best trial to show.</p>
{% endif %}

{% if infeasible_rows %}
<h2 id="infeasible">Infeasible trials</h2>
<table class="infeasible">
  <tr><th>trial</th><th>why</th></tr>
{% for trial, why in infeasible_rows %}  <tr><td class="num">{{ trial }}</td><td>{{ why }}</td></tr>
{% endfor %}</table>
{% endif %}

{% for section in sections %}
<h2 id="{{ section.id }}">{{ section.title }}</h2>
{% if section.intro %}<p>{{ section.intro }}</p>{% endif %}
<div class="plots">
{% for plot in section.plots %}<figure>
  <img src="{{ plot.src }}" alt="{{ plot.alt }}"
       width="{{ plot.width }}" height="{{ plot.height }}">
  <figcaption><b>{{ plot.title }}.</b> {{ plot.caption }}</figcaption>
</figure>
{% endfor %}</div>
{% endfor %}

<footer>Written by <code>fastopt report</code>. Every number on this page is in
<code>findings.json</code>, next to this file.</footer>
</main>
<script>
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { loaded++; }
  }
  document.body.dataset.imagesOk = String(loaded);
  document.body.dataset.images = String(images.length);
});
</script>
</body>
</html>
"""


def write_report(results, findings, out_dir, *, progress=False) -> pathlib.Path:
    """Writes ``findings.json`` and ``index.html`` into ``out_dir`` (created if needed).

    Parameters
    ----------
    results : fastopt.study.Results
        The records the findings were computed from (the training curves are drawn from them).
    findings : dict
        What :func:`fastopt.study.analyse` returned for ``results``.
    out_dir : str or os.PathLike
        Folder of the report.
    progress : bool
        Show a progress bar on stderr while the plots are drawn.

    Returns
    -------
    pathlib.Path
        The path of ``index.html``.
    """
    import jinja2  # noqa: F401  (before any file is written: a missing package writes nothing)
    import matplotlib  # noqa: F401

    text = json.dumps(findings, indent=1, sort_keys=True, allow_nan=False)
    page = render_page(results, findings, progress=progress)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "findings.json").write_text(text + "\n", encoding="utf-8")
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def render_page(results, findings, *, progress=False) -> str:
    """The HTML of the report (what :func:`write_report` writes as ``index.html``)."""
    import jinja2
    from tqdm import tqdm

    jobs = plot_jobs(results, findings)
    drawn = {}
    bar = tqdm(jobs, desc="plots", unit="plot", file=sys.stderr, disable=not progress,
               leave=False)
    for job in bar:
        png = job["draw"]()
        if png is not None:
            drawn[job["key"]] = png
    bar.close()

    sections = []
    for section in _SECTIONS:
        plots = []
        for job in jobs:
            if job["section"] != section["id"] or job["key"] not in drawn:
                continue
            plots.append({"src": _data_url(drawn[job["key"]]), "alt": job["title"],
                          "title": job["title"], "caption": job["caption"],
                          "width": int(FIGSIZE[0] * DPI), "height": int(FIGSIZE[1] * DPI)})
        if plots:
            sections.append({**section, "plots": plots})

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=False, lstrip_blocks=False)
    return env.from_string(TEMPLATE).render(
        title=f"Study of {findings.get('objective', '?')}",
        description=_description(findings),
        sentences=_sentences(findings),
        best_rows=_best_rows(findings),
        infeasible_rows=_infeasible_rows(findings),
        sections=sections)


_SECTIONS = [
    {"id": "axes", "title": "Objective along each hyperparameter",
     "intro": "Each dot is one trial: its best objective over training against one of its "
              "hyperparameters. The star is the best trial; red crosses along the top are "
              "infeasible trials (diverged or never measured). Dashed lines mark the search "
              "space's bounds and the shaded bands its outer 10 %: when the best trials crowd "
              "a band or a bound, the range should be widened on that side."},
    {"id": "enough", "title": "Have we sampled enough?", "intro": None},
    {"id": "isolation", "title": "Each hyperparameter on its own", "intro": None},
    {"id": "curves", "title": "Training curves", "intro": None},
    {"id": "grad_norm", "title": "Gradient norm of the best trial", "intro": None},
]


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------

def _num(x) -> str:
    """A number as a short string: 4 significant digits, integers as they are."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if not math.isfinite(x):
            return str(x)
        if x == int(x) and abs(x) < 1e6:
            return str(int(x)) if abs(x) >= 1 or x == 0 else f"{x:.4g}"
        return f"{x:.4g}"
    return str(x)


def _goal_word(goal) -> str:
    return "maximised" if goal == "max" else "minimised"


def _description(f) -> str:
    source = os.path.basename(str(f.get("source") or "results"))
    n_trials, n_feasible = f.get("n_trials"), f.get("n_feasible")
    parts = [f"{source}: objective {f.get('objective')} ({_goal_word(f.get('goal'))})",
             f"{_num(n_trials)} trials ({_num(n_feasible)} feasible)",
             f"{_num(f.get('n_records'))} records"]
    if f.get("space_from") == "observed":
        parts.append("search space taken from the values observed")
    elif f.get("space_from") == "file":
        parts.append("search space from its file")
    return ", ".join(parts) + "."


def _warning_texts(f) -> set:
    """Sentences the analysis marked as warnings: the best trial's, the boundary checks'."""
    out = set()
    best = f.get("best") or {}
    out.update(w for w in best.get("warnings") or [] if isinstance(w, str))
    for b in (f.get("boundary") or {}).values():
        if isinstance(b, dict) and isinstance(b.get("warning"), str) and b["warning"]:
            out.add(b["warning"])
    return out


def _sentences(f) -> list:
    warnings = _warning_texts(f)
    out = []
    for s in f.get("findings") or []:
        s = str(s)
        low = s.lower()
        out.append({"text": s, "warning": s in warnings or low.startswith("warning")})
    return out


def _best_rows(f) -> list:
    best = f.get("best")
    if not best:
        return []
    rows = [("trial", _num(best.get("trial"))),
            (f"{f.get('objective')} ({'highest' if f.get('goal') == 'max' else 'lowest'})",
             _num(best.get("value"))),
            ("step / max step", f"{_num(best.get('step'))} / {_num(best.get('max_step'))}")]
    params = best.get("params") or {}
    for name in params:
        rows.append((name, _num(params[name])))
    return rows


def _infeasible_rows(f) -> list:
    reasons = f.get("infeasible_reasons") or {}
    rows = []
    for t in f.get("infeasible") or []:
        why = str(reasons.get(str(t)) or "infeasible")
        prefix = f"Trial {t} is infeasible: "
        if why.startswith(prefix):
            why = why[len(prefix):]
        rows.append((str(t), why))
    return rows


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------

def plot_jobs(results, findings) -> list:
    """The plots of the page, in order: dicts with ``key``, ``section``, ``title``, ``caption``
    and ``draw`` (a callable returning PNG bytes, or None when there is nothing to draw)."""
    f = findings
    objective = f.get("objective")
    space = f.get("space") or {}
    trials = f.get("trials") or []
    names = list(space) if isinstance(space, dict) else []
    for t in trials:
        for name in t.get("params") or {}:
            if name not in names:
                names.append(name)
    best_word = "highest" if f.get("goal") == "max" else "lowest"
    jobs = []
    for name in names:
        spec = space.get(name) if isinstance(space, dict) else None
        jobs.append({
            "key": f"axis:{name}", "section": "axes", "title": f"{objective} vs {name}",
            "caption": _axis_caption(name, spec, objective),
            "draw": (lambda name=name, spec=spec: _axis_plot(f, name, spec))})
    jobs.append({
        "key": "bootstrap", "section": "enough",
        "title": f"Best {objective} among n trials",
        "caption": (f"For each budget n, the spread of the {best_word} {objective} among n trials "
                    f"drawn at random from this study (boxes: 25-75 %, whiskers: 5-95 %; a red "
                    f"triangle: that quantile is an infeasible trial). If "
                    f"the boxes still shrink or move at the largest budget, more trials would "
                    f"likely find better values; if they have levelled off, the study has "
                    f"sampled enough."),
        "draw": lambda: _bootstrap_plot(f)})
    for name in (f.get("isolation") or {}):
        jobs.append({
            "key": f"isolation:{name}", "section": "isolation",
            "title": f"Best {objective} per {name} bin",
            "caption": (f"The range of {name} cut into bins, each showing the {best_word} "
                        f"{objective} of the trials that fell in it (the others' values vary "
                        f"freely). A clear valley (peak) is where {name} matters; a flat line "
                        f"means it hardly does. Grey bins had no feasible trial."),
            "draw": (lambda name=name: _isolation_plot(f, name))})
    jobs.append({
        "key": "curves", "section": "curves", "title": f"{objective} during training",
        "caption": (f"The {objective} of the best trials against the step; the best trial is "
                    f"the thick line and its best step the star. A best step at the very end "
                    f"means training was still improving; curves that turn back up mean "
                    f"over-fitting or instability."),
        "draw": lambda: _curves_plot(results, f)})
    gn = f.get("grad_norm")
    if gn is not None and "grad_norm" in (getattr(results, "metrics", None) or {}):
        jobs.append({
            "key": "grad_norm_steps", "section": "grad_norm",
            "title": f"Gradient norm of trial {_num(gn.get('trial'))}",
            "caption": ("The global gradient norm of the best trial against the step, its "
                        "90th percentile dashed. Isolated spikes far above the line are "
                        "what clipping at that level would cut."),
            "draw": lambda: _grad_norm_steps_plot(results, f)})
        jobs.append({
            "key": "grad_norm_hist", "section": "grad_norm",
            "title": "Distribution of the gradient norm",
            "caption": ("Histogram of the best trial's gradient norms, the 90th percentile "
                        "as a vertical line: a clipping threshold near it cuts only the tail; "
                        "a long tail to the right means rare large spikes."),
            "draw": lambda: _grad_norm_hist_plot(results, f)})
    return jobs


def _axis_caption(name, spec, objective) -> str:
    spec = spec if isinstance(spec, dict) else {}
    if isinstance(spec.get("feasible_points"), list):
        return (f"{name} takes {len(spec['feasible_points'])} fixed values; look for one whose "
                f"trials reach clearly better {objective} than the others'.")
    scale = "on a log axis" if spec.get("scaling") == "log" else "on a linear axis"
    return (f"{name} {scale}, from {_num(spec.get('min'))} to {_num(spec.get('max'))}; look "
            f"for a valley of good {objective} well inside the dashed bounds.")


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(size=FIGSIZE):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _finite(values) -> np.ndarray:
    a = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return a[np.isfinite(a)]


def _log_y(values) -> bool:
    """Log y axis only when every value is positive and they span more than a factor 20."""
    a = _finite(values)
    return a.size > 1 and bool(np.all(a > 0)) and a.max() > 20 * a.min()


def _empty(ax, text):
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _as_float(v):
    if isinstance(v, bool) or v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _axis_plot(f, name, spec):
    import matplotlib.transforms as mtransforms

    objective = f.get("objective")
    fig, ax = _figure()
    spec = spec if isinstance(spec, dict) else {}
    points = spec.get("feasible_points")
    categorical = isinstance(points, list)
    trials = [t for t in f.get("trials") or [] if name in (t.get("params") or {})]
    labels = []

    def x_of(v):
        if categorical:
            for i, p in enumerate(labels):
                if p == v:
                    return float(i)
            labels.append(v)
            return float(len(labels) - 1)
        return _as_float(v)

    if categorical:
        for p in points:
            x_of(p)
    log_x = (not categorical and spec.get("scaling") == "log")
    xs_ok, ys_ok, xs_bad = [], [], []
    for t in trials:
        x = x_of(t["params"][name])
        if x is None or (log_x and x <= 0):
            continue
        y = _as_float(t.get("best_value"))
        if t.get("feasible", True) and y is not None:
            xs_ok.append(x)
            ys_ok.append(y)
        else:
            xs_bad.append(x)
    if not xs_ok and not xs_bad:
        _empty(ax, f"no trial has a value of {name}")
        return _png(fig)
    if categorical:  # spread the points of one category a little so they do not hide each other
        xs_ok = [x + _jitter(i) for i, x in enumerate(xs_ok)]
        xs_bad = [x + _jitter(i + 7) for i, x in enumerate(xs_bad)]
    ax.scatter(xs_ok, ys_ok, s=22, color="#3b7dd8", alpha=0.75, edgecolors="none",
               label="trial", zorder=3)
    if xs_bad:
        top = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(xs_bad, [0.97] * len(xs_bad), transform=top, marker="x", s=30,
                   color="#d62728", linewidths=1.4, label="infeasible", zorder=4,
                   clip_on=False)
    best = f.get("best") or {}
    if best and name in (best.get("params") or {}):
        bx, by = x_of(best["params"][name]), _as_float(best.get("value"))
        if bx is not None and by is not None and not (log_x and bx <= 0):
            ax.scatter([bx], [by], marker="*", s=220, color="#f2b701", edgecolors="black",
                       linewidths=0.8, label="best", zorder=5)
    if log_x:
        _log_x(ax, spec.get("min"), spec.get("max"), xs_ok + xs_bad)
    if _log_y(ys_ok):
        ax.set_yscale("log")
    if xs_bad and ys_ok:  # headroom, so the crosses along the top do not cover the dots
        y0, y1 = ax.get_ylim()
        if ax.get_yscale() == "log":
            ax.set_ylim(y0, y1 * (y1 / y0) ** 0.12)
        else:
            ax.set_ylim(y0, y1 + (y1 - y0) * 0.12)
    lo, hi = _as_float(spec.get("min")), _as_float(spec.get("max"))
    if not categorical and lo is not None and hi is not None and hi > lo \
            and not (log_x and lo <= 0):
        for b in (lo, hi):
            ax.axvline(b, color="0.35", linestyle="--", linewidth=1)
        if log_x:
            w = (math.log(hi) - math.log(lo)) * BAND
            inner = (math.exp(math.log(lo) + w), math.exp(math.log(hi) - w))
        else:
            inner = (lo + (hi - lo) * BAND, hi - (hi - lo) * BAND)
        ax.axvspan(lo, inner[0], color="#d9822b", alpha=0.10, linewidth=0)
        ax.axvspan(inner[1], hi, color="#d9822b", alpha=0.10, linewidth=0)
        if log_x:
            pad = (hi / lo) ** 0.04
            ax.set_xlim(lo / pad, hi * pad)
        else:
            pad = (hi - lo) * 0.04
            ax.set_xlim(lo - pad, hi + pad)
    if categorical:
        ax.set_xticks(range(len(labels)), [_num(p) for p in labels])
        ax.set_xlim(-0.6, len(labels) - 0.4)
    scaling = "categorical" if categorical else (spec.get("scaling") or "linear")
    ax.set_xlabel(f"{name} ({scaling})")
    ax.set_ylabel(f"best {objective}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
    return _png(fig)


def _log_x(ax, lo, hi, xs) -> None:
    """Log x axis with labels that do not collide: below two decades, ticks at 1, 2 and 5
    times the powers of ten, written plainly (0.02, not 2x10^-2); minor ticks unlabelled."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    values = [v for v in (_as_float(lo), _as_float(hi), *xs) if v is not None and v > 0]
    if values and max(values) < 100 * min(values):
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _jitter(i) -> float:
    """Deterministic spread in [-0.15, 0.15] (a golden-ratio sequence)."""
    return ((i * 0.6180339887498949) % 1.0 - 0.5) * 0.3


def _bootstrap_plot(f):
    boot = f.get("bootstrap") or {}
    budgets = boot.get("budgets") or []
    q = boot.get("quantiles") or {}
    keys = ("5", "25", "50", "75", "95")
    fig, ax = _figure()
    rows = []
    for i, n in enumerate(budgets):
        try:
            rows.append((n, [_as_float(q[k][i]) for k in keys]))
        except (KeyError, IndexError, TypeError):
            continue
    finite = [v for _, row in rows for v in row if v is not None]
    if not finite:
        _empty(ax, "too few feasible trials to resample")
        return _png(fig)
    # A quantile that is None is an infeasible trial's (an infinitely bad value): drawn at the
    # worst finite value of the plot, with a red triangle pointing where it really lies.
    maximise = f.get("goal") == "max"
    worst = min(finite) if maximise else max(finite)
    stats, positions, labels, clipped = [], [], [], []
    for n, row in rows:
        pos = len(positions)
        for v in row:
            if v is None:
                clipped.append(pos)
        row = [worst if v is None else v for v in row]
        stats.append({"whislo": row[0], "q1": row[1], "med": row[2], "q3": row[3],
                      "whishi": row[4], "fliers": [], "label": _num(n)})
        positions.append(pos)
        labels.append(_num(n))
    ax.bxp(stats, positions=positions, widths=0.55, showfliers=False, patch_artist=True,
           boxprops={"facecolor": "#cfe0f7", "edgecolor": "#3b7dd8"},
           medianprops={"color": "#1d2430", "linewidth": 1.6},
           whiskerprops={"color": "#3b7dd8"}, capprops={"color": "#3b7dd8"})
    if clipped:
        xs = sorted(set(clipped))
        ax.scatter(xs, [worst] * len(xs), marker="v" if maximise else "^", s=60,
                   color="#d62728", zorder=4, clip_on=False,
                   label="quantile is an infeasible trial")
        ax.legend(loc="best", fontsize=8)
    ax.set_xticks(positions, labels)
    if _log_y(finite):
        ax.set_yscale("log")
    ax.set_xlabel("budget n (trials)")
    ax.set_ylabel(f"best {f.get('objective')} of n")
    ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)


def _isolation_plot(f, name):
    iso = (f.get("isolation") or {}).get(name) or {}
    edges = [_as_float(e) for e in iso.get("edges") or []]
    best = [_as_float(v) for v in iso.get("best") or []]
    spec = (f.get("space") or {}).get(name) or {}
    fig, ax = _figure()
    if len(edges) < 2 or len(best) != len(edges) - 1 or any(e is None for e in edges):
        _empty(ax, f"no bins for {name}")
        return _png(fig)
    log_x = spec.get("scaling") == "log" and edges[0] > 0
    values = np.array([np.nan if v is None else v for v in best])
    if np.all(np.isnan(values)):
        _empty(ax, f"no feasible trial in any bin of {name}")
        return _png(fig)
    ax.stairs(values, edges, baseline=None, color="#3b7dd8", linewidth=2)
    centres = [(math.sqrt(a * b) if log_x else (a + b) / 2) for a, b in zip(edges, edges[1:])]
    ok = ~np.isnan(values)
    ax.scatter(np.array(centres)[ok], values[ok], s=18, color="#3b7dd8", zorder=3)
    for a, b, v in zip(edges, edges[1:], values):
        if np.isnan(v):
            ax.axvspan(a, b, color="0.85", alpha=0.6, linewidth=0)
    if log_x:
        _log_x(ax, edges[0], edges[-1], [])
    ax.set_xlim(edges[0], edges[-1])
    if _log_y(values[ok]):
        ax.set_yscale("log")
    k = int(np.nanargmax(values) if f.get("goal") == "max" else np.nanargmin(values))
    ax.scatter([centres[k]], [values[k]], marker="*", s=180, color="#f2b701",
               edgecolors="black", linewidths=0.8, zorder=4, label="best bin")
    ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"{name} ({spec.get('scaling') or 'linear'})")
    ax.set_ylabel(f"best {f.get('objective')} in bin")
    ax.grid(True, alpha=0.3)
    return _png(fig)


def _trial_series(results, trial, metric):
    """(steps, values) of one trial's metric, sorted by step, unmeasured records left out."""
    metrics = getattr(results, "metrics", None) or {}
    if metric not in metrics:
        return np.zeros(0), np.zeros(0)
    mask = np.asarray(results.trial) == trial
    steps = np.asarray(results.step)[mask]
    values = np.asarray(metrics[metric], dtype=np.float64)[mask]
    keep = np.isfinite(values)
    steps, values = steps[keep], values[keep]
    order = np.argsort(steps, kind="stable")
    return steps[order], values[order]


def _curves_plot(results, f):
    objective = f.get("objective")
    ids = list((f.get("curves") or {}).get("trials") or [])
    best = f.get("best") or {}
    best_id = best.get("trial")
    fig, ax = _figure()
    drawn, all_values = 0, []
    for i, t in enumerate(ids):
        steps, values = _trial_series(results, t, objective)
        if steps.size == 0:
            continue
        all_values.extend(values.tolist())
        if t == best_id:
            ax.plot(steps, values, color="#1d4f91", linewidth=2.4, label=f"trial {t} (best)",
                    zorder=4, marker="o" if steps.size == 1 else None)
        else:
            ax.plot(steps, values, linewidth=1.1, alpha=0.7, label=f"trial {t}",
                    color=_CURVE_COLOURS[i % len(_CURVE_COLOURS)],
                    marker="o" if steps.size == 1 else None, markersize=4)
        drawn += 1
    if not drawn:
        _empty(ax, f"no trial has {objective} measured")
        return _png(fig)
    bs, bv = _as_float(best.get("step")), _as_float(best.get("value"))
    if best_id in ids and bs is not None and bv is not None:
        ax.scatter([bs], [bv], marker="*", s=220, color="#f2b701", edgecolors="black",
                   linewidths=0.8, zorder=5, label="best step")
    if _log_y(all_values):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(objective)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.8)
    return _png(fig)


_CURVE_COLOURS = ["#7f8c9d", "#2ca089", "#c2577a", "#8a6fc4", "#b8860b", "#4d9de0",
                  "#d9822b", "#5a6b3c"]


def _grad_norm_figure(results, f):
    """(findings' grad_norm entry, the best trial's steps and norms, fig, ax); the axes say so
    when nothing was recorded."""
    gn = f["grad_norm"]
    steps, values = _trial_series(results, gn.get("trial"), "grad_norm")
    fig, ax = _figure()
    if values.size == 0:
        _empty(ax, "no gradient norm recorded")
    return gn, steps, values, fig, ax


def _grad_norm_steps_plot(results, f):
    gn, steps, values, fig, ax = _grad_norm_figure(results, f)
    if values.size == 0:
        return _png(fig)
    ax.plot(steps, values, color="#3b7dd8", linewidth=1.2,
            marker="o" if steps.size < 30 else None, markersize=3)
    p90 = _as_float(gn.get("p90"))
    if p90 is not None:
        ax.axhline(p90, color="#d9822b", linestyle="--", linewidth=1.3, label=f"90 %: {_num(p90)}")
        ax.legend(loc="best", fontsize=8)
    if _log_y(values):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("gradient norm")
    ax.grid(True, alpha=0.3)
    return _png(fig)


def _grad_norm_hist_plot(results, f):
    gn, _, values, fig, ax = _grad_norm_figure(results, f)
    if values.size == 0:
        return _png(fig)
    bins = int(min(50, max(5, round(math.sqrt(values.size)))))
    ax.hist(values, bins=bins, color="#cfe0f7", edgecolor="#3b7dd8")
    p90, median = _as_float(gn.get("p90")), _as_float(gn.get("median"))
    if p90 is not None:
        ax.axvline(p90, color="#d9822b", linewidth=2, label=f"90th percentile {_num(p90)}")
    if median is not None:
        ax.axvline(median, color="0.3", linestyle=":", linewidth=1.5,
                   label=f"median {_num(median)}")
    if p90 is not None or median is not None:
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("gradient norm")
    ax.set_ylabel("records")
    ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def add_report_command(sub) -> None:
    """Adds the ``report`` command to the ``fastopt`` command line's subparsers."""
    p = sub.add_parser(
        "report", help="analyse a quasi-random study's results into one HTML page",
        description="Analyse the results of a quasi-random hyperparameter study and write one "
                    "self-contained HTML page (OUT/index.html, plots embedded) with the "
                    "findings as plain sentences, and OUT/findings.json with every number.")
    p.add_argument("results", metavar="RESULTS", help="results file (JSON lines or CSV)")
    p.add_argument("--objective", required=True, metavar="NAME",
                   help="metric to optimise, e.g. val_loss")
    p.add_argument("--goal", choices=("min", "max"), default="min",
                   help="minimise or maximise the objective (default min)")
    p.add_argument("--space", metavar="SPACE.json",
                   help="search space the trials were drawn from (default: the values observed)")
    p.add_argument("--params", metavar="A,B",
                   help="comma list of the hyperparameter names (default: from --space or the "
                        "file)")
    p.add_argument("--diverge-above", type=float, metavar="X",
                   help="a trial whose --diverge-metric exceeds X has diverged")
    p.add_argument("--diverge-metric", metavar="NAME",
                   help="metric compared with --diverge-above (default: train_loss when "
                        "logged, else the objective)")
    p.add_argument("--top-k", type=int, metavar="K",
                   help="how many of the best trials count as 'top' in the boundary check")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N",
                   help="bootstrap resamples (default 2000)")
    p.add_argument("--out", default="report", metavar="DIR",
                   help="folder of the report (default ./report)")
    p.set_defaults(handler=run_report_command)


def run_report_command(args, out=None) -> int:
    """Runs ``fastopt report`` on parsed arguments; returns the exit status.

    Loads, analyses, then writes: any error is one line on stderr, status 2, and nothing is
    written. On success prints the findings, one sentence a line, then the path of the page.
    """
    out = out or sys.stdout

    def fail(message):
        message = " ".join(str(message).split()) or "failed"
        print(f"fastopt report: error: {message}", file=sys.stderr)
        return 2

    try:
        import jinja2  # noqa: F401
        import matplotlib  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError:
        return fail(_INSTALL_HINT)
    from tqdm import tqdm as progress_bar

    from .study import analyse, load_results

    if args.top_k is not None and args.top_k < 1:
        return fail(f"--top-k must be >= 1, got {args.top_k}")
    if args.bootstrap is not None and args.bootstrap < 1:
        return fail(f"--bootstrap must be >= 1, got {args.bootstrap}")
    if args.seed is not None and args.seed < 0:
        return fail(f"--seed must be >= 0, got {args.seed}")
    if args.diverge_above is not None and not math.isfinite(args.diverge_above):
        return fail(f"--diverge-above must be a finite number, got {args.diverge_above}")
    if args.diverge_metric is not None and args.diverge_above is None:
        return fail("--diverge-metric goes with --diverge-above")
    params = None
    if args.params is not None:
        params = [p.strip() for p in args.params.split(",")]
        if not all(params):
            return fail(f"--params must be a comma list of names, got {args.params!r}")

    bar = None
    try:
        try:
            size = os.path.getsize(args.results)
        except OSError:  # load_results says why, naming the file
            size = 0
        reader = None
        if size > PROGRESS_BYTES:
            bar = progress_bar(desc="reading", unit=" records", file=sys.stderr, leave=False)
            seen = [0]

            def reader(count):
                bar.update(count - seen[0])
                bar.refresh()  # called every 10,000 records: cheap, and the count shows
                seen[0] = count
        results = load_results(args.results, params=params, space=args.space, progress=reader)
        if bar is not None:
            bar.close()
            bar = None
        findings = analyse(results, args.objective, goal=args.goal, space=args.space,
                           diverge_metric=args.diverge_metric, diverge_above=args.diverge_above,
                           top_k=args.top_k, n_boot=args.bootstrap, seed=args.seed)
    except (ValueError, OSError) as e:  # StudyError is a ValueError
        if bar is not None:
            bar.close()
        if isinstance(e, OSError) and e.filename is not None and e.strerror:
            return fail(f"{e.filename}: {e.strerror}")
        return fail(e)
    try:
        index = write_report(results, findings, args.out, progress=sys.stderr.isatty())
    except (ValueError, OSError) as e:
        if isinstance(e, OSError) and e.filename is not None and e.strerror:
            return fail(f"{e.filename}: {e.strerror}")
        return fail(e)
    for sentence in findings.get("findings") or []:
        print(sentence, file=out)
    print(index, file=out)
    out.flush()
    return 0
