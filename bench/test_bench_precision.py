"""The compact-precision benchmark's pieces (fast; developers run them beside the timings):

    pytest bench/test_bench_precision.py

the bytes each configuration moves, its ceiling's shape, the bit-for-bit check that keeps a
wrong kernel from being timed, the table, the targets, and a tiny run end to end.
"""
import json

import numpy as np
import pytest

from fastopt import __main__ as cli
from fastopt import _dispatch
from fastopt import bench as B
from fastopt import _precision as P

#: configuration -> (bytes read, bytes written) per element of a large array: the issue's 28,
#: 18, 14, ~14 and ~10, the 8-bit ones plus 4 B of absmax per 256 elements per buffer each way
TRAFFIC = {
    "fp32": (16, 12),                                 # p 4+4, g 4, m 4+4, v 4+4
    "bf16+remainder+bf16 state": (10, 8),             # p 2+2, g 2, rem 2+2, m 2+2, v 2+2
    "bf16+SR+bf16 state": (8, 6),                     # p 2+2, g 2, m 2+2, v 2+2
    "bf16+remainder+int8": (8 + 8 / 256, 6 + 8 / 256),  # p 2+2, g 2, rem 2+2, m 1+1, v 1+1
    "bf16+SR+int8": (6 + 8 / 256, 4 + 8 / 256),       # p 2+2, g 2, m 1+1, v 1+1
}
ROUNDED = {"fp32": 28, "bf16+remainder+bf16 state": 18, "bf16+SR+bf16 state": 14,
           "bf16+remainder+int8": 14, "bf16+SR+int8": 10}


@pytest.mark.parametrize("name", TRAFFIC)
def test_traffic_is_the_issues(name):
    read, written = B.precision_traffic(name)
    assert (read, written) == TRAFFIC[name]
    assert round(read + written) == ROUNDED[name]
    assert B.precision_traffic(B.PRECISION[name]) == (read, written)
    # one large array of whole blocks is the per-element figure exactly
    assert B.precision_traffic(name, [1 << 16]) == (read, written)


@pytest.mark.parametrize("name", TRAFFIC)
def test_ceiling_moves_the_configurations_bytes(name):
    u, reads, writes = B.precision_ceiling_shape(name)
    read, written = B.precision_traffic(name)
    # float32 arrays of total * u / 4 elements: reads * u bytes read, writes * u written per
    # element, the whole bytes of the configuration (the absmax fraction left out)
    assert (reads * u, writes * u) == (int(read), int(written))
    assert u in (2, 4) and reads == writes + 1


def test_traffic_of_a_layout_counts_small_arrays_and_partial_blocks():
    # under QMIN_SIZE elements the state stays float32 (bitsandbytes' rule)
    assert B.precision_traffic("bf16+SR+int8", [100]) == (2 + 2 + 8, 2 + 8)
    # one partial block still has its absmax
    n = P.QMIN_SIZE + 1
    per = (2 * n + 2 * 4 * P.nblocks(n)) / n
    assert B.precision_traffic("bf16+SR+int8", [n]) == pytest.approx((4 + per, 2 + per))
    # the float32 and bf16 configurations do not depend on the layout
    assert B.precision_traffic("bf16+SR+bf16 state", [1, 7, 5000]) == (8, 6)


def test_check_accepts_the_reference_itself():
    for c in B.PRECISION_CONFIGS:
        assert B.check_precision(c, "numpy", [5000, 300]) is None


def _native():
    for b in ("cpp", "numba"):
        if B.have(b):
            return b
    pytest.skip("needs a native backend to break")


