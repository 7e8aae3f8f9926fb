"""The command line under bad input: every error is one line on stderr naming the option (or
SPACE.json), exit status 2, no traceback, and comes before any work; `fastopt search` streams,
so no --trials allocates more than a chunk."""
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastopt import __main__ as cli
from fastopt import bench, search

from conftest import fastopt_env, fastopt_parent

SPACE = {"lr": {"min": 1e-5, "max": 1e-1, "scaling": "log"},
         "act": {"feasible_points": ["relu", "gelu"]}}


def run_main(argv, capsys):
    """(exit status, stdout, stderr) of cli.main, SystemExit included."""
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_usage_error(rc, err, pattern):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert pattern in lines[0], lines[0]


@pytest.fixture()
def space_file(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(SPACE))
    return path


# -- fastopt bench: outputs checked before any work ---------------------------------------------

@pytest.fixture()
def no_work(monkeypatch):
    """Fails the test if any benchmark case is built or timed."""
    def refuse(*a, **k):
        raise AssertionError("work was done before the options were checked")
    monkeypatch.setattr(bench, "build", refuse)
    monkeypatch.setattr(bench, "interleaved", refuse)


BENCH_BAD = [  # (extra argv as a function of tmp_path, pattern)
    (lambda t: ["--json", str(t / "missing" / "out.json")], "--json: the directory"),
    (lambda t: ["--json", str(t)], "--json: "),
    (lambda t: ["--json", ""], "--json: the path is empty"),
    (lambda t: ["--plot", str(t / "missing" / "out.png")], "--plot: the directory"),
    (lambda t: ["--plot", str(t)], "is a directory"),
    (lambda t: ["--plot", str(t / "out.xyz")], "--plot: "),
    (lambda t: ["--plot", str(t / "out")], "must end in one of"),
    (lambda t: ["--json", str(t / "a.png"), "--plot", str(t / "a.png")],
     "--json and --plot name the same file"),
    (lambda t: ["--repeats", "0"], "--repeats must be >= 1"),
    (lambda t: ["--repeats", "-3"], "--repeats must be >= 1"),
    (lambda t: ["--repeats", "x"], "argument --repeats: invalid int value"),
    (lambda t: ["--sizes", "0"], "--sizes: '0' must be at least 1"),
    (lambda t: ["--sizes", "-5"], "--sizes: '-5' must be at least 1"),
    (lambda t: ["--sizes", "2^-1"], "--sizes: cannot read '2^-1'"),
    (lambda t: ["--sizes", "9^99999999"], "--sizes: cannot read"),
    (lambda t: ["--sizes", "2^60"], "--sizes: '2^60' would need about"),
    (lambda t: ["--sizes", "1.5M"], "--sizes: cannot read '1.5M'"),
    (lambda t: ["--sizes", "9" * 5000], "--sizes: cannot read"),
    (lambda t: ["--sizes", ","], "--sizes: cannot read ''"),
    (lambda t: ["--kernels", "optim,,norm"], "--kernels: unknown ''"),
    (lambda t: ["--backends", "cuda"], "--backends: unknown 'cuda'"),
    (lambda t: ["--fast"], "unrecognized arguments: --fast"),
]


@pytest.mark.parametrize("extra,pattern", BENCH_BAD, ids=[b[1][:40] for b in BENCH_BAD])
def test_bench_errors_come_first_in_one_line(extra, pattern, tmp_path, capsys, no_work):
    rc, out, err = run_main(["bench", "--quick"] + extra(tmp_path), capsys)
    assert_usage_error(rc, err, pattern)
    assert not list(tmp_path.glob("**/*.*")), "a file was written"


