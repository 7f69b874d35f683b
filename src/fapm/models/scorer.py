"""The scoring stage of a memory-bank detector: per-region search → layer fusion → map → image score.

One path serves the eager detector (:meth:`fapm.models.detector.MemoryDetector.score_features`)
and the exported graph (:class:`fapm.deploy.graph.HeadGraph`). What differs between them is
injected, not written twice:

* the search: any :class:`~fapm.models.knn.KNNSearch` per stream (the detector's fitted
  torch/FAISS index; the graph's batched matrix product + top-k). Its distances only rank:
  the ``k`` found neighbours' distances are recomputed exactly here, ``‖q − m‖``, so every
  search returns identical distances for identical neighbours;
* the map: :func:`~fapm.models.scoring.anomaly_map` (resize + blur) by default; the graph
  passes the same linear operator as two matrix products.

The code path has no host reads and no control flow on tensor values: ``k``, ``k_max`` and the
neighbourhood tables are passed in, read once by the caller.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
from torch import Tensor

from fapm.models.knn import KNNSearch, exact_distances
from fapm.models.neighbourhood import BORDERS, NeighbourhoodPlan, exact_distances_at
from fapm.models.patch_memory import merge_regions, split_regions
from fapm.models.scoring import ImageScore, MaxScore, ScoreContext, anomaly_map, fuse_streams
from fapm.models.support import StreamSearch, support_distances
from fapm.outputs import AnomalyOutput

#: Per stream, the stored memory ``(vectors [R, M, C], sq_norms [R, M])`` (+inf norms on padding rows).
Memories = Sequence[tuple[Tensor, Tensor]]
#: ``(fused nearest distance [B, h, w], size (H, W)) -> anomaly map [B, H, W]``.
MapFn = Callable[[Tensor, tuple[int, int]], Tensor]


class Scorer:
    """Search, fusion, map and image score of stream features against per-region memories.

    Args:
        grid: ``(gh, gw)`` patch grid.
        layer_weights: fusion weight per stream.
        k: neighbours per test vector (capped by the caller at the smallest region memory).
        image_score: image-score strategy (default: the max score).
        map_upsample: ``bilinear``, ``nearest`` or ``bicubic`` resize of the patch map.
        blur_sigma: Gaussian blur of the anomaly map (0 = none).
        neighbourhood: radius in regions searched around each region (0 = its own memory only).
        neighbourhood_border: ``clip`` or ``shift`` (see :mod:`fapm.models.neighbourhood`).
    """

    def __init__(
        self,
        grid: tuple[int, int],
        layer_weights: Sequence[float],
        k: int = 4,
        image_score: ImageScore | None = None,
        map_upsample: str = "bilinear",
        blur_sigma: float = 4.0,
        neighbourhood: int = 0,
        neighbourhood_border: str = "clip",
    ) -> None:
        if k < 1:
            raise ValueError(f"model.k must be >= 1, got {k}")
        if neighbourhood < 0:
            raise ValueError(f"model.neighbourhood must be >= 0, got {neighbourhood}")
        if neighbourhood_border not in BORDERS:
            raise ValueError(f"model.neighbourhood_border must be one of {BORDERS}, got {neighbourhood_border!r}")
        if map_upsample not in ("bilinear", "nearest", "bicubic"):
            raise ValueError(f"model.map_upsample must be bilinear, nearest or bicubic, got {map_upsample!r}")
        self.grid = (int(grid[0]), int(grid[1]))
        self.layer_weights = list(layer_weights)
        self.k = int(k)
        self.image_score: ImageScore = image_score or MaxScore()
        self.map_upsample = map_upsample
        self.blur_sigma = float(blur_sigma)
        self.neighbourhood = int(neighbourhood)
        self.neighbourhood_border = neighbourhood_border
        self._plans: dict[tuple, NeighbourhoodPlan] = {}

    def check_k(self, k_effective: int, k: int) -> None:
        """Warn when the image score cannot work as configured with ``k_effective`` neighbours
        (the smallest region memory of the memory just built)."""
        needed = int(getattr(self.image_score, "min_k", 1))
        if k_effective < needed:
            warnings.warn(
                f"image score {type(self.image_score).__name__} needs k >= {needed} neighbours but the effective "
                f"k is {k_effective} (model.k={k}, smallest region memory {k_effective} vectors: too few training "
                "images or a tiny coreset); it falls back to the max score (model.image_score=max says so explicitly)",
                stacklevel=4,
            )

    def plan(self, radius: int | None, device: torch.device) -> NeighbourhoodPlan | None:
        """The window tables of ``radius`` (default ``neighbourhood``) on ``device``; None at radius 0."""
        radius = self.neighbourhood if radius is None else radius
        if radius == 0:
            return None
        key = (radius, self.neighbourhood_border, self.grid, str(device))
        if key not in self._plans:
            self._plans[key] = NeighbourhoodPlan.build(self.grid, radius, self.neighbourhood_border, device)
        return self._plans[key]

    # ------------------------------------------------------------------ stages
    def search(
        self, streams: Sequence[Tensor], searches: Sequence[KNNSearch], memories: Memories, k: int,
        plan: NeighbourhoodPlan | None = None,
    ) -> list[StreamSearch]:
        """Per-region k-NN of every stream ``[B, C_s, H_s, W_s]`` in its region's memory (its
        window's with ``plan``); distances exact, ``[R, B·h·w, k]`` ascending."""
        out = []
        for stream, search, (vectors, _) in zip(streams, searches, memories):
            queries = split_regions(stream, self.grid)  # [R, Q, C]
            if plan is None:
                _, idx = search.search(queries, k)
                dist, idx = exact_distances(queries, vectors, idx)
            else:
                # memory j is searched by the stacked queries of the regions whose window holds
                # it ([R, D·Q, C]); each region then keeps its window's k best
                rows = vectors.shape[1]
                found_dist, found = search.search(plan.stack_queries(queries), k)
                _, idx = plan.merge(found_dist, found, k, rows)
                flat = vectors.reshape(-1, vectors.shape[-1])
                dist, idx = exact_distances_at(queries, flat, plan.rows(idx, rows), idx)
            out.append(StreamSearch(queries, dist, idx, (stream.shape[-2], stream.shape[-1])))
        return out

    def fuse(self, results: Sequence[StreamSearch], batch: int) -> Tensor:
        """Stream results → fused ``[B, k, H, W]`` neighbour distances on the finest grid."""
        maps = [merge_regions(r.distances, batch, self.grid, r.size) for r in results]
        return fuse_streams(maps, self.layer_weights)

    def to_map(self, patch_scores: Tensor, size: tuple[int, int]) -> Tensor:
        """Fused nearest distances ``[B, h, w]`` → anomaly map ``[B, *size]`` (resize, then blur)."""
        return anomaly_map(patch_scores, size, self.blur_sigma, self.map_upsample)

    def image_scores(
        self, fused: Tensor, results: Sequence[StreamSearch], memories: Memories, k_max: int,
        plan: NeighbourhoodPlan | None = None,
    ) -> Tensor:
        """Image scores ``[B]`` from the fused distances ``[B, k, H, W]`` (and, for PatchCore's
        support set, the search results and memories; ``k_max``: the smallest region memory)."""
        def support(pos: Tensor, n: int) -> Tensor:
            return self.support(results, (fused.shape[-2], fused.shape[-1]), memories, k_max, pos, n, plan)

        return self.image_score(ScoreContext(fused, support))

    def support(
        self, results: Sequence[StreamSearch], fused_size: tuple[int, int], memories: Memories, k_max: int,
        pos: Tensor, n: int, plan: NeighbourhoodPlan | None = None,
    ) -> Tensor:
        """PatchCore's support-set distances ``[B, min(n, k_max)]`` at flat positions ``pos [B]`` of the
        fused map of ``fused_size`` (see :func:`fapm.models.support.support_distances`)."""
        return support_distances(
            results, memories, self.layer_weights, self.grid, fused_size, pos, min(n, k_max),
            table=None if plan is None else plan.table,
        )

    def __call__(
        self,
        streams: Sequence[Tensor],
        searches: Sequence[KNNSearch],
        memories: Memories,
        size: tuple[int, int],
        k: int,
        k_max: int,
        plan: NeighbourhoodPlan | None = None,
        inside: Tensor | None = None,
        to_map: MapFn | None = None,
    ) -> AnomalyOutput:
        """Streams ``[B, C_s, H_s, W_s]`` → image scores ``[B]``, maps ``[B, *size]``, patch scores ``[B, h, w]``.

        Args:
            searches: per stream, a search fitted on that stream's memory.
            memories: per stream, ``(vectors [R, M, C], sq_norms [R, M])``.
            size: ``(H, W)`` of the anomaly map (the input image's size).
            k: neighbours to find; k_max: the smallest region memory (PatchCore's support set).
            plan: the neighbourhood's window tables, or None (each region's own memory).
            inside: ``[B, 1, h, w]`` 1 where a cell counts for the image score (alignment's frame
                mask), else 0; the map keeps every cell.
            to_map: replaces :meth:`to_map` (e.g. the exported graph's matrix operator).
        """
        results = self.search(streams, searches, memories, k, plan)
        fused = self.fuse(results, streams[0].shape[0])
        maps = (to_map or self.to_map)(fused[:, 0], size)
        scored = fused if inside is None else fused * inside
        return AnomalyOutput(self.image_scores(scored, results, memories, k_max, plan), maps, patch_scores=fused[:, 0])
