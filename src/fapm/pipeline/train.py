"""``train(cfg)``: fit a detector, test it, save the model file and ``metrics.json``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from fapm.inference.thresholds import holdout_thresholds
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
from fapm.reporting.runs import STATUS_KEY, STATUS_OK, config_facts, describe_error, failure_metrics
from fapm.tracking import close_loggers, log_metrics_table

log = logging.getLogger(__name__)


def run_facts(cfg: DictConfig, module: Any, datamodule: Any) -> dict[str, Any]:
    """Facts every metrics file carries, whatever the model."""
    facts: dict[str, Any] = {"category": getattr(datamodule, "category", None), "model": cfg.model.get("name")}
    facts.update(module.facts())
    return facts


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test, save; returns the metrics written to ``metrics.json`` (``"status": "ok"``).

    A run that raises still leaves a ``metrics.json``, with ``"status": "failed"`` and
    ``"error": "<Type>: <message>"``, and the exception is re-raised: a single run exits
    non-zero; in a Hydra multirun the launcher records the failure and runs the remaining
    jobs, and the sweep raises it (exit status 1) once they are done. Loggers are closed
    either way (a W&B run is finished, so the next job of a multirun gets its own).
    """
    out = output_dir(cfg)
    loggers: list[Any] = []
    try:
        metrics = _fit_and_test(cfg, out, loggers)
    except Exception as error:
        write_metrics(out / METRICS_FILE, failure_metrics(error, {**config_facts(cfg), "output_dir": str(out)}))
        log.error("run failed: %s (recorded in %s)", describe_error(error), out / METRICS_FILE)
        close_loggers(loggers, failed=True)
        raise
    close_loggers(loggers)
    return metrics


def _fit_and_test(cfg: DictConfig, out: Path, loggers: list[Any]) -> dict[str, Any]:
    """The run itself; the loggers it builds are appended to ``loggers`` for the caller to close."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.model.module)
    trainer, built = build_trainer(cfg)
    loggers.extend(built)
    log_hyperparameters(cfg, loggers)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start

    metrics: dict[str, Any] = run_facts(cfg, module, datamodule)
    metrics["fit_seconds"] = fit_seconds
    metrics["output_dir"] = str(out)
    # Decision thresholds (docs/predict.md): quantiles of the held-out normals, F1-max on the test set.
    thresholds = holdout_thresholds(module, datamodule, **cfg.get("thresholds", {}))
    if cfg.get("test", True):
        trainer.test(module, datamodule=datamodule)
        metrics.update(module.test_results)
        thresholds = thresholds.with_test_results(module.test_results)
    metrics.update(thresholds.as_metrics())
    if cfg.get("save_model", True):
        meta = {"facts": {k: v for k, v in metrics.items() if isinstance(v, (str, int, float, bool))}}
        metrics["model_file"] = str(save_model(
            out / MODEL_FILE, module, plain_config(cfg), meta=meta, thresholds=thresholds.to_dict(),
            preprocess=datamodule.preprocess.to_dict(), include_backbone=cfg.get("save_backbone", False),
        ))
    metrics[STATUS_KEY] = STATUS_OK
    write_metrics(out / METRICS_FILE, metrics)
    log_metrics_table(loggers, metrics, out, step=trainer.global_step)
    print(summary(metrics, f"train {metrics.get('model')} on {metrics.get('category')}"))
    return metrics
