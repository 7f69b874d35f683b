"""``train(cfg)``: validate, fit a detector, save it, decide thresholds, test it, write ``metrics.json``.

Order matters, for the user's time and for never losing a fit:

1. every config value is validated (:mod:`fapm.settings`) and the data layout is listed and
   checked, before the backbone is built;
2. the fit builds the memory (or trains LAMP);
3. the model file is written as soon as the fit ends (atomically), and rewritten after each
   later stage adds to it (thresholds from held-out normal images, then the test set's F1
   thresholds as metrics);
4. the test set is scored.

A failure at any stage, Ctrl-C included, leaves ``metrics.json`` with ``"status": "failed"``,
the stage, the reason and, once the fit is done, the usable model file; the exception is
re-raised (a single run exits non-zero; in a multirun the launcher records the failure and
goes on).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from fapm.builders import build_datamodule, build_module
from fapm.inference.thresholds import Thresholds, holdout_thresholds
from fapm.lightning.strategy import stop_other_ranks
from fapm.model_file import save_model
from fapm.pipeline.common import (
    METRICS_FILE,
    MODEL_FILE,
    build_trainer,
    log_hyperparameters,
    output_dir,
    summarised_image_warnings,
    summary,
    validated_settings,
    write_metrics,
)
from fapm.reporting.runs import (
    STATUS_KEY,
    STATUS_OK,
    check_optimized_metric,
    config_facts,
    describe_error,
    failure_metrics,
)
from fapm.settings import LampSettings, RunSettings
from fapm.tracking import close_loggers, log_metrics_table

log = logging.getLogger(__name__)


@dataclass
class _Progress:
    """How far a run got: what its failure record must say."""

    stage: str = "set-up"
    model_file: Path | None = None
    trainer: Any = None
    module: Any = None


def run_facts(module: Any, datamodule: Any) -> dict[str, Any]:
    """Facts every metrics file carries, whatever the model."""
    facts: dict[str, Any] = {"category": getattr(datamodule, "category", None)}
    preprocess = getattr(datamodule, "preprocess", None)
    if preprocess is not None:  # geometry: what the model sees of every image
        facts.update(image_size=preprocess.image_size, crop_size=preprocess.crop_size, resize=preprocess.resize,
                     not_inspected=round(preprocess.border_share(), 4))
    facts.update(module.facts())
    return facts


def train(cfg: DictConfig) -> dict[str, Any]:
    """Validate, fit, save, threshold, test; returns the metrics written to ``metrics.json``.

    Raises:
        ConfigError, DataError, BackboneError…: bad settings or data, before any long work.
    """
    out = output_dir(cfg)
    loggers: list[Any] = []
    progress = _Progress()
    try:
        metrics = _fit_and_test(cfg, out, loggers, progress)
    except BaseException as error:  # Ctrl-C too: Lightning turns it into SystemExit during fit/test
        # the failing process reports (under DDP: whichever rank failed; rank 0 also stops the others)
        _record_failure(cfg, out, error, progress)
        close_loggers(loggers, failed=True)
        if progress.trainer is not None:
            stop_other_ranks(progress.trainer.strategy)
        raise
    close_loggers(loggers)
    return metrics


def _record_failure(cfg: DictConfig, out: Path, error: BaseException, progress: _Progress) -> None:
    """Write ``metrics.json`` with ``status: failed``; a second failure never hides the first."""
    if isinstance(error, SystemExit) and error.code in (0, None):
        return
    from fapm import signals

    interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
    facts: dict[str, Any] = {**config_facts(cfg), "output_dir": str(out), "failed_stage": progress.stage}
    if progress.model_file is not None:
        facts["model_file"] = str(progress.model_file)
    # a test that finished keeps its metrics, whatever stops the run afterwards (figures, Ctrl-C)
    tested = dict(getattr(progress.module, "test_results", None) or {})
    if tested:
        facts.update(progress.module.facts())
        facts.update(tested)
        facts["test_completed"] = True
    record = failure_metrics(error, facts)
    if interrupted:
        cause = signals.describe(error) if isinstance(error, KeyboardInterrupt) or signals.received else None
        record["error"] = f"interrupted{f' ({cause})' if cause else ''} during {progress.stage}"
    try:
        write_metrics(out / METRICS_FILE, record)
    except OSError as err:
        print(f"fapm: could not write {out / METRICS_FILE} either ({err.strerror or err})", file=sys.stderr)
    saved = f"; the fitted model is saved in {progress.model_file}" if progress.model_file else ""
    log.error("run failed during %s: %s%s", progress.stage, record["error"] if interrupted else describe_error(error), saved)


def _fit_and_test(cfg: DictConfig, out: Path, loggers: list[Any], progress: _Progress) -> dict[str, Any]:
    settings = validated_settings(cfg)  # every value checked before any work
    check_optimized_metric(cfg.get("optimized_metric"))
    L.seed_everything(settings.seed, workers=True, verbose=False)
    datamodule = build_datamodule(settings.data)
    progress.stage = "data set-up"
    datamodule.prepare_data()
    datamodule.setup("fit")  # lists and checks every file before the backbone is built
    if datamodule.preprocess.border_note():
        log.warning("data.%s", datamodule.preprocess.border_note())
    progress.stage = "model set-up"
    module = _build_module(cfg, settings)
    progress.module = module
    trainer, built = build_trainer(cfg)
    progress.trainer = trainer
    loggers.extend(built)
    log_hyperparameters(cfg, loggers)

    progress.stage = "fit"
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    metrics: dict[str, Any] = {**run_facts(module, datamodule), "fit_seconds": fit_seconds, "output_dir": str(out)}

    writer = trainer.is_global_zero  # under DDP one process writes the run's files

    def save(thresholds: Thresholds) -> None:
        # counts (alignment fallbacks, enlarged regions, k_effective) as they are now, after the
        # work done so far: metrics.json and the model file always record the same numbers
        facts = module.facts()
        metrics.update(facts)
        if not cfg.get("save_model", True) or not writer:
            return
        progress.model_file = save_model(
            out / MODEL_FILE, module.detector, settings.model,
            None if isinstance(settings.model, LampSettings) else settings.backbone,
            datamodule.preprocess.to_dict(), data=settings.data, thresholds=thresholds.to_dict(),
            facts=facts, meta={"fit_seconds": fit_seconds},
            include_backbone=bool(cfg.get("save_backbone", False)),
        )
        metrics["model_file"] = str(progress.model_file)

    progress.stage = "save"
    save(Thresholds())  # the fit is never lost, whatever happens next
    progress.stage = "thresholds"
    with summarised_image_warnings(module, "held-out normal"):
        thresholds = holdout_thresholds(
            module, datamodule, settings.thresholds.image_quantile, settings.thresholds.pixel_quantile,
            progress=writer and trainer.progress_bar_callback is not None,
        )
    if thresholds.n_normal == 0 and writer:
        log.warning(
            "no held-out normal images (data.normal_holdout=0): the model has no decision threshold, so "
            "predictions carry scores and maps but no labels (set data.normal_holdout > 0, or give "
            "predict a threshold)"
        )
    save(thresholds)
    module.thresholds = thresholds
    if cfg.get("test", True):
        progress.stage = "test"

        def test_metrics_first() -> None:
            """The finished test's metrics on disk before the figures are drawn (a kill -9 while
            drawing keeps them); the final record replaces this one."""
            if writer and module.test_results:
                write_metrics(out / METRICS_FILE, {
                    **metrics, **module.facts(), **module.test_results, STATUS_KEY: "failed",
                    "failed_stage": "figures", "test_completed": True,
                    "error": "the run stopped after the test, while the figures were drawn",
                })

        trainer.callbacks.insert(0, _BeforeFigures(test_metrics_first))  # before the figure callbacks
        with summarised_image_warnings(module, "test"):
            trainer.test(module, datamodule=datamodule, verbose=False)  # the summary below prints the results
        metrics.update(module.test_results)
        thresholds = thresholds.with_test_results(module.test_results)
        save(thresholds)
    else:
        metrics.update(module.facts())
    metrics.update(thresholds.as_metrics())
    metrics[STATUS_KEY] = STATUS_OK
    progress.stage = "report"
    if writer:
        write_metrics(out / METRICS_FILE, metrics)
        log_metrics_table(loggers, metrics, out, step=trainer.global_step)
        print(summary(metrics, f"train {metrics.get('model')} on {metrics.get('category')}"))
    return metrics


class _BeforeFigures(L.Callback):
    """Calls ``action`` when the test ends, before the callbacks after it (the figures) run."""

    def __init__(self, action: Any) -> None:
        self.action = action

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.action()


def _build_module(cfg: DictConfig, settings: RunSettings) -> Any:
    """The LightningModule; LAMP's optimiser and scheduler come from the user's own config nodes."""
    optimizer = scheduler = None
    if isinstance(settings.model, LampSettings):
        import hydra

        optimizer = hydra.utils.instantiate(cfg.model.optimizer)
        scheduler = hydra.utils.instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None
    return build_module(
        settings.model, settings.backbone, settings.data.mean, settings.data.std, settings.seed,
        optimizer=optimizer, scheduler=scheduler,
    )
