"""``train(cfg)``: fit a detector, test it, save the model file and ``metrics.json``."""

from __future__ import annotations

import logging
import time
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from fapm.model_file import save_model
from fapm.pipeline.common import (
    METRICS_FILE,
    MODEL_FILE,
    build_trainer,
    log_hyperparameters,
    output_dir,
    plain_config,
    summary,
    write_metrics,
)

log = logging.getLogger(__name__)


def run_facts(cfg: DictConfig, module: Any, datamodule: Any) -> dict[str, Any]:
    """Facts every metrics file carries, whatever the model."""
    facts: dict[str, Any] = {"category": getattr(datamodule, "category", None), "model": cfg.model.get("name")}
    facts.update(module.facts())
    return facts


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test, save; returns the metrics written to ``metrics.json``."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = output_dir(cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.model.module)
    trainer, loggers = build_trainer(cfg)
    log_hyperparameters(cfg, loggers)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start

    metrics: dict[str, Any] = run_facts(cfg, module, datamodule)
    metrics["fit_seconds"] = fit_seconds
    metrics["output_dir"] = str(out)
    if cfg.get("save_model", True):
        meta = {"facts": {k: v for k, v in metrics.items() if isinstance(v, (str, int, float, bool))}}
        metrics["model_file"] = str(save_model(out / MODEL_FILE, module, plain_config(cfg), meta=meta))
    if cfg.get("test", True):
        trainer.test(module, datamodule=datamodule)
        metrics.update(module.test_results)
    write_metrics(out / METRICS_FILE, metrics)
    print(summary(metrics, f"train {metrics.get('model')} on {metrics.get('category')}"))
    return metrics
