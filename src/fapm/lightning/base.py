"""Shared test-time glue for every anomaly detector: timing, metrics, facts.

The module wraps a plain-torch detector (``detector(images) -> AnomalyOutput``); subclasses
add whatever fitting they need. Used as is, it tests an already fitted detector (``eval.py``).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import lightning as L
import torch
from torch import Tensor

from torch import nn

from fapm.data.sampling import drop_padding
from fapm.distributed import broadcast_object, gather_objects, world
from fapm.metrics import AnomalyMetrics
from fapm.outputs import AnomalyOutput


class AnomalyModule(L.LightningModule):
    """Base LightningModule: ``test_step`` scores a batch, times it and updates the metrics.

    Args:
        detector: the plain-torch detector (``images [B, 3, H, W] → AnomalyOutput``).
        name: the model's name for reports (``fapm``, ``patchcore``, ``lamp``…).
        timing_warmup: test batches whose latency is not counted (first calls pay for
            allocator warm-up, lazy initialisation and caches).
    """

    def __init__(self, detector: nn.Module, name: str = "model", timing_warmup: int = 2) -> None:
        super().__init__()
        self.detector = detector
        self.name = name
        self.timing_warmup = timing_warmup
        self.metrics = AnomalyMetrics()
        #: Decision thresholds chosen at fit time (:class:`fapm.inference.thresholds.Thresholds`),
        #: set by the pipeline before testing; figures label with them.
        self.thresholds: Any = None
        self.test_results: dict[str, Any] = {}
        self._batch_seconds: list[float] = []
        self._batch_sizes: list[int] = []
        self._seen_batches = 0
        #: images that test-time alignment warped / scored unwarped (from the outputs' ``aligned``)
        self.alignment_counts = {"aligned": 0, "fallback": 0}

    # ------------------------------------------------------------------ scoring
    def forward(self, images: Tensor) -> AnomalyOutput:
        """Score ``images [B, 3, H, W]`` → :class:`AnomalyOutput`; counts what alignment did with them
        (every image the pipeline scores: held-out normals and test images)."""
        output = self.detector(images)
        if output.aligned is not None:
            warped = int(output.aligned.sum())
            self.alignment_counts["aligned"] += warped
            self.alignment_counts["fallback"] += int(output.aligned.numel()) - warped
        return output

    def _timed_forward(self, images: Tensor) -> tuple[AnomalyOutput, float]:
        """Run ``forward`` and return its wall time; CUDA work is synchronised around it."""
        cuda = images.is_cuda
        if cuda:
            torch.cuda.synchronize(images.device)
        start = time.perf_counter()
        output = self(images)
        if cuda:
            torch.cuda.synchronize(images.device)
        return output, time.perf_counter() - start

    # ------------------------------------------------------------------ testing
    def on_test_epoch_start(self) -> None:
        self.metrics.reset()
        self._batch_seconds.clear()
        self._batch_sizes.clear()
        self._seen_batches = 0

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        batch = drop_padding(batch)  # a shorter DDP shard's placeholders
        if batch is None:
            return
        images = batch["image"]
        with torch.inference_mode():
            output, seconds = self._timed_forward(images)
        # A short test set still gets one timed batch.
        if self._seen_batches >= self.timing_warmup or batch_idx == 0 and self.trainer.num_test_batches[0] <= self.timing_warmup:
            self._batch_seconds.append(seconds)
            self._batch_sizes.append(images.shape[0])
        self._seen_batches += 1
        masks = batch.get("mask")
        has_mask = batch.get("has_mask")
        if masks is not None and has_mask is not None and not bool(torch.as_tensor(has_mask).all()):
            masks = None
        self.metrics.update(
            output.image_scores,
            batch["label"],
            output.anomaly_maps,
            None if masks is None else masks[:, 0],
            list(batch["defect_type"]),
            paths=list(batch["path"]) if "path" in batch else None,
            valid=None if masks is None or batch.get("valid") is None else batch["valid"][:, 0],
        )

    def on_test_epoch_end(self) -> None:
        rank, size = world()
        if size == 1:
            results = {**self.metrics.compute(), **self.speed()}
        else:
            # every rank scored a contiguous shard: rank 0 merges them in order, computes the
            # exact metrics of the whole test set, and every rank gets the same results
            states = gather_objects((self.metrics.state(), self._batch_seconds, self._batch_sizes))
            results = None
            if rank == 0:
                assert states is not None
                self.metrics.merge([s[0] for s in states])
                results = {**self.metrics.compute(), **self.speed([s[1] for s in states], [s[2] for s in states])}
            results = broadcast_object(results)
        self.test_results = results
        loggable = {k: float(v) for k, v in results.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.log_dict(loggable, sync_dist=False)

    def speed(
        self, seconds: list[list[float]] | None = None, sizes: list[list[int]] | None = None
    ) -> dict[str, float]:
        """Throughput and per-image latency over the timed (post-warm-up) test batches.

        ``seconds``/``sizes``: per rank, the timed batches (default: this process's). The
        throughput is the whole job's: all timed images over the slowest rank's time.
        """
        seconds = [self._batch_seconds] if seconds is None else seconds
        sizes = [self._batch_sizes] if sizes is None else sizes
        per_image = [s / n for rank_s, rank_n in zip(seconds, sizes) for s, n in zip(rank_s, rank_n)]
        if not per_image:
            return {"fps": float("nan"), "latency_ms": float("nan")}
        return {
            "fps": sum(map(sum, sizes)) / max(sum(s) for s in seconds),
            "latency_ms": 1000.0 * statistics.median(per_image),
            "timed_images": float(sum(map(sum, sizes))),
            "processes": float(len(seconds)),
        }

    def facts(self) -> dict[str, Any]:
        """Model facts for ``metrics.json`` and the run summary (the detector's, plus the name)."""
        facts = self.detector.facts() if hasattr(self.detector, "facts") else {}
        if "align" in facts:  # the detector says what alignment is; the test loop counted what it did
            facts["align"] = {**facts["align"], **self.alignment_counts}
        return {"model": self.name, **facts}
