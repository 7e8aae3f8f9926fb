"""The CUDA backend and device arrays (SPEC §1, issue 5).

Without a GPU (CI): the CUDA extension must have been compiled wherever nvcc exists, device
input is validated before any launch, and the numba-cuda fallback runs on the Numba CUDA
simulator (tests/test_cuda_sim.py, in a subprocess). With a GPU: every kernel against the NumPy
reference on copies, fresh random inputs, outputs poisoned first; bench/gpu_check.py runs these.
"""
import importlib
import math
import os
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt import _device, _dispatch, _registry
from fastopt import functional as F
from fastopt._core import GuardedCall

ROOT = Path(__file__).resolve().parents[1]
halton_mod = importlib.import_module("fastopt.halton")

# -- the build ---------------------------------------------------------------------------------


def test_cuda_extension_compiled_where_nvcc_exists():
    """CI's compile-only check: an install on a machine with nvcc has fastopt._C_cuda, and
    importing it without a GPU works (the runtime is static; no device is touched)."""
    if os.environ.get("FASTOPT_CUDA") == "0":
        pytest.skip("FASTOPT_CUDA=0: the CUDA extension was switched off")
    if shutil.which("nvcc") is None:
        pytest.skip("no nvcc on PATH: the CUDA extension is not built here")
    here = Path(fastopt.__file__).parent
    if here.parent == ROOT and not list(here.glob("_C*.so")):
        # fastopt comes from a source checkout with nothing built in place (python -m pytest
        # from the root): the check is then on the installed copy's files.
        from importlib import metadata
        try:
            files = [str(f) for f in metadata.distribution("fastopt").files or ()]
        except metadata.PackageNotFoundError:
            pytest.skip("fastopt is neither built in place nor installed")
        assert any("_C_cuda" in f for f in files), "the installed fastopt has no _C_cuda"
        return
    ext = importlib.import_module("fastopt._C_cuda")  # ImportError = the build failed
    assert (ext.guard_window, ext.guard_width) == (_registry.GUARD_WINDOW, _registry.GUARD_WIDTH)
    count, error = ext.device_count()
    assert count > 0 or error, "no device and no reason"
    for v in (3, 5, 6, 53, 1000, 65521, 2**31 - 1):  # the Halton kernel's 32-bit division
        for q in (0, 1, v - 1, v, v + 1, 2**31, 2**32 - 1, 123456789):
            assert ext.halton_div32(v, q) == q // v, (v, q)


def test_cuda_backend_says_why_it_is_unavailable():
    reason = _dispatch.unavailable_reason("cuda")
    if reason is None:
        pytest.skip("a CUDA device is present")
    assert "fastopt._C_cuda is not built" in reason or "no CUDA device" in reason, reason
    print(f"cuda backend unavailable: {reason}")


def test_registry_lists_device_backends():
    for rule in _registry.OPTIMIZERS:
        k = _registry.KERNELS[f"optim.{rule}"]
        assert set(k["cuda"]) == {np.dtype(np.float32), np.dtype(np.float64),
                                  np.dtype(np.float16), _registry.BF16}
        assert set(k["numba-cuda"]) >= {np.dtype(np.float32), np.dtype(np.float64)}
    for kernel in ("norm.global_norm", "norm.scale", "halton.halton"):
        assert {"cuda", "numba-cuda"} <= set(_registry.KERNELS[kernel])


# -- the simulator -----------------------------------------------------------------------------


def test_simulator():
    """tests/test_cuda_sim.py under NUMBA_ENABLE_CUDASIM=1, in a process of its own (the
    variable must be set before numba.cuda is imported), with this process's fastopt."""
    pytest.importorskip("numba")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(fastopt.__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    env.pop("FASTOPT_BACKEND", None)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-x", "--rootdir", str(ROOT), str(ROOT / "tests" / "test_cuda_sim.py")],
                         capture_output=True, text=True, env=env, cwd=ROOT / "tests",
                         timeout=1200)
    log = out.stdout[-6000:] + out.stderr[-3000:]
    assert out.returncode == 0, log
    passed = re.search(r"(\d+) passed", out.stdout)
    assert passed and int(passed.group(1)) >= 30 and "skipped" not in out.stdout, log
    print(out.stdout.strip().splitlines()[-1])


