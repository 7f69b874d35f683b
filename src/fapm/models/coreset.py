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
Each greedy step is one fused batched operation (``bmm`` + in-place updates) over all the
regions of a chunk — never a Python loop over regions. On CPU the regions are processed in chunks whose features fit in cache (a greedy step
reads every candidate once, so one step over all 49 regions at once is memory-bound,
several times slower than the same arithmetic on a cache-resident chunk); on GPU one
chunk holds all regions. Buffers are allocated once per chunk, never in the inner loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass
class KCenterState:
    """A greedy k-center run over ``R`` memories, resumable.

    Attributes:
        space: ``[R, N, D]`` the candidates in the space the selection runs in (the
            features themselves, or their random projection: a :class:`ProjectedSpace`, or a tensor).
        selected: ``[R, k]`` indices of the chosen centres, in selection order.
        nearest_raw: ``[R, N]`` squared distance of every candidate to its nearest centre,
            with the centres themselves marked -1 so they are never picked twice.
        assignment: ``[R, N]`` position (0..k-1) in ``selected`` of that nearest centre.
        rows: ``[R]`` the memories of ``space`` that these runs belong to, when they are a
            subset (``space`` is then shared, not copied); ``None``: all of ``space``, in order.
    """

    space: Tensor | ProjectedSpace
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


def compute_device(features: Tensor, device: torch.device | str | None) -> torch.device:
    """Where distances are computed: ``device``, else where ``features`` live."""
    return torch.device(device) if device is not None else features.device


