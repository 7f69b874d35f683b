"""Training features collected batch by batch for the memory build, one buffer per stream.

A fit sees every training image once. Each stream's vectors are split by region as they
arrive (``[R, B·n_r, C]``) and kept until :meth:`FeatureStore.take` hands them to the
coreset. When the number of training images is known up front (the Lightning module
knows its dataset), they are written straight into one preallocated buffer per stream,
so the fit holds the training features once: no per-batch pieces and no concatenation
(about half the peak memory). More images than expected still work: the surplus is kept
in pieces and concatenated when taken, freeing each piece as it is copied.

Bounded memory: the store may keep the features in a narrower ``dtype`` (float16 /
bfloat16 halve the fit's largest allocation; the coreset casts each chunk back to float32
before computing distances) and on the ``host`` instead of the trainer's device (pinned
under CUDA, so the coreset streams chunks of regions to the GPU asynchronously).
"""

from __future__ import annotations

import torch
from torch import Tensor


def concat_releasing(parts: list[Tensor]) -> Tensor:
    """``torch.cat(parts, dim=1)`` of ``[R, n_i, C]`` parts that frees each part once copied,
    so the peak is the result plus one part, not twice the training features."""
    if len(parts) == 1:
        return parts.pop()
    r, _, c = parts[0].shape
    out = parts[0].new_empty(r, sum(p.shape[1] for p in parts), c)
    offset = 0
    parts.reverse()
    while parts:
        part = parts.pop()
        out[:, offset : offset + part.shape[1]] = part
        offset += part.shape[1]
        del part
    return out


class FeatureStore:
    """Per-stream training features ``[R, N, C]``, filled by :meth:`add`, emptied by :meth:`take`.

    Args:
        streams: number of feature streams (one buffer each).
        dtype: storage dtype of the features (``None``: as they arrive).
        host: keep the features in host memory (pinned when CUDA is available).
    """

    def __init__(self, streams: int, dtype: torch.dtype | None = None, host: bool = False) -> None:
        self.streams = int(streams)
        self.dtype = dtype
        self.host = bool(host)
        self.reset()

    def _stored(self, regions: Tensor) -> Tensor:
        """``regions`` in the storage dtype and place (a no-op when both already match)."""
        dtype = self.dtype or regions.dtype
        if self.host and regions.device.type != "cpu":
            # non_blocking into pinned memory: the copy overlaps the next batch's extraction
            out = torch.empty(regions.shape, dtype=dtype, pin_memory=True)
            out.copy_(regions, non_blocking=True)
            return out
        return regions.to(dtype=dtype)

    def _empty(self, like: Tensor, r: int, n: int, c: int) -> Tensor:
        dtype = self.dtype or like.dtype
        if self.host:
            return torch.empty(r, n, c, dtype=dtype, pin_memory=torch.cuda.is_available())
        return like.new_empty(r, n, c, dtype=dtype)

    def reset(self, expected_images: int | None = None) -> None:
        """Forget everything; ``expected_images`` (when known) sizes one buffer per stream."""
        self._pieces: list[list[Tensor]] = [[] for _ in range(self.streams)]
        self._reserved: list[Tensor | None] = [None] * self.streams
        self._filled = [0] * self.streams
        self._expected = expected_images if expected_images and expected_images > 0 else None

    @property
    def empty(self) -> bool:
        """True when no feature of the first stream is held."""
        return not self._pieces[0] and not self._filled[0]

    def add(self, stream: int, regions: Tensor, images: int) -> None:
        """Keep ``regions [R, images·n_r, C]``, the region-split features of ``images`` images."""
        count = regions.shape[1]
        if self._expected is not None and self._reserved[stream] is None and not self._pieces[stream]:
            r, _, c = regions.shape
            self._reserved[stream] = self._empty(regions, r, self._expected * (count // images), c)
        buffer = self._reserved[stream]
        # once a batch overflowed, later ones follow it, so the training order is kept
        if buffer is not None and not self._pieces[stream] and self._filled[stream] + count <= buffer.shape[1]:
            # copy_ casts to the storage dtype and moves to the host in one pass
            buffer[:, self._filled[stream] : self._filled[stream] + count].copy_(regions, non_blocking=True)
            self._filled[stream] += count
        else:
            self._pieces[stream].append(self._stored(regions))

    def take(self, stream: int) -> Tensor:
        """Stream ``stream``'s features ``[R, N, C]`` in training order; the store lets go of them."""
        if self.host and torch.cuda.is_available():
            torch.cuda.synchronize()  # the non_blocking device-to-host copies have landed
        parts = self._pieces[stream]
        buffer, filled = self._reserved[stream], self._filled[stream]
        self._pieces[stream], self._reserved[stream], self._filled[stream] = [], None, 0
        if buffer is not None:
            if filled < buffer.shape[1]:
                buffer = buffer[:, :filled].contiguous()
            parts.insert(0, buffer)
        return concat_releasing(parts)
