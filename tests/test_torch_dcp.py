"""fastopt.torch under torch.distributed.checkpoint (DCP): an FSDP2 model and its fastopt
AdamW, saved at 5 steps on 2 ranks, resumed on 1 and on 3 ranks (resharded by DCP), reach
the same params after 10 steps as the run that never stopped.

Reuses the spawned-ranks harness and the MLP/data of tests/test_torch_dist.py; the global
batch of each step is the same whatever the world size (12 rows split evenly, mean loss), so
the three trajectories differ only by the order of float32 sums.
"""
import pytest

torch = pytest.importorskip("torch")

from test_torch_dist import (  # noqa: E402  (tests/ is on sys.path under pytest)
    F32, _data, _full, _loss, _mlp, _rows, _shard_fsdp2, run_ranks)

import fastopt.torch as fot  # noqa: E402

STEPS = 10
SAVE_AT = 5
KW = dict(lr=1e-2, weight_decay=0.01, max_grad_norm=1.0)
#: the optimizer class under test: fastopt's, or (scratch control) torch's by name
OPTIMIZERS = {"fastopt": lambda ps: fot.AdamW(ps, **KW),
              "torch": lambda ps: torch.optim.AdamW(
                  ps, **{k: v for k, v in KW.items() if k != "max_grad_norm"})}


def _build(world, which):
    from torch.distributed.device_mesh import init_device_mesh

    model = _shard_fsdp2(_mlp(), init_device_mesh("cpu", (world,)))
    return model, OPTIMIZERS[which](model.parameters())


def _train(model, opt, rank, world, steps):
    xs, ys = _data(STEPS)
    rows = _rows(rank, world)
    for t in steps:
        opt.zero_grad()
        _loss(model, xs[t, rows], ys[t, rows]).backward()
        if isinstance(opt, torch.optim.AdamW) and not isinstance(opt, fot.AdamW):
            # control: torch's AdamW has no fused clip; clip by the global norm the same way
            torch.nn.utils.clip_grad_norm_(model.parameters(), KW["max_grad_norm"])
        opt.step()


def _step_counts(opt):
    return sorted({float(st["step"]) for st in opt.state.values() if "step" in st})


def _local_abs_sum(opt, key):
    total = 0.0
    for st in opt.state.values():
        t = st[key]
        t = t.to_local() if hasattr(t, "to_local") else t
        total += float(t.abs().sum())
    return total


def _reference_and_save(rank, world, ckpt_dir, which):
    """One launch on 2 ranks: the uninterrupted 10-step reference, then a fresh model trained
    SAVE_AT steps and saved with DCP."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, opt = _build(world, which)
    _train(model, opt, rank, world, range(STEPS))
    reference = [_full(p) for p in model.parameters()]
    ref_steps = _step_counts(opt)

    model, opt = _build(world, which)
    _train(model, opt, rank, world, range(SAVE_AT))
    saved_steps = _step_counts(opt)
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=ckpt_dir)
    return dict(reference=reference, ref_steps=ref_steps, saved_steps=saved_steps,
                saved=[_full(p) for p in model.parameters()])


def _load_and_resume(rank, world, ckpt_dir, which):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model, opt = _build(world, which)
    model_sd, optim_sd = get_state_dict(model, opt)  # the target structure (inits the state)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=ckpt_dir)
    set_state_dict(model, opt, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    loaded = [_full(p) for p in model.parameters()]
    loaded_steps = _step_counts(opt)
    # summed over ranks by the caller: a rank's shard can be empty on 3 ranks
    exp_avg_local = _local_abs_sum(opt, "exp_avg")
    _train(model, opt, rank, world, range(SAVE_AT, STEPS))
    return dict(final=[_full(p) for p in model.parameters()], loaded=loaded,
                loaded_steps=loaded_steps, final_steps=_step_counts(opt),
                exp_avg_local=exp_avg_local)


def _save_and_resume(tmp_path, which):
    ckpt = str(tmp_path / "ckpt")
    saved = run_ranks(_reference_and_save, 2, ckpt, which, timeout=120)
    reference = saved[0]["reference"]
    for r in saved:
        assert r["ref_steps"] == [float(STEPS)]
        assert r["saved_steps"] == [float(SAVE_AT)]
    resumed = {w: run_ranks(_load_and_resume, w, ckpt, which, timeout=120) for w in (1, 3)}
    return saved, reference, resumed


def _check(saved, reference, resumed):
    for world, ranks in resumed.items():
        assert sum(r["exp_avg_local"] for r in ranks) > 0, f"world {world}: exp_avg is zero"
        for rank, r in enumerate(ranks):
            where = f"world {world}, rank {rank}"
            assert r["loaded_steps"] == [float(SAVE_AT)], where
            assert r["final_steps"] == [float(STEPS)], where
            for got, want in zip(r["loaded"], saved[0]["saved"]):
                torch.testing.assert_close(got, want, rtol=0, atol=0, msg=where)
            assert len(r["final"]) == len(reference)
            for i, (got, want) in enumerate(zip(r["final"], reference)):
                torch.testing.assert_close(got, want, **F32,
                                           msg=lambda m, i=i, w=where: f"{w}, param {i}: {m}")


@pytest.mark.slow
def test_dcp_checkpoint_saved_at_2_loads_at_1_and_3(tmp_path):
    _check(*_save_and_resume(tmp_path, "fastopt"))
