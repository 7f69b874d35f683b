"""What the command line prints: one line per log event, no known-harmless framework noise.

Used by the entry points (:mod:`fapm.cli`, hence ``fapm ...`` and ``python train.py``) inside
the Hydra task, after Hydra has configured logging (``conf/hydra/default.yaml``: a console and
a ``<task>.log`` file handler on the root logger). Nothing here runs on ``import fapm``: a
library user's logging and warnings are theirs.

What :func:`session` does, and why:

* **One handler.** ``import lightning`` attaches its own console handler to the ``lightning``
  logger *and* lets records propagate to the root logger, where Hydra's handler prints them
  again: every Lightning INFO line appeared twice. Lightning is imported inside the task, i.e.
  after Hydra configured logging, so this cannot be fixed in the logging YAML; the session
  removes Lightning's handlers and lets the records propagate to Hydra's handlers (console
  and the run's log file), then restores them.
* **Warnings as log lines.** ``warnings.warn`` output becomes one WARNING line naming the
  file that raised it (``fapm/models/features.py:233``), and it reaches the log file.
* **Known-harmless noise silenced**, each by its exact text (:data:`HARMLESS_WARNINGS`,
  :data:`HARMLESS_LOG_MESSAGES`), nothing broader.
* **Runtime settings** applied before any work: ``runtime.threads`` (:func:`apply_runtime`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Loggers that Lightning gives their own console handler (``lightning`` always,
#: ``lightning.pytorch``/``lightning.fabric`` when imported before logging was configured).
LIGHTNING_LOGGERS: tuple[str, ...] = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "lightning_fabric",
)

#: ``(message regex, category, why it is harmless here)`` of framework warnings we silence.
HARMLESS_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (
        r"`LightningModule.configure_optimizers` returned `None`",
        UserWarning,
        "memory-bank models are fitted without gradients: one epoch of feature collection, no optimiser",
    ),
    (
        r"Found \d+ module\(s\) in eval mode at the start of training",
        UserWarning,  # lightning's PossibleUserWarning subclasses UserWarning
        "the backbone is frozen and kept in eval mode on purpose (BatchNorm statistics must not change)",
    ),
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        "torch >= 2.10 deprecates LeafSpec; raised inside lightning's own _pytree helper, nothing to change here",
    ),
)

#: ``(logger name, message regex, why)`` of framework INFO lines we drop.
HARMLESS_LOG_MESSAGES: tuple[tuple[str, str, str], ...] = (
    (
        "lightning.pytorch.utilities.rank_zero",
        r"Tip: For seamless cloud logging and experiment tracking, try installing \[litlogger\]",
        "an advertisement printed by every Trainer without a LitLogger; our loggers are configured in conf/logger",
    ),
)

#: Where Python warnings are logged (the name ``logging.captureWarnings`` uses).
WARNINGS_LOGGER = "py.warnings"


class _DropMessages(logging.Filter):
    """Drop records whose message matches one of ``patterns``."""

    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


def short_path(filename: str) -> str:
    """``.../site-packages/fapm/models/x.py`` → ``fapm/models/x.py`` (also for a source checkout)."""
    parts = Path(filename).parts
    for anchor in ("site-packages", "dist-packages", "src"):
        if anchor in parts:
            index = len(parts) - 1 - parts[::-1].index(anchor)
            if index + 1 < len(parts):
                return "/".join(parts[index + 1 :])
    return filename


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` replacement: one WARNING line, attributed to the raising file."""
    text = " ".join(str(message).split())  # one line, whatever the warning's layout
    logging.getLogger(WARNINGS_LOGGER).warning("%s [%s at %s:%d]", text, category.__name__, short_path(filename), lineno)


def silence_known_noise() -> None:
    """Ignore exactly the warnings of :data:`HARMLESS_WARNINGS` (for the current warnings context)."""
    for pattern, category, _why in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)


@contextlib.contextmanager
def _log_filters() -> Iterator[None]:
    added: list[tuple[logging.Logger, logging.Filter]] = []
    by_logger: dict[str, list[str]] = {}
    for name, pattern, _why in HARMLESS_LOG_MESSAGES:
        by_logger.setdefault(name, []).append(pattern)
    for name, patterns in by_logger.items():
        logger = logging.getLogger(name)
        drop = _DropMessages(patterns)
        logger.addFilter(drop)
        added.append((logger, drop))
    try:
        yield
    finally:
        for logger, drop in added:
            logger.removeFilter(drop)


@contextlib.contextmanager
def _one_handler() -> Iterator[None]:
    """Route Lightning's records to the root logger's handlers only (see the module docstring)."""
    import lightning  # noqa: F401 - attach Lightning's handlers now, so that they can be taken off

    root = logging.getLogger()
    if not root.handlers:  # not under Hydra's logging: keep Lightning's own console output
        yield
        return
    saved: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    try:
        yield
    finally:
        for logger, handlers, propagate in saved:
            for handler in handlers:
                logger.addHandler(handler)
            logger.propagate = propagate


def apply_runtime(runtime: Mapping[str, Any] | None) -> None:
    """Apply the ``runtime`` config node before any work.

    ``runtime.threads``: ``null`` keeps torch's default (one thread per core); ``n >= 1`` sets
    torch's intra-op threads and, when still possible in this process, its inter-op threads.
    On a machine shared with other jobs fewer threads than cores is often faster.
    """
    threads = (runtime or {}).get("threads")
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        from fapm.errors import FapmError

        raise FapmError(f"runtime.threads must be null or an integer >= 1, got {threads!r}",
                        hint="e.g. runtime.threads=2")
    import torch

    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # only settable once, before inter-op work (e.g. a later multirun job)
            log.debug("inter-op threads stay at %d (already in use)", torch.get_num_interop_threads())
    log.info("runtime.threads=%d (torch intra-op %d, inter-op %d)", threads, torch.get_num_threads(),
             torch.get_num_interop_threads())


@contextlib.contextmanager
def session(runtime: Mapping[str, Any] | None = None) -> Iterator[None]:
    """The console set-up of one entry-point task (restored on exit; safe to nest in tests)."""
    with warnings.catch_warnings(), _log_filters(), _one_handler():
        silence_known_noise()
        warnings.showwarning = _log_warning
        apply_runtime(runtime)
        yield
    sys.stdout.flush()