def test_wrong_contender_is_failed_and_never_timed(monkeypatch):
    backend = _native()
    mod = _dispatch.module(backend)
    noop = lambda *a, **k: None  # noqa: E731 - does nothing: wrong
    monkeypatch.setattr(mod, "compact_update", noop, raising=False)
    monkeypatch.setattr(mod, "optim_update", noop)
    timed = []
    real = B.interleaved
    monkeypatch.setattr(B, "interleaved", lambda fns, **kw: timed.extend(fns) or real(fns, **kw))
    case = B.precision_case(1 << 12, 1, [backend, "numpy"], peers=False)
    rows = B.run_precision_case(case, repeats=1, budget_s=1)
    mine = [r for r in rows if r["contender"] == f"fastopt[{backend}]"]
    assert len(mine) == len(B.PRECISION_CONFIGS)
    for r in mine:
        assert r["status"].startswith("FAILED: differs from the NumPy reference"), r["status"]
        assert r["seconds"] is None and r["rate"] is None
    assert not any(f"fastopt[{backend}]" in k for k in timed)
    assert all(r["status"] == "ok" for r in rows if r["contender"] == "fastopt[numpy]")
    assert "FAILED: differs" in B.format_precision_table(rows)


def test_tiny_run_with_the_numpy_backend_gives_every_row():
    rows = B.run_precision(((1 << 12, 1), (1 << 13, 10)), repeats=2, budget_s=2,
                           backends=["numpy"])
    assert {r["layout"] for r in rows} == {"adamw n=2^12 flat", "adamw n=2^13 10 arrays"}
    for layout in {r["layout"] for r in rows}:
        got = [(r["config"], r["contender"]) for r in rows if r["layout"] == layout]
        for c in B.PRECISION_CONFIGS:
            assert (c.name, "fastopt[numpy]") in got
            if B.have("cpp"):
                assert (c.name, B.CEILING) in got
    for r in rows:
        assert r["status"] == "ok" and r["seconds"] > 0 and r["rate"] > 0
        assert r["bytes_per_element"] >= 10
        if B.have("cpp"):
            assert r["pct_ceiling"] > 0
        if r["contender"] == B.CEILING:
            assert r["pct_ceiling"] == pytest.approx(100)
    # 10 arrays of 2^13 elements: some arrays keep float32 state, so more than 10 B/element
    sr8 = [r for r in rows if r["config"] == "bf16+SR+int8" and r["contender"] != B.CEILING]
    assert {round(r["bytes_per_element"], 4) for r in sr8} == {
        round(sum(B.precision_traffic("bf16+SR+int8", B.layouts(*s))), 4)
        for s in ((1 << 12, 1), (1 << 13, 10))}
    if B.have_module("torch"):
        names = {r["contender"] for r in rows}
        assert B.TORCH_FP32 in names and B.TORCH_BF16 in names
        fp = next(r for r in rows if r["contender"] == "fastopt[numpy]" and r["config"] == "fp32")
        assert fp["vs_torch_fp32"] > 0 and fp["vs_torch_bf16"] > 0
    text = B.format_precision_table(rows)
    assert text.count("fastopt[numpy]") == 2 * len(B.PRECISION_CONFIGS)
    assert len(B.precision_targets(rows)) == 2 * 13


def _row(cfg, contender, sec, pct=None, f32=None, b16=None, status="ok",
         layout="adamw n=2^24 flat"):
    bpe = sum(B.precision_traffic(cfg))
    return dict(family="precision", case=f"{cfg} {layout}", layout=layout, config=cfg,
                contender=contender, bytes_per_element=bpe, unit="GB/s", status=status,
                seconds=sec, rate=None if sec is None else bpe * (1 << 24) / sec,
                pct_ceiling=pct, vs_torch_fp32=f32, vs_torch_bf16=b16)


ROWS = [
    _row("fp32", "fastopt[cpp]", 0.050, 95.0, 1.1, 0.7),
    _row("fp32", "fastopt[numba]", 0.060, 80.0, 0.9, 0.6),
    _row("fp32", B.TORCH_FP32, 0.055, 86.0, 1.0, 0.64),
    _row("fp32", B.CEILING, 0.048, 100.0),
    _row("bf16+remainder+bf16 state", "fastopt[cpp]", 0.030, 93.0, 1.83, 1.17),
    _row("bf16+remainder+bf16 state", "fastopt[numba]", None, status="FAILED: differs"),
    _row("bf16+SR+int8", "fastopt[cpp]", 0.025, 88.0, 2.2, 1.4),
    _row("bf16+SR+int8", "fastopt[numba]", 0.045, 49.0, 1.22, 0.78),
]


