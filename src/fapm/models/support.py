"""PatchCore's support set, vectorised over the batch (no Python loop, no host read).

PatchCore reweights the image score with the distances from the most anomalous test
feature ``f*`` to the ``n`` memory items nearest to *its nearest memory item* ``m*``
(``m*`` itself included). With per-stream memories (FAPM's layer-wise search), this is
done in every stream at the position of ``f*`` and the streams' distances are added with
the fusion weights, as the anomaly map's distances are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fapm.models.patch_memory import region_layout


@dataclass
class StreamSearch:
    """One stream's search result for a batch.

    Attributes:
        queries: ``[R, B·h·w, C]`` the test vectors, split by region.
        distances: ``[R, B·h·w, k]`` ascending neighbour distances.
        indices: ``[R, B·h·w, k]`` neighbour indices into the region's memory (into its
            neighbourhood window's ``s·K + l`` space when the search had a window).
        size: ``(H_s, W_s)`` the stream's feature-map size.
    """

    queries: Tensor
    distances: Tensor
    indices: Tensor
    size: tuple[int, int]


def support_distances(
    results: Sequence[StreamSearch],
    searchables: Sequence[tuple[Tensor, Tensor]],
    weights: Sequence[float],
    grid: tuple[int, int],
    fused_size: tuple[int, int],
    pos: Tensor,
    n: int,
    table: Tensor | None = None,
) -> Tensor:
    """Fused distances ``[B, n]`` from the feature at ``pos`` to the support set of its nearest item.

    Args:
        results: per stream, the batch's search result.
        searchables: per stream, the stored memory ``(vectors [R, K, C], sq_norms [R, K])``
            (+inf norms on padding rows).
        weights: per stream, the fusion weight.
        grid: ``(gh, gw)`` the patch grid.
        fused_size: ``(H, W)`` of the fused map that ``pos`` indexes.
        pos: ``[B]`` flat positions on the fused map.
        n: support-set size (at most the smallest region memory).
        table: ``[R, S]`` the memories each region searched (its neighbourhood window, -1
            outside the grid; see :mod:`fapm.models.neighbourhood`), ``None`` = its own only.
            The support set is taken in the same memories, and ``results``' indices are in
            that window's ``s·K + l`` space.

    Returns:
        ``[B, n]`` weighted sums over the streams, nearest support item first.
    """
    batch = pos.shape[0]
    height, width = fused_size
    y, x = pos // width, pos % width
    gh, gw = grid
    images = torch.arange(batch, device=pos.device)
    if table is None:
        table = torch.arange(gh * gw, device=pos.device).view(-1, 1)
    slots = table.shape[1]
    total: Tensor | None = None
    for result, (vectors, norms), weight in zip(results, searchables, weights):
        hs, ws = result.size
        layout = region_layout(hs, ws, grid).on(pos.device)
        ys, xs = y * hs // height, x * ws // width
        slot = layout.inverse[ys * ws + xs]  # [B] r·P + p
        region = torch.div(slot, layout.slots, rounding_mode="floor")  # [B]
        offset = images * layout.slots + slot % layout.slots  # [B] within the region's queries
        r, m, c = vectors.shape
        window = table[region]  # [B, S] memories of each image's region
        inside = window >= 0
        window = window.clamp_min(0)
        query = result.queries[region, offset]  # [B, C]
        nearest = result.indices[region, offset, 0]  # [B] in window space
        flat = vectors.reshape(r * m, c)
        in_window = torch.div(nearest, m, rounding_mode="floor")
        item = flat.index_select(0, window.gather(1, in_window.unsqueeze(1)).squeeze(1) * m + nearest % m)  # [B, C]
        # ‖v − m*‖² for every item of the window's memories: one product over all regions,
        # then each image's window is picked ([R, M, B] stays small: R·M is one layer's memory)
        products = torch.matmul(vectors, item.t())  # [R, M, B]
        picked_products = products[window, :, images.unsqueeze(1)]  # [B, S, M]
        picked_norms = norms[window].masked_fill(~inside.unsqueeze(-1), float("inf"))  # [B, S, M]
        item_sq = picked_norms - 2 * picked_products + (item * item).sum(-1).view(batch, 1, 1)
        support = torch.topk(item_sq.reshape(batch, slots * m), n, dim=1, largest=False).indices  # [B, n]
        rows = window.gather(1, torch.div(support, m, rounding_mode="floor")) * m + support % m
        chosen = flat.index_select(0, rows.reshape(-1)).view(batch, n, c)
        d = (chosen - query.unsqueeze(1)).norm(dim=-1) * weight
        total = d if total is None else total + d
    assert total is not None
    return total
