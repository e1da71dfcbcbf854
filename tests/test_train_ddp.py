"""fit under torch.distributed: 2 CPU processes on gloo, started like torchrun (env vars)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import radvar
from radvar import sketch, zoo
from radvar.train import fit

WORLD = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Interrupt(KeyboardInterrupt):
    """Stands for Ctrl-C reaching every rank while a history row is logged."""


def _dropout_run(rank: int, data, init: int, then: int | None = None, **extra):
    """8 steps of a dropout MLP; torch's RNG differs per rank, so each rank draws its own dropout masks."""
    torch.manual_seed(init + rank)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                torch.nn.Linear(32, 10))
    if then is not None:
        torch.manual_seed(then + rank)
    hist = fit(model, data, loss_fn=F.cross_entropy, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
               plan=sketch.Subsample(0.3), steps=8, batch_size=25, log_every=4, checkpoint_every=3, seed=1,
               device="cpu", progress=False, **extra)
    return [p.detach().clone() for p in model.parameters()], hist.drop(columns="step_time_s").to_dict("list"), torch.get_rng_state()


def _resume_under_ddp(rank: int, data, out: str) -> dict:
    """Straight 8 steps vs interrupted after the step-6 checkpoint and resumed: each rank's own RNG and window."""
    straight = _dropout_run(rank, data, 0, checkpoint=os.path.join(out, "straight.ckpt"))
    cut = os.path.join(out, "cut.ckpt")

    def interrupt(row):
        if row["step"] == 8:
            raise Interrupt

    try:
        _dropout_run(rank, data, 0, checkpoint=cut, callbacks=[interrupt])
    except Interrupt:
        pass
    resumed = _dropout_run(rank, data, 5, then=7, checkpoint=cut, resume=True)
    return {"straight": straight, "resumed": resumed}


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    x, y = zoo.synthetic(400, (64,), 10, seed=0)
    try:
        # fit joins the process group from torchrun's environment and wraps the model in DDP
        torch.manual_seed(0)
        fitted = zoo.mlp(in_features=64, hidden=32, depth=2)
        hist = fit(fitted, (x[:400], y[:400]), loss_fn=F.cross_entropy,
                   optimizer=lambda p: torch.optim.SGD(p, lr=0.1), plan=sketch.Subsample(0.2), steps=6,
                   batch_size=25, log_every=3, seed=0, device="cpu", progress=False)
        assert dist.is_initialized() and dist.get_world_size() == WORLD
        # without a seed, rank 0's data seed is used everywhere, so the ranks' shards partition each epoch
        torch.manual_seed(rank)
        unseeded = fit(zoo.mlp(in_features=64, hidden=8, depth=1), (x[:400], y[:400]), loss_fn=F.cross_entropy,
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1), steps=1, batch_size=25, device="cpu",
                       progress=False)

        # one step on the same batch with the same seed on both ranks: local RAD gradient, then DDP's
        torch.manual_seed(0)
        model = radvar.convert(zoo.mlp(in_features=64, hidden=32, depth=2), sketch.Subsample(0.2))
        xb, yb = x[:50], y[:50]
        radvar.seed(0)
        F.cross_entropy(model(xb), yb).backward()
        local = model[0].weight.grad.clone()
        model.zero_grad()
        radvar.seed(0)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        F.cross_entropy(ddp(xb), yb).backward()
        gathered = [torch.empty_like(local) for _ in range(WORLD)]
        dist.all_gather(gathered, local)
        resume = _resume_under_ddp(rank, (x, y), out)
        torch.save({"resume": resume, "local": local, "ddp": model[0].weight.grad.clone(), "gathered": gathered,
                    "params": [p.detach().clone() for p in fitted.parameters()],
                    "loss": hist["loss"].tolist(), "world_size": hist.attrs["world_size"],
                    "unseeded": unseeded.attrs["seed"]},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # Leave without the interpreter's teardown: freeing a DDP reducer after its gloo process group is
    # destroyed can block forever on the group's mutex (seen in a forked worker); the results are on disk.
    os._exit(0)


def test_ddp_two_ranks_gloo(tmp_path):
    # fork: the workers inherit the imported torch and radvar (a fresh interpreter spends most of the budget importing)
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    # each rank drew its own sketch: same data, same seed, different RAD gradients
    assert not torch.equal(r0["local"], r1["local"])
    # after all-reduce both ranks hold the same gradient: the average of the two local ones
    assert torch.equal(r0["ddp"], r1["ddp"])
    torch.testing.assert_close(r0["ddp"], (r0["gathered"][0] + r0["gathered"][1]) / WORLD)
    assert torch.equal(r0["local"], r0["gathered"][0]) and torch.equal(r1["local"], r0["gathered"][1])
    # fit under DDP keeps the replicas identical and logs the rank-averaged loss
    assert all(torch.equal(a, b) for a, b in zip(r0["params"], r1["params"]))
    assert r0["loss"] == r1["loss"] and r0["world_size"] == WORLD and len(r0["loss"]) == 2
    assert r0["unseeded"] == r1["unseeded"]
    # resume under DDP is bitwise the straight run on every rank: parameters, history and each rank's torch RNG
    for r in (r0, r1):
        (p_s, h_s, g_s), (p_r, h_r, g_r) = r["resume"]["straight"], r["resume"]["resumed"]
        assert all(torch.equal(a, b) for a, b in zip(p_s, p_r))
        assert h_s == h_r and torch.equal(g_s, g_r)
    assert not torch.equal(r0["resume"]["straight"][2], r1["resume"]["straight"][2])  # the ranks' RNGs differ
