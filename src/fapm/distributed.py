"""The few collectives a sharded fit and test need, on ``torch.distributed`` (gloo on CPU, NCCL on GPU).

Every function is a no-op for a single process, so the same code runs with or without
DDP. Tensors travel with tensor collectives (padded to a common shape, then trimmed); the
small per-sample records of a test set (names, paths) with the object collectives.
Ranks hold *contiguous* shards of every dataset (:class:`fapm.data.sampling.ShardedBatches`),
so concatenating per-rank pieces in rank order restores the dataset order exactly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_bounds(count: int, rank: int, size: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank``'s contiguous share of ``count`` items (sizes differ by at most one)."""
    base, extra = divmod(count, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def _comm_device(tensor: Tensor) -> torch.device:
    """Where a collective must see the tensor: NCCL needs CUDA, gloo takes CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_sizes(value: int) -> list[int]:
    """Every rank's ``value`` (e.g. how many rows it holds), in rank order."""
    rank, size = world()
    if size == 1:
        return [value]
    device = _comm_device(torch.empty(0))
    mine = torch.tensor([value], dtype=torch.long, device=device)
    out = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(out, mine)
    return [int(t.item()) for t in out]


def all_gather_rows(tensor: Tensor, dim: int = 0) -> Tensor:
    """Concatenate every rank's ``tensor`` along ``dim`` in rank order (sizes along ``dim`` may differ).

    Returns the result on ``tensor``'s device.
    """
    rank, size = world()
    if size == 1:
        return tensor
    sizes = all_gather_sizes(tensor.shape[dim])
    longest = max(sizes)
    device = _comm_device(tensor)
    moved = tensor.to(device).movedim(dim, 0).contiguous()
    padded = moved.new_zeros((longest, *moved.shape[1:]))
    padded[: moved.shape[0]] = moved
    pieces = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(pieces, padded)
    joined = torch.cat([p[:n] for p, n in zip(pieces, sizes)])
    return joined.movedim(0, dim).to(tensor.device)


def gather_to_owner(tensor: Tensor, owner: int, dim: int = 1) -> Tensor | None:
    """Rank ``owner`` receives every rank's ``tensor`` concatenated along ``dim`` in rank order;
    the other ranks get None. Sizes along ``dim`` may differ; every other dim must agree."""
    rank, size = world()
    if size == 1:
        return tensor
    sizes = all_gather_sizes(tensor.shape[dim])
    longest = max(sizes)
    device = _comm_device(tensor)
    moved = tensor.to(device).movedim(dim, 0).contiguous()
    padded = moved.new_zeros((longest, *moved.shape[1:]))
    padded[: moved.shape[0]] = moved
    pieces = [torch.empty_like(padded) for _ in range(size)] if rank == owner else None
    dist.gather(padded, pieces, dst=owner)
    if rank != owner:
        return None
    assert pieces is not None
    joined = torch.cat([p[:n] for p, n in zip(pieces, sizes)])
    return joined.movedim(0, dim).to(tensor.device)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj`` (our own in-memory records), in rank order."""
    rank, size = world()
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def gather_objects(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's picklable ``obj`` on rank ``dst`` (rank order); None on the other ranks."""
    rank, size = world()
    if size == 1:
        return [obj]
    out: list[Any] | None = [None] * size if rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    rank, size = world()
    if size == 1:
        return obj
    holder = [obj if rank == src else None]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if world()[1] > 1:
        dist.barrier()
