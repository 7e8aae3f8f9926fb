import os
import subprocess
import sys

import pytest

import fastopt
from fastopt import _dispatch, _registry


def test_backends_lists_reference_and_is_ordered():
    names = fastopt.backends()
    assert "numpy" in names
    order = list(_registry.ALL_BACKENDS)
    assert names == sorted(names, key=order.index)


def test_default_is_fastest_available():
    want = next(b for b in _registry.CPU_BACKENDS if _dispatch.unavailable_reason(b) is None)
    assert _dispatch.resolve("optim.adam") == want


def test_env_variable_and_explicit_argument(monkeypatch):
    monkeypatch.setenv("FASTOPT_BACKEND", "numpy")
    assert _dispatch.resolve("optim.adam") == "numpy"
    if _dispatch.unavailable_reason("numba") is None:
        assert _dispatch.resolve("optim.adam", "numba") == "numba"  # argument beats variable


def test_unavailable_backend_says_why_and_what_is_available(monkeypatch):
    _dispatch.refresh()
    monkeypatch.setattr(_dispatch, "unavailable_reason",
                        lambda b: "pretend it is missing" if b == "cpp" else None)
    with pytest.raises(ValueError, match="cpp.*not available: pretend it is missing.*Available"):
        _dispatch.resolve("optim.adam", "cpp")


def test_host_backend_refused_for_device_and_back():
    with pytest.raises(ValueError, match="cannot run on host"):
        _dispatch.resolve("optim.adam", "cuda")
    with pytest.raises(ValueError, match="cannot run on device"):
        _dispatch.resolve("optim.adam", "cpp", device=True)


def test_import_needs_only_numpy(tmp_path):
    """import fastopt works when numba, scipy, torch and the extension are all missing."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('numba', 'scipy', 'torch', 'matplotlib') or name in ('fastopt._C', 'fastopt._C_cuda'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np, fastopt\n"
        "p = np.ones(3); fastopt.Adam(p, 0.1).step(np.ones(3))\n"
        "print(fastopt.backends(), sorted(m for m in sys.modules if m.split('.')[0] in ('numba','torch','scipy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['numpy'] []", out.stdout + out.stderr


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="only CI promises a compiler and numba")
def test_ci_runs_the_native_backends():
    """In CI the tests must exercise the installed extension, not a source tree without it."""
    assert _dispatch.unavailable_reason("cpp") is None, _dispatch.unavailable_reason("cpp")
    assert _dispatch.unavailable_reason("numba") is None
    assert "site-packages" in fastopt.__file__, fastopt.__file__
