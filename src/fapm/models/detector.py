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

The parts, one concept per module: the feature collector (:class:`~fapm.models.feature_store.FeatureStore`),
the memory builder (:class:`~fapm.models.memory_builder.MemoryBuilder`, with the single-process or
sharded build passed in), the scorer (:class:`~fapm.models.scorer.Scorer`) and alignment as a
wrapper around scoring (:mod:`fapm.models.aligned`). The two public stages are
:meth:`MemoryDetector.fit_features` and :meth:`MemoryDetector.score_features`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from fapm.models.adaptive import AdaptiveCoreset
from fapm.models.aligned import AlignmentFallbackWarning, TrainingAlignment, score_aligned, score_warped
from fapm.models.alignment import Aligner
from fapm.models.build_report import BuildReport, memory_facts
from fapm.models.feature_store import FeatureStore
from fapm.models.features import FeatureExtractor
from fapm.models.knn import KNNSearch
from fapm.models.memory_builder import BuildStrategy, LocalBuild, MemoryBuilder
from fapm.models.neighbourhood import NeighbourhoodPlan
from fapm.models.patch_memory import PatchMemory, check_grid, split_regions
from fapm.models.scorer import Scorer
from fapm.models.scoring import ImageScore
from fapm.models.search_cache import SearchCache
from fapm.models.streams import FeatureStreams, SeparateLayers
from fapm.models.support import StreamSearch
from fapm.outputs import AnomalyOutput

__all__ = ["AlignmentFallbackWarning", "MemoryDetector", "NotFittedError", "layer_batches"]


class NotFittedError(RuntimeError):
    """The detector was asked to score before its memory was built or loaded."""


def layer_batches(features: Mapping[str, Tensor], batch: int) -> Iterator[dict[str, Tensor]]:
    """Slices of ``batch`` images of already extracted ``{layer: [N, C_l, H_l, W_l]}`` (for :meth:`MemoryDetector.fit_features`)."""
    n = len(next(iter(features.values())))
    for lo in range(0, n, batch):
        yield {name: f[lo : lo + batch] for name, f in features.items()}


