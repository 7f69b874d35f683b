"""Patch-wise memories: splitting feature maps into grid regions and storing one memory per region.

A feature map ``[B, C, H, W]`` on a ``gh × gw`` grid has ``R = gh·gw`` regions of
``h × w = (H/gh) × (W/gw)`` positions. Region ``i`` (row-major) of every image feeds
memory ``i``; a grid of 1×1 is one global memory (PatchCore).

Memories have different sizes after the adaptive coreset, so they are stored padded,
``[R, K_max, C]`` with ``lengths [R]``, in registered buffers: they travel in the
Lightning checkpoint and move with ``.to(device)``. Padded rows are never returned by a
search: their squared norms are +inf.
"""

from __future__ import annotations

from fapm.errors import FapmError

from typing import Any

import torch
from torch import Tensor, nn


class GridError(FapmError, ValueError):
    """A patch grid that does not fit a feature map."""

    hint = "model.grid must divide every feature map of the backbone"


def check_grid(height: int, width: int, grid: tuple[int, int], what: str = "feature map") -> tuple[int, int]:
    """Region size ``(h, w)`` of a ``[.., height, width]`` map on ``grid``; error if it does not divide."""
    gh, gw = grid
    if gh < 1 or gw < 1:
        raise GridError(f"model.grid must be positive, got {list(grid)}")
    if height % gh or width % gw:
        raise GridError(
            f"model.grid {gh}x{gw} does not divide the {what} of {height}x{width}: every region must own "
            f"the same number of feature vectors (choose a grid that divides {height} and {width})"
        )
    return height // gh, width // gw


def split_regions(features: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[B, C, H, W]`` → ``[R, B·h·w, C]``, region-major (row-major over the grid).

    Within a region, vectors are ordered by image, then row, then column.
    """
    b, c, height, width = features.shape
    h, w = check_grid(height, width, grid)
    gh, gw = grid
    x = features.view(b, c, gh, h, gw, w).permute(2, 4, 0, 3, 5, 1)  # [gh, gw, B, h, w, C]
    return x.reshape(gh * gw, b * h * w, c)


def merge_regions(values: Tensor, batch: int, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`split_regions`: ``[R, B·h·w, D]`` → ``[B, D, H, W]``."""
    gh, gw = grid
    height, width = size
    h, w = check_grid(height, width, grid)
    d = values.shape[-1]
    x = values.reshape(gh, gw, batch, h, w, d).permute(2, 5, 0, 3, 1, 4)  # [B, D, gh, h, gw, w]
    return x.reshape(batch, d, height, width)


def neighbour_table(grid: tuple[int, int], radius: int, device: torch.device | None = None) -> Tensor:
    """``[R, S]`` indices of each region's neighbours within ``radius`` (itself first),
    -1 where the neighbourhood leaves the grid (the ``clip`` window of
    :func:`fapm.models.neighbourhood.window_table`)."""
    from fapm.models.neighbourhood import window_table

    return window_table(grid, radius, "clip", device)


class PatchMemory(nn.Module):
    """The memories of one feature stream: padded ``[R, K_max, C]`` vectors and ``[R]`` lengths.

    Also keeps, per region, the adaptive rule's ``d_max`` and whether it was enlarged.

    Args:
        grid: ``(gh, gw)`` the regions' layout.
    """

    memory: Tensor
    lengths: Tensor
    d_max: Tensor
    enlarged: Tensor

    def __init__(self, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.register_buffer("memory", torch.empty(0, 0, 0))
        self.register_buffer("lengths", torch.empty(0, dtype=torch.long))
        self.register_buffer("d_max", torch.empty(0))
        self.register_buffer("enlarged", torch.empty(0, dtype=torch.bool))
        self._derived: dict[Any, Tensor] = {}

    @property
    def fitted(self) -> bool:
        return self.memory.numel() > 0

    @property
    def num_regions(self) -> int:
        return self.memory.shape[0]

    def set(
        self,
        candidates: Tensor,
        indices: Tensor,
        lengths: Tensor,
        d_max: Tensor,
        enlarged: Tensor,
        device: torch.device | str | None = None,
    ) -> None:
        """Store the selected vectors: ``candidates [R, N, C]``, ``indices [R, K_max]`` (-1 = pad).

        The memory is float32 on ``device`` (default: the candidates' device) whatever the
        candidates' storage dtype: only the selected rows are gathered and converted.
        """
        r, _, c = candidates.shape
        device = candidates.device if device is None else torch.device(device)
        indices = indices.to(candidates.device)
        safe = indices.clamp_min(0)
        memory = torch.gather(candidates, 1, safe.unsqueeze(-1).expand(-1, -1, c))
        memory = memory.to(device=device, dtype=torch.float32)
        memory[indices.to(device) < 0] = 0
        self.store(memory, lengths, d_max, enlarged)

    def store(self, memory: Tensor, lengths: Tensor, d_max: Tensor, enlarged: Tensor) -> None:
        """Store built memories: ``memory [R, K_max, C]`` (zero padding), ``lengths``, ``d_max``, ``enlarged [R]``."""
        device = memory.device
        self.memory = memory.contiguous()
        self.lengths = lengths.to(device=device, dtype=torch.long)
        self.d_max = d_max.to(device).float()
        self.enlarged = enlarged.to(device).bool()
        self._derived.clear()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Memories are sized by the data they were built from: take the checkpoint's shapes.
        for name in ("memory", "lengths", "d_max", "enlarged"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        self._derived.clear()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn: Any, recurse: bool = True) -> "PatchMemory":
        self._derived.clear()  # derived tensors are rebuilt on the new device/dtype
        return super()._apply(fn, recurse)

    def valid_mask(self) -> Tensor:
        """``[R, K_max]`` True for stored (non-padding) rows."""
        return torch.arange(self.memory.shape[1], device=self.memory.device) < self.lengths.unsqueeze(1)

    def searchable(self) -> tuple[Tensor, Tensor]:
        """The stored vectors and their squared norms (+inf on padding), cached per device.

        Returns:
            ``(vectors [R, K_max, C], sq_norms [R, K_max])``. Neighbourhood searches use these
            in place (:mod:`fapm.models.neighbourhood`): no union of memories is ever built.
        """
        if "norms" not in self._derived:
            sq = (self.memory * self.memory).sum(-1)
            self._derived["norms"] = sq.masked_fill(~self.valid_mask(), float("inf"))
        return self.memory, self._derived["norms"]

    def sizes(self) -> list[int]:
        return [int(v) for v in self.lengths.tolist()]
