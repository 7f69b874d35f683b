"""``evaluate(cfg)``: load a saved model file and test it on a dataset.

The model file is read as data (:mod:`fapm.model_file`): its detector is rebuilt from its
validated settings, and its data settings (a whitelisted layout type with plain values) say
which dataset it was fitted for. A ``data`` group chosen on the command line replaces them;
either way the images are pre-processed exactly as the model was fitted.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from fapm.builders import build_datamodule
from fapm.inference.thresholds import Thresholds
from fapm.lightning.base import AnomalyModule
from fapm.model_file import ModelFile, load_detector
from fapm.pipeline.common import METRICS_FILE, build_trainer, output_dir, summary, write_metrics
from fapm.settings import ConfigError, DataSettings, parse_data
from fapm.tracking import close_loggers

log = logging.getLogger(__name__)


def data_settings(cfg: DictConfig, file: ModelFile) -> DataSettings:
    """The dataset to test on: ``cfg.data`` when given, else the one the model was fitted for.

    Pre-processing (size, crop, normalisation) always comes from the model file.
    """
    pre = file.preprocess
    fixed = {k: pre[k] for k in ("image_size", "crop_size", "mean", "std") if k in pre}
    if cfg.get("data") is None:
        if file.data is None:
            raise ConfigError([f"data: {file.path} records no dataset; choose one, e.g. data=mvtec data.root=... "
                               "data.category=..."])
        return parse_data({**file.data.to_dict(), **fixed}, "data")
    merged = OmegaConf.merge(cfg, {"data": fixed})
    return parse_data(OmegaConf.to_container(merged.data, resolve=True), "data")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test the model in ``cfg.ckpt_path`` on ``cfg.data`` (default: the data it was fitted for)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = output_dir(cfg)
    detector, file = load_detector(cfg.ckpt_path)
    datamodule = build_datamodule(data_settings(cfg, file))
    datamodule.prepare_data()
    datamodule.setup("test")
    module = AnomalyModule(detector, name=file.model.name, timing_warmup=getattr(file.model, "timing_warmup", 2))
    module.thresholds = Thresholds.from_dict(file.thresholds)
    trainer, loggers = build_trainer(cfg)
    try:
        trainer.test(module, datamodule=datamodule, verbose=False)  # the summary below prints the results
    except BaseException:
        close_loggers(loggers, failed=True)
        raise
    close_loggers(loggers)  # flushed and finished (a W&B run per job), as train does
    metrics: dict[str, Any] = {"category": getattr(datamodule, "category", None)}
    metrics.update(module.facts())
    metrics["model_file"] = str(cfg.ckpt_path)
    metrics["output_dir"] = str(out)
    metrics.update(module.test_results)
    metrics.update(module.thresholds.with_test_results(module.test_results).as_metrics())
    write_metrics(out / METRICS_FILE, metrics)
    print(summary(metrics, f"eval {metrics.get('model')} on {metrics.get('category')}"))
    return metrics