def _nvvm_home():
    """A CUDA toolkit with libNVVM (numba.cuda's compiler), or None."""
    nvcc = shutil.which("nvcc")
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if nvcc:
        homes.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for home in filter(None, homes):
        if any(Path(home).glob("**/libnvvm.so*")):
            return home
    return None


def test_numba_cuda_kernels_compile_to_ptx():
    """Every numba-cuda optimizer kernel (plain and guarded, every rule, float32 and float64)
    compiles to PTX with the real compiler: what a GPU would run, which the simulator does
    not compile. Needs libNVVM (a CUDA toolkit, as CI has), not a GPU."""
    pytest.importorskip("numba")
    home = _nvvm_home()
    if home is None:
        pytest.skip("no CUDA toolkit with libNVVM here")  # CI has one (nvcc)
    env = {**os.environ, "CUDA_HOME": home,
           "PYTHONPATH": os.pathsep.join([str(Path(fastopt.__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "numba_cuda_ptx.py")],
                         capture_output=True, text=True, env=env, cwd=ROOT / "tests",
                         timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    kernels = 2 * 2 * len({r.kernel for r in fastopt._rules.RULES.values()})
    assert out.stdout.strip().splitlines()[-1] == f"compiled {kernels}", out.stdout[-3000:]


# -- device input is validated before any launch (no GPU needed) --------------------------------


class FakeDeviceArray:
    """Host memory dressed as a device array (__cuda_array_interface__): enough for the
    checks, which must reject it before any kernel could touch it."""

    def __init__(self, a):
        self._a = a
        self.shape, self.dtype, self.size, self.nbytes = a.shape, a.dtype, a.size, a.nbytes

    @property
    def __cuda_array_interface__(self):
        return {"shape": self._a.shape, "typestr": self._a.dtype.str, "version": 3,
                "data": (self._a.__array_interface__["data"][0], False),
                "strides": self._a.strides if not self._a.flags.c_contiguous else None,
                "stream": None}


@pytest.fixture
def two_devices(monkeypatch):
    """Fake arrays on device 0, and on device 1 for those registered in `on_1`."""
    on_1 = set()
    monkeypatch.setattr(_device, "_pointer_device", lambda ptr: 1 if ptr in on_1 else 0)
    return on_1


def _no_device_backend():
    return all(_dispatch.unavailable_reason(b) for b in _registry.DEVICE_BACKENDS)


def _fake_case(kind, on_1):
    p = [np.ones(7, np.float32), np.ones(3, np.float32)]
    g = [np.ones(7, np.float32), np.ones(3, np.float32)]
    dp, dg = [FakeDeviceArray(a) for a in p], [FakeDeviceArray(a) for a in g]
    if kind == "host grads":
        return p, dp, g, TypeError, "host and device arrays mixed"
    if kind == "host param among device":
        return p, [p[0], dp[1]], dg, TypeError, "host and device arrays mixed"
    if kind == "two devices":
        on_1.add(p[1].__array_interface__["data"][0])
        return p, dp, dg, ValueError, "on one device"
    if kind == "grads on another device":
        on_1.update(a.__array_interface__["data"][0] for a in g)
        return p, dp, dg, ValueError, "on one device"
    if kind == "int32":
        q = np.ones(7, np.int32)
        return [q], [FakeDeviceArray(q)], dg[:1], TypeError, "dtype int32"
    if kind == "non-contiguous":
        q = np.ones(14, np.float32)
        return [q], [FakeDeviceArray(q[::2])], dg[:1], ValueError, "C-contiguous"
    if kind == "no device backend":
        if not _no_device_backend():
            pytest.skip("a device backend is available: it would launch on host memory")
        return p, dp, dg, ValueError, "no available backend implements optim.sgd"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["host grads", "host param among device", "two devices",
                                  "grads on another device", "int32", "non-contiguous",
                                  "no device backend"])
def test_bad_device_input_is_refused_before_launch(kind, two_devices):
    host, params, grads, exc, msg = _fake_case(kind, two_devices)
    before = [a.tobytes() for a in host]
    with pytest.raises(exc, match=msg):
        F.update("sgd", params, grads, {}, step=0, lr=0.1)
    assert [a.tobytes() for a in host] == before


def test_device_backends_refuse_host_arrays_and_back():
    with pytest.raises(ValueError, match="cannot run on host"):
        F.update("sgd", [np.ones(3)], [np.ones(3)], {}, step=0, lr=0.1, backend="cuda")
    with pytest.raises(ValueError, match="cannot run on device"):
        F.update("sgd", [FakeDeviceArray(np.ones(3))], [FakeDeviceArray(np.ones(3))], {},
                 step=0, lr=0.1, backend="cpp")


def test_norm_refuses_mixed_arrays():
    with pytest.raises(TypeError, match="host and device arrays mixed"):
        fastopt.global_norm([FakeDeviceArray(np.ones(3, np.float32)), np.ones(3, np.float32)])


# -- on a GPU ------------------------------------------------------------------------------------

GPU_REASON = _dispatch.unavailable_reason("cuda")
gpu = pytest.mark.skipif(GPU_REASON is not None, reason=f"no GPU run: {GPU_REASON}")


def _libs():
    out = []
    for name in ("torch", "cupy"):
        try:
            mod = importlib.import_module(name)
            ok = mod.cuda.is_available() if name == "torch" else mod.cuda.runtime.getDeviceCount()
        except Exception:  # noqa: BLE001 - not installed or no device: that library skips
            ok = False
        out.append(pytest.param(name, marks=[] if ok else [pytest.mark.skip(
            reason=f"{name} with CUDA is not available")]))
    return out


LIBS = _libs()
F16, BF16 = np.dtype(np.float16), _registry.BF16


def to_dev(lib, a, dtype=None):
    """A device copy of the NumPy array ``a`` (as ``dtype``; BF16 from float32 values)."""
    dtype = a.dtype if dtype is None else dtype
    if lib == "torch":
        import torch
        t = torch.from_numpy(np.ascontiguousarray(a.astype(np.float32 if dtype is BF16 else dtype)))
        return t.to(device="cuda", dtype=torch.bfloat16 if dtype is BF16 else None)
    import cupy
    if dtype is BF16:
        pytest.skip("bfloat16 arrays need PyTorch")
    return cupy.asarray(a.astype(dtype))


def to_np(a):
    """Host float64 (16-bit values exactly) of a device array."""
    if type(a).__module__.startswith("torch"):
        return a.detach().float().cpu().numpy().astype(np.float64)
    return _device.to_host(a).astype(np.float64)


def round_bf16(x):
    """float32 -> nearest bfloat16 (ties to even), as float32: the device's __float2bfloat16_rn."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


def round_to(x, dtype):
    return round_bf16(x) if dtype is BF16 else x.astype(dtype).astype(np.float32)


def sync():
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.synchronize()
    if "cupy" in sys.modules:
        sys.modules["cupy"].cuda.Device().synchronize()


GPU_SIZES = (1, 7, 129, 4097, (1 << 16) + 3, 3 * (1 << 16) + 17)
GPU_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), F16, BF16)
TOL = {np.dtype(np.float32): dict(rtol=1e-6, atol=1e-7),
       np.dtype(np.float64): dict(rtol=1e-14, atol=1e-15),
       F16: dict(rtol=1e-3, atol=1e-3), BF16: dict(rtol=8e-3, atol=8e-3)}


def _reference_step(rule, p, gs, state, dtype, step, kw):
    """The NumPy reference on host copies: 16-bit params compute in float32 and round once."""
    if dtype in (F16, BF16):
        p32 = [a.astype(np.float32) for a in p]
        F.update(rule, p32, [g.astype(np.float32) for g in gs], state, step=step,
                 backend="numpy", **kw)
        return [round_to(a, dtype) for a in p32]
    F.update(rule, p, gs, state, step=step, backend="numpy", **kw)
    return p


@gpu
@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("rule", _registry.OPTIMIZERS)
def test_gpu_optim_matches_reference(rule, dtype, lib):
    """Odd sizes across chunk boundaries, an unaligned array (scalar path), three steps."""
    rng = np.random.default_rng(zlib.crc32(f"{rule}{dtype}{lib}".encode()))
    wide = np.float64 if dtype == np.float64 else np.float32  # 16-bit values held in float32
    hp = [round_to(rng.standard_normal(n).astype(wide), dtype) if dtype in (F16, BF16)
          else rng.standard_normal(n).astype(wide) for n in GPU_SIZES]
    dp = [to_dev(lib, a, dtype) for a in hp]
    if lib == "torch":  # one array an element into a buffer: not 16-byte aligned
        import torch
        buf = torch.zeros(hp[3].size + 1, dtype=dp[3].dtype, device="cuda")
        buf[1:] = dp[3]
        dp[3] = buf[1:]
    hs, ds = F.init_state(rule, hp), F.init_state(rule, dp)
    kw = dict(lr=0.01, weight_decay=0.01, grad_scale=0.5, **{
        "momentum": dict(momentum=0.9), "nesterov": dict(momentum=0.9),
        "rmsprop": dict(momentum=0.5)}.get(rule, {}))
    for step in range(3):
        hg = [round_to(rng.standard_normal(a.size).astype(wide), dtype) if dtype in (F16, BF16)
              else rng.standard_normal(a.size).astype(wide) for a in hp]
        F.update(rule, dp, [to_dev(lib, g, dtype) for g in hg], ds, step=step, **kw)
        hp = _reference_step(rule, hp, hg, hs, dtype, step, kw)
    sync()
    for i, (want, got) in enumerate(zip(hp, dp)):
        np.testing.assert_allclose(to_np(got), want.astype(np.float64), **TOL[dtype],
                                   err_msg=f"params[{i}]")
    for name in hs:
        for i, (want, got) in enumerate(zip(hs[name], ds[name])):
            np.testing.assert_allclose(to_np(got), want.astype(np.float64),
                                       **TOL[np.dtype(np.float64) if dtype == np.float64
                                             else np.dtype(np.float32)],
                                       err_msg=f"state {name}[{i}]")


@gpu
@pytest.mark.parametrize("lib", LIBS)
def test_gpu_optim_many_arrays_more_than_one_launch(lib):
    """700 arrays (more than one launch's table) and empty ones: one call updates them all."""
    rng = np.random.default_rng(11)
    sizes = [int(s) for s in rng.integers(0, 3000, size=700)]
    hp = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    hg = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    dp = [to_dev(lib, a) for a in hp]
    hs, ds = F.init_state("adam", hp), F.init_state("adam", dp)
    F.update("adam", dp, [to_dev(lib, g) for g in hg], ds, step=0, lr=0.1)
    F.update("adam", hp, hg, hs, step=0, lr=0.1, backend="numpy")
    sync()
    for want, got in zip(hp, dp):
        np.testing.assert_allclose(to_np(got), want, **TOL[np.dtype(np.float32)])


@gpu
@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_global_norm_bits_equal_cpu(dtype, lib):
    """Sums of squares in the fixed order: the device's bits are the CPU's (16-bit values are
    compared with the same values held in float32 on the host)."""
    rng = np.random.default_rng(3)
    sizes = (1, 7, 16385, 3 * (1 << 14) + 5, 40 * (1 << 14) + 1)
    host = [round_to(rng.standard_normal(n).astype(np.float32), dtype) for n in sizes]
    if dtype == np.float64:
        host = [rng.standard_normal(n) for n in sizes]
    dev = [to_dev(lib, a, dtype) for a in host]
    hostf = [a.astype(np.float64) if dtype == np.float64 else a.astype(np.float32) for a in host]
    assert fastopt.global_norm(dev) == fastopt.global_norm(hostf, backend="numpy")
    n, per = fastopt.global_norm(dev, per_array=True)
    n0, per0 = fastopt.global_norm(hostf, per_array=True, backend="numpy")
    assert n == n0 and np.array_equal(per, per0)
    assert fastopt.global_norm(dev, ord=math.inf) == fastopt.global_norm(hostf, ord=math.inf)
    assert fastopt.global_norm(dev) == fastopt.global_norm(dev)  # run to run


@gpu
@pytest.mark.parametrize("lib", LIBS)
def test_gpu_global_norm_large_and_nonfinite(lib):
    """Over 2048 blocks in one array (the fold's global-memory levels); NaN, inf, 3e200."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((1 << 25) + 3).astype(np.float32)
    assert fastopt.global_norm(to_dev(lib, a)) == fastopt.global_norm(a)
    for bad, check in ((np.nan, math.isnan), (np.inf, math.isinf)):
        b = a[:1000].copy()
        b[999] = bad
        assert check(fastopt.global_norm([to_dev(lib, a[:5]), to_dev(lib, b)]))
    assert fastopt.global_norm(to_dev(lib, np.array([3e200, 4e200]))) == pytest.approx(
        5e200, rel=1e-15)


@gpu
@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_clip_matches_cpu(dtype, lib):
    rng = np.random.default_rng(5)
    host = [round_to(rng.standard_normal(n).astype(np.float32), dtype) for n in (5, 70001)]
    if dtype == np.float64:
        host = [rng.standard_normal(n) for n in (5, 70001)]
    dev = [to_dev(lib, a, dtype) for a in host]
    t = fastopt.clip_by_global_norm(dev, 1.0)
    hostf = [a.astype(np.float32 if dtype != np.float64 else np.float64) for a in host]
    t0 = fastopt.global_norm(hostf)
    assert t == t0
    sync()
    s = np.float32(1.0 / t0) if dtype != np.float64 else 1.0 / t0
    for a, d in zip(hostf, dev):
        want = a * s
        np.testing.assert_allclose(to_np(d), round_to(want, dtype) if dtype in (F16, BF16)
                                   else want, **TOL[dtype])


HALTON_GPU_CASES = [  # (n, d, start, scramble, shift)
    (1, 1, 0, True, False), (7, 3, 5, True, True), (129, 9, 2**40, True, True),
    (4097, 2, 123, False, True), (1000, 70, 2**62 + 1, True, True),
    (300, 17, 2**64 - 300, False, False), (2049, 33, 2**32 - 1000, False, True),
    (5, 200, 77, True, False), (3000, 600, 2**32 - 1500, True, True),  # terms beyond shared
    ((1 << 20) + 7, 16, 12345, True, True),
]


@gpu
@pytest.mark.parametrize("case", HALTON_GPU_CASES, ids=str)
def test_gpu_halton_bits_equal_cpu(case, monkeypatch):
    """Output poisoned with NaN first; every bit equals the CPU's."""
    n, d, start, scramble, shift = case
    made, empty = [], _device.empty

    def poisoned(shape, dtype, **kw):
        made.append(empty(shape, dtype, fill=np.nan))
        return made[-1]

    monkeypatch.setattr(_device, "empty", poisoned)
    kw = dict(seed=2024, start=start, scramble=scramble, shift=shift)
    got = fastopt.halton(n, d, backend="cuda", **kw)
    want = fastopt.halton(n, d, **kw)
    assert made and got is made[-1]
    assert np.array_equal(to_np(got), want)


@gpu
@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_guarded_step_matches_reference(dtype, lib):
    """The cuda backend's guarded_step against the reference on host copies: the control array
    bit for bit (norm, scale, flags, row, count), params close, through clipped, skipped and,
    in float64, rescaled-norm steps; 16-bit grads are exact in float32 on the host."""
    rng = np.random.default_rng(zlib.crc32(f"guard{dtype}{lib}".encode()))
    wide = np.float64 if dtype == np.float64 else np.float32
    sizes = (5, (1 << 16) + 3, 40000)
    def val(x):  # values the dtype holds exactly (16-bit ones kept in float32 on the host)
        return round_to(x, dtype) if dtype in (F16, BF16) else x

    hp = [val(rng.standard_normal(n).astype(wide)) for n in sizes]
    dp = [to_dev(lib, a, dtype) for a in hp]
    hs, ds = F.init_state("adam", hp), F.init_state("adam", dp)
    G = _registry
    hctl = np.zeros((G.GUARD_WINDOW + 1, G.GUARD_WIDTH))
    hctl[0, G.G_APPLIED] = 4
    dctl = _device.from_host(dp[0], hctl)
    hmirror = _device.Mapped(np.zeros_like(hctl), 0, None, None)
    dmirror = _device.mapped(dp[0], hctl.shape)
    kinds = ["clip", "nan", "free"] + (["huge", "tiny"] if dtype == np.float64 else [])
    for i, kind in enumerate(kinds):
        hg = [val(rng.standard_normal(n).astype(wide)) for n in sizes]
        if kind == "nan":
            hg[1][7] = np.nan
        scale = {"huge": 1e200, "tiny": 1e-200}.get(kind, 1.0)
        hg = [g * wide(scale) for g in hg]
        rows = [F.scalars("adam", lr=0.01 / (t + 1), step=t) for t in range(3, 6 + i)]
        limit = {"free": math.inf, "huge": 1e199}.get(kind, 20.0)
        args = (rows, 3, limit, True)
        _dispatch.module("cuda").guarded_step(GuardedCall(
            "adam", dp, [to_dev(lib, g, dtype) for g in hg], [ds["m"], ds["v"]], *args, dctl,
            1 + i, i + 1, dmirror))
        _dispatch.module("numpy").guarded_step(GuardedCall(
            "adam", hp, hg, [hs["m"], hs["v"]], *args, hctl, 1 + i, i + 1, hmirror))
        hp = [val(a) for a in hp]  # 16-bit params: computed in float32, stored rounded
        sync()
        np.testing.assert_array_equal(to_np(dctl), hctl, err_msg=f"step {i} ({kind})")
        np.testing.assert_array_equal(dmirror.host, hmirror.host)  # written by the kernel
    for want, got in zip(hp, dp):
        np.testing.assert_allclose(to_np(got), want.astype(np.float64), **TOL[dtype])
    assert hctl[0, G.G_APPLIED] == 4 + len(kinds) - 1 and hctl[2, G.G_SKIPPED] == 1


@gpu
@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_global_norm_as_device_array(dtype, lib):
    """as_array=True on the GPU: a 0-d float64 device array with the CPU's bits."""
    rng = np.random.default_rng(zlib.crc32(f"asarray{dtype}{lib}".encode()))
    wide = np.float64 if dtype == np.float64 else np.float32
    hx = [round_to(rng.standard_normal(n).astype(wide), dtype) if dtype in (F16, BF16)
          else rng.standard_normal(n).astype(wide) for n in (3, (1 << 16) + 5, 70000)]
    got = fastopt.global_norm([to_dev(lib, a, dtype) for a in hx], as_array=True)
    assert _device.is_device_array(got) and tuple(got.shape) == ()
    assert float(to_np(got)).hex() == fastopt.global_norm(hx).hex()


@gpu
@pytest.mark.parametrize("lib", LIBS)
def test_gpu_optimizer_class_streams_and_skip(lib):
    """fastopt.Adam on device arrays, on a non-default stream; a NaN gradient skips the step."""
    rng = np.random.default_rng(6)
    hp = [rng.standard_normal(n).astype(np.float32) for n in (5, 100_001)]
    dp = [to_dev(lib, a) for a in hp]
    ho = fastopt.Adam(hp, lr=0.01, max_grad_norm=1.0, backend="numpy")
    do = fastopt.Adam(dp, lr=0.01, max_grad_norm=1.0)
    if lib == "torch":
        import torch
        stream = torch.cuda.Stream()
        ctx = torch.cuda.stream(stream)
    else:
        import cupy
        ctx = cupy.cuda.Stream(non_blocking=True)
    for _ in range(3):
        hg = [rng.standard_normal(a.size).astype(np.float32) for a in hp]
        r0 = ho.step(hg)
        with ctx:
            r1 = do.step([to_dev(lib, g) for g in hg])
        assert r1.grad_norm == r0.grad_norm and r1.clipped == r0.clipped
    sync()
    for want, got in zip(hp, dp):
        np.testing.assert_allclose(to_np(got), want, **TOL[np.dtype(np.float32)])
    bad = [np.full(a.size, np.nan, np.float32) for a in hp]
    before = [to_np(a) for a in dp]
    r = do.step([to_dev(lib, g) for g in bad])
    assert r.pending  # guarded: decided on the device, read when asked
    with pytest.warns(RuntimeWarning, match="skipped"):
        assert r.skipped
    assert do.step_count == 3
    assert all(np.array_equal(to_np(a), b) for a, b in zip(dp, before))
    sd = do.state_dict()
    assert all(isinstance(v, np.ndarray) for k, v in sd.items() if k.startswith(("m.", "v.")))
