"""Replay a whole scoring pass as one CUDA graph (batch-1 latency on a GPU).

At batch 1 a GPU spends most of a FAPM pass launching ~200 small kernels (backbone,
per-region search, fusion, blur, score) rather than computing. A CUDA graph records the
pass once for a fixed input shape and replays it with a single launch. The detector's
scoring path has no host synchronisation (no ``.item()``, no data-dependent Python
control flow), which is what capture requires; PatchCore's support-set image score uses
Python indices and cannot be captured (use eager mode for it).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor


class CudaGraphed:
    """``fn(images)`` captured for one input shape; calls replay the graph.

    The outputs are static tensors overwritten by the next call: clone what must be kept.

    Args:
        fn: the pass to capture (e.g. a detector or Lightning module in eval mode).
        example: a CUDA tensor of the input shape and dtype (its values are not kept).
        warmup: eager calls on a side stream before capture (search indexes, cuDNN
            algorithm choice and allocator pools are set up there).
    """

    def __init__(self, fn: Callable[[Tensor], Any], example: Tensor, warmup: int = 3) -> None:
        if not example.is_cuda:
            raise ValueError(f"CUDA graphs need a CUDA input, got a tensor on {example.device}")
        self.fn = fn
        self.shape = tuple(example.shape)
        self.static_input = example.detach().clone()
        side = torch.cuda.Stream(device=example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side):
            for _ in range(max(1, warmup)):
                fn(self.static_input)
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_output = fn(self.static_input)

    def __call__(self, images: Tensor) -> Any:
        if tuple(images.shape) != self.shape:
            raise ValueError(f"this graph was captured for inputs {self.shape}, got {tuple(images.shape)}")
        self.static_input.copy_(images, non_blocking=True)
        self.graph.replay()
        return self.static_output


class GraphCache:
    """One :class:`CudaGraphed` per input shape, captured on first use."""

    def __init__(self, fn: Callable[[Tensor], Any], warmup: int = 3) -> None:
        self.fn = fn
        self.warmup = warmup
        self._graphs: dict[tuple, CudaGraphed] = {}

    def __call__(self, images: Tensor) -> Any:
        key = (tuple(images.shape), images.dtype, images.device)
        if key not in self._graphs:
            self._graphs[key] = CudaGraphed(self.fn, images, self.warmup)
        return self._graphs[key](images)

    def clear(self) -> None:
        self._graphs.clear()
