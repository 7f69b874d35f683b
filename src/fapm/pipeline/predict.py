"""``predict(cfg)``: load a model file and score an image, a folder or a glob pattern."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from fapm.inference.api import FAPM
from fapm.inference.predict import PredictSummary, predict_files

log = logging.getLogger(__name__)


def predict(cfg: DictConfig) -> PredictSummary:
    """Score ``cfg.input`` with the model in ``cfg.ckpt_path``; results go to ``cfg.output``."""
    model = FAPM.load(
        cfg.ckpt_path,
        device=cfg.device,
        threshold=cfg.threshold,
        pixel_threshold=cfg.pixel_threshold,
        min_side=cfg.min_side,
        max_pixels=cfg.max_pixels,
    )
    log.info("%r", model)
    summary = predict_files(
        model,
        cfg.input,
        cfg.output,
        batch_size=cfg.batch_size,
        write_overlays=cfg.overlays,
        write_masks=cfg.masks,
        alpha=cfg.overlay_alpha,
        progress=cfg.progress,
    )
    if model.has_labels:
        decided = (
            f"{summary.defective} defective; image threshold {model.image_threshold:.4g}, pixel threshold "
            + ("none" if model.pixel_threshold is None else f"{model.pixel_threshold:.4g}")
        )
    else:
        decided = (
            "no labels: the model has no threshold from held-out normal images (trained with "
            "data.normal_holdout=0); pass threshold=<number>, or threshold=f1 for the test set's F1-max threshold"
        )
    print(
        f"predict: {summary.scored} scored, {summary.failed} failed in {summary.seconds:.1f} s; {decided}\n"
        f"  results: {summary.files['results_csv']}"
    )
    if summary.message:
        print(f"  {summary.message}")
    return summary
