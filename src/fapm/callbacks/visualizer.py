"""``ImageVisualizer``: figures of a few test images and of the memory, saved and logged at test end.

During the test loop the callback only copies the (pre-processed) input tensors of the
images it may show; maps and figures are made after the loop, so the timed test step is
not slowed and no anomaly map is held for the whole test set.

Which images: while the test set streams by, the first ``num_images`` images of every
defect type (``good`` included) are kept; at the end they are taken round-robin over the
types, ``good`` first, then the defect types in sorted order, until ``num_images`` are
chosen. So a run shows normal and defective images of every type it can, deterministically
(the test loader is not shuffled), holding at most ``num_images × types`` input tensors.

Thresholds: the same stored thresholds that ``metrics.json``, ``predict.py`` and the API use
(the module's ``thresholds``, chosen at fit time from held-out normal images): the predicted
mask at the pixel threshold, the title's decision at the image threshold. A model fitted
without held-out normal images has none; its figures then show scores and maps, no decision
(the test set's F1 threshold is a metric, never a label).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from fapm.data.sampling import drop_padding
from fapm.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize
from fapm.tracking import log_images
from fapm.visualization.figures import memory_figure, sample_figure, save_figure

log = logging.getLogger(__name__)

GOOD = "good"


@dataclass
class _Kept:
    image: Tensor  # [3, H, W] as the model sees it (normalised)
    mask: Tensor | None  # [H, W] bool, None when unknown
    defect_type: str
    path: str


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


class ImageVisualizer(L.Callback):
    """Save (and log) figures of ``num_images`` test images and of the memory bank.

    Args:
        num_images: test images to draw (0 = none).
        dirpath: folder for the PNGs (default ``<trainer.default_root_dir>/figures``).
        memory: also draw the memory figure (models with ``detector.memories``).
        log_to_loggers: send the PNGs to loggers that take images (TensorBoard, W&B).
        batch_size: images per forward pass when the maps are recomputed at the end.
        dpi: PNG resolution.
    """

    def __init__(
        self,
        num_images: int = 8,
        dirpath: str | None = None,
        memory: bool = True,
        log_to_loggers: bool = True,
        batch_size: int = 8,
        dpi: int = 100,
    ) -> None:
        super().__init__()
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        self.num_images = int(num_images)
        self.dirpath = dirpath
        self.memory = memory
        self.log_to_loggers = log_to_loggers
        self.batch_size = max(1, int(batch_size))
        self.dpi = dpi
        self._kept: dict[str, list[_Kept]] = {}
        self.saved: list[Path] = []

    # ------------------------------------------------------------------ collecting
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._kept = {}
        self.saved = []

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        batch = drop_padding(batch) if self.num_images else None  # a shorter DDP shard's placeholders
        if batch is None:
            return
        images = batch["image"]
        types = list(batch.get("defect_type", [""] * images.shape[0]))
        paths = list(batch.get("path", [""] * images.shape[0]))
        masks, has_mask = batch.get("mask"), batch.get("has_mask")
        for i, defect_type in enumerate(types):
            bucket = self._kept.setdefault(str(defect_type), [])
            if len(bucket) >= self.num_images:
                continue
            mask = None
            if masks is not None and (has_mask is None or bool(has_mask[i])):
                mask = masks[i].reshape(masks.shape[-2:]).detach().to("cpu") > 0.5
            bucket.append(_Kept(images[i].detach().to("cpu").clone(), mask, str(defect_type), str(paths[i])))

    def chosen(self) -> list[_Kept]:
        """The images to draw: round-robin over defect types, ``good`` first."""
        order = sorted(self._kept, key=lambda t: (t != GOOD, t))
        picked: list[_Kept] = []
        depth = 0
        while len(picked) < self.num_images and any(depth < len(self._kept[t]) for t in order):
            for t in order:
                if depth < len(self._kept[t]) and len(picked) < self.num_images:
                    picked.append(self._kept[t][depth])
            depth += 1
        return picked

    # ------------------------------------------------------------------ drawing
    def _folder(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "figures"

    @torch.inference_mode()
    def _score(self, pl_module: L.LightningModule, images: Tensor) -> tuple[Tensor, Tensor]:
        scores, maps = [], []
        for chunk in images.split(self.batch_size):
            output = pl_module.detector(chunk.to(pl_module.device))  # figures only: not counted as scored images
            scores.append(output.image_scores.detach().to("cpu", torch.float32))
            maps.append(output.anomaly_maps.detach().to("cpu", torch.float32).reshape(chunk.shape[0], *chunk.shape[-2:]))
        return torch.cat(scores), torch.cat(maps)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        folder = self._folder(trainer)
        saved: list[Path] = []
        captions: list[str] = []
        try:
            samples = self.chosen()
            if samples:
                log.info("drawing %d test figure(s) into %s", len(samples), folder)
                saved, captions = self._draw_samples(trainer, pl_module, samples, folder)
            if self.memory:
                path = self._draw_memory(pl_module, folder)
                if path is not None:
                    saved.append(path)
                    captions.append("memory size and d_imax per region")
        except Exception:  # figures are a by-product: never lose a finished run to them
            log.warning("could not draw the test figures", exc_info=True)
        finally:
            self._kept = {}
        self.saved = saved
        if saved:
            log.info("saved %d figure(s) in %s", len(saved), folder)
        if saved and self.log_to_loggers and trainer.loggers:
            log_images(trainer.loggers, "test/figures", saved, captions, step=trainer.global_step)

    def _draw_samples(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        samples: Sequence[_Kept],
        folder: Path,
    ) -> tuple[list[Path], list[str]]:
        images = torch.stack([s.image for s in samples])
        scores, maps = self._score(pl_module, images)
        preprocess = getattr(trainer.datamodule, "preprocess", None) if trainer.datamodule is not None else None
        mean = getattr(preprocess, "mean", IMAGENET_MEAN)
        std = getattr(preprocess, "std", IMAGENET_STD)
        shown = denormalize(images.float(), mean, std)
        stored = getattr(pl_module, "thresholds", None)
        image_threshold = stored.select("image", "auto") if stored is not None else None
        threshold = stored.select("pixel", "auto") if stored is not None else None
        value_range = (float(maps.min()), float(maps.max()))
        saved, captions = [], []
        for i, sample in enumerate(samples):
            stem = Path(sample.path).stem or f"image{i}"
            title = f"{sample.defect_type} / {stem}"
            figure = sample_figure(
                shown[i], sample.mask, maps[i], threshold, float(scores[i]), title, value_range, image_threshold
            )
            path = save_figure(figure, folder / f"sample_{i:02d}_{sample.defect_type}_{stem}.png", self.dpi)
            saved.append(path)
            captions.append(f"{title}: score {float(scores[i]):.4g}")
        return saved, captions

    def _draw_memory(self, pl_module: L.LightningModule, folder: Path) -> Path | None:
        detector = getattr(pl_module, "detector", None)
        memories = getattr(detector, "memories", None)
        if not memories or not all(getattr(m, "fitted", False) for m in memories):
            return None
        names_ = list(getattr(detector, "stream_names", [f"stream {i}" for i in range(len(memories))]))
        coreset = getattr(detector, "coreset", None)
        absolute = getattr(coreset, "adaptive", False) and getattr(coreset, "threshold_mode", "") == "absolute"
        d_th = _finite(getattr(coreset, "d_th", None)) if absolute else None  # a quantile is no d_imax value
        figure = memory_figure(
            [m.lengths for m in memories], [m.d_max for m in memories], tuple(memories[0].grid), names_, d_th
        )
        return save_figure(figure, folder / "memory.png", self.dpi)
