"""Samplers for distributed runs: every sample exactly once, in order, split into contiguous shards.

Lightning's default distributed sampler repeats samples so that every rank gets as many
(harmless for gradient training, wrong for a memory that must hold each training image
once and for metrics that must count each test image once) and interleaves them. Here rank
``r`` reads one contiguous block, so rank-ordered concatenation restores the dataset order
and a sharded fit builds the same memory as a single process.

Shards are made of whole batches, the very batches a single process would run, because a
CNN's floating-point result for an image depends on the batch it is computed in. Ranks
must also run the same number of batches (Lightning's training loop exchanges a small
tensor with every batch under DDP): shorter shards are topped up with *padding* batches
(index ``count``), which :class:`PaddedDataset` turns into flagged placeholders that every
consumer drops (``batch["padding"]``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from fapm.distributed import shard_bounds


class ShardedBatches(Sampler[list[int]]):
    """Rank ``rank``'s contiguous share of the single-process batches of ``count`` samples.

    The batches are exactly those one process would make (``[0, b)``, ``[b, 2b)``, …): a CNN's
    numerics depend on the batch it runs in, so only identical batches give bit-identical
    features. They are split into contiguous blocks, one per rank, and shorter blocks are
    topped up with padding batches (the one index ``count``) so that every rank runs as many.

    Args:
        count: dataset length.
        batch_size: samples per batch.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(self, count: int, batch_size: int, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.count = count
        starts = range(0, count, batch_size)
        batches = [list(range(lo, min(lo + batch_size, count))) for lo in starts]
        lo, hi = shard_bounds(len(batches), rank, world_size)
        first = shard_bounds(len(batches), 0, world_size)  # rank 0's block is the longest
        self.batches = batches[lo:hi] + [[count]] * ((first[1] - first[0]) - (hi - lo))

    @property
    def real(self) -> int:
        """Samples of this shard that are not padding."""
        return sum(len(b) for b in self.batches if b != [self.count])

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class PaddedDataset(Dataset):
    """``dataset`` whose items carry ``"padding": False``; index ``len(dataset)`` is a padding item
    shaped like item 0 (zeros, empty strings) with ``"padding": True``.

    ``"label"`` of a padding item is 0 and ``"defect_type"`` empty; consumers must drop it
    (:func:`drop_padding`)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < len(self.dataset):
            return {**self.dataset[index], "padding": False}
        item = self.dataset[0]
        placeholder = {
            k: torch.zeros_like(v) if isinstance(v, torch.Tensor) else "" if isinstance(v, str) else v
            for k, v in item.items()
        }
        return {**placeholder, "padding": True}


def drop_padding(batch: dict[str, Any]) -> dict[str, Any] | None:
    """The batch without its padding samples (itself when it has none); None when all are padding."""
    flags = batch.get("padding")
    if flags is None:
        return batch
    keep = ~torch.as_tensor(flags, dtype=torch.bool)
    if bool(keep.all()):
        return batch
    if not bool(keep.any()):
        return None
    rows = keep.nonzero().squeeze(1).tolist()
    return {
        k: v[keep.to(v.device)] if isinstance(v, torch.Tensor) and v.dim() > 0 else [v[i] for i in rows]
        if isinstance(v, (list, tuple)) else v
        for k, v in batch.items()
    }
