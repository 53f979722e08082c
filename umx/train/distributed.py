"""torch's own distributed engine, as torchrun sets it up.

`torchrun --nproc-per-node N -m umx.train …` sets RANK / WORLD_SIZE /
LOCAL_RANK; without them this is a single process and every function here
is a no-op, so the same command line works unchanged with one process.
NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(use_cuda: bool, timeout_s: float = 600.0) -> tuple[Context, torch.device]:
    """Join the process group torchrun describes (if any); pick this process's device. A collective
    that waits longer than `timeout_s` (a dead peer) raises instead of hanging (NCCL: with torch's
    default TORCH_NCCL_ASYNC_ERROR_HANDLING, the process is aborted), so torchrun can restart."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ctx = Context(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if use_cuda:
        torch.cuda.set_device(ctx.local_rank)
        device = torch.device("cuda", ctx.local_rank)
    else:
        device = torch.device("cpu")
    if ctx.active and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return ctx, device


def sum_all(values: list[float], ctx: Context, device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all ranks (float64)."""
    if not ctx.active:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_all(items: list, ctx: Context) -> list:
    """Every rank's `items`, concatenated in rank order, on every rank."""
    if not ctx.active:
        return list(items)
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]


def agree(flag: bool, ctx: Context, device: torch.device) -> bool:
    """Rank 0's `flag` on every rank (a decision every rank must take alike, e.g. a timed checkpoint)."""
    if not ctx.active:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int64, device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()


def teardown(ctx: Context) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_buffers(module: torch.nn.Module, ctx: Context) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP syncs them at the start of each forward, so after the last training
    step they differ; validation and the saved model must be one model.
    """
    if ctx.active:
        for buf in module.buffers():
            dist.broadcast(buf, 0)
