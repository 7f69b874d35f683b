"""Greedy k-center coreset (minimax facility location), batched over memories.

The greedy rule (Sener & Savarese): start from one seeded point, then repeatedly add
the point farthest from the points chosen so far. Two facts are used throughout:

* The selection is a *prefix* sequence: the first ``k`` points of a run to ``k' > k``
  are exactly the run to ``k``. Doubling a memory's size (FAPM's adaptive rule)
  therefore continues the run instead of restarting it — same result, half the work.
* After ``k`` steps the running ``nearest`` distances are every point's distance to
  its closest centre, so cluster assignment and the covering radius come for free.

All memories of one call have the same number of candidates (``[R, N, C]``), which is
what patch-wise memories give: every region owns the same number of vectors per image.
On CPU the regions are processed in chunks whose features fit in cache (a greedy step
reads every candidate once, so one step over all 49 regions at once is memory-bound,
several times slower than the same arithmetic on a cache-resident chunk); on GPU one
chunk holds all regions. Buffers are allocated once per chunk, never in the inner loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class KCenterState:
    """A greedy k-center run over ``R`` memories, resumable.

    Attributes:
        space: ``[R, N, D]`` the candidates in the space the selection runs in (the
            features themselves, or their random projection).
        selected: ``[R, k]`` indices of the chosen centres, in selection order.
        nearest_raw: ``[R, N]`` squared distance of every candidate to its nearest centre,
            with the centres themselves marked -1 so they are never picked twice.
        assignment: ``[R, N]`` position (0..k-1) in ``selected`` of that nearest centre.
        rows: ``[R]`` the memories of ``space`` that these runs belong to, when they are a
            subset (``space`` is then shared, not copied); ``None``: all of ``space``, in order.
    """

    space: Tensor
    selected: Tensor
    nearest_raw: Tensor
    assignment: Tensor
    rows: Tensor | None = None

    @property
    def k(self) -> int:
        return self.selected.shape[1]

    @property
    def nearest_sq(self) -> Tensor:
        """``[R, N]`` squared distance of every candidate to its nearest centre."""
        return self.nearest_raw.clamp_min(0)

    def radius(self) -> Tensor:
        """``[R]`` covering radius: largest distance of any candidate to its nearest centre."""
        return self.nearest_raw.amax(dim=1).clamp_min(0).sqrt()


def num_centres(n: int, ratio: float) -> int:
    """``ceil(ratio · n)`` clamped to ``[1, n]`` (the float product is rounded first so that
    e.g. ``0.1 · 3200`` gives 320, not 321)."""
    if not 0 < ratio:
        raise ValueError(f"coreset ratio must be > 0, got {ratio}")
    return max(1, min(n, math.ceil(round(ratio * n, 6))))


def _default_chunk(features: Tensor, chunk_mb: float | None) -> int:
    r, n, c = features.shape
    if features.is_cuda or not chunk_mb or chunk_mb <= 0:
        return r
    per_region = n * c * features.element_size()
    return max(1, min(r, int(chunk_mb * (1 << 20)) // max(per_region, 1)))


class GreedyKCenter:
    """Seeded greedy k-center selection over ``[R, N, C]`` memories.

    Args:
        projection_dim: select on a seeded Gaussian random projection to this many dims
            (PatchCore's speed-up; ``None`` = exact distances).
        chunk_mb: CPU cache budget (MiB) per batched chunk of regions (``None``/0 = all at once).
    """

    def __init__(self, projection_dim: int | None = None, chunk_mb: float | None = 8.0) -> None:
        self.projection_dim = projection_dim
        self.chunk_mb = chunk_mb

    # ------------------------------------------------------------------ public
    def project(self, features: Tensor, generator: torch.Generator) -> Tensor:
        """``[R, N, C]`` → ``[R, N, D]`` on a seeded random projection (identity when off)."""
        c = features.shape[-1]
        if not self.projection_dim or self.projection_dim >= c:
            return features
        matrix = torch.randn(c, self.projection_dim, generator=generator, device="cpu")
        matrix = (matrix / math.sqrt(self.projection_dim)).to(features)
        return features @ matrix

    def select(
        self,
        features: Tensor,
        k: int,
        generator: torch.Generator,
        regions: slice | None = None,
        total: int | None = None,
    ) -> KCenterState:
        """Run greedy k-center to ``k`` centres in every memory of ``features [R, N, C]``.

        ``generator`` (a CPU generator) draws the start point of each memory and the
        projection, so a seed fixes the result. When ``features`` is the block ``regions``
        of a layer of ``total`` memories, the draws are those of the whole layer, so each
        memory's run is the one a whole-layer call gives it (memories never interact).
        """
        r, n, _ = features.shape
        if not 1 <= k <= n:
            raise ValueError(f"k must be in [1, {n}], got {k}")
        space = self.project(features, generator)
        start = torch.randint(n, (r if total is None else total,), generator=generator)
        if regions is not None:
            start = start[regions]
        if start.shape[0] != r:
            raise ValueError(f"regions {regions} of {total} do not match the {r} memories given")
        start = start.to(features.device)
        return self._run(space, k, start=start)

    def extend(self, state: KCenterState, k: int, rows: Tensor | None = None) -> KCenterState:
        """Continue ``state`` to ``k`` centres: equal to a fresh :meth:`select` to ``k`` with
        the same seed, by the prefix property, at the cost of the new steps only.

        ``rows`` (indices ``[R']``) continues only those memories and returns their runs;
        their candidates are read chunk by chunk, never copied as a whole.
        """
        n = state.space.shape[1]
        if not state.k <= k <= n:
            raise ValueError(f"k must be in [{state.k}, {n}], got {k}")
        if state.rows is not None:
            raise ValueError("extend a full run (state.rows is None); pass the memories as rows")
        return self._run(state.space, k, state=state, rows=rows)

    # ----------------------------------------------------------------- kernels
    def _run(
        self,
        space: Tensor,
        k: int,
        start: Tensor | None = None,
        state: KCenterState | None = None,
        rows: Tensor | None = None,
    ) -> KCenterState:
        """Greedy steps for the memories ``rows`` (default all) of ``space [R, N, D]``."""
        n = space.shape[1]
        count = space.shape[0] if rows is None else len(rows)
        chunk = _default_chunk(space, self.chunk_mb)
        selected = torch.empty(count, k, dtype=torch.long, device=space.device)
        nearest = torch.empty(count, n, dtype=space.dtype, device=space.device)
        assignment = torch.empty(count, n, dtype=torch.long, device=space.device)
        for lo in range(0, count, chunk):
            out = slice(lo, min(count, lo + chunk))
            src = out if rows is None else rows[out]  # a view, or a copy of this chunk only
            if state is None:
                assert start is not None
                self._chunk(space[src], k, selected[out], nearest[out], assignment[out], start=start[src])
            else:
                done = state.k
                selected[out, :done] = state.selected[src]
                nearest[out] = state.nearest_raw[src]
                assignment[out] = state.assignment[src]
                self._chunk(space[src], k, selected[out], nearest[out], assignment[out], done=done)
        return KCenterState(space, selected, nearest, assignment, rows)

    @staticmethod
    def _chunk(
        x: Tensor,
        k: int,
        selected: Tensor,
        nearest: Tensor,
        assignment: Tensor,
        start: Tensor | None = None,
        done: int = 0,
    ) -> None:
        """Greedy steps ``done..k-1`` for one chunk ``x [r, n, c]``, writing in place."""
        x = x.contiguous()
        r, n, c = x.shape
        flat = x.view(r * n, c)
        sq_norms = (x * x).sum(-1)  # [r, n]
        offsets = torch.arange(r, device=x.device) * n
        centre = torch.empty(r, c, 1, dtype=x.dtype, device=x.device)
        dots = torch.empty(r, n, 1, dtype=x.dtype, device=x.device)
        closer = torch.empty(r, n, dtype=torch.bool, device=x.device)
        best = torch.empty(r, dtype=x.dtype, device=x.device)
        pick = torch.empty(r, dtype=torch.long, device=x.device)
        centre_sq = torch.empty(r, 1, dtype=x.dtype, device=x.device)
        if done == 0:
            assert start is not None
            pick.copy_(start)
            nearest.fill_(math.inf)
            assignment.zero_()
        else:
            torch.max(nearest, dim=1, out=(best, pick))
        dist = dots.view(r, n)
        for step in range(done, k):
            selected[:, step] = pick
            torch.index_select(flat, 0, pick + offsets, out=centre.view(r, c))
            torch.gather(sq_norms, 1, pick.view(r, 1), out=centre_sq)
            torch.bmm(x, centre, out=dots)
            # |x - c|^2 = |x|^2 + |c|^2 - 2 x.c, in place on the dot-product buffer
            dist.mul_(-2).add_(sq_norms).add_(centre_sq)
            torch.lt(dist, nearest, out=closer)
            closer.scatter_(1, pick.view(r, 1), True)
            assignment.masked_fill_(closer, step)
            torch.minimum(nearest, dist, out=nearest)
            # Mark the centre -1 (its own distance is 0 only up to rounding): it is never
            # picked again, so the k indices stay distinct even among duplicate points.
            nearest.scatter_(1, pick.view(r, 1), -1.0)
            torch.max(nearest, dim=1, out=(best, pick))


def exact_assignment(features: Tensor, selected: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Nearest selected centre of every candidate, in the original feature space.

    Args:
        features: ``[R, N, C]`` candidates.
        selected: ``[R, K]`` indices of the centres.

    Returns:
        ``(nearest_sq [R, N], assignment [R, N])`` — squared distance to the nearest centre
        and its position in ``selected``. Used when selection ran on a projection.
    """
    r, n, c = features.shape
    centres = torch.gather(features, 1, selected.unsqueeze(-1).expand(-1, -1, c))  # [R, K, C]
    centre_sq = (centres * centres).sum(-1).unsqueeze(1)  # [R, 1, K]
    nearest = torch.empty(r, n, dtype=features.dtype, device=features.device)
    assignment = torch.empty(r, n, dtype=torch.long, device=features.device)
    for lo in range(0, n, chunk):
        part = features[:, lo : lo + chunk]
        sq = torch.baddbmm(centre_sq, part, centres.transpose(1, 2), alpha=-2)
        sq.add_((part * part).sum(-1, keepdim=True))
        torch.min(sq, dim=2, out=(nearest[:, lo : lo + chunk], assignment[:, lo : lo + chunk]))
    return nearest.clamp_(min=0), assignment
