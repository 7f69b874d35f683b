"""Run folders: what a finished (or failed) run leaves behind, and how to find and read them.

A run folder is a Hydra output folder (single run or one job of a multirun) holding
``metrics.json`` (written by :func:`fapm.pipeline.train.train`, ``"status": "ok"`` or
``"failed"`` with ``"error"``) and ``.hydra/config.yaml``. A folder with a config but no
``metrics.json`` is a job that crashed hard or was killed (or is still running): it is
read as failed too, so that a sweep's table never silently loses a job.

Every launcher leaves the same layout, so a sweep reads the same whichever ran it: the
basic, joblib and submitit launchers and the Optuna sweeper all write ``<sweep>/<job
number>/`` plus files and dot-folders of their own in ``<sweep>`` (``multirun.yaml``;
``.submitit/<job id>/`` with the job's stdout/stderr; ``optimization_results.yaml``).
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fapm.errors import FapmError
from fapm.metrics import names

#: Name of the metrics file in a run folder (the pipeline writes it under this name).
METRICS_FILE = "metrics.json"
#: Hydra's copy of the job's composed config, relative to the run folder.
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
#: Hydra's own settings of the job (job id, sweep folder), relative to the run folder.
HYDRA_SETTINGS = Path(".hydra") / "hydra.yaml"
#: The job's command-line overrides (a multirun's swept values among them), relative to the run folder.
HYDRA_OVERRIDES = Path(".hydra") / "overrides.yaml"
#: Folder of submitit's job files in a sweep folder (hydra/launcher=submitit_*).
SUBMITIT_DIR = ".submitit"

STATUS_KEY = "status"
ERROR_KEY = "error"
STATUS_OK = "ok"
STATUS_FAILED = "failed"

_GLOB_CHARS = re.compile(r"[*?\[]")

#: Keys of ``metrics.json`` a sweeper may optimise (``optimized_metric``); the image metrics
#: also per defect type (``image_auroc/<defect type>``).
OPTIMIZABLE_METRICS: tuple[str, ...] = (
    names.IMAGE_AUROC,
    names.IMAGE_F1_MAX,
    names.PIXEL_AUROC,
    names.PIXEL_AUPRO,
    names.PIXEL_F1_MAX,
    names.FPS,
    names.LATENCY_MS,
    "fit_seconds",
    "memory_vectors",
)

log = logging.getLogger(__name__)


@dataclass
class RunRecord:
    """One run as the report sees it.

    Attributes:
        path: the run folder.
        metrics: the content of ``metrics.json`` (or facts read from the Hydra config).
        status: ``ok`` or ``failed``.
        error: ``"<Type>: <message>"`` for failed runs.
        overrides: the job's command-line overrides, ``key -> value`` as typed
            (``.hydra/overrides.yaml``; empty when the folder has none).
    """

    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = STATUS_OK
    error: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)

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


def error_chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised while handling, first raised first.

    Only implicit chaining is followed ("during handling of the above exception, another
    exception occurred"): a clean-up step that fails while handling the real error, as
    Lightning's loop teardown does after some fit errors, must not hide it. An explicit
    ``raise ... from`` is the author's chosen message and ends the chain.
    """
    chain = [error]
    while (
        chain[-1].__cause__ is None
        and not chain[-1].__suppress_context__
        and chain[-1].__context__ is not None
        and all(chain[-1].__context__ is not e for e in chain)
        and len(chain) < 5
    ):
        chain.append(chain[-1].__context__)
    return chain[::-1]


def _one_error(error: BaseException) -> str:
    message = str(error).strip()
    if len(message) > 500:
        message = message[:500] + "…"
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def describe_error(error: BaseException) -> str:
    """``"<Type>: <message>"`` (the message's first 500 characters).

    An error raised while handling another names the first one too:
    ``"<first>; then, while handling it, <error>"``.
    """
    first, *later = error_chain(error)
    return "; then, while handling it, ".join([_one_error(first)] + [_one_error(e) for e in later])


