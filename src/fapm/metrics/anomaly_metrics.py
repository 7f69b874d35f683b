"""``AnomalyMetrics``: accumulate a test set batch by batch, then compute the MVTec AD metrics."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from fapm.metrics import names
from fapm.metrics.aupro import DEFAULT_MAX_FPR, PixelSweepResult, pixel_sweep
from fapm.metrics.functional import auroc, f1_max


class AnomalyMetrics:
    """Image- and pixel-level anomaly-detection metrics over a whole test set.

    Call :meth:`update` per batch, :meth:`compute` at the end, :meth:`reset` before the
    next run. Everything stored lives on the CPU whatever the inputs' device, and this is
    a plain object (not an ``nn.Module``), so Lightning never moves it to the GPU. Across
    DDP processes, :meth:`state` / :meth:`merge` move every rank's records to one rank,
    which then computes the exact metrics of the whole test set.

    Metrics (keys from :mod:`fapm.metrics.names`), all exact, no binning:
        - ``image_auroc``: torchmetrics ``binary_auroc`` (exact thresholds; its rates are
          float32, so ~1e-7 rounding) on the image scores.
        - ``image_f1_max`` / ``image_f1_threshold``: best F1 over every distinct image score
          as threshold (anomalous iff score >= threshold), threshold in score units.
        - ``image_auroc/<defect_type>``: images of that type with label 1 vs all label-0
          images; types without such images (e.g. ``"good"``) are left out.
        - ``pixel_auroc``: all pixels of all test images pooled; exact, from one sort of
          all pixels (see :mod:`fapm.metrics.aupro`), at float32 score precision.
        - ``pixel_aupro``: MVTec AD AUPRO, FPR limit ``pro_max_fpr`` (0.3), normalised to [0, 1].
        - ``pixel_f1_max`` / ``pixel_f1_threshold``: as the image ones, over pixels.
    Pixel metrics are present only when every update passed both ``anomaly_maps`` and
    ``masks``; if some batch lacks them, the pixel data is dropped with a warning (a
    subset of the test set would give misleading numbers).

    Undefined values are NaN, never an exception: AUROC-type metrics (image/pixel AUROC,
    AUPRO) when the test set has no anomalous or no normal sample (no region / no normal
    pixel for AUPRO); F1-max and its threshold when there is no anomalous sample.

    Memory: maps are kept as float32 and masks as bool, 5 bytes per pixel (500 maps of
    224x224 = 25 M pixels: 125 MB). ``compute`` adds 8 bytes per pixel (sort keys) plus
    ~130 MB for the sweep (~330 MB at 25 M pixels); ``benchmarks/metrics_memory.py``
    measures the peak.

    Args:
        pro_max_fpr: AUPRO integration limit.
    """

    def __init__(self, pro_max_fpr: float = DEFAULT_MAX_FPR) -> None:
        self.pro_max_fpr = pro_max_fpr
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget every update."""
        self._scores: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._defect_types: list[str] = []
        self._paths: list[str | None] = []
        self._maps: list[Tensor] = []
        self._masks: list[Tensor] = []
        self._valid: list[Tensor | None] = []  # per batch: the pixels that count (None = all)
        self._pixels_ok = True  # every update so far had maps and masks
        self._seen_pixels = False  # some update had maps and masks

    def update(
        self,
        image_scores: Tensor,
        labels: Tensor,
        anomaly_maps: Tensor | None = None,
        masks: Tensor | None = None,
        defect_types: Sequence[str] | None = None,
        paths: Sequence[str] | None = None,
        valid: Tensor | None = None,
    ) -> None:
        """Add one batch (any device; copied to the CPU).

        Args:
            image_scores: ``[B]`` float, higher = more anomalous. No NaN.
            labels: ``[B]`` 0 normal / 1 anomalous (int, bool or float).
            anomaly_maps: ``[B, H, W]`` or ``[B, 1, H, W]`` float, or None (no pixel output).
            masks: same shape as ``anomaly_maps``; anomalous iff > 0.5; None if unknown.
            defect_types: ``[B]`` names (``"good"`` for normal images); None = unknown
                (stored as ``""``, excluded from the per-type metrics).
            paths: ``[B]`` image paths, kept for reports (:meth:`paths`); optional.
            valid: same shape as ``anomaly_maps``, True where a pixel shows the image (False on
                letterbox padding, which the pixel metrics leave out); None = every pixel.
        """
        scores = torch.as_tensor(image_scores).detach().reshape(-1).to("cpu", torch.float64)
        labels_cpu = torch.as_tensor(labels).detach().reshape(-1).to("cpu")
        batch = scores.numel()
        if labels_cpu.numel() != batch:
            raise ValueError(f"{batch} image scores but {labels_cpu.numel()} labels")
        if not bool(((labels_cpu == 0) | (labels_cpu == 1)).all()):
            raise ValueError("labels must be 0 (normal) or 1 (anomalous)")
        if bool(torch.isnan(scores).any()):
            raise ValueError("image scores contain NaN")
        for what, seq in (("defect_types", defect_types), ("paths", paths)):
            if seq is not None and len(seq) != batch:
                raise ValueError(f"{batch} images but {len(seq)} {what}")

        if anomaly_maps is not None and masks is not None:
            maps_cpu, masks_cpu = self._pixel_batch(anomaly_maps, masks, batch)
            valid_cpu = None
            if valid is not None:
                valid_cpu = torch.as_tensor(valid).detach().reshape(maps_cpu.shape).to("cpu", torch.bool)
                valid_cpu = None if bool(valid_cpu.all()) else valid_cpu.contiguous()
        else:
            maps_cpu = masks_cpu = valid_cpu = None

        self._scores.append(scores)
        self._labels.append(labels_cpu.to(torch.int64))
        self._defect_types.extend([""] * batch if defect_types is None else [str(t) for t in defect_types])
        self._paths.extend([None] * batch if paths is None else [str(p) for p in paths])
        if maps_cpu is None:
            if self._pixels_ok and self._seen_pixels:
                self._warn_mixed()
            self._pixels_ok = False
            self._maps.clear()
            self._masks.clear()
            self._valid.clear()
        else:
            if not self._pixels_ok and not self._seen_pixels:
                self._warn_mixed()
            self._seen_pixels = True
            if self._pixels_ok:
                self._maps.append(maps_cpu)
                self._masks.append(masks_cpu)
                self._valid.append(valid_cpu)

    @staticmethod
    def _pixel_batch(anomaly_maps: Tensor, masks: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        maps = torch.as_tensor(anomaly_maps).detach()
        gt = torch.as_tensor(masks).detach()
        if maps.ndim == 4 and maps.shape[1] == 1:
            maps = maps[:, 0]
        if gt.ndim == 4 and gt.shape[1] == 1:
            gt = gt[:, 0]
        if maps.ndim != 3 or maps.shape[0] != batch:
            raise ValueError(f"anomaly_maps must be [B, H, W] with B={batch}, got {tuple(anomaly_maps.shape)}")
        if gt.shape != maps.shape:
            raise ValueError(
                f"masks shape {tuple(masks.shape)} does not match anomaly_maps {tuple(anomaly_maps.shape)}"
            )
        # Binarise on the device so only 1 byte per pixel crosses to the host.
        gt = gt if gt.dtype == torch.bool else gt > 0.5
        maps = maps.to("cpu", torch.float32).contiguous()
        if bool(torch.isnan(maps).any()):
            raise ValueError("anomaly maps contain NaN")
        return maps, gt.to("cpu").contiguous()

    @staticmethod
    def _warn_mixed() -> None:
        warnings.warn(
            "AnomalyMetrics: some batches came with anomaly maps and masks and some without; "
            "pixel metrics are left out for this run.",
            stacklevel=3,
        )

    # ------------------------------------------------------------------ distributed
    def state(self) -> dict[str, object]:
        """Everything recorded since the last reset (plain lists of CPU tensors and strings)."""
        return {
            "scores": list(self._scores), "labels": list(self._labels), "defect_types": list(self._defect_types),
            "paths": list(self._paths), "maps": list(self._maps), "masks": list(self._masks),
            "valid": list(self._valid),
            "pixels_ok": self._pixels_ok, "seen_pixels": self._seen_pixels,
        }  # fmt: skip

    def merge(self, states: Sequence[dict[str, object]]) -> None:
        """Replace the records with ``states`` concatenated in order (e.g. every rank's, by rank)."""
        self.reset()
        for st in states:
            self._scores.extend(st["scores"])  # type: ignore[arg-type]
            self._labels.extend(st["labels"])  # type: ignore[arg-type]
            self._defect_types.extend(st["defect_types"])  # type: ignore[arg-type]
            self._paths.extend(st["paths"])  # type: ignore[arg-type]
            self._maps.extend(st["maps"])  # type: ignore[arg-type]
            self._masks.extend(st["masks"])  # type: ignore[arg-type]
            self._valid.extend(st.get("valid", [None] * len(st["masks"])))  # type: ignore[arg-type, union-attr]
        # pixel metrics only when every rank saw maps and masks for every image it scored
        self._pixels_ok = all(bool(st["pixels_ok"]) for st in states)
        self._seen_pixels = any(bool(st["seen_pixels"]) for st in states)
        if not self._pixels_ok:
            self._maps.clear()
            self._masks.clear()
            self._valid.clear()

    # ------------------------------------------------------------------ results
    @property
    def num_images(self) -> int:
        """Images seen since the last reset."""
        return len(self._defect_types)

    @property
    def has_pixel_data(self) -> bool:
        """Whether :meth:`compute` will report pixel metrics."""
        return self._pixels_ok and bool(self._maps)

    def image_scores(self) -> tuple[Tensor, Tensor, list[str]]:
        """``(scores [N] float64, labels [N] int64, defect_types [N])`` in update order (CPU)."""
        if not self._scores:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.int64), []
        return torch.cat(self._scores), torch.cat(self._labels), list(self._defect_types)

    def paths(self) -> list[str | None]:
        """``[N]`` image paths given to :meth:`update` (None where not given)."""
        return list(self._paths)

    def storage_bytes(self) -> int:
        """Bytes held by the stored maps and masks (the part that grows with the test set)."""
        return sum(t.numel() * t.element_size() for t in (*self._maps, *self._masks))

    def pixel_sweep(self, return_curve: bool = False, max_fpr: float | None = None) -> PixelSweepResult | None:
        """Raw pixel-level result (e.g. the PRO curve for a figure); None without pixel data.

        ``max_fpr`` defaults to ``pro_max_fpr``; pass ``return_curve=True`` for ``fpr``/``pro``.
        """
        if not self.has_pixel_data:
            return None
        limit = self.pro_max_fpr if max_fpr is None else max_fpr
        valid = None
        if any(v is not None for v in self._valid):
            valid = [torch.ones_like(m) if v is None else v for m, v in zip(self._masks, self._valid)]
        return pixel_sweep(self._maps, self._masks, max_fpr=limit, return_curve=return_curve, valid=valid)

    def compute(self) -> dict[str, float]:
        """All metrics as plain floats (see the class docstring for keys and NaN rules)."""
        scores, labels, defect_types = self.image_scores()
        f1, threshold = f1_max(scores, labels)
        out = {names.IMAGE_AUROC: auroc(scores, labels), names.IMAGE_F1_MAX: f1, names.IMAGE_F1_THRESHOLD: threshold}

        types = np.asarray(defect_types, dtype=object)
        s, lab = scores.numpy(), labels.numpy()
        normal = lab == 0
        for defect_type in sorted({t for t in defect_types if t}):
            positive = (types == defect_type) & (lab == 1)
            if positive.any() and normal.any():
                subset = positive | normal
                out[names.per_defect(names.IMAGE_AUROC, defect_type)] = auroc(s[subset], lab[subset])

        px = self.pixel_sweep()
        if px is not None:
            out[names.PIXEL_AUROC] = px.auroc
            out[names.PIXEL_AUPRO] = px.aupro
            out[names.PIXEL_F1_MAX] = px.f1_max
            out[names.PIXEL_F1_THRESHOLD] = px.f1_threshold
        return {k: float(v) for k, v in out.items()}
