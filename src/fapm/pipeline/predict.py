"""``predict(cfg)``: load a model file and score an image, a folder or a glob pattern.

Everything that can be checked without the model is checked first, in this order, each with
one error naming the key or path (:data:`SETUP_ERRORS`): the predict settings, the device,
the output folder (created and locked for the run). Only then is the model file loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fapm.data.errors import DataError
from fapm.deploy.serving import DeployError
from fapm.inference.api import FAPM
from fapm.inference.predict import OutputFolder, PredictError, PredictSummary, check_device, predict_files
from fapm.inference.thresholds import ThresholdError, parse_choice
from fapm.model_file import ModelFileError
from fapm.settings import ConfigError, check_memory

log = logging.getLogger(__name__)

#: What a predict run reports as one line (exit code 2) instead of a traceback.
SETUP_ERRORS: tuple[type[Exception], ...] = (
    PredictError, ThresholdError, ModelFileError, DataError, DeployError, ConfigError,
)


def _integer(cfg: Mapping[str, Any], key: str, minimum: int) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PredictError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _flag(cfg: Mapping[str, Any], key: str) -> bool:
    value = cfg[key]
    if not isinstance(value, bool):
        raise PredictError(f"{key} must be true or false, got {value!r}")
    return value


def check_settings(cfg: Mapping[str, Any]) -> None:
    """The predict keys of ``conf/predict.yaml``: types and ranges, before any work.

    Raises:
        PredictError / ThresholdError: naming the first bad key and what it accepts.
    """
    for key in ("ckpt_path", "input", "output"):
        if isinstance(cfg, DictConfig) and OmegaConf.is_missing(cfg, key):
            raise PredictError(f"{key} is required: python predict.py ckpt_path=<model.safetensors> input=<image|folder|glob>")
        if not isinstance(cfg[key], str) or not cfg[key].strip():
            raise PredictError(f"{key} must be a path, got {cfg[key]!r}")
    parse_choice(cfg["threshold"], "threshold")
    parse_choice(cfg["pixel_threshold"], "pixel_threshold")
    _integer(cfg, "batch_size", 1)
    _integer(cfg, "min_side", 1)
    _integer(cfg, "max_pixels", 1)
    for key in ("overlays", "masks", "progress", "overwrite"):
        _flag(cfg, key)
    runtime = cfg.get("runtime") or {}
    if runtime.get("engine", "torch") not in ("torch", "onnxruntime", "openvino"):
        raise PredictError(f"runtime.engine must be torch, onnxruntime or openvino, got {runtime.get('engine')!r}")
    if runtime.get("precision", "f32") not in ("f32", "bf16"):
        raise PredictError(f"runtime.precision must be f32 or bf16, got {runtime.get('precision')!r}")
    alpha = cfg["overlay_alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise PredictError(f"overlay_alpha must be a number in [0, 1], got {alpha!r}")


def predict(cfg: DictConfig) -> PredictSummary:
    """Score ``cfg.input`` with the model in ``cfg.ckpt_path``; results go to ``cfg.output``.

    Raises:
        one of :data:`SETUP_ERRORS` before any image is read (bad setting, device, output
        folder, model file).
    """
    check_settings(cfg)
    device = check_device(cfg.device)
    with OutputFolder(cfg.output, overwrite=cfg.overwrite) as output:
        model = FAPM.load(
            cfg.ckpt_path,
            device=device,
            threshold=cfg.threshold,
            pixel_threshold=cfg.pixel_threshold,
            min_side=cfg.min_side,
            max_pixels=cfg.max_pixels,
            runtime=cfg.runtime.engine,
            precision=cfg.runtime.precision,
            threads=cfg.runtime.threads,
        )
        # the model file's image size with this run's batch size, against the machine, before any image
        check_memory(model.preprocess.image_size, cfg.batch_size, f"{cfg.ckpt_path}: preprocess.image_size", "batch_size")
        log.info("%r", model)
        summary = predict_files(
            model,
            cfg.input,
            output,
            batch_size=cfg.batch_size,
            write_overlays=cfg.overlays,
            write_masks=cfg.masks,
            alpha=cfg.overlay_alpha,
            progress=cfg.progress,
        )
    skipped = f", {summary.skipped} skipped" if summary.skipped else ""
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
        f"predict: {summary.scored} scored, {summary.failed} failed{skipped} in {summary.seconds:.1f} s; "
        f"{decided}\n  results: {summary.files['results_csv']}"
    )
    if summary.message:
        print(f"  {summary.message}")
    return summary