def failure_metrics(error: BaseException, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``metrics.json`` content of a run that raised ``error``.

    ``traceback`` holds the last frames of every exception of :func:`error_chain`.
    """
    record: dict[str, Any] = dict(facts or {})
    record[STATUS_KEY] = STATUS_FAILED
    record[ERROR_KEY] = describe_error(error)
    record["traceback"] = "\n".join(
        "".join(traceback.format_exception(type(e), e, e.__traceback__, chain=False)[-6:]) for e in error_chain(error)
    )
    return record


def check_optimized_metric(name: str | None) -> None:
    """Raise :class:`~fapm.settings.ConfigError` naming the ``optimized_metric`` key unless ``name`` is optimisable.

    Called before a run starts, so that a misspelt name fails at once rather than after the
    whole fit. ``None`` (nothing to optimise) is accepted.
    """
    if name is None:
        return
    metric, defect_type = names.split_per_defect(str(name))
    if metric in OPTIMIZABLE_METRICS and (defect_type is None or metric in names.IMAGE_METRICS):
        return
    from fapm.settings import ConfigError

    raise ConfigError([
        f"optimized_metric: unknown metric {name!r}; choose from {list(OPTIMIZABLE_METRICS)} "
        f"or '<image metric>/<defect type>' (e.g. {names.per_defect(names.IMAGE_AUROC, 'crack')!r}), or null"
    ])


def optimized_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The value a Hydra sweeper optimises: ``metrics[name]`` as a float.

    ``None`` when ``name`` is None or the metric is missing, null or not finite (e.g. a test
    set without defects has no AUROC): Optuna then records the trial as failed instead of
    handing NaN to its sampler, and the search goes on.
    """
    if name is None:
        return None
    value = metrics.get(str(name))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        log.warning("optimized_metric %r is %r in this run: nothing returned to the sweeper", name, value)
        return None
    return float(value)


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


class RunsNotFound(FapmError, FileNotFoundError):
    """A run folder (or pattern) given to the report that does not exist."""

    hint = "give run or multirun folders, metrics.json files or a quoted glob (e.g. logs/train/multiruns/*)"


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
            raise RunsNotFound(f"no path matches {text!r}")
        for match in matches:
            path = Path(match).expanduser()
            if not path.exists():
                raise RunsNotFound(f"run folder not found: {path}")
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


def launcher_log(path: str | Path) -> Path | None:
    """The stderr log a submitit launcher kept for the job of run folder ``path``, if any.

    submitit writes ``<sweep>/.submitit/<job id>/<job id>_<task>_log.err``, the job id being
    Hydra's ``hydra.job.id`` (``.hydra/hydra.yaml``); it is where a job killed from outside
    (time limit, out of memory) leaves its last words. ``None`` for other launchers.
    """
    path = Path(path)
    if not (path.parent / SUBMITIT_DIR).is_dir() or not (path / HYDRA_SETTINGS).is_file():
        return None
    try:
        job_id = OmegaConf.select(OmegaConf.load(path / HYDRA_SETTINGS), "hydra.job.id", default=None)
    except Exception:  # an unreadable or unresolvable file: no hint, the run is still reported
        return None
    if job_id is None:
        return None
    logs = sorted((path.parent / SUBMITIT_DIR / str(job_id)).glob(f"{job_id}_*_log.err"))
    return logs[0] if logs else None


def _last_line(path: Path, limit: int = 300) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 8192))
            lines = [ln.strip() for ln in handle.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:limit] if lines else ""


def _missing_metrics_error(path: Path) -> str:
    message = f"no {METRICS_FILE}: the job crashed, was killed or is still running"
    log = launcher_log(path)
    if log is None:
        return message + " (see the log in its folder)"
    last = _last_line(log)
    return message + f" (launcher log {log}" + (f", last line: {last})" if last else ")")


def read_overrides(path: str | Path) -> dict[str, str]:
    """``key -> value`` of the job's ``.hydra/overrides.yaml`` (``+``/``~`` prefixes dropped).

    Empty when the file is missing or unreadable: overrides only label rows.
    """
    file = Path(path) / HYDRA_OVERRIDES
    if not file.is_file():
        return {}
    try:
        lines = OmegaConf.to_container(OmegaConf.load(file))
    except Exception:
        return {}
    out: dict[str, str] = {}
    for line in lines if isinstance(lines, list) else []:
        key, sep, value = str(line).partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def read_run(path: str | Path) -> RunRecord:
    """Read one run folder (see the module docstring for how failures are recognised)."""
    path = Path(path)
    overrides = read_overrides(path)
    metrics_path = path / METRICS_FILE
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
            if not isinstance(metrics, dict):
                raise ValueError(f"expected a JSON object, got a {type(metrics).__name__}")
        except (OSError, ValueError) as error:
            record = RunRecord(path, {}, STATUS_FAILED, f"unreadable {METRICS_FILE}: {describe_error(error)}")
        else:
            record = read_run_metrics(path, metrics)
        record.overrides = overrides
        return record
    facts: dict[str, Any] = {}
    if (path / HYDRA_CONFIG).is_file():
        facts = config_facts(OmegaConf.load(path / HYDRA_CONFIG))
    return RunRecord(path, facts, STATUS_FAILED, _missing_metrics_error(path), overrides)


def collect_runs(paths: Iterable[str | Path]) -> list[RunRecord]:
    """:func:`read_run` of every run folder :func:`find_run_dirs` finds."""
    return [read_run(p) for p in find_run_dirs(paths)]
