"""torch_compat=True reproduces torch.optim.Adam/AdamW trajectories (CPU torch, foreach=False)."""
import numpy as np
import pytest

import fastopt

from conftest import cpu_cases

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")

TORCH_TOL = {np.dtype(np.float32): dict(rtol=2e-5, atol=2e-6),
             np.dtype(np.float64): dict(rtol=1e-11, atol=1e-13)}


@pytest.mark.parametrize("backend,dtype", cpu_cases("optim.adamw"))
@pytest.mark.parametrize("name,wd", [("Adam", 0.0), ("Adam", 0.05), ("AdamW", 0.1)])
def test_torch_trajectory(name, wd, backend, dtype):
    rng = np.random.default_rng(7)
    shapes = [(1,), (7, 3), (129,), (4097,)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(20)]
    tp = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    topt = getattr(torch.optim, name)(tp, lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=wd,
                                      foreach=False)
    ours = [p.copy() for p in params]
    cls = fastopt.Adam if name == "Adam" else fastopt.AdamW
    opt = cls(ours, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-6, weight_decay=wd, torch_compat=True,
              backend=backend)
    for g in grads:
        for t, gi in zip(tp, g):
            t.grad = torch.from_numpy(gi.copy())
        topt.step()
        opt.step(g)
    for t, p in zip(tp, ours):
        np.testing.assert_allclose(p, t.detach().numpy(), **TORCH_TOL[np.dtype(dtype)])
    for t, m, v in zip(tp, opt.state["m"], opt.state["v"]):
        st = topt.state[t]
        np.testing.assert_allclose(m, st["exp_avg"].numpy(), **TORCH_TOL[np.dtype(dtype)])
        np.testing.assert_allclose(v, st["exp_avg_sq"].numpy(), **TORCH_TOL[np.dtype(dtype)])
    # and the default (source-document) mode really is a different rule
    other = [p.copy() for p in params]
    o2 = cls(other, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-6, weight_decay=wd, backend=backend)
    for g in grads:
        o2.step(g)
    assert not all(np.array_equal(a, b) for a, b in zip(other, ours))
