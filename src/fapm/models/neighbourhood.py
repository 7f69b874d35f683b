"""Neighbourhood search: region ``i`` searches the memories of the regions around it, in place.

With ``model.neighbourhood = r ≥ 1`` a test vector of region ``i`` is compared with the
memories of every region in a ``(2r+1) × (2r+1)`` window of the grid, which tolerates parts
that moved by up to ``r`` regions. The union of those memories is never built: a copy would
grow as ``(2r+1)²`` times the memory (9× at ``r = 1``, 25× at ``r = 2``).

The search is turned round instead. Memory ``j`` is searched by the few query regions whose
window holds it (its *sources*); their queries are stacked, ``[R, D·Q, C]`` with ``D`` the
most sources any memory has, and searched in the memories as they are stored, by any
:class:`~fapm.models.knn.KNNSearch` fitted on the plain ``[R, K, C]`` memory (the torch
search reads the memory once per call instead of ``(2r+1)²`` times). Each query region then
gathers its ``S`` windows' ``k`` best (*route*) and keeps the ``k`` best of those ``S·k``.
The transient copies are of the queries (``D`` times the batch's vectors), not of the memory.

Indices returned are into the region's *window space* ``s·K + l`` (slot ``s`` of the
window, row ``l`` of that memory), exactly what a search of the old ``[R, S·K, C]`` union
returned; :meth:`NeighbourhoodPlan.rows` maps them to rows of the flat ``[R·K, C]`` memory.

Borders (``model.neighbourhood_border``):

* ``clip``: the window is cut by the grid: a corner region searches ``(r+1)²`` memories, an
  interior one ``(2r+1)²``. Border regions have fewer chances to find a close normal vector,
  so their normal scores are biased upwards (measured by ``benchmarks/misalignment.py``).
* ``shift``: the window is moved inward until it fits, so every region searches the same
  number of memories, ``min(2r+1, gh) × min(2r+1, gw)``; a corner region's window then
  reaches ``2r`` regions inwards instead of ``r`` on each side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from fapm.models.knn import KNNSearch

Border = Literal["clip", "shift"]
BORDERS: tuple[str, ...] = ("clip", "shift")


def _axis_windows(size: int, radius: int, border: str) -> list[list[int]]:
    """Per position along one axis, the positions of its window (own position first; -1 = outside)."""
    out = []
    for y in range(size):
        if border == "clip":
            cells = [y + d for d in range(-radius, radius + 1)]
            cells = [c if 0 <= c < size else -1 for c in cells]
        else:
            length = min(2 * radius + 1, size)
            start = min(max(y - radius, 0), size - length)
            cells = list(range(start, start + length))
        out.append(cells)
    return out


def window_table(grid: tuple[int, int], radius: int, border: str = "clip", device: torch.device | None = None) -> Tensor:
    """``[R, S]`` the memory region searched by region ``i`` in window slot ``s``; -1 outside the grid.

    Slot 0 is the region itself; the other slots follow the window row-major. ``clip``
    keeps every slot of the ``(2r+1)²`` window (those outside the grid are -1, columns that
    are outside for every region are dropped); ``shift`` moves the window inward, so no slot
    is ever outside.

    Raises:
        ValueError: ``radius < 0`` or an unknown ``border``.
    """
    if radius < 0:
        raise ValueError(f"model.neighbourhood must be >= 0, got {radius}")
    if border not in BORDERS:
        raise ValueError(f"model.neighbourhood_border must be one of {BORDERS}, got {border!r}")
    gh, gw = int(grid[0]), int(grid[1])
    rows_of, cols_of = _axis_windows(gh, radius, border), _axis_windows(gw, radius, border)
    table = []
    for y in range(gh):
        for x in range(gw):
            own = y * gw + x
            cells = [
                (ny * gw + nx) if ny >= 0 and nx >= 0 else -1 for ny in rows_of[y] for nx in cols_of[x]
            ]
            cells.remove(own)
            table.append([own] + cells)
    t = torch.tensor(table, dtype=torch.long, device=device)
    keep = (t >= 0).any(0)
    return t[:, keep].contiguous()


@dataclass
class NeighbourhoodPlan:
    """Index tables of the in-place neighbourhood search on one grid (all ``[R, ·]`` long/bool).

    Attributes:
        table: ``[R, S]`` memory searched by region ``i`` in slot ``s`` (-1 outside the grid).
        inside: ``[R, S]`` slot inside the grid.
        sources: ``[R, D]`` query regions that search memory ``j`` (padded with ``j``: the
            padding's results are computed and never routed).
        route: ``[R, S]`` where region ``i``'s slot-``s`` result lies in the stacked search,
            the flat index ``j·D + d`` (0 for slots outside the grid).
    """

    table: Tensor
    inside: Tensor
    sources: Tensor
    route: Tensor

    @classmethod
    def build(cls, grid: tuple[int, int], radius: int, border: str = "clip", device: torch.device | None = None) -> "NeighbourhoodPlan":
        """The plan of a ``radius`` / ``border`` neighbourhood on ``grid`` (see :func:`window_table`)."""
        table = window_table(grid, radius, border)
        regions, slots = table.shape
        counts = [0] * regions
        pairs: list[list[int]] = [[] for _ in range(regions)]
        position = torch.zeros(regions, slots, dtype=torch.long)  # d: i's place among j's sources
        for i in range(regions):
            for s in range(slots):
                j = int(table[i, s])
                if j < 0:
                    continue
                pairs[j].append(i)
                position[i, s] = counts[j]
                counts[j] += 1
        depth = max(counts)
        sources = torch.tensor([p + [j] * (depth - len(p)) for j, p in enumerate(pairs)], dtype=torch.long)
        route = torch.where(table >= 0, table.clamp_min(0) * depth + position, torch.zeros_like(position))
        return cls(table.to(device), (table >= 0).to(device), sources.to(device), route.to(device))

    @property
    def slots(self) -> int:
        return self.table.shape[1]

    @property
    def depth(self) -> int:
        return self.sources.shape[1]

    def to(self, device: torch.device) -> "NeighbourhoodPlan":
        return NeighbourhoodPlan(*(t.to(device) for t in (self.table, self.inside, self.sources, self.route)))

    def stack_queries(self, queries: Tensor) -> Tensor:
        """``queries [R, Q, C]`` → ``[R, D·Q, C]``: for memory ``j``, the queries of its sources."""
        r, _, c = queries.shape
        return queries[self.sources].reshape(r, -1, c)

    def merge(self, values: Tensor, indices: Tensor, k: int, memory_rows: int) -> tuple[Tensor, Tensor]:
        """Stacked results → each query region's ``k`` best over its window.

        Args:
            values: ``[R, D·Q, k']`` ascending ranking values (distances, or anything monotone in
                them) of the stacked queries in each memory.
            indices: ``[R, D·Q, k']`` rows within each memory.
            k: neighbours to keep.
            memory_rows: ``K`` the memories' padded length (window index = ``s·K + l``).

        Returns:
            ``(values [R, Q, k], indices [R, Q, k])`` ascending, indices in window space.
        """
        r, _, kk = values.shape
        slots = self.slots
        per = values.reshape(r * self.depth, -1, kk)[self.route]  # [R, S, Q, k']
        idx = indices.reshape(r * self.depth, -1, kk)[self.route]
        per = per.masked_fill(~self.inside.view(r, slots, 1, 1), float("inf"))
        idx = idx + (torch.arange(slots, device=idx.device) * memory_rows).view(1, slots, 1, 1)
        per = per.permute(0, 2, 1, 3).reshape(r, per.shape[2], slots * kk)
        idx = idx.permute(0, 2, 1, 3).reshape(r, idx.shape[2], slots * kk)
        best, order = torch.topk(per, k, dim=2, largest=False, sorted=True)
        return best, torch.gather(idx, 2, order)

    def rows(self, indices: Tensor, memory_rows: int) -> Tensor:
        """Window-space ``indices [R, Q, k]`` → rows of the flat ``[R·K, C]`` memory."""
        r, q, k = indices.shape
        slot = torch.div(indices, memory_rows, rounding_mode="floor")
        region = torch.gather(self.table.unsqueeze(1).expand(r, q, self.slots), 2, slot)
        return region.clamp_min(0) * memory_rows + indices % memory_rows


def plain_rows(indices: Tensor, memory_rows: int) -> Tensor:
    """Rows of the flat memory for indices ``[R, Q, k]`` into each region's own memory."""
    r = indices.shape[0]
    return indices + torch.arange(r, device=indices.device).view(r, 1, 1) * memory_rows


def exact_distances_at(queries: Tensor, flat_memory: Tensor, rows: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Exact ``‖q − m‖`` of the found neighbours, re-sorted (see :func:`fapm.models.knn.exact_distances`).

    Args:
        queries: ``[R, Q, C]``; flat_memory: ``[R·K, C]``; rows: ``[R, Q, k]`` rows of
            ``flat_memory``; indices: ``[R, Q, k]`` what to return for them (window space).

    Returns:
        ``(distances [R, Q, k] ascending, indices [R, Q, k])``.
    """
    r, q, k = rows.shape
    picked = flat_memory.index_select(0, rows.reshape(-1)).view(r, q, k, flat_memory.shape[-1])
    dist = (picked - queries.unsqueeze(2)).norm(dim=-1)
    if k > 1:
        dist, order = dist.sort(dim=-1)
        indices = torch.gather(indices, -1, order)
    return dist, indices


def neighbourhood_search(
    search: KNNSearch, queries: Tensor, k: int, plan: NeighbourhoodPlan, memory_rows: int
) -> tuple[Tensor, Tensor]:
    """Each region's ``k`` nearest in its window's memories, with ``search`` fitted on the plain memory.

    Args:
        search: a search fitted on ``[R, K, C]`` (the memory as stored, no copy).
        queries: ``[R, Q, C]`` test vectors split by region.
        k: neighbours (at most the smallest memory's length).
        plan: the window tables.
        memory_rows: ``K``.

    Returns:
        ``(distances [R, Q, k] ascending, indices [R, Q, k] in window space)``.
    """
    dist, idx = search.search(plan.stack_queries(queries), k)  # [R, D·Q, k]
    return plan.merge(dist, idx, k, memory_rows)