class MemoryDetector(nn.Module):
    """Patch-wise, layer-wise memory-bank anomaly detector.

    Args:
        extractor: backbone returning pooled ``{layer: [B, C, H, W]}``.
        streams: how layers become feature streams (separate or concatenated).
        grid: ``(gh, gw)`` patch grid, at most every stream's feature-map size (regions split at
            ``floor(i·H/gh)``; see :class:`~fapm.models.patch_memory.RegionLayout`).
        coreset: the (adaptive) coreset applied to every memory.
        search: factory returning a fresh :class:`KNNSearch` (one per stream).
        k: neighbours per test vector (scoring settings: see :class:`~fapm.models.scorer.Scorer`).
        image_score: image-score strategy (default: the max score).
        map_upsample: ``bilinear``, ``nearest`` or ``bicubic`` resize of the patch map.
        blur_sigma: Gaussian blur of the anomaly map (0 = none).
        neighbourhood: radius in regions searched around each region (0 = its own memory only).
        neighbourhood_border: ``clip`` or ``shift`` window at the grid's border.
        layer_weights: fusion weight per stream (default 1 each).
        seed: seed of the coreset's random choices.
        feature_dtype: storage dtype of the collected training features (``None`` = as
            extracted; float16/bfloat16 halve the fit's memory, distances stay float32).
        feature_host: keep the collected features in (pinned) host memory; the coreset
            streams chunks of regions to the device the backbone runs on.
        aligner: optional test-time alignment (``model.align``, :mod:`fapm.models.aligned`).
            Eager only (host reads).
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
        self.extractor = extractor
        self.streams = streams or SeparateLayers()
        self.grid = (int(grid[0]), int(grid[1]))
        n_streams = self.streams.count(extractor.layers)
        weights = list(layer_weights) if layer_weights is not None else [1.0] * n_streams
        if len(weights) != n_streams:
            raise ValueError(f"model.layer_weights needs {n_streams} values (one per stream), got {weights}")
        self.scorer = Scorer(self.grid, weights, k, image_score, map_upsample, blur_sigma, neighbourhood,
                             neighbourhood_border)
        self.builder = MemoryBuilder(coreset, seed)
        self.search = SearchCache(search)
        self.aligner = aligner
        self.training_alignment = TrainingAlignment(aligner)
        self.memories = nn.ModuleList(PatchMemory(self.grid) for _ in range(n_streams))
        self.stream_names = extractor.layers if n_streams == len(extractor.layers) else ["+".join(extractor.layers)]
        self.features = FeatureStore(n_streams, dtype=feature_dtype, host=feature_host)
        self.strategy: BuildStrategy = LocalBuild()
        self.last_build: BuildReport | None = None

    # ------------------------------------------------------------------ state
    @property
    def fitted(self) -> bool:
        return all(m.fitted for m in self.memories)

    @property
    def k(self) -> int:
        return self.scorer.k

    @property
    def neighbourhood(self) -> int:
        return self.scorer.neighbourhood

    @property
    def coreset(self) -> AdaptiveCoreset:
        return self.builder.coreset

    def effective_k(self) -> int:
        """``k`` capped by the smallest region memory (a region cannot return more items)."""
        return min(self.k, min(int(m.lengths.min()) for m in self.memories))

    def memory_vectors(self) -> int:
        return sum(int(m.lengths.sum()) for m in self.memories)

    def memory_bytes(self) -> int:
        """Bytes of stored (non-padding) memory vectors."""
        return sum(int(m.lengths.sum()) * m.memory.shape[-1] * m.memory.element_size() for m in self.memories)

    def facts(self) -> dict[str, Any]:
        """What the detector is and what its memory holds (for ``metrics.json`` and model files)."""
        source = self.extractor.weight_source
        facts: dict[str, Any] = {"backbone": self.extractor.name, "layers": list(self.extractor.layers),
                                 "weights": str(source), "random_weights": source.is_random, "grid": list(self.grid),
                                 "k": self.k}
        if self.fitted:
            facts.update(k_effective=self.effective_k(), memory_vectors=self.memory_vectors(),
                         memory_bytes=self.memory_bytes(), **memory_facts(self.stream_names, self.memories))
        if self.last_build is not None and self.last_build.alignment:
            facts["alignment"] = dict(self.last_build.alignment)
        if self.aligner is not None:
            facts["align"] = {"mode": self.aligner.mode, "choice": self.aligner.resolved}
        return facts

    def _device(self) -> torch.device:
        return next(self.extractor.parameters()).device  # distances run where the backbone runs

    # ---------------------------------------------------------------- fitting
    def check_input_size(self, size: tuple[int, int]) -> None:
        """Fail early if the grid does not divide the streams' maps for inputs of ``size``."""
        with torch.no_grad():
            streams = self.extract(torch.zeros(1, 3, *size, device=self._device()))
        for name, s in zip(self.stream_names, streams):
            check_grid(s.shape[-2], s.shape[-1], self.grid, what=f"feature map of stream {name!r}")
        if self.aligner is not None:
            self.aligner.check_input_size(size)

    def reset_fit(self, expected_images: int | None = None, strategy: BuildStrategy | None = None) -> None:
        """Start a fit: forget collected features (see :class:`FeatureStore`).

        Args:
            expected_images: how many training images will be collected, when known (one
                preallocated buffer per stream instead of per-batch pieces).
            strategy: how the memories are built (default :class:`LocalBuild`; the Lightning
                layer passes a sharded build under DDP).
        """
        self.features.reset(expected_images)
        self.training_alignment.reset()
        self.strategy = strategy or LocalBuild()

    @torch.no_grad()
    def collect(self, images: Tensor) -> None:
        """Extract features of normal ``images [B, 3, H, W]`` and keep them for :meth:`build`."""
        images = self.training_alignment.add(images, align=not self.strategy.distributed)
        self.add_features(self.extract(images))

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
        report = self.builder.build(self.memories, self.features, self.stream_names, self._device(),
                                    self.strategy, progress)
        if not self.training_alignment.empty:
            report.alignment = self.training_alignment.finish(self.grid, self.strategy.mean_thumbnail)
        self.last_build = report
        self.search.invalidate()
        self.scorer.check_k(self.effective_k(), self.k)
        return report

    @torch.no_grad()
    def fit_features(
        self,
        features: Iterable[Mapping[str, Tensor]],
        expected_images: int | None = None,
        progress: Callable[..., Iterable[int]] | None = None,
    ) -> BuildReport:
        """Public fit stage: build the memories from already extracted training features.

        Args:
            features: batches of the backbone's pooled maps ``{layer: [B, C_l, H_l, W_l]}``
                (e.g. :func:`layer_batches` of the whole training set's ``[N, C_l, H_l, W_l]``).
            expected_images: ``N``, when known (one preallocated buffer per stream).
            progress: as in :meth:`build`.

        Returns:
            the build's report; the memories hold ``[R, M_r, C_s]`` vectors per stream.
        """
        self.reset_fit(expected_images)
        for layers in features:
            self.add_features(self.streams(layers))
        return self.build(progress)

    # ---------------------------------------------------------------- scoring
    def use_search(self, factory: Callable[[], KNNSearch]) -> None:
        """Serve later searches with fresh indexes from ``factory`` (e.g. :func:`fapm.builders.build_search`),
        fitted on the stored memory at the next call: one memory, compared under several indexes."""
        self.search.use(factory)

    def search_limits(self) -> tuple[int, int]:
        """``(k, k_max)``: neighbours searched (``k`` capped by the smallest region memory) and the
        smallest region memory (PatchCore's support set); fits the searches if the memory changed."""
        if not self.fitted:
            raise NotFittedError("the memory is empty: fit the detector or load a model file first")
        return self.search.ensure(self.memories, self.k)

    def searches(self) -> list[KNNSearch]:
        """The fitted per-stream searches (fitted now if the memory changed)."""
        self.search_limits()
        return list(self.search.searches)

    def neighbourhood_plan(self, radius: int | None = None) -> NeighbourhoodPlan | None:
        """The window tables of ``radius`` (default ``neighbourhood``) on the memory's device (None at 0)."""
        return self.scorer.plan(radius, self.memories[0].memory.device)

    def extract(self, images: Tensor) -> list[Tensor]:
        """``images [B, 3, H, W]`` → streams ``[B, C_s, H_s, W_s]``."""
        return self.streams(self.extractor(images))

    def nearest(self, streams: Sequence[Tensor], radius: int | None = None) -> list[StreamSearch]:
        """The search stage alone, for inspection: per-stream results of streams ``[B, C_s, H_s, W_s]``
        (scoring goes through :meth:`score_features`)."""
        k, _ = self.search_limits()
        memories = [m.searchable() for m in self.memories]
        return self.scorer.search(streams, self.search.searches, memories, k, self.neighbourhood_plan(radius))

    def score_features(
        self, layers: Mapping[str, Tensor], size: tuple[int, int], radius: int | None = None,
        inside: Tensor | None = None,
    ) -> AnomalyOutput:
        """Public scoring stage: the backbone's pooled maps ``{layer: [B, C_l, H_l, W_l]}`` → image scores
        ``[B]``, anomaly maps ``[B, *size]`` and patch scores ``[B, h, w]`` (the fused nearest distance
        on the finest stream grid).

        Args:
            size: ``(H, W)`` of the input images (the maps' size).
            radius: neighbourhood radius searched (default ``model.neighbourhood``).
            inside: ``[B, 1, h, w]`` cells that count for the image score (default: all).
        """
        return self.score_streams(self.streams(layers), size, radius, inside)

    def score_streams(
        self, streams: Sequence[Tensor], size: tuple[int, int], radius: int | None = None,
        inside: Tensor | None = None,
    ) -> AnomalyOutput:
        """:meth:`score_features` on streams ``[B, C_s, H_s, W_s]`` (the layers already fused into streams)."""
        k, k_max = self.search_limits()
        memories = [m.searchable() for m in self.memories]
        return self.scorer(streams, self.search.searches, memories, size, k, k_max, self.neighbourhood_plan(radius),
                           inside)

    def score_images(self, images: Tensor, radius: int | None = None, theta: Tensor | None = None) -> AnomalyOutput:
        """Score ``images [B, 3, H, W]`` searching windows of ``radius``; with ``theta [B, 2, 3]`` warped
        first and their maps warped back (:func:`fapm.models.aligned.score_warped`)."""
        size = (int(images.shape[-2]), int(images.shape[-1]))
        if theta is None:
            return self.score_features(self.extractor(images), size, radius)
        return score_warped(images, theta, self.extract, lambda streams, inside: self.score_streams(
            streams, size, radius, inside))

    def forward(self, images: Tensor) -> AnomalyOutput:
        """Score ``images [B, 3, H, W]`` → image scores ``[B]`` and maps ``[B, H, W]`` (and, with
        alignment, which images were warped: ``aligned [B]``)."""
        if self.aligner is None:
            return self.score_images(images)
        if not self.fitted:
            raise NotFittedError("the memory is empty: fit the detector or load a model file first")
        return score_aligned(self.aligner, images, self.score_images, self.neighbourhood)
