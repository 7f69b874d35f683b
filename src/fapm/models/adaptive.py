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
or ``quantile`` (memories above the ``d_th`` quantile of their layer's ``d_imax`` values,
so a fixed share ``1 − d_th`` of the regions is doubled whatever the feature scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from fapm.models.coreset import GreedyKCenter, KCenterState, exact_assignment, num_centres

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
        mean_sq_norm = (features * features).sum(-1).mean(-1).clamp_min(1e-12)  # [R]
        return sq_dist / mean_sq_norm.view(-1, *([1] * (sq_dist.dim() - 1)))
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
    """

    features: Tensor
    k1: int
    state: KCenterState | None
    d_max: Tensor
    spread: Tensor | None = None
    final: bool = False


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
    """

    def __init__(
        self,
        ratio: float = 0.1,
        sampler: GreedyKCenter | None = None,
        adaptive: bool = True,
        d_th: float = 0.5,
        factor: float = 2.0,
        distance_scale: DistanceScale = "raw",
        threshold_mode: ThresholdMode = "absolute",
        with_cluster_spread: bool = True,
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

    def enlarge_mask(self, d_max: Tensor) -> Tensor:
        """``[R]`` bool: which memories the rule enlarges, given their ``d_imax [R]``."""
        if self.threshold_mode == "quantile":
            return d_max > torch.quantile(d_max.double(), self.d_th).to(d_max)
        return d_max > self.d_th

    def __call__(self, features: Tensor, generator: torch.Generator) -> CoresetResult:
        """Select centres in each memory of ``features [R, N, C]``."""
        first = self.first_pass(features, generator)
        return self.finish(first, self.decide(first.d_max))

    # The three steps below let the memories of one layer be built in shards (one block of
    # regions per DDP rank): only the enlargement decision needs every region's ``d_imax``
    # (the quantile mode ranks them), so ranks exchange ``[R]`` numbers, not features.
    def first_pass(
        self, features: Tensor, generator: torch.Generator, regions: slice | None = None, total: int | None = None
    ) -> FirstPass:
        """Greedy k-center to ``ceil(ratio·N)`` centres in each memory of ``features [R', N, C]``
        and the memories' ``d_imax [R']``.

        Args:
            regions: which regions of the layer ``features`` holds, when it is a block of a
                layer's ``total`` regions; the generator is then drawn exactly as for the whole
                layer, so the block's result equals the same rows of a whole-layer build.
            total: the layer's number of regions (with ``regions``).
        """
        r, n, _ = features.shape
        k1 = num_centres(n, self.ratio)
        nan = torch.full((r,), float("nan"), device=features.device)
        if k1 == n:
            # Nothing to reduce: keep every vector (ratio 1.0, or tiny memories).
            return FirstPass(features, k1, None, nan, final=True)
        state = self.sampler.select(features, k1, generator, regions=regions, total=total)
        if not self.adaptive and state.space is not features:
            # Plain coreset on a projection (PatchCore): the statistics would need a full
            # extra assignment pass in feature space, as costly as the selection itself.
            return FirstPass(features, k1, state, nan, final=True)
        sq_nearest, assignment = self._true_distances(features, state)
        d_max = cluster_spread(scale_sq_distances(sq_nearest.amax(dim=1), features, self.distance_scale))
        spread = None
        if self.with_cluster_spread:
            far_sq = torch.zeros(r, k1, dtype=sq_nearest.dtype, device=features.device)
            far_sq.scatter_reduce_(1, assignment, sq_nearest, reduce="amax")
            spread = cluster_spread(scale_sq_distances(far_sq, features, self.distance_scale))
        return FirstPass(features, k1, state, d_max, spread=spread)

    def decide(self, d_max: Tensor) -> Tensor:
        """``[R]`` bool: the memories to enlarge, given every region's ``d_imax [R]`` of a layer."""
        if not self.adaptive or bool(d_max.isnan().all()):
            return torch.zeros_like(d_max, dtype=torch.bool)
        return self.enlarge_mask(d_max)

    def finish(self, first: FirstPass, enlarged: Tensor) -> CoresetResult:
        """Continue the first pass of the memories ``enlarged [R']`` to ``factor`` times more centres."""
        features, k1 = first.features, first.k1
        r, n, _ = features.shape
        device = features.device
        if first.state is None:
            full = torch.arange(n, device=device).expand(r, n).clone()
            return CoresetResult(full, torch.full((r,), n, device=device), first.d_max, torch.zeros_like(enlarged))
        if first.final:
            return CoresetResult(
                first.state.selected, torch.full((r,), k1, device=device), first.d_max, torch.zeros_like(enlarged)
            )
        k2 = num_centres(n, min(1.0, self.ratio * self.factor))
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
        return exact_assignment(features, state.selected)
