"""Multi-process training with torch.distributed, as `rnnext train ... --distributed` uses it.

Launch with torchrun (one process per device or CPU socket share); every rnnext module works inside
`torch.nn.parallel.DistributedDataParallel` unchanged, because its parameters are ordinary `nn.Parameter`s
and its gradients come from ordinary autograd::

    torchrun --nproc-per-node 2 -m rnnext train listops --distributed --minutes 20

The backend is gloo on the CPU and NCCL on CUDA devices; the global batch is `batch_size x world_size`.
"""

from __future__ import annotations

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
    """Leaves the process group once every process is done. The other processes finish training before the
    first one has evaluated and saved; tearing gloo down while a peer is still connected can abort the process
    ("terminate called without an active exception"), so all of them meet at a barrier first. Callers release
    their DistributedDataParallel wrappers before this: a wrapper keeps the group alive past
    destroy_process_group, and a gloo group destroyed only at interpreter exit can abort the process (seen once
    under torch 2.14.1); the collection here destroys it while the interpreter is alive."""
    global left_group
    if ctx is not None and dist.is_initialized():
        if ctx.world_size > 1:
            dist.barrier()
        dist.destroy_process_group()
        gc.collect()
        left_group = True


# Set once this process has left a process group. Even then, gloo's threads are occasionally still being torn
# down when the interpreter's C++ static destructors run, which aborts the process after all of its work is
# done (seen under torch 2.14.1, about once in 20 runs). exit_process skips that teardown.
left_group = False


def exit_process(code: int) -> None:
    """Ends a process that took part in distributed training: flushes Python's output streams and leaves without
    running the C++ static destructors (everything the process wrote is already closed)."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
