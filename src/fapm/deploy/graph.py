"""The scoring path of a fitted :class:`~fapm.models.detector.MemoryDetector` as exportable modules.

Two halves, so that the backbone can be quantized (or timed) alone and the head re-attached:

* :class:`BackboneGraph` — RGB ``[B, 3, S, S]`` in ``[0, 1]`` → normalisation → backbone
  to its last used layer → local average pooling → one pooled map per layer.
* :class:`HeadGraph` — those maps → feature streams → per-region search as batched matrix
  products + top-k (exact re-ranking of the ``k`` found) → layer fusion → resize → blur →
  image score (the detector's own strategy, PatchCore's support set included) → label.
* :class:`ScoringGraph` — both in one module.

Everything is a pure function of the input with no Python control flow on tensor values and
no host reads, so one trace or ``torch.export`` holds for every batch size. The memories become
constants of the graph. What differs from the eager detector's search, on purpose:

* the search never chunks its ``[R, Q, M]`` block (the eager ``TorchKNN`` chunks large
  batches to bound memory; a chunk count that depends on the batch cannot be one static
  graph), so a batch of ``B`` needs ``4·R·Q·M`` bytes at once (FAPM at 224², WRN-50-2,
  200 images: ≈ 1 MB per image; PatchCore's one global memory: ≈ 50 MB per image);
* it ranks by ``‖m‖² − 2 q·m`` (``‖q‖²`` is the same for every item of a query and does
  not change the order) and then recomputes the found neighbours' distances exactly,
  ``‖q − m‖``, in the same scorer as the eager detector (:class:`fapm.models.scorer.Scorer`);
* the detector's search backend (``torch`` or ``faiss``) does not matter: the graph's
  search is exact, as both backends are.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fapm.models.detector import MemoryDetector
from fapm.models.neighbourhood import NeighbourhoodPlan
from fapm.models.scoring import gaussian_kernel1d

#: Names of the exported graphs' inputs and outputs.
INPUT_NAME = "images"
OUTPUT_NAMES = ("image_scores", "anomaly_maps", "labels")


def map_operator(length: int, size: int, sigma: float, mode: str) -> Tensor:
    """``[size, length]`` matrix of one axis of :func:`fapm.models.scoring.anomaly_map`.

    The resize (bilinear, nearest or bicubic, ``align_corners=False``) and the Gaussian
    blur (reflect padding, replicate when the map is smaller than the kernel) are linear
    and act on rows and columns separately, so ``anomaly_map(x) = A_h · x · A_wᵀ`` with
    ``A = blur ∘ resize`` of each axis. Computed in float64 by pushing the identity
    through the same torch functions; two small matrix products replace a resize and two
    33-tap convolutions over the full-size map (which cost ~10× more on a CPU).
    """
    eye = torch.eye(length, dtype=torch.float64)
    if length == size:
        resized = eye
    else:
        # each basis map [length, 1] → [size, 1]; the width axis stays 1 (identity)
        basis = eye.view(length, 1, length, 1)
        kwargs = {} if mode == "nearest" else {"align_corners": False}
        resized = F.interpolate(basis, size=(size, 1), mode=mode, **kwargs).view(length, size).t()  # [size, length]
    if sigma <= 0:
        return resized
    kernel = gaussian_kernel1d(sigma, dtype=torch.float64)
    radius = kernel.numel() // 2
    pad_mode = "reflect" if size > radius else "replicate"
    rows = F.pad(torch.eye(size, dtype=torch.float64).view(size, 1, size), (radius, radius), mode=pad_mode)
    blur = F.conv1d(rows, kernel.view(1, 1, -1)).view(size, size).t()  # [out, in]
    return blur @ resized


class BackboneGraph(nn.Module):
    """RGB ``[B, 3, S, S]`` in ``[0, 1]`` → pooled maps, one ``[B, C_l, H_l, W_l]`` per layer.

    The detector's extractor runs in float32 and its default memory format here, whatever
    its ``autocast_dtype``/``channels_last`` options: precision is the runtime's business.

    Args:
        detector: the fitted detector (only its extractor is used).
        mean: per-channel mean of the normalisation.
        std: per-channel standard deviation.
    """

    def __init__(self, detector: MemoryDetector, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.body = detector.extractor.body
        self.pool = detector.extractor.pool
        self.layers = list(detector.extractor.layers)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))
        # multiply by 1/std (one op fewer per pixel than a division; equal to 1 ulp)
        self.register_buffer("inv_std", 1.0 / torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        raw = self.body((images - self.mean) * self.inv_std)
        return tuple(self.pool(raw[layer]) for layer in self.layers)


class MatmulSearch:
    """The graph's per-region search (a :class:`~fapm.models.knn.KNNSearch`): one batched matrix
    product + top-k over ``vectors [R, M, C]`` with ``sq_norms [R, 1, M]`` (+inf on padding).

    It ranks by ``‖m‖² − 2 q·m`` (the query's own norm does not change the order); the returned
    values only rank: the scorer recomputes the found neighbours' distances exactly.
    """

    def __init__(self, vectors: Tensor, sq_norms: Tensor) -> None:
        self.vectors = vectors
        self.sq_norms = sq_norms

    def fit(self, vectors: Tensor, sq_norms: Tensor) -> None:
        self.vectors, self.sq_norms = vectors, sq_norms.unsqueeze(1)

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        # -2 goes on the (small) queries, not on the [R, Q, M] block
        rank = torch.matmul(queries * -2.0, self.vectors.transpose(1, 2)) + self.sq_norms
        values, indices = torch.topk(rank, k, dim=2, largest=False, sorted=False)
        return values, indices


class HeadGraph(nn.Module):
    """Pooled layer maps → ``(image scores [B], anomaly maps [B, S, S], labels [B] bool)``.

    The detector's own scorer (:class:`~fapm.models.scorer.Scorer`) runs the path; the graph
    only injects its search (:class:`MatmulSearch` on the memories as buffers) and its map
    (resize + blur as two matrix products, :func:`map_operator`).

    Args:
        detector: the fitted detector (streams, memories, scoring settings).
        size: ``(S, S)`` the input image size (the map's size).
        image_threshold: label threshold (``label = score >= threshold``); ``None`` = +inf,
            i.e. every label False (no threshold stored).
    """

    def __init__(self, detector: MemoryDetector, size: tuple[int, int], image_threshold: float | None) -> None:
        super().__init__()
        self.k, self.k_max = detector.search_limits()  # k capped by the smallest memory, read once here
        self.streams = detector.streams
        self.scorer = copy.copy(detector.scorer)
        self.grid = detector.grid
        self.size = (int(size[0]), int(size[1]))
        self.n_streams = len(detector.memories)
        # the fused map's grid is the finest stream's: one dummy pass of the streams finds it
        finest = self._fused_grid(detector)
        sigma, mode = self.scorer.blur_sigma, self.scorer.map_upsample
        self.register_buffer("map_rows", map_operator(finest[0], self.size[0], sigma, mode).float())
        self.register_buffer("map_cols_t", map_operator(finest[1], self.size[1], sigma, mode).float().t().contiguous())
        for i, memory in enumerate(detector.memories):
            vectors, norms = memory.searchable()  # as stored: a neighbourhood is searched in place
            self.register_buffer(f"vectors{i}", vectors.detach().float().contiguous())  # [R, M, C]
            self.register_buffer(f"norms{i}", norms.detach().float().unsqueeze(1).contiguous())  # [R, 1, M]
        # the neighbourhood's index tables become constants of the graph (none at radius 0)
        plan = detector.neighbourhood_plan()
        self.windowed = plan is not None
        if plan is not None:
            plan = plan.to(torch.device("cpu"))
            self.register_buffer("nb_table", plan.table.clone())
            self.register_buffer("nb_inside", plan.inside.clone())
            self.register_buffer("nb_sources", plan.sources.clone())
            self.register_buffer("nb_route", plan.route.clone())
        threshold = float("inf") if image_threshold is None else float(image_threshold)
        self.register_buffer("image_threshold", torch.tensor(threshold, dtype=torch.float32))

    def _fused_grid(self, detector: MemoryDetector) -> tuple[int, int]:
        device = next(detector.extractor.parameters()).device
        with torch.no_grad():
            streams = detector.extract(torch.zeros(1, 3, *self.size, device=device))
        return max(s.shape[-2] for s in streams), max(s.shape[-1] for s in streams)

    def memory(self, i: int) -> tuple[Tensor, Tensor]:
        """``(vectors [R, M, C], sq_norms [R, 1, M])`` of stream ``i``."""
        return getattr(self, f"vectors{i}"), getattr(self, f"norms{i}")

    def plan(self) -> NeighbourhoodPlan | None:
        """The neighbourhood's tables (buffers of this module), or None at radius 0."""
        if not self.windowed:
            return None
        return NeighbourhoodPlan(self.nb_table, self.nb_inside, self.nb_sources, self.nb_route)

    def to_map(self, patch_scores: Tensor, size: tuple[int, int]) -> Tensor:
        """``[B, h, w]`` → ``[B, S, S]``: the resize and blur as ``A_h · x · A_wᵀ``."""
        return torch.matmul(torch.matmul(self.map_rows, patch_scores), self.map_cols_t)

    def forward(self, *features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        layers = dict(zip((f"l{i}" for i in range(len(features))), features))
        stored = [self.memory(i) for i in range(self.n_streams)]
        searches = [MatmulSearch(vectors, norms) for vectors, norms in stored]
        memories = [(vectors, norms.squeeze(1)) for vectors, norms in stored]
        out = self.scorer(self.streams(layers), searches, memories, self.size, self.k, self.k_max, self.plan(),
                          to_map=self.to_map)
        return out.image_scores, out.anomaly_maps, ~(out.image_scores < self.image_threshold)  # fail closed: a NaN score is defective


class ScoringGraph(nn.Module):
    """RGB ``[B, 3, S, S]`` in ``[0, 1]`` → ``(image scores [B], anomaly maps [B, S, S], labels [B])``."""

    def __init__(self, backbone: BackboneGraph, head: HeadGraph) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        scores, anomaly, labels = self.head(*self.backbone(images))
        # A NaN/Inf pixel must never score "good" in any runtime (OpenVINO's pooling drops NaN and
        # gives a finite score): such an image's score is NaN and its label True.
        bad = (torch.isnan(images) | torch.isinf(images)).flatten(1).any(1)
        scores = torch.where(bad, torch.full_like(scores, float("nan")), scores)
        return scores, anomaly, labels | bad


def scoring_graph(
    detector: MemoryDetector, size: int, mean: Sequence[float], std: Sequence[float], image_threshold: float | None
) -> ScoringGraph:
    """The whole exportable scoring path of ``detector`` for ``size × size`` inputs (eval mode, CPU or not)."""
    return ScoringGraph(BackboneGraph(detector, mean, std), HeadGraph(detector, (size, size), image_threshold)).eval()
