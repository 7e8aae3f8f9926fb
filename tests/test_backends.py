"""The backend list (_registry.BACKENDS) is the one declaration of what exists: every backend
module provides exactly the kernels its record claims, with the BackendModule signatures;
availability probes come from the record and can be refreshed after an install."""
import importlib
import inspect
import sys

import pytest

import fastopt
from fastopt import _dispatch, _native, _registry, _rules
from fastopt._registry import BACKENDS, ENTRY, Backend, BackendModule, entry


def contract() -> dict:
    """BackendModule function name -> its parameter names."""
    return {name: list(inspect.signature(getattr(BackendModule, name)).parameters)[1:]
            for name in set(ENTRY.values())}


def importable(b: Backend) -> bool:
    for package, _ in b.requires:
        try:
            importlib.import_module(package)
        except ImportError:
            return False
    return True


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_backend_module_exports_what_the_list_claims(backend):
    if not importable(backend):  # nothing to hold it to here: its record is still checked
        assert _dispatch.unavailable_reason(backend.name)
        return
    mod = importlib.import_module(backend.module)  # importable without its hardware
    want = contract()
    claimed = {entry(k) for k in backend.kernels}
    provided = {name for name in want if callable(getattr(mod, name, None))}
    assert provided == claimed, (backend.name, sorted(provided ^ claimed))
    for name in claimed:
        got = list(inspect.signature(getattr(mod, name)).parameters)
        assert got == want[name], (backend.name, name, got)


def test_every_rule_is_a_kernel_of_every_backend():
    for b in BACKENDS:
        assert {f"optim.{r}" for r in _rules.RULES} <= set(b.kernels), b.name


def test_capability_table_is_derived_from_the_list():
    for kernel, table in _registry.KERNELS.items():
        assert table == {b.name: b.kernels[kernel] for b in BACKENDS if kernel in b.kernels}
    assert _registry.ALL_BACKENDS == tuple(b.name for b in BACKENDS if not b.device) + tuple(
        b.name for b in BACKENDS if b.device)


def test_every_backend_function_has_a_kernel_family():
    assert {entry(k) for b in BACKENDS for k in b.kernels} == set(ENTRY.values())


@pytest.fixture
def fresh_probes():
    _dispatch.refresh()
    yield
    _dispatch.refresh()


def test_a_later_install_is_seen_after_refresh(tmp_path, monkeypatch, fresh_probes):
    fake = Backend("fake", False, "fastopt._reference", {"optim.sgd": (_registry.F32,)},
                   requires=(("fastopt_probe_pkg", "pip install fastopt-probe-pkg"),))
    monkeypatch.setitem(_registry.BACKEND, "fake", fake)
    assert _dispatch.unavailable_reason("fake") == (
        "fastopt_probe_pkg is not installed (pip install fastopt-probe-pkg)")
    (tmp_path / "fastopt_probe_pkg.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fastopt_probe_pkg", raising=False)
    assert _dispatch.unavailable_reason("fake") is not None  # remembered until refreshed
    fastopt.refresh_backends()
    assert _dispatch.unavailable_reason("fake") is None


def test_a_broken_package_is_not_available(tmp_path, monkeypatch, fresh_probes):
    (tmp_path / "fastopt_broken_pkg.py").write_text("raise RuntimeError('half installed')")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = Backend("fake", False, "fastopt._reference", {}, requires=(("fastopt_broken_pkg", ""),))
    monkeypatch.setitem(_registry.BACKEND, "fake", fake)
    assert "cannot be imported (RuntimeError: half installed)" in _dispatch.unavailable_reason(
        "fake")


def test_a_missing_extension_is_looked_for_again_after_refresh(monkeypatch, fresh_probes):
    if _native.cpu() is None:
        pytest.skip("the C++ extension is not built here")  # CI builds it
    monkeypatch.setitem(_native._loaded, "cpu", (None, "the extension fastopt._C is not built"))
    _dispatch._probed.clear()
    assert "is not built" in _dispatch.unavailable_reason("cpp")
    assert _dispatch.resolve("optim.adam") != "cpp"
    fastopt.refresh_backends()  # forgets the failure: the extension imports again
    assert _dispatch.unavailable_reason("cpp") is None
    assert _dispatch.resolve("optim.adam") == "cpp"
