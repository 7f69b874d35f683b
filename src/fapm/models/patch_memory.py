"""Patch-wise memories: splitting feature maps into grid regions and storing one memory per region.

A feature map ``[B, C, H, W]`` on a ``gh × gw`` grid has ``R = gh·gw`` regions, split at
``floor(i·H/gh)`` and ``floor(j·W/gw)``: ``h × w = (H/gh) × (W/gw)`` positions each when the
grid divides the map, one row or column more or less otherwise (:class:`RegionLayout`). Region ``i`` (row-major) of every image feeds
memory ``i``; a grid of 1×1 is one global memory (PatchCore).

Memories have different sizes after the adaptive coreset, so they are stored padded,
``[R, K_max, C]`` with ``lengths [R]``, in registered buffers: they travel in the
Lightning checkpoint and move with ``.to(device)``. Padded rows are never returned by a
search: their squared norms are +inf.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fapm.errors import FapmError


class GridError(FapmError, ValueError):
    """A patch grid that does not fit a feature map."""

    hint = "model.grid must have at most as many rows and columns as every feature map of the backbone"


@dataclass(frozen=True)
class RegionLayout:
    """Where the regions of a ``gh × gw`` grid lie on an ``H × W`` feature map.

    Region boundaries are ``floor(i·H/gh)`` (rows) and ``floor(j·W/gw)`` (columns), so any
    map with at least ``gh`` rows and ``gw`` columns is covered, and regions differ by at
    most one row or column. When the grid divides the map this is the paper's even split.
    Every region is stored with ``P = h_max·w_max`` slots; a smaller region fills its last
    slots with repeats of its own positions (cyclically), which :func:`merge_regions` never
    reads and which greedy k-center never selects before their original (the original comes
    first and ties go to the lower index), so they change neither a selection nor a map.

    Attributes:
        height, width: the map's size.
        grid: ``(gh, gw)``.
        even: the grid divides the map (all regions ``h × w``; plain reshapes suffice).
        slots: ``P``, stored positions per region and image.
        index: ``[R, P]`` flat map position (``y·W + x``) of every slot.
        valid: ``[R, P]`` False on repeat slots.
        inverse: ``[H·W]`` the slot ``r·P + p`` that holds each map position.
    """

    height: int
    width: int
    grid: tuple[int, int]
    even: bool
    slots: int
    index: Tensor
    valid: Tensor
    inverse: Tensor

    @property
    def regions(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def region_size(self) -> tuple[int, int]:
        """``(h_max, w_max)``: the largest region's rows and columns."""
        gh, gw = self.grid
        return -(-self.height // gh), -(-self.width // gw)

    def region_sizes(self) -> Tensor:
        """``[R]`` feature positions in each region (all equal on an even grid)."""
        return self.valid.sum(1)

    def on(self, device: torch.device) -> "RegionLayout":
        """This layout with its index tensors on ``device`` (copied once per device, then cached:
        split, merge and the support set ask for it on every batch)."""
        if self.index.device == device:
            return self
        return _layout_on(self.height, self.width, *self.grid, str(device))


def bounds(size: int, parts: int) -> list[int]:
    """``parts + 1`` boundaries ``floor(i·size/parts)`` of ``parts`` near-equal pieces of ``size``."""
    return [i * size // parts for i in range(parts + 1)]


@functools.lru_cache(maxsize=64)
def _layout(height: int, width: int, gh: int, gw: int) -> RegionLayout:
    rows, cols = bounds(height, gh), bounds(width, gw)
    h_max, w_max = -(-height // gh), -(-width // gw)
    slots = h_max * w_max
    index = torch.empty(gh * gw, slots, dtype=torch.long)
    valid = torch.zeros(gh * gw, slots, dtype=torch.bool)
    inverse = torch.empty(height * width, dtype=torch.long)
    for i in range(gh):
        for j in range(gw):
            r = i * gw + j
            ys = torch.arange(rows[i], rows[i + 1])
            xs = torch.arange(cols[j], cols[j + 1])
            positions = (ys.view(-1, 1) * width + xs.view(1, -1)).flatten()  # row-major within the region
            n = positions.numel()
            index[r] = positions[torch.arange(slots) % n]
            valid[r, :n] = True
            inverse[positions] = r * slots + torch.arange(n)
    even = height % gh == 0 and width % gw == 0
    return RegionLayout(height, width, (gh, gw), even, slots, index, valid, inverse)


@functools.lru_cache(maxsize=64)
def _layout_on(height: int, width: int, gh: int, gw: int, device: str) -> RegionLayout:
    layout = _layout(height, width, gh, gw)
    return dataclasses.replace(layout, index=layout.index.to(device), valid=layout.valid.to(device),
                               inverse=layout.inverse.to(device))


def region_layout(height: int, width: int, grid: Sequence[int], what: str = "feature map") -> RegionLayout:
    """The :class:`RegionLayout` of ``grid`` on a ``height × width`` map (cached); error if a region would be empty."""
    gh, gw = int(grid[0]), int(grid[1])
    if gh < 1 or gw < 1:
        raise GridError(f"model.grid must be positive, got {list(grid)}")
    if gh > height or gw > width:
        raise GridError(
            f"model.grid {gh}x{gw} has more regions than the {what} of {height}x{width} has positions "
            f"(every region needs at least one feature vector: use at most {height}x{width}, or larger inputs)"
        )
    return _layout(int(height), int(width), gh, gw)


def check_grid(height: int, width: int, grid: tuple[int, int], what: str = "feature map") -> tuple[int, int]:
    """Largest region size ``(h_max, w_max)`` of a ``[.., height, width]`` map on ``grid``; error if
    the grid has more rows or columns than the map (regions need not be equal: see :class:`RegionLayout`)."""
    return region_layout(height, width, grid, what).region_size


def split_regions(features: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[B, C, H, W]`` → ``[R, B·P, C]``, region-major (row-major over the grid).

    Within a region, vectors are ordered by image, then row, then column; ``P`` is the
    region's slot count (``h·w`` on an even grid; on an uneven one the largest region's,
    smaller regions ending in repeats of their own vectors: :class:`RegionLayout`).
    """
    b, c, height, width = features.shape
    layout = region_layout(height, width, grid)
    gh, gw = layout.grid
    if layout.even:
        h, w = height // gh, width // gw
        x = features.view(b, c, gh, h, gw, w).permute(2, 4, 0, 3, 5, 1)  # [gh, gw, B, h, w, C]
        return x.reshape(gh * gw, b * h * w, c)
    index = layout.on(features.device).index
    x = features.flatten(2)[:, :, index.flatten()]  # [B, C, R·P]
    x = x.view(b, c, layout.regions, layout.slots).permute(2, 0, 3, 1)  # [R, B, P, C]
    return x.reshape(layout.regions, b * layout.slots, c)


def merge_regions(values: Tensor, batch: int, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`split_regions`: ``[R, B·P, D]`` → ``[B, D, H, W]`` (repeat slots dropped)."""
    height, width = size
    layout = region_layout(height, width, grid)
    gh, gw = layout.grid
    d = values.shape[-1]
    if layout.even:
        h, w = height // gh, width // gw
        x = values.reshape(gh, gw, batch, h, w, d).permute(2, 5, 0, 3, 1, 4)  # [B, D, gh, h, gw, w]
        return x.reshape(batch, d, height, width)
    x = values.reshape(layout.regions, batch, layout.slots, d).permute(1, 3, 0, 2)  # [B, D, R, P]
    x = x.reshape(batch, d, layout.regions * layout.slots)
    return x[:, :, layout.on(values.device).inverse].view(batch, d, height, width)


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
