"""The memory-bank detector: FAPM, PatchCore and the paper's ablations as one composition.

``features → streams → per-region memories (adaptive coreset) → per-region k-NN →
layer fusion → anomaly map + image score``. What varies between the methods is only
configuration:

=========  ======  ==========  ========
variant    grid    streams     adaptive
=========  ======  ==========  ========
A PatchCore 1×1    concat      off (selection on a 128-d projection)
B          7×7     concat      off
C          1×1     separate    off
D          7×7     separate    off
E FAPM     7×7     separate    on
=========  ======  ==========  ========
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from fapm.distributed import all_gather_rows, all_gather_sizes, gather_to_owner, shard_bounds, world
from fapm.models.adaptive import AdaptiveCoreset
from fapm.models.alignment import (
    CHOICES, Aligner, AlignmentProbe, decide, estimate, grey_thumbnails, invert_theta, warp,
)
from fapm.models.build_report import BuildReport
from fapm.models.feature_store import FeatureStore
from fapm.models.features import FeatureExtractor
from fapm.models.knn import KNNSearch, TorchKNN, exact_distances
from fapm.models.neighbourhood import BORDERS, NeighbourhoodPlan, exact_distances_at, neighbourhood_search
from fapm.models.patch_memory import PatchMemory, check_grid, merge_regions, split_regions
from fapm.models.scoring import ImageScore, MaxScore, ScoreContext, anomaly_map, fuse_streams
from fapm.models.streams import FeatureStreams, SeparateLayers
from fapm.models.support import StreamSearch, support_distances
from fapm.types import AnomalyOutput

log = logging.getLogger(__name__)


class NotFittedError(RuntimeError):
    """The detector was asked to score before its memory was built or loaded."""


class MemoryDetector(nn.Module):
    """Patch-wise, layer-wise memory-bank anomaly detector.

    Args:
        extractor: backbone returning pooled ``{layer: [B, C, H, W]}``.
        streams: how layers become feature streams (separate or concatenated).
        grid: ``(gh, gw)`` patch grid; must divide every stream's feature map.
        coreset: the (adaptive) coreset applied to every memory.
        search: factory returning a fresh :class:`KNNSearch` (one per stream).
        k: neighbours per test vector.
        layer_weights: fusion weight per stream (default 1 each).
        image_score: image-score strategy (default: the max score, as model.image_score).
        map_upsample: ``bilinear`` or ``nearest`` resize of the patch map to the input.
        blur_sigma: Gaussian blur of the anomaly map (0 = none).
        neighbourhood: radius in regions: 0 = search region ``i`` only (the paper); ``r`` = the
            memories of the ``(2r+1)²`` window around it, searched in place
            (:mod:`fapm.models.neighbourhood`).
        neighbourhood_border: ``clip`` (the window is cut by the grid) or ``shift`` (moved
            inward: every region searches the same number of memories).
        seed: seed of the coreset's random choices.
        feature_dtype: storage dtype of the collected training features (``None`` = as
            extracted; float16/bfloat16 halve the fit's memory, distances stay float32).
        feature_host: keep the collected features in (pinned) host memory; the coreset
            streams chunks of regions to the device the backbone runs on.
        aligner: optional test-time alignment (``model.align``, :mod:`fapm.models.alignment`):
            images are registered to the training images' reference and warped before the
            search, their maps warped back; unconfident ones fall back to the neighbourhood
            search (counted in :attr:`Aligner.counts`, warned). Eager only (host reads).
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        streams: FeatureStreams | None = None,
        grid: Sequence[int] = (7, 7),
        coreset: AdaptiveCoreset | None = None,
        search: Callable[[], KNNSearch] | None = None,
        k: int = 4,
        layer_weights: Sequence[float] | None = None,
        image_score: ImageScore | None = None,
        map_upsample: str = "bilinear",
        blur_sigma: float = 4.0,
        neighbourhood: int = 0,
        neighbourhood_border: str = "clip",
        seed: int = 0,
        feature_dtype: torch.dtype | None = None,
        feature_host: bool = False,
        aligner: Aligner | None = None,
    ) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"model.k must be >= 1, got {k}")
        if neighbourhood < 0:
            raise ValueError(f"model.neighbourhood must be >= 0, got {neighbourhood}")
        if neighbourhood_border not in BORDERS:
            raise ValueError(f"model.neighbourhood_border must be one of {BORDERS}, got {neighbourhood_border!r}")
        if map_upsample not in ("bilinear", "nearest", "bicubic"):
            raise ValueError(f"model.map_upsample must be bilinear, nearest or bicubic, got {map_upsample!r}")
        self.extractor = extractor
        self.streams = streams or SeparateLayers()
        self.grid = (int(grid[0]), int(grid[1]))
        self.coreset = coreset or AdaptiveCoreset()
        self.search_factory = search or TorchKNN
        self.k = int(k)
        n_streams = self.streams.count(extractor.layers)
        self.layer_weights = list(layer_weights) if layer_weights is not None else [1.0] * n_streams
        if len(self.layer_weights) != n_streams:
            raise ValueError(f"model.layer_weights needs {n_streams} values (one per stream), got {self.layer_weights}")
        self.image_score = image_score or MaxScore()
        self.map_upsample = map_upsample
        self.blur_sigma = float(blur_sigma)
        self.neighbourhood = int(neighbourhood)
        self.neighbourhood_border = neighbourhood_border
        self._plans: dict[tuple, NeighbourhoodPlan] = {}
        self.aligner = aligner
        # fit-time thumbnails: the alignment reference and how aligned the training images are
        self.probe = AlignmentProbe(aligner.resolution, fixed=True) if aligner is not None else AlignmentProbe(128)
        self._train_frame: Tensor | None = None
        self._aligned_sum: Tensor | None = None
        self.train_alignment = {"aligned": 0, "kept": 0}
        self.seed = int(seed)
        self.memories = nn.ModuleList(PatchMemory(self.grid) for _ in range(n_streams))
        self.stream_names = extractor.layers if n_streams == len(extractor.layers) else ["+".join(extractor.layers)]
        self.features = FeatureStore(n_streams, dtype=feature_dtype, host=feature_host)
        self._searches: list[KNNSearch] = []
        self._search_key: tuple | None = None
        self._k_eff = 0
        self._k_max = 0
        self.last_build: BuildReport | None = None

    # ------------------------------------------------------------------ state
    @property
    def fitted(self) -> bool:
        return all(m.fitted for m in self.memories)

    def effective_k(self) -> int:
        """``k`` capped by the smallest region memory (a region cannot return more items)."""
        smallest = min(int(m.lengths.min()) for m in self.memories)
        return min(self.k, smallest)

    def memory_vectors(self) -> int:
        return sum(int(m.lengths.sum()) for m in self.memories)

    def facts(self) -> dict[str, Any]:
        """What the detector is and what its memory holds (for ``metrics.json`` and model files)."""
        facts: dict[str, Any] = {
            "backbone": self.extractor.name,
            "layers": list(self.extractor.layers),
            "weights": str(self.extractor.weight_source),
            "random_weights": self.extractor.weight_source.is_random,
            "grid": list(self.grid),
            "k": self.k,
        }
        if self.fitted:
            facts["k_effective"] = self.effective_k()
            facts["memory_vectors"] = self.memory_vectors()
            facts["memory_bytes"] = self.memory_bytes()
            facts["memory_sizes"] = {n: m.sizes() for n, m in zip(self.stream_names, self.memories)}
            facts["enlarged_regions"] = {n: int(m.enlarged.sum()) for n, m in zip(self.stream_names, self.memories)}
            facts["d_max"] = {
                n: [round(float(v), 6) for v in m.d_max.tolist()] for n, m in zip(self.stream_names, self.memories)
            }
        if self.last_build is not None and self.last_build.alignment:
            facts["alignment"] = dict(self.last_build.alignment)
        if self.aligner is not None:
            facts["align"] = {"mode": self.aligner.mode, "choice": self.aligner.resolved, **self.aligner.counts}
        return facts

    def memory_bytes(self) -> int:
        """Bytes of stored (non-padding) memory vectors."""
        return sum(int(m.lengths.sum()) * m.memory.shape[-1] * m.memory.element_size() for m in self.memories)

    # ---------------------------------------------------------------- fitting
    def check_input_size(self, size: tuple[int, int]) -> None:
        """Fail early if the grid does not divide the streams' maps for inputs of ``size``."""
        device = next(self.extractor.parameters()).device
        with torch.no_grad():
            streams = self.streams(self.extractor(torch.zeros(1, 3, *size, device=device)))
        for name, s in zip(self.stream_names, streams):
            check_grid(s.shape[-2], s.shape[-1], self.grid, what=f"feature map of stream {name!r}")
        if self.aligner is not None:
            self.aligner.check_input_size(size)

    def reset_fit(self, expected_images: int | None = None) -> None:
        """Forget collected features (start of a fit epoch); see :class:`FeatureStore`.

        ``expected_images``: how many training images will be collected, when known (one
        preallocated buffer per stream instead of per-batch pieces).
        """
        self.features.reset(expected_images)
        self.probe.reset()
        self._train_frame: Tensor | None = None  # thumbnail the training images are aligned to
        self._aligned_sum: Tensor | None = None
        self.train_alignment = {"aligned": 0, "kept": 0}

    @torch.no_grad()
    def collect(self, images: Tensor) -> None:
        """Extract features of normal ``images [B, 3, H, W]`` and keep them for :meth:`build`."""
        self.probe.add(images)  # the raw images: their spread is what the fit-time summary reports
        if self.aligner is not None:
            images = self._align_training(images)
        self.add_features(self.streams(self.extractor(images)))

    def _align_training(self, images: Tensor) -> Tensor:
        """Training images registered to the first batch's mean thumbnail (confident ones warped).

        The memory is then built in the frame test images are warped to: the reference kept for
        testing is the mean of these aligned thumbnails. Under DDP every rank would pick its own
        frame, so training images are kept as they are there (only test images are aligned).
        """
        aligner = self.aligner
        assert aligner is not None
        if self._train_frame is None:
            aligner.check_input_size(tuple(images.shape[-2:]))
        thumbs = grey_thumbnails(images, aligner.resolution)
        if self._train_frame is None:
            self._train_frame = thumbs.mean(0)
        if world()[1] == 1 and (aligner.mode != "auto" or self._auto_alignable(thumbs)):
            est = estimate(thumbs, self._train_frame, aligner.mode == "similarity" or aligner.mode == "auto",
                           (int(images.shape[-2]), int(images.shape[-1])))
            ok = est.confidence >= aligner.min_confidence
            if bool(ok.any()):
                images = images.clone()
                images[ok] = warp(images[ok], est.theta[ok].to(images))
                thumbs = grey_thumbnails(images, aligner.resolution)
            self.train_alignment["aligned"] += int(ok.sum())
            self.train_alignment["kept"] += int((~ok).sum())
        else:
            self.train_alignment["kept"] += images.shape[0]
        total = thumbs.sum(0).cpu()
        self._aligned_sum = total if self._aligned_sum is None else self._aligned_sum + total
        return images

    def _auto_alignable(self, thumbs: Tensor) -> bool:
        """``align: auto`` aligns training images only where they have a common layout (auto's rule, on this batch)."""
        assert self.aligner is not None and self._train_frame is not None
        est = estimate(thumbs, self._train_frame, False, (self.aligner.resolution, self.aligner.resolution))
        return bool((est.confidence >= self.aligner.min_confidence).float().mean() >= 0.9)

    def add_features(self, streams: Sequence[Tensor]) -> None:
        """Keep stream features ``[B, C_s, H_s, W_s]`` for :meth:`build`."""
        for i, stream in enumerate(streams):
            self.features.add(i, split_regions(stream, self.grid), images=stream.shape[0])

    @torch.no_grad()
    def build(self, progress: Callable[..., Iterable[int]] | None = None) -> BuildReport:
        """Build every memory from the collected features; frees them as it goes.

        Args:
            progress: optional tqdm-like wrapper, called as ``progress(range(S), total=S,
                desc=...)`` over the ``S`` streams (one coreset each), e.g. ``tqdm.tqdm``.
        """
        if self.features.empty:
            raise NotFittedError("no training features were collected: is the training set empty?")
        generator = torch.Generator().manual_seed(self.seed)
        device = next(self.extractor.parameters()).device  # distances run where the backbone runs
        report = BuildReport(stream_names=list(self.stream_names))
        streams: Iterable[int] = range(len(self.memories))
        if progress is not None:
            streams = progress(streams, total=len(self.memories), desc=f"coreset ({', '.join(self.stream_names)})")
        for i in streams:
            memory = self.memories[i]
            start = time.perf_counter()
            if world()[1] == 1:
                candidates = self.features.take(i)
                report.candidates.append(candidates.shape[1])
                result = self.coreset(candidates, generator, device=device)
                memory.set(candidates, result.indices, result.lengths, result.d_max, result.enlarged, device=device)
                del candidates
            else:
                self._build_sharded(memory, self.features.take(i), generator, report)
            if memory.memory.is_cuda:
                torch.cuda.synchronize(memory.memory.device)
            report.seconds.append(time.perf_counter() - start)
            report.sizes.append(memory.sizes())
            report.d_max.append([float(v) for v in memory.d_max.tolist()])
            report.enlarged.append(int(memory.enlarged.sum()))
        if not self.probe.empty:
            report.alignment = self._build_alignment()
        self.last_build = report
        self._search_key = None
        self._warn_small_k()
        return report

    def _build_alignment(self) -> dict[str, Any]:
        """The reference, the training images' registration spread and the (auto) choice."""
        reference = self.probe.reference()
        if self.aligner is not None and self._aligned_sum is not None:
            reference = self._aligned_sum / self.probe.count  # the frame the memory was built in
        if world()[1] > 1:  # DDP: the mean over every rank's images (the spread is measured on this rank's)
            import torch.distributed as dist

            assert self.probe.total is not None
            device = self.memories[0].memory.device
            buf = torch.cat([self.probe.total.flatten(), torch.tensor([float(self.probe.count)])]).to(device)
            dist.all_reduce(buf)
            reference = (buf[:-1] / buf[-1]).view_as(self.probe.total).cpu()
        aligner = self.aligner
        threshold = aligner.min_confidence if aligner is not None else 10.0
        summary = self.probe.measure(reference, threshold)
        size = self.probe.input_size or (1, 1)
        region_px = min(size[0] / self.grid[0], size[1] / self.grid[1])
        mode = aligner.mode if aligner is not None else "auto"
        choice, radius, reason = decide(summary, mode, threshold, region_px)
        summary.update(region_px=round(region_px, 1), recommendation=choice, reason=reason)
        if self.aligner is not None:
            summary["training_images_aligned"] = self.train_alignment["aligned"]
            summary["training_images_kept"] = self.train_alignment["kept"]
        if aligner is not None:
            aligner.reference.copy_(reference.to(aligner.reference))
            aligner.choice.fill_(CHOICES.index(choice))
            aligner.radius.fill_(radius if choice == "neighbourhood" else aligner.fallback_radius)
            summary["mode"] = aligner.mode
            summary["choice"] = choice
        # the Lightning module logs the one-line summary; the full record is for scripts using the detector alone
        log.debug("alignment of the training images: %s", summary)
        return summary

    def _build_sharded(
        self, memory: PatchMemory, local: Tensor, generator: torch.Generator, report: BuildReport
    ) -> None:
        """One layer's memories built across DDP ranks: rank ``r`` builds the ``r``-th block of regions.

        Every rank extracted a contiguous shard of the training images (``local [R, n_r, C]``);
        in rank order the shards are the training set. Each block of regions is gathered, from
        every rank, on its owner only; the owners run the first k-center pass on their blocks,
        exchange ``d_imax`` (``[R]`` numbers: the quantile rule ranks a whole layer), enlarge
        their own regions, and the built memories are gathered on every rank. The generator is
        drawn as for the whole layer, so the memory is the single-process one, bit for bit on
        the CPU. With the exact greedy, PatchCore's single global memory (one region) is built by
        rank 0 alone; a plain coreset with a composable sampler (``model/coreset=composable``,
        e.g. ``model=patchcore_scalable``) is built by every rank from its own images instead
        (:meth:`_build_composed`).
        """
        if self.coreset.sampler.composable and not self.coreset.adaptive:
            self._build_composed(memory, local, generator, report)
            return
        rank, size = world()
        regions = local.shape[0]
        mine: Tensor | None = None
        for owner in range(size):
            lo, hi = shard_bounds(regions, owner, size)
            block = gather_to_owner(local[lo:hi], owner, dim=1)
            if owner == rank:
                mine = block
        del local
        assert mine is not None
        lo, hi = shard_bounds(regions, rank, size)
        report.candidates.append(mine.shape[1])
        device = next(self.extractor.parameters()).device  # distances run where the backbone runs
        first = self.coreset.first_pass(mine, generator, regions=slice(lo, hi), total=regions, device=device)
        sq_radius = None if first.sq_radius is None else all_gather_rows(first.sq_radius.float())
        enlarged = self.coreset.decide(all_gather_rows(first.d_max), sq_radius)
        result = self.coreset.finish(first, enlarged[lo:hi])
        c = mine.shape[-1]
        index = result.indices.to(mine.device)
        vectors = torch.gather(mine, 1, index.clamp_min(0).unsqueeze(-1).expand(-1, -1, c))
        vectors = vectors.to(device=device, dtype=torch.float32)  # features may be stored narrower / on the host
        vectors[index.to(device) < 0] = 0
        del mine, first
        # pad every block to the layer's longest memory, then concatenate the blocks in rank order
        longest = max(all_gather_sizes(vectors.shape[1]))
        vectors = torch.nn.functional.pad(vectors, (0, 0, 0, longest - vectors.shape[1]))
        memory.store(
            all_gather_rows(vectors), all_gather_rows(result.lengths.to(torch.long)),
            all_gather_rows(result.d_max.float()), enlarged,
        )

    def _build_composed(
        self, memory: PatchMemory, local: Tensor, generator: torch.Generator, report: BuildReport
    ) -> None:
        """Every rank runs the greedy on its own shard of the training images (``local [R, n_r, C]``),
        the picks are gathered and reduced by the union step on every rank
        (:meth:`ComposableKCenter.compose_across`): no rank gathers the candidates."""
        rank, _ = world()
        sizes = all_gather_sizes(local.shape[1])
        report.candidates.append(sum(sizes))
        device = next(self.extractor.parameters()).device  # distances run where the backbone runs
        k = self.coreset.sizes(sum(sizes))[0]
        gather = functools.partial(all_gather_rows, dim=1)
        vectors = self.coreset.sampler.compose_across(local, sizes, rank, k, generator, gather, device)
        del local
        r = vectors.shape[0]
        nan = torch.full((r,), float("nan"), device=vectors.device)
        memory.store(vectors, torch.full((r,), k, dtype=torch.long), nan, torch.zeros(r, dtype=torch.bool))

    def _warn_small_k(self) -> None:
        """Say so when the image score cannot work as configured with the memory built."""
        needed = int(getattr(self.image_score, "min_k", 1))
        k_eff = self.effective_k()
        if k_eff < needed:
            warnings.warn(
                f"image score {type(self.image_score).__name__} needs k >= {needed} neighbours but the effective k is "
                f"{k_eff} (model.k={self.k}, smallest region memory {k_eff} vectors: too few training images or "
                "a tiny coreset); it falls back to the max score (model.image_score=max says so explicitly)",
                stacklevel=3,
            )

    # ---------------------------------------------------------------- scoring
    def use_search(self, factory: Callable[[], KNNSearch]) -> None:
        """Serve later searches with fresh indexes from ``factory`` (e.g. :func:`fapm.builders.build_search`),
        fitted on the stored memory at the next call: one memory, compared under several indexes."""
        self.search_factory = factory
        self._search_key = None

    def _ensure_search(self) -> None:
        if not self.fitted:
            raise NotFittedError("the memory is empty: fit the detector or load a model file first")
        key = tuple((m.memory.data_ptr(), str(m.memory.device)) for m in self.memories) + (self.k,)
        if key != self._search_key:
            # every search is fitted on the memory as stored, whatever the neighbourhood
            self._searches = []
            for memory in self.memories:
                search = self.search_factory()
                search.fit(*memory.searchable())
                self._searches.append(search)
            # read once here: a host read per call would synchronise a GPU on every batch
            self._k_eff = self.effective_k()
            self._k_max = min(int(m.lengths.min()) for m in self.memories)
            self._search_key = key
        self.neighbourhood_plan()

    def neighbourhood_plan(self, radius: int | None = None) -> NeighbourhoodPlan | None:
        """The window tables of ``radius`` (default ``neighbourhood``) on the memory's device (None at 0)."""
        radius = self.neighbourhood if radius is None else radius
        if radius == 0:
            return None
        device = self.memories[0].memory.device
        key = (radius, self.neighbourhood_border, self.grid, str(device))
        if key not in self._plans:
            self._plans[key] = NeighbourhoodPlan.build(self.grid, radius, self.neighbourhood_border, device)
        return self._plans[key]

    def extract(self, images: Tensor) -> list[Tensor]:
        """``images [B, 3, H, W]`` → streams ``[B, C_s, H_s, W_s]``."""
        return self.streams(self.extractor(images))

    def nearest(self, streams: Sequence[Tensor], k: int | None = None, radius: int | None = None) -> list[StreamSearch]:
        """Per-region k-NN of every stream's vectors in its region's memory (its window's at ``radius``,
        default ``neighbourhood``)."""
        self._ensure_search()
        k = self._k_eff if k is None else k
        plan = self.neighbourhood_plan(radius)
        out = []
        for stream, search, memory in zip(streams, self._searches, self.memories):
            queries = split_regions(stream, self.grid)
            vectors = memory.searchable()[0]
            if plan is None:
                _, idx = search.search(queries, k)
                dist, idx = exact_distances(queries, vectors, idx)
            else:
                rows = vectors.shape[1]
                _, idx = neighbourhood_search(search, queries, k, plan, rows)
                flat = vectors.reshape(-1, vectors.shape[-1])
                dist, idx = exact_distances_at(queries, flat, plan.rows(idx, rows), idx)
            out.append(StreamSearch(queries, dist, idx, (stream.shape[-2], stream.shape[-1])))
        return out

    def fuse(self, results: Sequence[StreamSearch], batch: int) -> Tensor:
        """Stream results → fused ``[B, k, H, W]`` neighbour distances on the finest grid."""
        maps = [merge_regions(r.distances, batch, self.grid, r.size) for r in results]
        return fuse_streams(maps, self.layer_weights)

    def to_map(self, fused: Tensor, size: tuple[int, int]) -> Tensor:
        """Fused distances ``[B, k, H, W]`` → anomaly map ``[B, *size]``."""
        return anomaly_map(fused[:, 0], size, self.blur_sigma, self.map_upsample)

    def score(self, fused: Tensor, results: Sequence[StreamSearch], radius: int | None = None) -> Tensor:
        """Image scores ``[B]`` from the fused distances (and the search results, for PatchCore)."""
        return self.image_score(ScoreContext(fused, lambda pos, n: self._support(results, fused, pos, n, radius)))

    def _support(
        self, results: Sequence[StreamSearch], fused: Tensor, pos: Tensor, n: int, radius: int | None = None
    ) -> Tensor:
        """PatchCore's support-set distances ``[B, n]`` at ``pos`` (see :mod:`fapm.models.support`)."""
        searchables = [m.searchable() for m in self.memories]
        n = min(n, self._k_max)
        plan = self.neighbourhood_plan(radius)
        return support_distances(
            results, searchables, self.layer_weights, self.grid, tuple(fused.shape[-2:]), pos, n,
            table=None if plan is None else plan.table,
        )

    def score_images(self, images: Tensor, radius: int | None = None, theta: Tensor | None = None) -> AnomalyOutput:
        """Score ``images [B, 3, H, W]`` searching windows of ``radius``.

        ``theta [B, 2, 3]``: the images are warped by it first (:mod:`fapm.models.alignment`);
        positions whose features see beyond the input's frame (filled by the warp) are left out
        of the image score. The map keeps them and is warped back to the input's frame.
        """
        size = tuple(images.shape[-2:])
        if theta is not None:
            images = warp(images, theta.to(images))
        results = self.nearest(self.extract(images), radius=radius)
        fused = self.fuse(results, images.shape[0])
        maps = self.to_map(fused, size)
        if theta is None:
            return AnomalyOutput(self.score(fused, results, radius), maps)
        # Only the image score drops the cells outside the frame: their edge-replicated content
        # would otherwise decide the max. The map must not: the input's pixels that the warp moved
        # out of the reference frame take their values from its edge on the way back, and zeros there
        # (the earlier behaviour) hid defects near the border (demo, Lite0, 16 px + 10°: pixel
        # AUROC 87.4 with zeros, 98.8 without; `benchmarks/misalignment.py`).
        inside = self._inside_frame(theta.to(fused), size, tuple(fused.shape[-2:]))
        maps = warp(maps.unsqueeze(1), invert_theta(theta.to(maps))).squeeze(1)
        return AnomalyOutput(self.score(fused * inside, results, radius), maps)

    @staticmethod
    def _inside_frame(theta: Tensor, size: tuple[int, int], grid: tuple[int, int]) -> Tensor:
        """``[B, 1, h, w]`` 1 where a warped image's feature cell lies inside the input frame, with a
        one-cell margin (the backbone's receptive field and pooling reach beyond a cell), else 0."""
        # 4x4 samples per cell are enough to tell a cell fully inside (and cost 1/50 of the full image)
        fine = (min(size[0], 4 * grid[0]), min(size[1], 4 * grid[1]))
        ones = torch.ones(theta.shape[0], 1, *fine, device=theta.device, dtype=theta.dtype)
        inside = warp(ones, theta, padding="zeros")
        cells = torch.nn.functional.interpolate(inside, size=grid, mode="area") > 0.999
        eroded = -torch.nn.functional.max_pool2d(-cells.to(theta.dtype), 3, stride=1, padding=1)
        return eroded

    def forward(self, images: Tensor) -> AnomalyOutput:
        """Score ``images [B, 3, H, W]`` → image scores ``[B]`` and maps ``[B, H, W]``."""
        if self.aligner is None:
            return self.score_images(images)
        return self._aligned_forward(images)

    def _aligned_forward(self, images: Tensor) -> AnomalyOutput:
        """Register, warp, score, warp the maps back; unconfident images use the neighbourhood search."""
        aligner = self.aligner
        assert aligner is not None
        if not self.fitted:
            raise NotFittedError("the memory is empty: fit the detector or load a model file first")
        choice = aligner.resolved
        fallback = max(self.neighbourhood, int(aligner.radius))
        if choice == "plain":
            return self.score_images(images)
        if choice == "neighbourhood":
            return self.score_images(images, fallback)
        estimate = aligner.estimate(images)
        confident = estimate.confidence >= aligner.min_confidence
        ok = confident.nonzero().squeeze(1)
        bad = (~confident).nonzero().squeeze(1)
        batch = images.shape[0]
        scores = images.new_empty(batch)
        maps = images.new_empty(batch, *images.shape[-2:])
        if ok.numel():
            out = self.score_images(images[ok], theta=estimate.theta[ok])
            scores[ok] = out.image_scores
            maps[ok] = out.anomaly_maps
        if bad.numel():
            out = self.score_images(images[bad], fallback)
            scores[bad] = out.image_scores
            maps[bad] = out.anomaly_maps
            low = [round(float(v), 1) for v in estimate.confidence[bad].tolist()]
            warnings.warn(
                f"model.align={aligner.mode}: {bad.numel()} of {batch} images registered to the reference with "
                f"confidence (PSR) {low} < model.align_min_confidence={aligner.min_confidence:g}; scored with "
                f"the neighbourhood search (radius {fallback}) instead of being warped",
                AlignmentFallbackWarning,
                stacklevel=2,
            )
        aligner.counts["aligned"] += int(ok.numel())
        aligner.counts["fallback"] += int(bad.numel())
        return AnomalyOutput(scores, maps)


class AlignmentFallbackWarning(UserWarning):
    """Test images whose registration to the reference was not confident (scored unwarped)."""