def test_bench_unwritable_directory(tmp_path, capsys, no_work, monkeypatch):
    """A directory the user may not write to (simulated, since root may write anywhere)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.path.realpath(p) ==
                        os.path.realpath(ro) else real_access(p, mode, **kw))
    rc, _, err = run_main(["bench", "--json", str(ro / "out.json")], capsys)
    assert_usage_error(rc, err, "--json: ")
    assert not list(ro.iterdir())


def test_bench_plot_without_matplotlib(tmp_path, capsys, no_work, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backend_bases", None)  # import fails
    rc, _, err = run_main(["bench", "--plot", str(tmp_path / "a.png")], capsys)
    assert_usage_error(rc, err, "--plot needs matplotlib")


def test_bench_failed_write_at_the_end_keeps_the_tables_and_leaves_no_file(
        tmp_path, capsys, monkeypatch):
    def full(path, text):
        with open(path, "w") as f:
            f.write(text[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bench, "_write_text", full)
    target = tmp_path / "out.json"
    argv = ["bench", "--quick", "--kernels", "halton", "--backends", "numpy", "--no-peers",
            "--sizes", "2^10", "--repeats", "1", "--json", str(target)]
    rc, out, err = run_main(argv, capsys)
    errors = [line for line in err.replace("\r", "\n").splitlines() if "error:" in line]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err, err  # after the progress bar
    assert "--json: cannot write" in errors[0]
    assert "== halton" in out  # the results were printed before
    assert not list(tmp_path.iterdir())  # neither a half-written file nor the temporary one


def test_bench_writes_json_where_checked(tmp_path, capsys):
    target = tmp_path / "out.json"
    argv = ["bench", "--quick", "--kernels", "halton", "--backends", "numpy", "--no-peers",
            "--sizes", "2^10", "--repeats", "1", "--json", str(target)]
    rc, out, _ = run_main(argv, capsys)
    assert rc == 0 and f"wrote {target}" in out
    assert json.loads(target.read_text())["rows"]
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_parse_size_bounds():
    assert bench.parse_size("2^0") == 1 and bench.parse_size(" 3k ") == 3072
    for bad in ("2^65", "1^5", "0", "-1", "k", "2^3^4", "0x10"):
        with pytest.raises(ValueError, match="--sizes"):
            bench.parse_size(bad)


# -- fastopt search ---------------------------------------------------------------------------

def search_bad(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    deep_points = tmp_path / "deep_points.json"
    deep_points.write_text('{"x": {"feasible_points": [' + "[" * 40 + "]" * 40 + "]}}")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"\xff": 1}')
    dup = tmp_path / "dup.json"
    dup.write_text('{"x": {"min": 0, "max": 1}, "x": {"min": 0, "max": 2}}')
    nan = tmp_path / "nan.json"
    nan.write_text('{"x": {"feasible_points": [NaN]}}')
    big_int = tmp_path / "big_int.json"
    big_int.write_text('{"x": {"min": 0, "max": ' + "9" * 5000 + "}}")
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(search.MAX_FILE_BYTES + 1)
    wide = tmp_path / "wide.json"
    wide.write_text('{"x": {"min": -1e308, "max": 1e308}}')
    points = tmp_path / "points.json"
    points.write_text('[{"lr": 0.1}, {"lr": 0.01}]')
    bad_spec = tmp_path / "bad_spec.json"
    bad_spec.write_text('{"x": {"min": 1, "max": 0}}')
    top = tmp_path / "top.json"
    top.write_text("7")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(SPACE))
    g = str(good)
    return [  # (argv after "search", pattern)
        ([str(deep), "--trial", "0"], "SPACE.json: path"),
        ([str(deep_points), "--trial", "0"], "nested 43 deep"),
        ([str(binary), "--trial", "0"], "not UTF-8"),
        ([str(dup), "--trial", "0"], "appears twice"),
        ([str(nan), "--trial", "0"], "NaN is not JSON"),
        ([str(big_int), "--trial", "0"], "not valid JSON"),
        ([str(huge), "--trial", "0"], "larger than 16 MiB"),
        ([str(wide), "--trial", "0"], "max - min overflows"),
        ([str(bad_spec), "--trial", "0"], "min must be < max"),
        ([str(top), "--trial", "0"], "space must be a dict"),
        ([str(tmp_path / "missing.json"), "--trial", "0"], "cannot read it"),
        ([str(tmp_path), "--trial", "0"], "cannot read it"),
        ([str(points), "--trials", "3"], "--start + --trials goes past the 2 fixed points"),
        ([str(points), "--trial", "2"], "--trial goes past the 2 fixed points"),
        ([g, "--trial", str(2**64)], "--trial must be < 2**64"),
        ([g, "--trial", str(10**400)], "--trial must be < 2**64"),
        ([g, "--trials", "2", "--start", str(2**64 - 1)], "--start + --trials must be <= 2**64"),
        ([g, "--trials", str(10**30)], "--start + --trials must be <= 2**64"),
        ([g, "--trials", "-1"], "--trials must be >= 0"),
        ([g, "--seed", "-1", "--trial", "0"], "--seed must be >= 0"),
        ([g, "--trial", "1e3"], "argument --trial: invalid int value"),
        ([g, "--trial", "9" * 5000], "argument --trial: invalid int value"),
        ([g, "--trial", "0", "--format", "xml"], "argument --format: invalid choice"),
        ([g], "one of the arguments --trial --trials is required"),
        ([g, "--trial", "1", "--trials", "2"], "not allowed with argument"),
    ]


def test_search_errors_are_one_line_naming_the_option(tmp_path, capsys):
    for argv, pattern in search_bad(tmp_path):
        rc, out, err = run_main(["search"] + argv, capsys)
        assert_usage_error(rc, err, pattern)
        assert out == "", argv


def test_search_reads_no_more_than_the_limit_of_an_endless_file(capsys):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    rc, _, err = run_main(["search", "/dev/zero", "--trial", "0"], capsys)
    assert_usage_error(rc, err, "larger than 16 MiB")


def test_search_streams_any_number_of_trials(space_file):
    """--trials 10**12 starts printing at once and stops quietly when the reader does."""
    proc = subprocess.Popen([sys.executable, "-m", "fastopt", "search", str(space_file),
                             "--trials", str(10**12)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=fastopt_env(), cwd=fastopt_parent())
    first = [json.loads(proc.stdout.readline()) for _ in range(5000)]
    proc.stdout.close()
    rc = proc.wait(timeout=60)
    err = proc.stderr.read().decode()
    assert rc == 1 and err == "", err
    want = search.QuasiRandomSearch(SPACE).trials(5000)
    assert first == want


def test_search_chunks_join_seamlessly(space_file, capsys, monkeypatch):
    monkeypatch.setattr(search, "CHUNK", 7)
    for fmt in ("json", "csv"):
        rc, out, _ = run_main(["search", str(space_file), "--trials", "30", "--start", "5",
                               "--format", fmt], capsys)
        assert rc == 0
        lines = out.splitlines()
        if fmt == "json":
            assert [json.loads(s) for s in lines] == search.QuasiRandomSearch(SPACE).trials(30, 5)
        else:
            assert len(lines) == 31 and [r.split(",")[0] for r in lines[1:]] == [
                str(i) for i in range(5, 35)]


def test_main_argv_type():
    with pytest.raises(TypeError, match="argv"):
        cli.main("info")
    with pytest.raises(TypeError, match="argv"):
        cli.main(["search", 3])


_TOKENS = st.one_of(
    st.sampled_from(["--trial", "--trials", "--start", "--seed", "--format", "json", "csv",
                     "-1", "0", "3", str(2**64), str(10**30), "1e3", "", "x", "--bogus"]),
    st.integers(-2**70, 2**70).map(str), st.text(max_size=4))


@given(argv=st.lists(_TOKENS, max_size=7))
def test_random_search_command_lines(argv, tmp_path_factory):
    """Whatever the arguments: status 0 with output, or one line naming what is wrong."""
    folder = tmp_path_factory.mktemp("space")
    path = folder / "space.json"
    path.write_text(json.dumps(SPACE))
    for i, a in enumerate(argv):  # no run may print for hours
        if argv[i - 1:i] == ["--trials"] and a.lstrip("-").isdigit() and 0 <= int(a) < 10**6:
            argv[i] = "3"
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(["search", str(path)] + argv)
        except SystemExit as e:
            rc = e.code
    if rc == 0:
        assert err.getvalue() == ""
    else:
        lines = err.getvalue().strip().splitlines()
        assert rc == 2 and len(lines) == 1 and "error:" in lines[0], err.getvalue()


def test_search_names_a_bad_fastopt_backend(space_file, capsys, monkeypatch):
    for value in ("bogus", "CPP"):
        monkeypatch.setenv("FASTOPT_BACKEND", value)
        rc, out, err = run_main(["search", str(space_file), "--trial", "0"], capsys)
        assert_usage_error(rc, err, "FASTOPT_BACKEND: backend=")
        assert out == ""


def test_info_reports_a_backend_whose_probe_fails(monkeypatch, capsys):
    """fastopt info is run when something is broken: a failing probe is a line, not a crash."""
    from fastopt import info as info_mod

    real = info_mod._dispatch.unavailable_reason

    def probe(name):
        if name == "numba-cuda":
            raise ValueError("Number of threads specified must be > 0.")
        return real(name)

    monkeypatch.setattr(info_mod._dispatch, "unavailable_reason", probe)
    rc, out, _ = run_main(["info"], capsys)
    assert rc == 0 and "numba-cuda  cannot be loaded here (ValueError: Number of threads" in out
