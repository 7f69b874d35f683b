"""The memory build: every stream's collected features → its per-region memories (coreset + adaptive rule).

How one stream's memories are built is a strategy passed in by the caller:

* :class:`LocalBuild` (the default): this process holds every training feature and runs the
  (adaptive) coreset on all regions at once;
* :class:`fapm.lightning.sharded_build.ShardedBuild`: under DDP each rank holds a shard of
  the training images and builds a block of regions (the Lightning layer passes it in, so
  :mod:`fapm.models` knows nothing about processes).

A strategy also says how the training images' mean thumbnail (the alignment reference) is
taken over the processes, and whether training images may be aligned (one frame needs one
process).
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Protocol, Sequence

import torch
from torch import Tensor

from fapm.models.adaptive import AdaptiveCoreset
from fapm.models.build_report import BuildReport
from fapm.models.feature_store import FeatureStore
from fapm.models.patch_memory import PatchMemory


class BuildStrategy(Protocol):
    """How one stream's memories are built from this process's features."""

    #: True when the training set is spread over several processes.
    distributed: bool

    def build_layer(
        self, coreset: AdaptiveCoreset, memory: PatchMemory, features: Tensor, generator: torch.Generator,
        device: torch.device,
    ) -> int:
        """Fill ``memory`` from ``features [R, N_local, C]``; return the candidates per region this
        process chose from. ``generator`` is drawn as for the whole layer in one process."""

    def mean_thumbnail(self, total: Tensor, count: int) -> Tensor:
        """The mean of the training thumbnails ``[s, s]`` from this process's sum ``total`` of ``count``."""


class LocalBuild:
    """Every training feature is in this process: one coreset call per stream."""

    distributed = False

    def build_layer(
        self, coreset: AdaptiveCoreset, memory: PatchMemory, features: Tensor, generator: torch.Generator,
        device: torch.device,
    ) -> int:
        result = coreset(features, generator, device=device)
        memory.set(features, result.indices, result.lengths, result.d_max, result.enlarged, device=device)
        return int(features.shape[1])

    def mean_thumbnail(self, total: Tensor, count: int) -> Tensor:
        return total / count


class MemoryBuilder:
    """Builds every stream's :class:`PatchMemory` from a :class:`FeatureStore`.

    Args:
        coreset: the (adaptive) coreset applied to every memory.
        seed: seed of the coreset's random choices (one generator drawn over the streams in order).
    """

    def __init__(self, coreset: AdaptiveCoreset | None = None, seed: int = 0) -> None:
        self.coreset = coreset or AdaptiveCoreset()
        self.seed = int(seed)

    @torch.no_grad()
    def build(
        self,
        memories: Sequence[PatchMemory],
        features: FeatureStore,
        stream_names: Sequence[str],
        device: torch.device,
        strategy: BuildStrategy | None = None,
        progress: Callable[..., Iterable[int]] | None = None,
    ) -> BuildReport:
        """Build ``memories`` (one per stream) from ``features``, freeing each stream's as it goes.

        Args:
            device: where distances run and the memories live (the backbone's device).
            strategy: :class:`LocalBuild` (default) or a sharded build.
            progress: optional tqdm-like wrapper, called as ``progress(range(S), total=S, desc=...)``.
        """
        strategy = strategy or LocalBuild()
        generator = torch.Generator().manual_seed(self.seed)
        report = BuildReport(stream_names=list(stream_names))
        streams: Iterable[int] = range(len(memories))
        if progress is not None:
            streams = progress(streams, total=len(memories), desc=f"coreset ({', '.join(stream_names)})")
        for i in streams:
            memory = memories[i]
            start = time.perf_counter()
            report.candidates.append(strategy.build_layer(self.coreset, memory, features.take(i), generator, device))
            if memory.memory.is_cuda:
                torch.cuda.synchronize(memory.memory.device)
            report.seconds.append(time.perf_counter() - start)
            report.sizes.append(memory.sizes())
            report.d_max.append([float(v) for v in memory.d_max.tolist()])
            report.enlarged.append(int(memory.enlarged.sum()))
        return report
