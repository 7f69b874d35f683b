"""``evaluate(cfg)``: load a saved model file and test it on a dataset."""

from __future__ import annotations

import logging
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from fapm.model_file import load_module as load_model_module
from fapm.pipeline.common import METRICS_FILE, build_trainer, output_dir, summary, write_metrics

log = logging.getLogger(__name__)


def load_module(path: str, overrides: DictConfig | None = None) -> tuple[Any, DictConfig, dict[str, Any]]:
    """Rebuild the LightningModule stored in a model file; returns ``(module, config, meta)``.

    See :func:`fapm.model_file.load_module` (format checks, backbone source, config mismatch).
    """
    module, payload = load_model_module(path, overrides)
    return module, payload["config"], payload["meta"]


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test the model in ``cfg.ckpt_path`` on ``cfg.data`` (default: the data it was fitted for)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = output_dir(cfg)
    module, stored, _ = load_module(cfg.ckpt_path)
    data_cfg = cfg.data if cfg.get("data") is not None else stored.data
    datamodule = hydra.utils.instantiate(data_cfg)
    trainer, _ = build_trainer(cfg)
    trainer.test(module, datamodule=datamodule)
    metrics: dict[str, Any] = {"category": getattr(datamodule, "category", None), "model": stored.model.get("name")}
    metrics.update(module.facts())
    metrics["model_file"] = str(cfg.ckpt_path)
    metrics["output_dir"] = str(out)
    metrics.update(module.test_results)
    write_metrics(out / METRICS_FILE, metrics)
    print(summary(metrics, f"eval {metrics.get('model')} on {metrics.get('category')}"))
    return metrics
