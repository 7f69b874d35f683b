"""Run folders: what a finished (or failed) run leaves behind, and how to find and read them.

A run folder is a Hydra output folder (single run or one job of a multirun) holding
``metrics.json`` (written by :func:`fapm.pipeline.train.train`, ``"status": "ok"`` or
``"failed"`` with ``"error"``) and ``.hydra/config.yaml``. A folder with a config but no
``metrics.json`` is a job that crashed hard or was killed (or is still running): it is
read as failed too, so that a sweep's table never silently loses a job.
"""

from __future__ import annotations

import glob
import json
import os
import re
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: Name of the metrics file in a run folder (the pipeline writes it under this name).
METRICS_FILE = "metrics.json"
#: Hydra's copy of the job's composed config, relative to the run folder.
HYDRA_CONFIG = Path(".hydra") / "config.yaml"

STATUS_KEY = "status"
ERROR_KEY = "error"
STATUS_OK = "ok"
STATUS_FAILED = "failed"

_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass
class RunRecord:
    """One run as the report sees it.

    Attributes:
        path: the run folder.
        metrics: the content of ``metrics.json`` (or facts read from the Hydra config).
        status: ``ok`` or ``failed``.
        error: ``"<Type>: <message>"`` for failed runs.
    """

    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = STATUS_OK
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def category(self) -> str:
        """The run's category; the folder name for datasets without one (folder data)."""
        return str(self.metrics.get("category") or self.path.name)

    @property
    def model(self) -> str:
        return str(self.metrics.get("model") or "?")


def describe_error(error: BaseException) -> str:
    """``"<Type>: <message>"`` (the message's first 500 characters)."""
    message = str(error).strip()
    if len(message) > 500:
        message = message[:500] + "…"
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def failure_metrics(error: BaseException, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``metrics.json`` content of a run that raised ``error``."""
    record: dict[str, Any] = dict(facts or {})
    record[STATUS_KEY] = STATUS_FAILED
    record[ERROR_KEY] = describe_error(error)
    record["traceback"] = "".join(traceback.format_exception(type(error), error, error.__traceback__)[-6:])
    return record


def config_facts(cfg: DictConfig) -> dict[str, Any]:
    """Category and model name of a (possibly unresolvable) run config."""
    facts: dict[str, Any] = {}
    for key, path in (("category", "data.category"), ("model", "model.name")):
        try:
            value = OmegaConf.select(cfg, path, default=None)
        except Exception:  # an interpolation that cannot be resolved outside the run
            value = None
        if value is not None:
            facts[key] = str(value)
    return facts


def is_run_dir(path: Path) -> bool:
    return (path / METRICS_FILE).is_file() or (path / HYDRA_CONFIG).is_file()


def _natural_key(path: Path) -> list[Any]:
    """Sort ``2_x`` before ``10_x`` (Hydra numbers its jobs without padding)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _walk_runs(root: Path) -> list[Path]:
    found: list[Path] = []
    for current, dirs, _ in os.walk(root):
        here = Path(current)
        if is_run_dir(here):
            found.append(here)
            dirs[:] = []  # a run's own sub-folders (csv/, wandb/, figures/) hold no runs
        else:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
    return found


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders under ``paths``: run folders, multirun folders, ``metrics.json`` files or globs.

    Returns them de-duplicated, in natural order (Hydra job order) per argument.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for item in paths:
        text = str(item)
        matches = sorted(glob.glob(os.path.expanduser(text))) if _GLOB_CHARS.search(text) else [text]
        if not matches:
            raise FileNotFoundError(f"no path matches {text!r}")
        for match in matches:
            path = Path(match).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"run folder not found: {path}")
            if path.is_file():
                path = path.parent
            runs = [path] if is_run_dir(path) else sorted(_walk_runs(path), key=_natural_key)
            for run in runs:
                key = run.resolve()
                if key not in seen:
                    seen.add(key)
                    out.append(run)
    return out


def read_run_metrics(path: str | Path, metrics: dict[str, Any]) -> RunRecord:
    """A :class:`RunRecord` from metrics already in memory (as :func:`read_run` reads them)."""
    status = str(metrics.get(STATUS_KEY, STATUS_OK))
    error = metrics.get(ERROR_KEY) if status != STATUS_OK else None
    return RunRecord(Path(path), dict(metrics), status, error)


def read_run(path: str | Path) -> RunRecord:
    """Read one run folder (see the module docstring for how failures are recognised)."""
    path = Path(path)
    metrics_path = path / METRICS_FILE
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, ValueError) as error:
            return RunRecord(path, {}, STATUS_FAILED, f"unreadable {METRICS_FILE}: {describe_error(error)}")
        return read_run_metrics(path, metrics)
    facts: dict[str, Any] = {}
    if (path / HYDRA_CONFIG).is_file():
        facts = config_facts(OmegaConf.load(path / HYDRA_CONFIG))
    return RunRecord(
        path,
        facts,
        STATUS_FAILED,
        f"no {METRICS_FILE}: the job crashed, was killed or is still running (see the log in its folder)",
    )


def collect_runs(paths: Iterable[str | Path]) -> list[RunRecord]:
    """:func:`read_run` of every run folder :func:`find_run_dirs` finds."""
    return [read_run(p) for p in find_run_dirs(paths)]
