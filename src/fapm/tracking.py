"""Media and tables for experiment trackers (Lightning loggers), by what each logger can take.

* Weights & Biases (``WandbLogger``: has ``log_image`` / ``log_table``): images and
  ``wandb.Table`` tables.
* TensorBoard (``logger.experiment`` has ``add_image`` / ``add_text``): images, and tables
  as Markdown text.
* Anything else (CSV): nothing; the files in the run folder are the record.

A logger is recognised by the methods it has, not by its name, so any logger with the same
interface works. ``close_loggers`` ends W&B runs explicitly: several runs in one process
(a Hydra multirun) would otherwise all log into the first run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


def _has(obj: Any, name: str) -> bool:
    return callable(getattr(obj, name, None))


def _board(logger: Any) -> Any | None:
    """The TensorBoard-like writer behind ``logger`` (``add_image``/``add_text``), or None."""
    if _has(logger, "log_image"):  # W&B: its experiment is a run, not a writer
        return None
    writer = getattr(logger, "experiment", None)
    return writer if _has(writer, "add_image") and _has(writer, "add_text") else None


def log_images(
    loggers: Sequence[Any], key: str, paths: Sequence[Path], captions: Sequence[str], step: int = 0
) -> int:
    """Log PNG files to every logger that takes images; returns how many loggers took them."""
    if not paths:
        return 0
    taken = 0
    for logger in loggers:
        try:
            if _has(logger, "log_image"):
                logger.log_image(key=key, images=[str(p) for p in paths], step=step, caption=list(captions))
                taken += 1
            elif (writer := _board(logger)) is not None:
                for i, (path, caption) in enumerate(zip(paths, captions)):
                    array = np.asarray(Image.open(path).convert("RGB"))
                    writer.add_image(f"{key}/{i:02d}_{Path(path).stem}", array, step, dataformats="HWC")
                    writer.add_text(f"{key}/{i:02d}_{Path(path).stem}/caption", caption, step)
                taken += 1
        except Exception as error:  # a tracker problem must not lose the run
            log.warning("could not log images to %s: %s", type(logger).__name__, error)
    return taken


def log_table(
    loggers: Sequence[Any],
    key: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    markdown: str,
    step: int = 0,
) -> int:
    """Log a table: ``wandb.Table`` to W&B, ``markdown`` text to TensorBoard; returns the count."""
    taken = 0
    for logger in loggers:
        try:
            if _has(logger, "log_table"):
                logger.log_table(key=key, columns=list(columns), data=[list(r) for r in rows], step=step)
                taken += 1
            elif (writer := _board(logger)) is not None:
                writer.add_text(key, markdown, step)
                taken += 1
        except Exception as error:
            log.warning("could not log table %r to %s: %s", key, type(logger).__name__, error)
    return taken


def log_metrics_table(loggers: Sequence[Any], metrics: dict[str, Any], run_dir: str | Path, step: int = 0) -> int:
    """Log a run's final metrics as a one-row results table (key ``results``)."""
    from fapm.reporting.runs import read_run_metrics
    from fapm.reporting.table import run_table, to_markdown

    table = run_table(read_run_metrics(run_dir, metrics))
    columns = [c.header for c in table.columns]
    rows = [[row.get(c.key) for c in table.columns] for row in table.rows]
    return log_table(loggers, "results", columns, rows, to_markdown(table), step)


def close_loggers(loggers: Sequence[Any], failed: bool = False) -> None:
    """Flush every logger and finish W&B runs (exit code 1 when the run failed)."""
    for logger in loggers:
        try:
            logger.finalize("failed" if failed else "success")
            if _has(logger, "log_table"):
                finish = getattr(logger.experiment, "finish", None)
                if callable(finish):
                    finish(exit_code=1 if failed else 0)
        except Exception as error:
            log.warning("could not close %s: %s", type(logger).__name__, error)
