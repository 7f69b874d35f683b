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
from fapm.pipeline.common import (
    METRICS_FILE,
    build_trainer,
    output_dir,
    summarised_image_warnings,
    summary,
    write_metrics,
)
from fapm.settings import ConfigError, DataSettings, check_data_memory, parse_data
from fapm.tracking import close_loggers

log = logging.getLogger(__name__)


def data_settings(cfg: DictConfig, file: ModelFile) -> DataSettings:
    """The dataset to test on: ``cfg.data`` when given, else the one the model was fitted for.

    Pre-processing (size, resize mode, crop, normalisation) always comes from the model file.
    """
    pre = file.preprocess
    fixed = {k: pre[k] for k in ("image_size", "crop_size", "mean", "std", "resize") if k in pre}
    if cfg.get("data") is None:
        if file.data is None:
            raise ConfigError([f"data: {file.path} records no dataset; choose one, e.g. data=mvtec data.root=... "
                               "data.category=..."])
        stored = file.data.to_dict()
        # the root comes from the command line or the config, never from the file (a crafted file
        # could otherwise make eval generate demo data into a folder it names)
        root = cfg.get("data_root")
        if not root:
            if not stored.get("generate_demo"):
                raise ConfigError([
                    f"data_root: {file.path} was fitted on a {stored.get('type')} dataset (category "
                    f"{stored.get('category')!r}, stored root {stored.get('root')!r}); say where it is on this "
                    "machine: data_root=<folder> (the root stored in a model file is never used)"
                ])
            root = f"{cfg.paths.data_dir}/fapm_demo"
        stored["root"] = str(root)
        if cfg.get("category"):
            stored["category"] = str(cfg.category)
        return parse_data({**stored, **fixed}, "data")
    merged = OmegaConf.merge(cfg, {"data": fixed})
    return parse_data(OmegaConf.to_container(merged.data, resolve=True), "data")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test the model in ``cfg.ckpt_path`` on ``cfg.data`` (default: the data it was fitted for)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = output_dir(cfg)
    detector, file = load_detector(cfg.ckpt_path)
    data = data_settings(cfg, file)
    check_data_memory(data)  # the model file's image size with this run's batch sizes, before any work
    datamodule = build_datamodule(data)
    datamodule.prepare_data()
    datamodule.setup("test")
    module = AnomalyModule(detector, name=file.model.name, timing_warmup=getattr(file.model, "timing_warmup", 2))
    module.thresholds = Thresholds.from_dict(file.thresholds)
    trainer, loggers = build_trainer(cfg)
    try:
        with summarised_image_warnings(module, "test"):
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
