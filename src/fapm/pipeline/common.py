"""Set-up shared by training and evaluation: trainer, loggers, callbacks, metrics file, summary."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from fapm.metrics import names
from fapm.reporting.runs import METRICS_FILE  # the run-folder layout is owned by its reader

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a name → config mapping (callbacks, loggers)."""
    objects: list[Any] = []
    if not cfg:
        return objects
    for name, node in cfg.items():
        if isinstance(node, DictConfig) and "_target_" in node:
            log.debug("instantiating %s <%s>", name, node._target_)
            objects.append(hydra.utils.instantiate(node))
    return objects


def build_trainer(cfg: DictConfig) -> tuple[L.Trainer, list[Any]]:
    """The Lightning trainer with the configured callbacks and loggers."""
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return trainer, loggers


def output_dir(cfg: DictConfig) -> Path:
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def plain_config(cfg: DictConfig, keys: tuple[str, ...] = ("data", "backbone", "model", "seed")) -> DictConfig:
    """The part of a run's config that defines the model and its data, resolved."""
    picked = {
        k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
        for k in keys
        if k in cfg and cfg[k] is not None
    }
    return OmegaConf.create(picked)


def log_hyperparameters(cfg: DictConfig, loggers: list[Any]) -> None:
    if not loggers:
        return
    params = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    for logger in loggers:
        logger.log_hyperparams(params)


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN: undefined metrics are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(path: Path, metrics: dict[str, Any]) -> Path:
    """Write ``metrics.json`` atomically (NaN → null)."""
    clean = {k: finite_or_none(v) for k, v in metrics.items()}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(clean, indent=2, sort_keys=False, default=str))
    os.replace(tmp, path)
    return path


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return "n/a" if value is None else str(value)


def summary(metrics: dict[str, Any], title: str) -> str:
    """A one-screen summary of a run's facts and metrics."""
    lines = [f"==== {title} " + "=" * max(0, 60 - len(title))]
    rows = [
        ("category", metrics.get("category")),
        ("model", metrics.get("model")),
        ("backbone", f"{metrics.get('backbone')} {metrics.get('layers', '')}"),
        ("weights", metrics.get("weights")),
        ("image AUROC", metrics.get(names.IMAGE_AUROC)),
        ("pixel AUROC", metrics.get(names.PIXEL_AUROC)),
        ("pixel AUPRO", metrics.get(names.PIXEL_AUPRO)),
        ("image F1-max", metrics.get(names.IMAGE_F1_MAX)),
        ("throughput (img/s)", metrics.get("fps")),
        ("latency (ms/img)", metrics.get("latency_ms")),
        ("fit seconds", metrics.get("fit_seconds")),
        ("memory vectors", metrics.get("memory_vectors")),
        ("enlarged regions", metrics.get("enlarged_regions")),
        ("test images", metrics.get("test_images")),
        ("output", metrics.get("output_dir")),
    ]
    for label, value in rows:
        if value is not None:
            digits = 2 if label.startswith(("throughput", "latency", "fit")) else 4
            lines.append(f"  {label:<20} {_fmt(value, digits)}")
    if metrics.get("random_weights"):
        lines.append("  !! WARNING: the backbone ran with RANDOM weights. Scores on real photographs are")
        lines.append("  !! near chance; use ImageNet weights (backbone.pretrained=true) or backbone.weights=<file>.")
    lines.append("=" * 66)
    return "\n".join(lines)
