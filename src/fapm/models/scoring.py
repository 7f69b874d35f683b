"""From nearest-neighbour distances to an anomaly map and an image score.

* Layer fusion: each stream's distances ``[B, k, h_j, w_j]`` are repeated (nearest
  upsampling) onto the finest stream's grid and added with per-stream weights. Distances
  are fused rank by rank: the fused ``n``-th neighbour distance is the weighted sum of
  the streams' ``n``-th neighbour distances.
* Anomaly map: the fused nearest distance, resized to the input (bilinear by default),
  then a Gaussian blur (σ = 4, kernel 2·⌊4σ + 0.5⌋ + 1, reflect padding).
* Image score: a strategy object (:class:`MaxScore`, :class:`SoftmaxWeightedScore`,
  :class:`PatchCoreWeightedScore`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def fuse_streams(distances: Sequence[Tensor], weights: Sequence[float] | None = None) -> Tensor:
    """Weighted sum of per-stream distances on the finest grid.

    Args:
        distances: per stream ``[B, k, h_j, w_j]``; every grid must divide the finest one.
        weights: one weight per stream (default 1 each).

    Returns:
        ``[B, k, H, W]`` with ``(H, W)`` the largest stream grid.
    """
    if weights is None:
        weights = [1.0] * len(distances)
    if len(weights) != len(distances):
        raise ValueError(f"model.layer_weights has {len(weights)} weights for {len(distances)} feature streams")
    height = max(d.shape[-2] for d in distances)
    width = max(d.shape[-1] for d in distances)
    fused: Tensor | None = None
    for dist, weight in zip(distances, weights):
        h, w = dist.shape[-2:]
        if height % h or width % w:
            raise ValueError(f"stream grid {h}x{w} does not divide the finest grid {height}x{width}")
        if (h, w) != (height, width):
            dist = dist.repeat_interleave(height // h, dim=-2).repeat_interleave(width // w, dim=-1)
        term = dist * weight if weight != 1 else dist
        fused = term if fused is None else fused + term
    assert fused is not None
    return fused


def gaussian_kernel1d(sigma: float, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised 1-D Gaussian of size ``2·⌊4σ + 0.5⌋ + 1``."""
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-(x * x) / (2 * sigma * sigma))
    return kernel / kernel.sum()


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``maps [B, H, W]`` with reflect padding; σ ≤ 0 = identity."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma, maps.device, maps.dtype)
    radius = kernel.numel() // 2
    x = maps.unsqueeze(1)
    # Reflect padding needs pad < size; replicate covers maps smaller than the kernel.
    mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    x = F.pad(x, (radius, radius, 0, 0), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def anomaly_map(patch_scores: Tensor, size: tuple[int, int], sigma: float = 4.0, mode: str = "bilinear") -> Tensor:
    """``patch_scores [B, h, w]`` → ``[B, H, W]``: resize (``bilinear`` or ``nearest``), then blur."""
    x = patch_scores.unsqueeze(1)
    if tuple(x.shape[-2:]) != tuple(size):
        if mode == "nearest":
            x = F.interpolate(x, size=size, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode=mode, align_corners=False)
    return gaussian_blur(x.squeeze(1), sigma)


def argmax_position(patch_scores: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, h, w]`` → ``(max value [B], flat position [B])``."""
    flat = patch_scores.flatten(1)
    return flat.max(dim=1)


# ------------------------------------------------------------------ image scores
@dataclass
class ScoreContext:
    """What an image-score strategy may use.

    Attributes:
        fused: ``[B, k, H, W]`` fused neighbour distances, ascending in ``k``.
        support_distances: callable ``(flat positions [B], n) -> [B, n]`` giving the fused
            distances from the feature at each position to the ``n`` memory items nearest to
            its nearest memory item (PatchCore's support set); provided by the detector.
    """

    fused: Tensor
    support_distances: Callable[[Tensor, int], Tensor] | None = None


class ImageScore(Protocol):
    def __call__(self, context: ScoreContext) -> Tensor:
        """→ ``[B]`` image scores."""


class MaxScore:
    """The largest fused nearest-neighbour distance in the image."""

    def __call__(self, context: ScoreContext) -> Tensor:
        return context.fused[:, 0].flatten(1).amax(dim=1)


def softmax_weight(distances: Tensor) -> Tensor:
    """``w = 1 − max(softmax(distances))`` over the last dim, stably.

    ``max(softmax(x)) = 1 / Σ_i exp(x_i − max x)``, so nothing overflows whatever the scale.
    """
    shifted = distances - distances.amax(dim=-1, keepdim=True)
    return 1 - 1 / torch.exp(shifted).sum(dim=-1)


class SoftmaxWeightedScore:
    """The released FAPM code's score: ``s* · (1 − max softmax(N_b))``.

    ``s*`` is the largest fused nearest distance and ``N_b`` the ``k`` fused neighbour
    distances at that position (ascending).

    With one neighbour (effective ``k`` = 1: one training image, or a region memory of one
    vector) ``1 − max softmax`` is 0 for every image, so the score falls back to ``s*``
    (the max score); the detector warns about it when it is fitted.
    """

    #: fewer neighbours than this and the reweighting is meaningless (falls back to ``s*``)
    min_k = 2

    def __call__(self, context: ScoreContext) -> Tensor:
        fused = context.fused
        s_star, pos = argmax_position(fused[:, 0])
        if fused.shape[1] < self.min_k:
            return s_star
        neighbours = fused.flatten(2).gather(2, pos.view(-1, 1, 1).expand(-1, fused.shape[1], 1)).squeeze(2)
        return softmax_weight(neighbours) * s_star


class PatchCoreWeightedScore:
    """PatchCore's reweighting: ``s* · (1 − softmax(d(f*, support))[0])``.

    The support set is the memory item nearest to the most anomalous feature ``f*`` and
    that item's ``num_neighbors − 1`` nearest items in memory (``num_neighbors`` = 9 in
    PatchCore/anomalib); ``d`` are distances from ``f*`` to them, nearest item first.
    """

    def __init__(self, num_neighbors: int = 9) -> None:
        self.num_neighbors = num_neighbors

    def __call__(self, context: ScoreContext) -> Tensor:
        if context.support_distances is None:
            raise ValueError("PatchCoreWeightedScore needs a detector that provides support distances")
        s_star, pos = argmax_position(context.fused[:, 0])
        support = context.support_distances(pos, self.num_neighbors)  # [B, n]
        if support.shape[1] < 2:
            return s_star
        weight = 1 - torch.softmax(support, dim=1)[:, 0]
        return weight * s_star


IMAGE_SCORES: dict[str, Callable[[int], ImageScore]] = {
    "max": lambda num_neighbors: MaxScore(),
    "softmax": lambda num_neighbors: SoftmaxWeightedScore(),
    "patchcore": PatchCoreWeightedScore,
}


def make_image_score(kind: str, num_neighbors: int = 9) -> ImageScore:
    """Image-score strategy by its config name (``max``, ``softmax``, ``patchcore``)."""
    if kind not in IMAGE_SCORES:
        raise ValueError(f"model.image_score must be one of {sorted(IMAGE_SCORES)}, got {kind!r}")
    return IMAGE_SCORES[kind](num_neighbors)
