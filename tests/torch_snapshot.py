"""Helpers for the fastopt.torch tests: snapshots of a torch optimizer (everything a refused
call must leave as it was: groups, params and state, tensors by their bytes), and Lion in plain
torch ops, the oracle for fastopt.torch.Lion (torch.optim has no Lion)."""
import math

import torch


def encode(v):
    if torch.is_tensor(v):
        if v.numel() and v.untyped_storage().nbytes() == 0:  # freed: its identity is all it has
            return ("freed", id(v), tuple(v.shape))
        return ("tensor", str(v.dtype), tuple(v.shape), v.detach().cpu().numpy().tobytes())
    if isinstance(v, dict):
        return {k: encode(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(encode(x) for x in v)
    return repr(v) if isinstance(v, float) and math.isnan(v) else v  # NaN == NaN here


def snapshot(opt):
    groups = [{k: ([id(p) for p in v] if k == "params" else encode(v)) for k, v in g.items()}
              for g in opt.param_groups]
    params = [encode(p) for g in opt.param_groups for p in g["params"]]
    state = {id(p): encode(st) for p, st in opt.state.items()}
    return groups, params, state


class ReferenceLion(torch.optim.Optimizer):
    """Lion as the paper states it, one torch op at a time, with fastopt.torch.Lion's options,
    defaults and state (``exp_avg``): per param with a gradient g (-g with maximize),

    p <- p (1 - lr wd);  p <- p - lr sign(b1 m + (1 - b1) g);  m <- b2 m + (1 - b2) g.

    Each product by a hyperparameter is its own op, the scalar rounded to the param's dtype
    (no fused multiply-add; lr sign(u) is exact), as fastopt's kernels compute it, so the two
    agree bit for bit."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay,
                                      maximize=maximize))

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # as torch's classes fill in a flag a checkpoint lacks
            group.setdefault("maximize", False)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if group["maximize"] else p.grad
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                p.mul_(1.0 - lr * wd)
                p.add_((m * b1 + g * (1.0 - b1)).sign(), alpha=-lr)
                m.mul_(b2).add_(g * (1.0 - b2))
        return loss
