"""Patch-wise adaptive coreset sampling (FAPM §2.2).

Every memory is reduced by greedy k-center to ``ceil(ratio · N)`` centres. Each centre's
cluster is the set of vectors nearest to it; the cluster's spread is Eq. 1,

    d_ik = 1 − 2 / (1 + exp(‖v_far − v'_k‖²))  =  tanh(‖v_far − v'_k‖² / 2),

with ``v_far`` the member farthest from the centre, and ``d_imax = max_k d_ik``. Memories
whose ``d_imax`` exceeds ``D_th`` get ``factor`` times more centres (the greedy run is
continued, which equals re-running it with the larger ratio).

Because tanh is increasing, ``d_imax`` is Eq. 1 applied to the *covering radius* of the
coreset (the largest distance of any vector to its nearest centre), which the greedy run
already holds: no extra pass over the memory is needed.

Scale: Eq. 1 saturates at 1 once ‖·‖² is a few units, and raw CNN features have squared
distances in the tens to thousands, so "as printed" every memory would be doubled or none
(see DESIGN.md). ``distance_scale`` chooses what ‖·‖² means before Eq. 1:

* ``raw``: the squared Euclidean distance itself (the paper as printed);
* ``per_channel``: divided by the number of channels (mean squared difference per channel);
* ``relative``: divided by the memory's mean squared vector norm (scale-free).

``threshold_mode`` chooses how ``d_th`` is read: ``absolute`` (``d_imax > d_th``, the paper)
or ``quantile`` (memories above the ``d_th`` quantile of their layer's values, so a fixed
share ``1 − d_th`` of the regions is doubled whatever the feature scale). The quantile mode
ranks the squared covering radius before Eq. 1's squashing: ``tanh`` is increasing, so the
order is Eq. 1's, but it survives the saturation that makes every ``d_imax`` exactly 1.0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from fapm.models.coreset import GreedyKCenter, KCenterState, compute_device, exact_assignment, mean_sq_norm, num_centres

DistanceScale = Literal["raw", "per_channel", "relative"]
ThresholdMode = Literal["absolute", "quantile"]


def cluster_spread(sq_dist: Tensor) -> Tensor:
    """Eq. 1 on squared distances: ``1 − 2 / (1 + exp(x)) = tanh(x / 2)``, computed stably."""
    return torch.tanh(sq_dist / 2)


def scale_sq_distances(sq_dist: Tensor, features: Tensor, mode: DistanceScale) -> Tensor:
    """Scale squared distances ``[R, ...]`` of memories ``features [R, N, C]`` for Eq. 1."""
    if mode == "raw":
        return sq_dist
    if mode == "per_channel":
        return sq_dist / features.shape[-1]
    if mode == "relative":
        norms = mean_sq_norm(features, sq_dist.device).clamp_min(1e-12)  # [R], float32, chunked
        return sq_dist / norms.view(-1, *([1] * (sq_dist.dim() - 1)))
    raise ValueError(f"distance_scale must be raw, per_channel or relative, got {mode!r}")


@dataclass
class CoresetResult:
    """Selected centres of ``R`` memories and the statistics of the adaptive rule.

    Attributes:
        indices: ``[R, K_max]`` selected indices into each memory's candidates, padded with -1.
        lengths: ``[R]`` number of centres kept per memory.
        d_max: ``[R]`` Eq. 1 spread of the first-pass coreset (``d_imax``); NaN when not computed.
        enlarged: ``[R]`` bool, memories whose coreset was enlarged by the adaptive rule.
        cluster_spread: ``[R, K1]`` Eq. 1 per first-pass cluster (``d_ik``), for inspection.
    """

    indices: Tensor
    lengths: Tensor
    d_max: Tensor
    enlarged: Tensor
    cluster_spread: Tensor | None = None


@dataclass
class FirstPass:
    """The first greedy pass over ``R`` memories (see :meth:`AdaptiveCoreset.first_pass`).

    Attributes:
        features: ``[R, N, C]`` the candidates.
        k1: centres per memory of the first pass.
        state: the resumable k-center run (None when every vector is kept).
        d_max: ``[R]`` Eq. 1 spread ``d_imax`` (NaN when not computed).
        spread: ``[R, k1]`` Eq. 1 per cluster, when asked for.
        final: nothing can be enlarged (every vector kept, or a plain projected coreset).
        k2: centres per enlarged memory (after the per-region cap).
        sq_radius: ``[R]`` the scaled squared covering radius that ``d_max`` squashes (None when
            not computed); the quantile mode ranks on it.
    """

    features: Tensor
    k1: int
    state: KCenterState | None
    d_max: Tensor
    spread: Tensor | None = None
    final: bool = False
    k2: int = 0
    sq_radius: Tensor | None = None


class AdaptiveCoreset:
    """Greedy k-center per memory, with FAPM's adaptive enlargement.

    Args:
        ratio: share of each memory kept by the first pass (0.10 in the paper).
        sampler: the k-center sampler.
        adaptive: apply the enlargement rule (``False`` = plain coreset, ablation D).
        d_th: threshold on ``d_imax`` (0.5), or the quantile in ``quantile`` mode.
        factor: enlargement factor of the ratio (2).
        distance_scale: meaning of ‖·‖² in Eq. 1 (see the module docstring).
        threshold_mode: ``absolute`` or ``quantile``.
        with_cluster_spread: also return ``d_ik`` of every cluster (costs a scatter).
        memory_cap: most first-pass centres per memory (default 1,000, the model configs' value; ``None`` =
            ``ratio`` alone decides);
            enlarged memories get at most ``factor`` times it. Bounds the memory, the build
            (``O(N·cap)`` instead of ``O(ratio·N²)``) and the search, whatever ``N``.
    """

    def __init__(
        self,
        ratio: float = 0.1,
        sampler: GreedyKCenter | None = None,
        adaptive: bool = True,
        d_th: float = 0.5,
        factor: float = 2.0,
        distance_scale: DistanceScale = "raw",
        threshold_mode: ThresholdMode = "quantile",
        with_cluster_spread: bool = True,
        memory_cap: int | None = 1000,
    ) -> None:
        if not 0 < ratio <= 1:
            raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
        if factor < 1:
            raise ValueError(f"adaptive factor must be >= 1, got {factor}")
        if threshold_mode not in ("absolute", "quantile"):
            raise ValueError(f"threshold_mode must be absolute or quantile, got {threshold_mode!r}")
        if threshold_mode == "quantile" and not 0 <= d_th <= 1:
            raise ValueError(f"d_th is a quantile in quantile mode and must be in [0, 1], got {d_th}")
        self.ratio = ratio
        self.sampler = sampler or GreedyKCenter()
        self.adaptive = adaptive
        self.d_th = d_th
        self.factor = factor
        self.distance_scale = distance_scale
        self.threshold_mode = threshold_mode
        self.with_cluster_spread = with_cluster_spread
        if memory_cap is not None and memory_cap < 1:
            raise ValueError(f"model.memory_cap must be >= 1 or null, got {memory_cap}")
        self.memory_cap = memory_cap

    def enlarge_mask(self, d_max: Tensor, sq_radius: Tensor | None = None) -> Tensor:
        """``[R]`` bool: which memories the rule enlarges.

        Args:
            d_max: ``[R]`` Eq. 1 spreads ``d_imax`` (compared with ``d_th`` in absolute mode).
            sq_radius: ``[R]`` the scaled squared covering radius that ``d_imax`` squashes; the
                quantile mode ranks on it, because Eq. 1 saturates (every ``d_imax`` = 1.0 in
                float32 once ‖·‖² exceeds ~17) and ties would then enlarge nothing.
        """
        if self.threshold_mode == "quantile":
            values = d_max if sq_radius is None else sq_radius
            return values > torch.quantile(values.double(), self.d_th).to(values)
        return d_max > self.d_th

    def sizes(self, n: int) -> tuple[int, int]:
        """``(k1, k2)``: first-pass and enlarged centres of a memory of ``n`` candidates,
        after the per-region cap (``k2`` is ``factor`` times the capped ``k1`` at most)."""
        k1 = num_centres(n, self.ratio)
        k2 = num_centres(n, min(1.0, self.ratio * self.factor))
        if self.memory_cap is not None and k1 > self.memory_cap:
            k1 = self.memory_cap
            k2 = min(k2, n, max(k1, math.ceil(round(self.memory_cap * self.factor, 6))))
        return k1, k2

    def __call__(
        self,
        features: Tensor,
        generator: torch.Generator,
        regions: slice | Tensor | None = None,
        total: int | None = None,
        device: torch.device | str | None = None,
    ) -> CoresetResult:
        """Select centres in each memory of ``features [R, N, C]``.

        Args:
            features: the candidates, any dtype and device (float16 on the host is fine:
                distances are computed in float32 on ``device``, one chunk at a time).
            generator: CPU generator of the random draws.
            regions, total: build only the memories ``regions`` (a slice or index tensor) of a
                layer of ``total``: ``features`` holds their candidates ``[R', N, C]``; the result
                equals those rows of the whole-layer build. The ``quantile`` rule needs every
                region's ``d_imax``: use :meth:`first_pass`, :meth:`decide` on all, :meth:`finish`.
            device: where distances are computed (default: the features' device).

        Returns:
            the selection, its tensors on ``device``.
        """
        if regions is not None and self.adaptive and self.threshold_mode == "quantile":
            raise ValueError(
                "model.threshold_mode=quantile needs every region's d_max: build a block of regions with "
                "first_pass(), decide() on the whole layer's d_max, then finish()"
            )
        first = self.first_pass(features, generator, regions=regions, total=total, device=device)
        return self.finish(first, self.decide(first.d_max, first.sq_radius))

    # The three steps below let the memories of one layer be built in shards (one block of
    # regions per DDP rank): only the enlargement decision needs every region's ``d_imax``
    # (the quantile mode ranks them), so ranks exchange ``[R]`` numbers, not features.
    def first_pass(
        self,
        features: Tensor,
        generator: torch.Generator,
        regions: slice | Tensor | None = None,
        total: int | None = None,
        device: torch.device | str | None = None,
    ) -> FirstPass:
        """Greedy k-center to ``ceil(ratio·N)`` centres in each memory of ``features [R', N, C]``
        and the memories' ``d_imax [R']``.

        Args:
            regions: which regions of the layer ``features`` holds, when it is a block of a
                layer's ``total`` regions; the generator is then drawn exactly as for the whole
                layer, so the block's result equals the same rows of a whole-layer build.
            total: the layer's number of regions (with ``regions``).
            device: where distances are computed (default: the features' device).
        """
        r, n, _ = features.shape
        dev = compute_device(features, device)
        k1, k2 = self.sizes(n)
        nan = torch.full((r,), float("nan"), device=dev)
        if k1 == n:
            # Nothing to reduce: keep every vector (ratio 1.0, or tiny memories).
            return FirstPass(features, k1, None, nan, final=True, k2=k1)
        projected = bool(self.sampler.projection_dim) and self.sampler.projection_dim < features.shape[-1]
        state = self.sampler.select(
            features, k1, generator, regions=regions, total=total, device=dev,
            statistics=self.adaptive or not projected,  # read below only then
        )
        if not self.adaptive and state.space is not features:
            # Plain coreset on a projection (PatchCore): the statistics would need a full
            # extra assignment pass in feature space, as costly as the selection itself.
            return FirstPass(features, k1, state, nan, final=True, k2=k1)
        sq_nearest, assignment = self._true_distances(features, state)
        sq_radius = scale_sq_distances(sq_nearest.amax(dim=1), features, self.distance_scale)  # [R]
        d_max = cluster_spread(sq_radius)
        spread = None
        if self.with_cluster_spread:
            far_sq = torch.zeros(r, k1, dtype=sq_nearest.dtype, device=dev)
            far_sq.scatter_reduce_(1, assignment, sq_nearest, reduce="amax")
            spread = cluster_spread(scale_sq_distances(far_sq, features, self.distance_scale))
        return FirstPass(features, k1, state, d_max, spread=spread, k2=k2, sq_radius=sq_radius)

    def decide(self, d_max: Tensor, sq_radius: Tensor | None = None) -> Tensor:
        """``[R]`` bool: the memories to enlarge, given every region's ``d_imax [R]`` of a layer
        (and the squared radii ``[R]`` it squashes, which the quantile mode ranks)."""
        if not self.adaptive or bool(d_max.isnan().all()):
            return torch.zeros_like(d_max, dtype=torch.bool)
        return self.enlarge_mask(d_max, sq_radius)

    def finish(self, first: FirstPass, enlarged: Tensor) -> CoresetResult:
        """Continue the first pass of the memories ``enlarged [R']`` to ``factor`` times more centres."""
        features, k1, k2 = first.features, first.k1, first.k2
        r, n, _ = features.shape
        device = first.d_max.device
        enlarged = enlarged.to(device)
        if first.state is None:
            full = torch.arange(n, device=device).expand(r, n).clone()
            return CoresetResult(full, torch.full((r,), n, device=device), first.d_max, torch.zeros_like(enlarged))
        if first.final:
            return CoresetResult(
                first.state.selected, torch.full((r,), k1, device=device), first.d_max, torch.zeros_like(enlarged)
            )
        lengths = torch.where(enlarged, k2, k1)
        indices = torch.full((r, int(lengths.max()) if r else k1), -1, dtype=torch.long, device=device)
        indices[:, :k1] = first.state.selected
        if enlarged.any() and k2 > k1:
            rows = enlarged.nonzero().squeeze(1)
            indices[rows] = self.sampler.extend(first.state, k2, rows=rows).selected
        return CoresetResult(indices, lengths, first.d_max, enlarged, first.spread)

    @staticmethod
    def _true_distances(features: Tensor, state: KCenterState) -> tuple[Tensor, Tensor]:
        """Distances to the nearest centre in feature space (redone only after a projection)."""
        if state.space is features:
            return state.nearest_sq, state.assignment
        return exact_assignment(features, state.selected, device=state.selected.device)