def region_chunk(
    features: Tensor, device: torch.device, chunk_mb: float | None, device_chunk_mb: float | None = None
) -> int:
    """Regions per batched greedy chunk of ``features [R, N, C]`` computed on ``device``.

    * CPU: a chunk whose float32 copy fits the cache budget ``chunk_mb`` (a greedy step
      reads every candidate once; cache-resident chunks run several times faster);
    * CUDA with float32 features already there: all regions at once (one fused step);
    * CUDA with features elsewhere or narrower: chunks of ``device_chunk_mb`` float32 MiB
      (0/None: a quarter of the device's free memory), streamed to the device.
    """
    r, n, c = features.shape
    per_region = max(n * c * 4, 1)
    if device.type != "cuda":
        if not chunk_mb or chunk_mb <= 0:
            return r
        return max(1, min(r, int(chunk_mb * (1 << 20)) // per_region))
    if features.device == device and features.dtype == torch.float32:
        return r
    if device_chunk_mb and device_chunk_mb > 0:
        budget = int(device_chunk_mb * (1 << 20))
    else:
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 4
    return max(1, min(r, budget // per_region))


def as_compute(x: Tensor, device: torch.device) -> Tensor:
    """``x`` as contiguous float32 on ``device`` (distances are always float32)."""
    return x.to(device=device, dtype=torch.float32, non_blocking=True).contiguous()


class ProjectedSpace:
    """``features [R, N, C]`` seen through a ``[C, D]`` projection that is applied when a block of
    memories is read (``space[rows]`` → float32 ``[r, N, D]`` on ``device``), so the projected
    candidates are never held all at once: a greedy run keeps one chunk of them. Each memory is
    projected by itself, so a block reads the same bits as the whole layer projected at once."""

    dtype = torch.float32

    def __init__(self, features: Tensor, matrix: Tensor, device: torch.device) -> None:
        self.features = features
        self.matrix = matrix.to(device)
        self.device = device
        self.shape = torch.Size((*features.shape[:2], matrix.shape[1]))

    def __getitem__(self, rows: slice | Tensor) -> Tensor:
        if isinstance(rows, Tensor):
            rows = rows.to(self.features.device)
        block = self.features[rows]
        out = torch.empty(block.shape[0], block.shape[1], self.shape[2], device=self.device)
        for i in range(block.shape[0]):
            torch.matmul(as_compute(block[i], self.device), self.matrix, out=out[i])
        return out


class GreedyKCenter:
    """Seeded greedy k-center selection over ``[R, N, C]`` memories.

    ``composable`` (class attribute): whether the selection composes from shards of the candidates
    (:class:`ComposableKCenter`), so DDP ranks can each select from their own images.

    Features may be stored narrower (float16/bfloat16) or elsewhere (pinned host memory)
    than where the selection runs: each chunk of regions is cast to float32 on the
    compute device as it is processed, so the working set is one chunk.

    Args:
        projection_dim: select on a seeded Gaussian random projection to this many dims
            (PatchCore's speed-up; ``None`` = exact distances).
        chunk_mb: CPU cache budget (MiB) per batched chunk of regions (``None``/0 = all at once).
        device_chunk_mb: CUDA budget (MiB of float32) per streamed chunk when the features
            are not float32 on the device (0 = a quarter of the free device memory).
    """

    composable = False

    def __init__(
        self, projection_dim: int | None = None, chunk_mb: float | None = 8.0, device_chunk_mb: float | None = 0.0
    ) -> None:
        self.projection_dim = projection_dim
        self.chunk_mb = chunk_mb
        self.device_chunk_mb = device_chunk_mb

    # ------------------------------------------------------------------ public
    def project(self, features: Tensor, generator: torch.Generator, device: torch.device | None = None) -> Tensor:
        """``[R, N, C]`` → ``[R, N, D]`` float32 on a seeded random projection (identity when off).

        Projected region by region: every region's product has the same shape whatever the
        subset of regions, so a subset's projection equals the full one's rows bit for bit.
        """
        c = features.shape[-1]
        if not self.projection_dim or self.projection_dim >= c:
            return features
        dev = compute_device(features, device)
        matrix = torch.randn(c, self.projection_dim, generator=generator, device="cpu")
        matrix = (matrix / math.sqrt(self.projection_dim)).to(dev)
        out = torch.empty(*features.shape[:2], self.projection_dim, device=dev)
        for region in range(features.shape[0]):
            torch.matmul(as_compute(features[region], dev), matrix, out=out[region])
        return out

    def lazy_projection(
        self, features: Tensor, generator: torch.Generator, device: torch.device | None = None
    ) -> Tensor | ProjectedSpace:
        """As :meth:`project` (the same draw and the same bits), applied chunk by chunk when read."""
        c = features.shape[-1]
        if not self.projection_dim or self.projection_dim >= c:
            return features
        matrix = torch.randn(c, self.projection_dim, generator=generator, device="cpu")
        return ProjectedSpace(features, matrix / math.sqrt(self.projection_dim), compute_device(features, device))

    def select(
        self,
        features: Tensor,
        k: int,
        generator: torch.Generator,
        regions: slice | Tensor | None = None,
        total: int | None = None,
        device: torch.device | str | None = None,
        statistics: bool = True,
    ) -> KCenterState:
        """Run greedy k-center to ``k`` centres in every memory of ``features [R, N, C]``.

        ``generator`` (a CPU generator) draws the projection and the start point of each
        memory, so a seed fixes the result. When ``features`` is the block ``regions`` (a
        slice, or an index tensor) of a layer of ``total`` memories, the draws are those of
        the whole layer, so each memory's run is the one a whole-layer call gives it
        (memories never interact).

        Args:
            device: where distances are computed (default: the features' device).
            statistics: whether the caller reads the state's distances (a greedy run has them
                anyway; approximate samplers skip computing them when False).
        """
        r, n, _ = features.shape
        if not 1 <= k <= n:
            raise ValueError(f"k must be in [1, {n}], got {k}")
        dev = compute_device(features, device)
        space = self.lazy_projection(features, generator, dev)  # projected chunk by chunk: never held whole
        start = torch.randint(n, (r if total is None else total,), generator=generator)
        if regions is not None:
            start = start[regions.cpu() if isinstance(regions, Tensor) else regions]
        if start.shape[0] != r:
            raise ValueError(f"regions {regions} of {total} do not match the {r} memories given")
        return self._run(space, k, start=start.to(dev), device=dev)

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
        return self._run(state.space, k, state=state, rows=rows, device=state.selected.device)

    # ----------------------------------------------------------------- kernels
    def _run(
        self,
        space: Tensor,
        k: int,
        start: Tensor | None = None,
        state: KCenterState | None = None,
        rows: Tensor | None = None,
        device: torch.device | None = None,
    ) -> KCenterState:
        """Greedy steps for the memories ``rows`` (default all) of ``space [R, N, D]``."""
        dev = compute_device(space, device)
        n = space.shape[1]
        count = space.shape[0] if rows is None else len(rows)
        chunk = region_chunk(space, dev, self.chunk_mb, self.device_chunk_mb)
        selected = torch.empty(count, k, dtype=torch.long, device=dev)
        nearest = torch.empty(count, n, dtype=torch.float32, device=dev)
        assignment = torch.empty(count, n, dtype=torch.long, device=dev)
        host_rows = None if rows is None else rows.to(space.device)
        for lo in range(0, count, chunk):
            out = slice(lo, min(count, lo + chunk))
            src = out if host_rows is None else host_rows[out]  # a view, or a copy of this chunk only
            x = as_compute(space[src], dev)
            if state is None:
                assert start is not None
                self._chunk(x, k, selected[out], nearest[out], assignment[out], start=start[out])
            else:
                done = state.k
                idx = out if rows is None else rows[out].to(dev)
                selected[out, :done] = state.selected[idx]
                nearest[out] = state.nearest_raw[idx]
                assignment[out] = state.assignment[idx]
                self._chunk(x, k, selected[out], nearest[out], assignment[out], done=done)
            del x
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


def exact_assignment(
    features: Tensor, selected: Tensor, chunk: int = 4096, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Nearest selected centre of every candidate, in the original feature space.

    Computed region by region and ``chunk`` candidates at a time, in float32 on ``device``:
    the working set is one ``[chunk, K]`` block, whatever the number of regions or the
    features' storage dtype (and a region's result never depends on the others).

    Args:
        features: ``[R, N, C]`` candidates (any dtype/device).
        selected: ``[R, K]`` indices of the centres.
        chunk: candidates handled at once.
        device: where to compute (default: ``selected``'s device).

    Returns:
        ``(nearest_sq [R, N], assignment [R, N])`` — squared distance to the nearest centre
        and its position in ``selected``. Used when selection ran on a projection.
    """
    r, n, c = features.shape
    dev = selected.device if device is None else torch.device(device)
    nearest = torch.empty(r, n, dtype=torch.float32, device=dev)
    assignment = torch.empty(r, n, dtype=torch.long, device=dev)
    for region in range(r):
        centres = as_compute(features[region].index_select(0, selected[region].to(features.device)), dev)  # [K, C]
        centre_sq = (centres * centres).sum(-1).unsqueeze(0)  # [1, K]
        for lo in range(0, n, chunk):
            part = as_compute(features[region, lo : lo + chunk], dev)
            sq = torch.addmm(centre_sq, part, centres.t(), alpha=-2)
            sq.add_((part * part).sum(-1, keepdim=True))
            torch.min(sq, dim=1, out=(nearest[region, lo : lo + chunk], assignment[region, lo : lo + chunk]))
    return nearest.clamp_(min=0), assignment


def mean_sq_norm(features: Tensor, device: torch.device | None = None, chunk: int = 4096) -> Tensor:
    """``[R]`` mean squared norm of each memory's vectors, in float32, one chunk at a time."""
    dev = features.device if device is None else torch.device(device)
    total = torch.zeros(features.shape[0], device=dev)
    for lo in range(0, features.shape[1], chunk):
        part = as_compute(features[:, lo : lo + chunk], dev)
        total += (part * part).sum(-1).sum(-1)
    return total / max(features.shape[1], 1)


# --------------------------------------------------------------------- composable coreset
def split_sizes(n: int, shards: int) -> list[int]:
    """Sizes of ``shards`` contiguous blocks of ``n`` candidates (the first ones one larger), as
    :func:`fapm.distributed.shard_bounds` splits a data set between ranks."""
    shards = max(1, min(shards, n))
    q, rem = divmod(n, shards)
    return [q + 1 if i < rem else q for i in range(shards)]


def shard_quotas(sizes: list[int], total: int) -> list[int]:
    """Split ``total`` centres between shards in proportion to their ``sizes`` (largest remainder,
    ties to the earlier shard), so the quotas add up to ``total`` exactly and none exceeds its shard."""
    n = sum(sizes)
    if not 0 <= total <= n:
        raise ValueError(f"cannot pick {total} centres from {n} candidates")
    exact = [total * s / n for s in sizes]
    quotas = [min(s, math.floor(e)) for s, e in zip(sizes, exact)]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quotas[i]), i))
    left = total - sum(quotas)
    for i in order:
        if left == 0:
            break
        if quotas[i] < sizes[i]:
            quotas[i] += 1
            left -= 1
    return quotas


class ComposableKCenter(GreedyKCenter):
    """Approximate greedy k-center: greedy on each shard, then greedy over the union of their picks.

    The candidates of a memory are cut into ``ceil(N / shard_size)`` contiguous blocks of equal
    size (images are stored one after the other, so a block is a run of training images, like a
    DDP rank's share). Shard ``s`` of ``n_s`` candidates runs the greedy rule to its share of ``ceil(oversample · k)``
    centres (in proportion to ``n_s``); the union of these picks is reduced to ``k`` by the greedy
    rule again. With ``oversample`` 1 the union already holds ``k`` points and is the result (the
    union step would select all of them). This is the composable coreset for k-center (each
    shard's greedy picks cover their shard within twice its optimal radius; the union covers the
    whole set within the largest of those radii). PatchCore's global greedy costs ``k · N =
    ratio · N²`` distance rows; sharded, ``ratio · N · shard_size`` (linear in ``N``) plus
    ``oversample · k²`` for the union step when ``oversample`` > 1.

    One shard is the exact greedy run: the same draws, the same centres in the same order.

    Args:
        shard_size: candidates per block (at most; >= N: one block, the exact greedy).
        oversample: picks of all shards together, as a multiple of ``k`` (>= 1).
        projection_dim, chunk_mb, device_chunk_mb: as :class:`GreedyKCenter`.
    """

    composable = True

    def __init__(
        self, shard_size: int = 16384, oversample: float = 1.0, projection_dim: int | None = None,
        chunk_mb: float | None = 8.0, device_chunk_mb: float | None = 0.0,
    ) -> None:
        super().__init__(projection_dim, chunk_mb, device_chunk_mb)
        if shard_size < 1:
            raise ValueError(f"model.coreset.shard_size must be >= 1, got {shard_size}")
        if oversample < 1:
            raise ValueError(f"model.coreset.oversample must be >= 1, got {oversample}")
        self.shard_size = int(shard_size)
        self.oversample = float(oversample)

    def shard_sizes(self, n: int) -> list[int]:
        """Sizes of the contiguous blocks ``n`` candidates are cut into (at most ``shard_size`` each)."""
        return split_sizes(n, math.ceil(n / self.shard_size))

    def select(
        self,
        features: Tensor,
        k: int,
        generator: torch.Generator,
        regions: slice | Tensor | None = None,
        total: int | None = None,
        device: torch.device | str | None = None,
        statistics: bool = True,
    ) -> KCenterState:
        """Composable selection of ``k`` centres in every memory of ``features [R, N, C]``
        (arguments as :meth:`GreedyKCenter.select`). With ``statistics`` the state's distances are
        those of every candidate to its nearest selected centre in the selection space (one chunked
        pass, so the run can be extended); without, they are empty ``[R, 0]`` tensors."""
        r, n, _ = features.shape
        if not 1 <= k <= n:
            raise ValueError(f"k must be in [1, {n}], got {k}")
        dev = compute_device(features, device)
        space = self.project(features, generator, dev)
        rows = r if total is None else total
        selected = self.compose(space, self.shard_sizes(n), k, generator, rows, regions)
        if not statistics:
            empty = torch.empty(r, 0, device=dev)
            return KCenterState(space, selected, empty, empty.long())
        nearest, assignment = exact_assignment(space, selected, device=dev)
        nearest.scatter_(1, selected, -1.0)  # centres are marked as in a greedy run (never picked again)
        return KCenterState(space, selected, nearest, assignment)

    def compose(
        self,
        space: Tensor,
        sizes: list[int],
        k: int,
        generator: torch.Generator,
        total: int | None = None,
        regions: slice | Tensor | None = None,
    ) -> Tensor:
        """``[R, k]`` indices into ``space [R, N, D]`` (already in the selection space) chosen by
        greedy on the contiguous shards of ``sizes`` (summing to ``N``), then on their union.

        The start of every shard is drawn at once for the ``total`` memories of a layer (then
        ``regions`` taken), so one shard draws exactly what :meth:`GreedyKCenter.select` does.
        """
        r, n, _ = space.shape
        if sum(sizes) != n:
            raise ValueError(f"shard sizes {sizes} do not add up to the {n} candidates")
        starts = self.shard_starts(generator, sizes, r if total is None else total, regions)
        quotas = shard_quotas(sizes, min(n, math.ceil(round(self.oversample * k, 6))))
        offsets = [0]
        for s in sizes[:-1]:
            offsets.append(offsets[-1] + s)
        picks = [
            self.shard_select(space[:, lo : lo + s], q, starts[:, i]) + lo
            for i, (lo, s, q) in enumerate(zip(offsets, sizes, quotas)) if q > 0
        ]
        union = torch.cat(picks, dim=1)  # [R, U], in shard order
        return union[:, :k] if union.shape[1] == k else self.union_select(space, union, k, generator)

    @staticmethod
    def shard_starts(
        generator: torch.Generator, sizes: list[int], total: int, regions: slice | Tensor | None = None
    ) -> Tensor:
        """``[R, shards]`` start point of each shard's greedy run, below the smallest shard's size
        (with one shard: ``randint(N)``, the exact run's draw)."""
        starts = torch.randint(min(sizes), (total, len(sizes)), generator=generator)
        if regions is not None:
            starts = starts[regions.cpu() if isinstance(regions, Tensor) else regions]
        return starts

    def shard_select(self, shard: Tensor, k: int, start: Tensor) -> Tensor:
        """Greedy to ``k`` centres in each memory of one shard ``[R, S, D]`` → ``[R, k]`` local indices."""
        return self._run(shard, k, start=start.to(shard.device), device=shard.device).selected

    def union_select(self, space: Tensor, union: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """Greedy to ``k`` of the ``union [R, U]`` candidates of ``space`` → ``[R, k]`` indices into ``space``."""
        d = space.shape[-1]
        points = torch.gather(space, 1, union.to(space.device).unsqueeze(-1).expand(-1, -1, d))
        start = torch.randint(union.shape[1], (union.shape[0],), generator=generator)
        chosen = self._run(points, k, start=start.to(points.device), device=points.device).selected
        return torch.gather(union, 1, chosen.to(union.device))

    def compose_across(
        self,
        local: Tensor,
        counts: list[int],
        rank: int,
        k: int,
        generator: torch.Generator,
        gather: Callable[[Tensor], Tensor],
        device: torch.device | None = None,
    ) -> Tensor:
        """The composable selection when the candidates are spread over processes (DDP ranks).

        Process ``rank`` holds ``local [R, counts[rank], C]``, the ``rank``-th contiguous part of
        the candidates; each part is cut into blocks of at most ``shard_size`` by itself. Every
        process runs the greedy on its own blocks, the picks are gathered (``gather`` concatenates
        every process's ``[R, q, *]`` along dim 1 in rank order) and the union step runs on every
        process. Every process draws from ``generator`` what :meth:`compose` draws, so the result
        equals ``compose`` over the concatenated candidates with :meth:`rank_shard_sizes`.

        Returns:
            ``[R, k, C]`` the selected vectors in float32 on ``device``, the same on every process.
        """
        r, n_local, c = local.shape
        if counts[rank] != n_local or min(counts) < 1:
            raise ValueError(f"candidates per process {counts}: process {rank} holds {n_local} (each needs >= 1)")
        dev = compute_device(local, device)
        sizes = self.rank_shard_sizes(counts)
        first = sum(len(self.shard_sizes(m)) for m in counts[:rank])  # this process's first block
        mine = self.shard_sizes(n_local)
        space = self.project(local, generator, dev)  # every process draws the same matrix
        starts = self.shard_starts(generator, sizes, r)
        quotas = shard_quotas(sizes, min(sum(sizes), math.ceil(round(self.oversample * k, 6))))
        picks, lo = [], 0
        for j, size in enumerate(mine):
            if quotas[first + j]:
                picks.append(self.shard_select(space[:, lo : lo + size], quotas[first + j], starts[:, first + j]) + lo)
            lo += size
        picked = torch.cat(picks, dim=1) if picks else torch.empty(r, 0, dtype=torch.long, device=dev)
        vectors = as_compute(torch.gather(local, 1, picked.to(local.device).unsqueeze(-1).expand(-1, -1, c)), dev)
        union = gather(vectors)  # [R, U, C]
        if union.shape[1] == k:
            return union
        points = union if space is local else gather(torch.gather(space, 1, picked.unsqueeze(-1).expand(
            -1, -1, space.shape[-1])))
        positions = torch.arange(union.shape[1], device=dev).expand(r, -1)
        chosen = self.union_select(points, positions, k, generator)
        return torch.gather(union, 1, chosen.unsqueeze(-1).expand(-1, -1, c))

    def rank_shard_sizes(self, counts: list[int]) -> list[int]:
        """The blocks of candidates split between processes as ``counts``: each part cut by itself."""
        return [size for m in counts for size in self.shard_sizes(m)]
