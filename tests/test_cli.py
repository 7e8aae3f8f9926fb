"""`fastopt info` and `fastopt bench`: every section printed, JSON and PNG written, a broken
kernel reported FAILED and never timed, bad arguments answered with a usage error."""
import json
import subprocess
import sys

import pytest

import fastopt
from fastopt import __main__ as cli
from fastopt import bench

from conftest import fastopt_env, fastopt_parent

TINY = ["bench", "--quick", "--sizes", "2^12", "--repeats", "3"]


def test_info_runs_and_names_every_backend(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backends:" in out and "GPUs:" in out and "peers" in out
    for b in fastopt._registry.ALL_BACKENDS:
        assert b in out


def test_info_json(capsys):
    assert cli.main(["info", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d["backends"]) == set(fastopt._registry.ALL_BACKENDS)
    assert d["backends"]["numpy"] == "available"


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "fastopt", "info"], capture_output=True,
                         text=True, timeout=120, env=fastopt_env(), cwd=fastopt_parent())
    assert out.returncode == 0 and "backends:" in out.stdout, out.stderr


@pytest.mark.slow
def test_bench_quick_prints_every_section_and_writes_json_and_png(tmp_path, capsys):
    js, png = tmp_path / "out.json", tmp_path / "out.png"
    assert cli.main(TINY + ["--json", str(js), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    for section in ("== optim", "== norm", "== halton", "0 FAILED"):
        assert section in out, out
    d = json.loads(js.read_text())
    assert {"machine", "info", "rows", "args"} <= set(d)
    fams = {r["family"] for r in d["rows"]}
    assert fams == {"optim", "norm", "halton"}
    for r in d["rows"]:
        assert r["status"] == "ok" and r["seconds"] > 0 and r["rate"] > 0
    names = {r["contender"] for r in d["rows"]}
    assert "fastopt[numpy]" in names
    if not fastopt._dispatch.unavailable_reason("cpp"):
        assert bench.CEILING in names
        opt = [r for r in d["rows"] if r["family"] == "optim" and r["contender"] == "fastopt[cpp]"]
        assert all(r["pct_ceiling"] > 0 for r in opt)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_broken_kernel_is_reported_failed_and_not_timed(monkeypatch, capsys):
    backend = fastopt._dispatch.resolve("optim.adam")
    if backend == "numpy":
        pytest.skip("needs a native backend to break")
    mod = fastopt._dispatch.module(backend)
    monkeypatch.setattr(mod, "optim_update", lambda *a, **k: None)  # does nothing: wrong
    timed = []
    real = bench.interleaved
    monkeypatch.setattr(bench, "interleaved",
                        lambda fns, **kw: timed.extend(fns) or real(fns, **kw))
    rc = cli.main(TINY + ["--kernels", "optim", "--no-peers"])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"fastopt[{backend}]" in out and "FAILED: differs from the NumPy reference" in out
    assert f"fastopt[{backend}]" not in timed and "fastopt[numpy]" in timed


@pytest.mark.parametrize("args,pattern", [
    (["bench", "--kernels", "sort"], "--kernels: unknown 'sort'"),
    (["bench", "--backends", "fortran"], "--backends: unknown 'fortran'"),
    (["bench", "--sizes", "big"], "--sizes: cannot read 'big'"),
    (["bench", "--rules", "adam,adamax"], "--rules: unknown 'adamax'; choose from sgd,"),
])
def test_bad_arguments_are_usage_errors(args, pattern, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert pattern in err and "Traceback" not in err


def test_unknown_option_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--fast"])
    assert e.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_bench_times_each_rule_asked_for(capsys):
    """--rules picks the optimizer rows; each rule's ceiling streams its own traffic."""
    assert cli.main(TINY + ["--kernels", "optim", "--rules", "sgd,lion", "--no-peers"]) == 0
    out = capsys.readouterr().out
    assert "sgd 12, lion 20" in out and "adam f32" not in out
    for rule in ("sgd", "lion"):
        assert f"{rule} f32 n=2^12 flat" in out
    assert bench.optim_traffic("adam") == (28, 4, 3) and bench.optim_traffic("sgd") == (12, 2, 1)


def test_parse_size():
    assert [bench.parse_size(s) for s in ("2^20", "1048576", "1M", "4k")] == [1 << 20] * 3 + [4096]
