"""Multi-process training with torch.distributed, as `rnnext train ... --distributed` uses it.

Launch with torchrun (one process per device or CPU socket share); every rnnext module works inside
`torch.nn.parallel.DistributedDataParallel` unchanged, because its parameters are ordinary `nn.Parameter`s
and its gradients come from ordinary autograd::

    torchrun --nproc-per-node 2 -m rnnext train listops --distributed --minutes 20

The backend is gloo on the CPU and NCCL on CUDA devices; the global batch is `batch_size x world_size`.
"""

from __future__ import annotations

import atexit
import gc
import os
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
from torch import nn


class Context(NamedTuple):
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str = "cpu", backend: Optional[str] = None) -> Context:
    """Joins the process group that torchrun (or any launcher setting RANK, WORLD_SIZE, MASTER_ADDR and
    MASTER_PORT) describes. On CUDA each process takes the device LOCAL_RANK."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError("--distributed: the environment lacks " + ", ".join(missing) +
                         "; launch with torchrun, e.g. `torchrun --nproc-per-node 2 -m rnnext train listops "
                         "--distributed`")
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"))
        atexit.register(_leave_at_exit)
    return Context(rank, world, local, dev)


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """DistributedDataParallel around a model already on ctx.device (parameters are broadcast from rank 0)."""
    if ctx.device.type == "cuda":
        return nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index])
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def agree_max(value, ctx: Optional[Context]):
    """The largest value over all processes (used so that time budgets end on the same step everywhere); a tuple
    of values is reduced element by element in one collective and returned as a tuple."""
    many = isinstance(value, (tuple, list))
    if ctx is None or ctx.world_size == 1:
        return tuple(float(v) for v in value) if many else value
    t = torch.tensor(list(value) if many else [value], dtype=torch.float64, device=ctx.device)  # NCCL: device
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(t.tolist()) if many else float(t.item())


def barrier(ctx: Optional[Context]) -> None:
    if ctx is not None and ctx.world_size > 1:
        dist.barrier()


def shutdown(ctx: Optional[Context]) -> None:
    """Leaves the process group once every process is done: all of them meet at a barrier (the other processes
    finish training before the first one has evaluated and saved), then the group is destroyed and collected
    while the interpreter is fully alive. Callers release their DistributedDataParallel wrappers first (a wrapper
    holds the group)."""
    if ctx is not None and dist.is_initialized():
        if ctx.world_size > 1:
            dist.barrier()
        _leave_group()


def _leave_group() -> None:
    """Destroys the process group and collects what held it, so that the backend's threads are joined now.

    Why this matters (found under torch 2.14.1 with gloo, about one run in 20 aborting with "terminate called
    without an active exception" after all of its work was done): a gloo process group that is still alive when
    the interpreter finalizes is torn down with it, and one of its worker threads (ProcessGroupGloo::runLoop),
    finishing a collective, releases tensors that Python has seen, which takes the GIL. During finalization
    CPython ends a thread that asks for the GIL with pthread_exit, whose forced unwinding meets the noexcept
    frame of the std::thread running runLoop: std::terminate. A group destroyed before finalization has joined
    those threads, so nothing of it runs then."""
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def _leave_at_exit() -> None:
    """atexit hook of init_from_env: a process that did not reach shutdown (an exception, sys.exit, Ctrl-C)
    still destroys its process group before the interpreter finalizes (see _leave_group); without the barrier,
    which the other processes may never reach."""
    try:
        _leave_group()
    except Exception:  # (a broken group: nothing more can be done for it here)
        pass
