"""Set-up shared by training and evaluation: trainer, loggers, callbacks, metrics file, summary."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fapm.errors import FapmError
from fapm.fileio import write_text_atomically
from fapm.metrics import names
from fapm.reporting.runs import METRICS_FILE  # the run-folder layout is owned by its reader
from fapm.settings import ConfigError, LampSettings, RunSettings, check_data_memory, parse_run

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"


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
    """The run folder, created; :class:`OutputDirError` naming it when it cannot be written."""
    path = Path(cfg.paths.output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputDirError(f"cannot write to the output folder {path}: {err.strerror or err}") from err
    return path


class OutputDirError(FapmError, OSError):
    """The run's output folder cannot be created or written."""

    hint = "choose another folder (paths.output_dir / hydra.run.dir) or fix its permissions"


def validated_settings(cfg: DictConfig, groups: tuple[str, ...] = ("model", "backbone", "data", "thresholds")) -> RunSettings:
    """Resolve and validate the run's model, backbone, data and threshold settings (nothing is built).

    Raises:
        ConfigError: every invalid, missing or unknown key, named.
    """
    plain: dict[str, Any] = {"seed": cfg.get("seed", 0)}
    problems: list[str] = []
    for group in groups:
        try:
            node = cfg.get(group)
            plain[group] = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        except OmegaConfBaseException as err:  # an interpolation that cannot be resolved
            key = getattr(err, "full_key", None) or group
            problems.append(f"{key}: {getattr(err, 'msg', None) or err}")
    trainer = cfg.get("trainer") or {}
    epochs = trainer.get("max_epochs") if hasattr(trainer, "get") else None
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        # 0 epochs would "fit" nothing and write a model file that loading then refuses
        problems.append(f"trainer.max_epochs: must be an integer >= 1, got {epochs!r}")
    if problems:
        raise ConfigError(problems)
    settings = parse_run(plain)
    if not isinstance(settings.model, LampSettings):  # LAMP has no backbone
        check_backbone_name(settings.backbone.name, settings.backbone.library)
    check_data_memory(settings.data)  # an estimate against the machine, before any work
    return settings


def check_backbone_name(name: str, library: str) -> None:
    """:class:`ConfigError` when ``library`` has no model ``name`` (found before the data is listed)."""
    if library == "timm":
        import timm

        known = timm.is_model(name)
    else:
        import torchvision

        known = name in torchvision.models.list_models()
    if not known:
        raise ConfigError([
            f"backbone.name: {library} has no model named {name!r} (backbone.library={library}; e.g. resnet18, "
            "wide_resnet50_2, or a backbone=<option> config)"
        ])


@contextlib.contextmanager
def summarised_image_warnings(module: Any, images: str) -> Iterator[None]:
    """One warning with its count for a condition met image by image, instead of one per batch.

    The detector warns per batch when test images fall back from alignment to the
    neighbourhood search (:class:`~fapm.models.aligned.AlignmentFallbackWarning`); Python's
    warning filter then shows some of those lines and drops the rest. Inside this block they
    are silenced, and the count the module keeps of what it scored (``module.alignment_counts``)
    is reported once.
    """
    from fapm.models.aligned import AlignmentFallbackWarning

    detector = getattr(module, "detector", None)
    aligner = getattr(detector, "aligner", None)
    counts = getattr(module, "alignment_counts", None)
    before = dict(counts) if counts is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlignmentFallbackWarning)
        try:
            yield
        finally:
            if aligner is not None and counts is not None:
                fell = counts["fallback"] - before.get("fallback", 0)
                scored = fell + counts["aligned"] - before.get("aligned", 0)
                if fell:
                    log.warning(
                        "model.align=%s: %d of %d %s images did not register confidently (PSR < "
                        "model.align_min_confidence=%g) and were scored with the neighbourhood search (radius "
                        "%d) instead of being warped", aligner.mode, fell, scored, images, aligner.min_confidence,
                        max(int(getattr(detector, "neighbourhood", 0)), int(aligner.radius)),
                    )


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
    """Write ``metrics.json`` atomically (NaN → null); nothing half-written is left on failure."""
    clean = {k: finite_or_none(v) for k, v in metrics.items()}
    return write_text_atomically(path, json.dumps(clean, indent=2, sort_keys=False, default=str))


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
        ("k (effective)", metrics.get("k_effective")),
        ("enlarged regions", metrics.get("enlarged_regions")),
        ("test images", metrics.get("test_images")),
        ("image threshold", metrics.get("threshold/image_quantile")),
        ("model file", metrics.get("model_file")),
        ("output", metrics.get("output_dir")),
    ]
    for label, value in rows:
        if value is not None:
            digits = 2 if label.startswith(("throughput", "latency", "fit")) else 4
            lines.append(f"  {label:<20} {_fmt(value, digits)}")
    if names.IMAGE_AUROC in metrics and _fmt(metrics.get(names.IMAGE_AUROC)) == "n/a":
        lines.append("  (n/a: the scored test images hold only normal or only defective images, so an")
        lines.append("   AUROC is undefined; test on both kinds, e.g. without trainer.limit_test_batches)")
    if metrics.get("random_weights"):
        lines.append("  !! WARNING: the backbone ran with RANDOM weights. Scores on real photographs are")
        lines.append("  !! near chance; use ImageNet weights (backbone.pretrained=true) or backbone.weights=<file>.")
    lines.append("=" * 66)
    return "\n".join(lines)
