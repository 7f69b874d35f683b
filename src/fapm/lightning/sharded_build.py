"""The DDP memory build: a :class:`~fapm.models.memory_builder.BuildStrategy` over the ranks.

:class:`~fapm.lightning.memory_module.MemoryBankModule` passes it to the detector when the
fit runs in several processes; the plain-torch detector itself never asks about processes.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import Tensor

from fapm.distributed import all_gather_rows, all_gather_sizes, gather_to_owner, shard_bounds, world
from fapm.models.adaptive import AdaptiveCoreset
from fapm.models.patch_memory import PatchMemory


class ShardedBuild:
    """One layer's memories built across DDP ranks: rank ``r`` builds the ``r``-th block of regions.

    Every rank extracted a contiguous shard of the training images (``features [R, n_r, C]``);
    in rank order the shards are the training set. Each block of regions is gathered, from
    every rank, on its owner only; the owners run the first k-center pass on their blocks,
    exchange ``d_imax`` (``[R]`` numbers: the quantile rule ranks a whole layer), enlarge
    their own regions, and the built memories are gathered on every rank. The generator is
    drawn as for the whole layer, so the memory is the single-process one, bit for bit on
    the CPU. With the exact greedy, PatchCore's single global memory (one region) is built by
    rank 0 alone; a plain coreset with a composable sampler (``model/coreset=composable``, e.g.
    ``model=patchcore_scalable``) is built by every rank from its own images instead
    (:meth:`build_composed`).
    """

    distributed = True

    def build_layer(
        self, coreset: AdaptiveCoreset, memory: PatchMemory, features: Tensor, generator: torch.Generator,
        device: torch.device,
    ) -> int:
        if getattr(coreset.sampler, "composable", False) and not coreset.adaptive:
            return self.build_composed(coreset, memory, features, generator, device)
        rank, size = world()
        regions = features.shape[0]
        mine: Tensor | None = None
        for owner in range(size):
            lo, hi = shard_bounds(regions, owner, size)
            block = gather_to_owner(features[lo:hi], owner, dim=1)
            if owner == rank:
                mine = block
        del features
        assert mine is not None
        lo, hi = shard_bounds(regions, rank, size)
        candidates = int(mine.shape[1])
        first = coreset.first_pass(mine, generator, regions=slice(lo, hi), total=regions, device=device)
        sq_radius = None if first.sq_radius is None else all_gather_rows(first.sq_radius.float())
        enlarged = coreset.decide(all_gather_rows(first.d_max), sq_radius)
        result = coreset.finish(first, enlarged[lo:hi])
        c = mine.shape[-1]
        index = result.indices.to(mine.device)
        vectors = torch.gather(mine, 1, index.clamp_min(0).unsqueeze(-1).expand(-1, -1, c))
        vectors = vectors.to(device=device, dtype=torch.float32)  # features may be stored narrower / on the host
        vectors[index.to(device) < 0] = 0
        del mine, first
        # pad every block to the layer's longest memory, then concatenate the blocks in rank order
        longest = max(all_gather_sizes(vectors.shape[1]))
        vectors = torch.nn.functional.pad(vectors, (0, 0, 0, longest - vectors.shape[1]))
        memory.store(
            all_gather_rows(vectors), all_gather_rows(result.lengths.to(torch.long)),
            all_gather_rows(result.d_max.float()), enlarged,
        )
        return candidates

    def build_composed(
        self, coreset: AdaptiveCoreset, memory: PatchMemory, features: Tensor, generator: torch.Generator,
        device: torch.device,
    ) -> int:
        """Every rank runs the greedy on its own shard of the training images (``features [R, n_r, C]``),
        the picks are gathered and reduced by the union step on every rank
        (:meth:`~fapm.models.coreset.ComposableKCenter.compose_across`): no rank gathers the candidates."""
        rank, _ = world()
        sizes = all_gather_sizes(features.shape[1])
        k = coreset.sizes(sum(sizes))[0]
        gather = functools.partial(all_gather_rows, dim=1)
        vectors = coreset.sampler.compose_across(features, sizes, rank, k, generator, gather, device)
        del features
        r = vectors.shape[0]
        nan = torch.full((r,), float("nan"), device=vectors.device)
        memory.store(vectors, torch.full((r,), k, dtype=torch.long), nan, torch.zeros(r, dtype=torch.bool))
        return sum(sizes)

    def mean_thumbnail(self, total: Tensor, count: int) -> Tensor:
        """The mean over every rank's training thumbnails (each rank measures the spread on its own)."""
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else total.device
        buf = torch.cat([total.flatten(), torch.tensor([float(count)])]).to(device)
        dist.all_reduce(buf)
        return (buf[:-1] / buf[-1]).view_as(total).cpu()