def test_format_precision_table():
    text = B.format_precision_table(ROWS)
    lines = text.splitlines()
    assert lines[0] == "-- adamw n=2^24 flat"
    assert "configuration" in lines[1] and "% ceil" in lines[1] and "vs torch bf16" in lines[1]
    body = [line for line in lines if line.startswith(("fp32", "bf16"))]
    assert len(body) == len(ROWS)
    cpp = next(line for line in body if line.startswith("fp32") and "fastopt[cpp]" in line)
    assert "28.00" in cpp and "50.000" in cpp and "95%" in cpp and "1.10x" in cpp
    ceil = next(line for line in body if B.CEILING in line)
    assert "100%" in ceil and "x" not in ceil.split("%")[1]
    assert "FAILED: differs" in text and "absmax" in lines[-1]


def test_targets_pass_miss_and_missing():
    t = {(x["target"]): x for x in B.precision_targets(ROWS)}
    assert t["fp32 >= 90% of its own ceiling"]["holds"] is True
    assert t["bf16+SR+int8 >= 90% of its own ceiling"]["holds"] is False   # 88%
    assert t["bf16+SR+bf16 state >= 90% of its own ceiling"]["holds"] is None  # not timed
    assert t["bf16+remainder+bf16 state >= 1.5x torch fused fp32"]["holds"] is True
    assert t["bf16+SR+int8 >= 2.0x torch fused fp32"]["holds"] is True
    assert t["bf16+SR+int8 >= 1.2x torch fused bf16"]["holds"] is True
    assert t["fp32: numba within 1.5x of cpp"]["holds"] is True
    assert t["bf16+SR+int8: numba within 1.5x of cpp"]["holds"] is False  # 1.8x
    assert t["bf16+remainder+bf16 state: numba within 1.5x of cpp"]["holds"] is None
    text = B.format_precision_targets(B.precision_targets(ROWS))
    assert "PASS" in text and "MISS" in text and "n/a" in text and "1.80x cpp's time" in text


def test_cli_precision_family(tmp_path, capsys):
    out_json = tmp_path / "p.json"
    rc = cli.main(["bench", "--kernels", "precision", "--backends", "numpy", "--sizes", "2^12",
                   "--repeats", "1", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "== precision" in out and "== optim" not in out and "targets, adamw" in out
    rows = json.loads(out_json.read_text())["rows"]
    assert {r["family"] for r in rows} == {"precision"}
    assert {r["layout"] for r in rows} == {"adamw n=2^12 flat", "adamw n=2^12 200 arrays"}


def test_precision_is_asked_for_by_name():
    assert "precision" in B.FAMILIES and "precision" not in B.DEFAULT_FAMILIES
    assert [f for f, _ in B.plan(["precision"])] == ["precision"] * 2
    assert B.plan(["precision"], quick=True) == [("precision", s)
                                                 for s in B.QUICK_SIZES["precision"]]
    # by default the NumPy reference is not timed (far too slow at 2^24); asked for, it is
    assert "numpy" not in B.precision_backends()
    assert B.precision_backends(["numpy"]) == ["numpy"]


def test_memory_guard_counts_every_contender(monkeypatch):
    import importlib

    halton = importlib.import_module("fastopt.halton")  # the module, not fastopt.halton()
    monkeypatch.setattr(halton, "memory_limit", lambda: 1 << 30)
    assert B.parse_size("2^22") == 1 << 22  # 128 B/element: 512 MiB
    with pytest.raises(ValueError, match="would need about"):
        B.parse_size("2^22", B.FAMILY_BYTES_PER_ELEMENT["precision"])
    assert B.FAMILY_BYTES_PER_ELEMENT["precision"] * np.int64(1 << 24) < 8 << 30
