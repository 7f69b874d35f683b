"""Test-time alignment as a wrapper around the detector's scoring, and its fit-time side.

* :class:`TrainingAlignment` collects the training images' thumbnails during a fit, aligns
  the training images to one frame (``model.align`` on, one process), and when the memory is
  built fills the :class:`~fapm.models.alignment.Aligner`'s reference and choice and returns
  the fit-time summary (how aligned the training images are, what ``auto`` chose).
* :func:`score_aligned` registers test images to the reference, scores the confident ones
  warped and the others with the neighbourhood search; the output says which were warped
  (``AnomalyOutput.aligned``): counting them is the caller's business.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Callable

import torch
from torch import Tensor

from fapm.models.alignment import (
    CHOICES, DEFAULT_MIN_CONFIDENCE, Aligner, AlignmentProbe, decide, estimate, grey_thumbnails, invert_theta, warp,
)
from fapm.outputs import AnomalyOutput

log = logging.getLogger(__name__)

#: ``(images [B, 3, H, W], radius or None, theta [B, 2, 3] or None) -> AnomalyOutput``
ScoreImages = Callable[[Tensor, "int | None", "Tensor | None"], AnomalyOutput]


class AlignmentFallbackWarning(UserWarning):
    """Test images whose registration to the reference was not confident (scored unwarped)."""


class TrainingAlignment:
    """The fit-time side of alignment (also measures the spread when ``aligner`` is None).

    Args:
        aligner: the detector's aligner, or None (alignment off: only the summary is measured).
    """

    def __init__(self, aligner: Aligner | None) -> None:
        self.aligner = aligner
        # fit-time thumbnails: the alignment reference and how aligned the training images are
        self.probe = AlignmentProbe(aligner.resolution, fixed=True) if aligner is not None else AlignmentProbe(128)
        self.reset()

    def reset(self) -> None:
        self.probe.reset()
        self._frame: Tensor | None = None  # thumbnail the training images are aligned to
        self._aligned_sum: Tensor | None = None
        #: training images warped to the frame / kept as they were
        self.counts = {"aligned": 0, "kept": 0}

    def add(self, images: Tensor, align: bool = True) -> Tensor:
        """Keep the thumbnails of normal ``images [B, 3, H, W]``; return them aligned to the
        first batch's mean thumbnail (confident ones warped) when an aligner is set and
        ``align`` (False when the fit is spread over processes: every rank would pick its own
        frame, so only test images are aligned there)."""
        self.probe.add(images)  # the raw images: their spread is what the fit-time summary reports
        aligner = self.aligner
        if aligner is None:
            return images
        if self._frame is None:
            aligner.check_input_size(tuple(images.shape[-2:]))
        thumbs = grey_thumbnails(images, aligner.resolution)
        if self._frame is None:
            self._frame = thumbs.mean(0)
        if align and (aligner.mode != "auto" or self._auto_alignable(thumbs)):
            est = estimate(thumbs, self._frame, aligner.mode in ("similarity", "auto"),
                           (int(images.shape[-2]), int(images.shape[-1])))
            ok = est.confidence >= aligner.min_confidence
            if bool(ok.any()):
                images = images.clone()
                images[ok] = warp(images[ok], est.theta[ok].to(images))
                thumbs = grey_thumbnails(images, aligner.resolution)
            self.counts["aligned"] += int(ok.sum())
            self.counts["kept"] += int((~ok).sum())
        else:
            self.counts["kept"] += images.shape[0]
        total = thumbs.sum(0).cpu()
        self._aligned_sum = total if self._aligned_sum is None else self._aligned_sum + total
        return images

    def _auto_alignable(self, thumbs: Tensor) -> bool:
        """``align: auto`` aligns training images only where they have a common layout (auto's rule, on this batch)."""
        assert self.aligner is not None and self._frame is not None
        est = estimate(thumbs, self._frame, False, (self.aligner.resolution, self.aligner.resolution))
        return bool((est.confidence >= self.aligner.min_confidence).float().mean() >= 0.9)

    @property
    def empty(self) -> bool:
        return self.probe.empty

    def finish(self, grid: tuple[int, int], mean_thumbnail: Callable[[Tensor, int], Tensor]) -> dict[str, Any]:
        """The reference, the training images' registration spread and the (auto) choice; fills
        the aligner's buffers. ``mean_thumbnail(sum, count)``: the mean over every process."""
        total = self.probe.total
        if self.aligner is not None and self._aligned_sum is not None:
            total = self._aligned_sum  # the frame the memory was built in
        assert total is not None
        reference = mean_thumbnail(total, self.probe.count)
        aligner = self.aligner
        threshold = aligner.min_confidence if aligner is not None else DEFAULT_MIN_CONFIDENCE
        summary = self.probe.measure(reference, threshold)
        size = self.probe.input_size or (1, 1)
        region_px = min(size[0] / grid[0], size[1] / grid[1])
        mode = aligner.mode if aligner is not None else "auto"
        choice, radius, reason = decide(summary, mode, threshold, region_px)
        summary.update(region_px=round(region_px, 1), recommendation=choice, reason=reason)
        if aligner is not None:
            summary["training_images_aligned"] = self.counts["aligned"]
            summary["training_images_kept"] = self.counts["kept"]
            aligner.reference.copy_(reference.to(aligner.reference))
            aligner.choice.fill_(CHOICES.index(choice))
            aligner.radius.fill_(radius if choice == "neighbourhood" else aligner.fallback_radius)
            summary["mode"] = aligner.mode
            summary["choice"] = choice
        # the Lightning module logs the one-line summary; the full record is for scripts using the detector alone
        log.debug("alignment of the training images: %s", summary)
        return summary


def inside_frame(theta: Tensor, size: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """``[B, 1, h, w]`` 1 where a warped image's feature cell lies inside the input frame, with a
    one-cell margin (the backbone's receptive field and pooling reach beyond a cell), else 0."""
    # 4x4 samples per cell are enough to tell a cell fully inside (and cost 1/50 of the full image)
    fine = (min(size[0], 4 * grid[0]), min(size[1], 4 * grid[1]))
    ones = torch.ones(theta.shape[0], 1, *fine, device=theta.device, dtype=theta.dtype)
    inside = warp(ones, theta, padding="zeros")
    cells = torch.nn.functional.interpolate(inside, size=grid, mode="area") > 0.999
    eroded = -torch.nn.functional.max_pool2d(-cells.to(theta.dtype), 3, stride=1, padding=1)
    return eroded


def score_warped(
    images: Tensor, theta: Tensor, extract: Callable[[Tensor], list[Tensor]],
    score_streams: Callable[[list[Tensor], Tensor], AnomalyOutput],
) -> AnomalyOutput:
    """Score ``images [B, 3, H, W]`` warped by ``theta [B, 2, 3]``; maps warped back to the input's frame.

    Cells whose features see beyond the input's frame (filled by the warp) are left out of the
    image score. The map keeps them: the input's pixels that the warp moved out of the reference
    frame take their values from its edge on the way back, and zeros there (the earlier
    behaviour) hid defects near the border (demo, Lite0, 16 px + 10°: pixel AUROC 87.4 with
    zeros, 98.8 without; ``benchmarks/misalignment.py``).

    Args:
        extract: images → streams ``[B, C_s, H_s, W_s]``.
        score_streams: ``(streams, inside [B, 1, h, w]) -> AnomalyOutput`` at the input's size.
    """
    size = (int(images.shape[-2]), int(images.shape[-1]))
    streams = extract(warp(images, theta.to(images)))
    fine = (max(s.shape[-2] for s in streams), max(s.shape[-1] for s in streams))
    out = score_streams(streams, inside_frame(theta.to(device=streams[0].device, dtype=torch.float32), size, fine))
    maps = warp(out.anomaly_maps.unsqueeze(1), invert_theta(theta.to(out.anomaly_maps))).squeeze(1)
    return AnomalyOutput(out.image_scores, maps)


def score_aligned(aligner: Aligner, images: Tensor, score: ScoreImages, neighbourhood: int) -> AnomalyOutput:
    """Register ``images [B, 3, H, W]``, score the confident ones warped (maps warped back) and the
    others with the neighbourhood search; ``aligned [B]`` says which were warped.

    Args:
        score: the detector's scoring of images at a radius, optionally warped by ``theta``.
        neighbourhood: the detector's own radius (the fallback searches at least this far).
    """
    choice = aligner.resolved
    fallback = max(neighbourhood, int(aligner.radius))
    if choice == "plain":
        return score(images, None, None)
    if choice == "neighbourhood":
        return score(images, fallback, None)
    est = aligner.estimate(images)
    confident = est.confidence >= aligner.min_confidence
    ok = confident.nonzero().squeeze(1)
    bad = (~confident).nonzero().squeeze(1)
    batch = images.shape[0]
    scores = images.new_empty(batch)
    maps = images.new_empty(batch, *images.shape[-2:])
    if ok.numel():
        out = score(images[ok], None, est.theta[ok])
        scores[ok] = out.image_scores
        maps[ok] = out.anomaly_maps
    if bad.numel():
        out = score(images[bad], fallback, None)
        scores[bad] = out.image_scores
        maps[bad] = out.anomaly_maps
        low = [round(float(v), 1) for v in est.confidence[bad].tolist()]
        warnings.warn(
            f"model.align={aligner.mode}: {bad.numel()} of {batch} images registered to the reference with "
            f"confidence (PSR) {low} < model.align_min_confidence={aligner.min_confidence:g}; scored with "
            f"the neighbourhood search (radius {fallback}) instead of being warped",
            AlignmentFallbackWarning,
            stacklevel=3,
        )
    return AnomalyOutput(scores, maps, aligned=confident.cpu())
