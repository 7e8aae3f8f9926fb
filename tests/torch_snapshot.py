"""Snapshots of a torch optimizer for the fastopt.torch tests: everything a refused call must
leave as it was (groups, params and state, tensors by their bytes)."""
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
