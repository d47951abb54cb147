"""Sharding ``pyengine lift`` input files over processes started by ``torchrun``.

``torchrun --nproc-per-node N -m pyengine lift FILES... -o OUTDIR``: torchrun sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; rank r lifts files ``r, r + N, r + 2N, ...`` (in the order
given) with its own copy of the model, on ``cuda:LOCAL_RANK`` when CUDA is available (NCCL) and on the CPU
otherwise (gloo). The process group is used only to agree on the exit code at the end (the worst of all ranks),
so a rank that hit a bad file does not leave the others waiting and every rank exits with the same code; the
ranks also agree once after reading their inputs, so a bad file on any rank means no rank writes anything.
"""
import os
from dataclasses import dataclass

import torch


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self):
        return self.world_size > 1


def from_env():
    """The ranks torchrun put in the environment (a single process when ``WORLD_SIZE`` is unset or 1)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ValueError(f"torchrun environment: RANK / WORLD_SIZE / LOCAL_RANK must be integers ({exc})") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"torchrun environment: expected 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world}")
    return Context(rank, world, local)


def default_device(ctx):
    """``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
    return f"cuda:{ctx.local_rank}" if torch.cuda.is_available() else "cpu"


def init(ctx, device):
    """Join the process group (nccl for CUDA devices, gloo otherwise); no-op for a single process."""
    if not ctx.distributed or torch.distributed.is_initialized():
        return
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    torch.distributed.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size)


def shard(items, ctx):
    """The items this rank handles: every ``world_size``-th, starting at ``rank``."""
    return list(items)[ctx.rank::ctx.world_size]


def worst_exit_code(code, ctx, device):
    """The largest exit code of any rank (every rank must call it); the process group stays up. ``pyengine lift``
    calls it after reading the inputs, so a rank with a bad file stops every rank before anything is written."""
    if not ctx.distributed or not torch.distributed.is_initialized():
        return code
    t = torch.tensor([code], dtype=torch.int64,
                     device=device if torch.distributed.get_backend() == "nccl" else "cpu")
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def agree_exit_code(code, ctx, device):
    """All ranks return the largest exit code of any rank, then leave the process group."""
    if not ctx.distributed or not torch.distributed.is_initialized():
        return code
    code = worst_exit_code(code, ctx, device)
    torch.distributed.destroy_process_group()
    return code
