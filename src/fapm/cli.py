"""The ``fapm`` command: ``fapm train|eval|predict|report|export ...``.

``train``, ``eval`` and ``predict`` are Hydra applications on the packaged configs
(``fapm.conf``): everything after the command is passed to Hydra unchanged (``key=value``
overrides, ``-m`` for a multirun, ``--cfg job``, ``--help``). ``export`` takes ``key=value``
arguments too (:data:`EXPORT_KEYS`); ``report`` is a plain ``argparse`` command.
``python train.py`` / ``eval.py`` / ``predict.py`` / ``report.py`` call :func:`main` with the
same arguments.

Errors (see :mod:`fapm.errors`): a user error (bad path, data, weights file, config value)
prints ``error: <message>`` and a ``hint:`` line and exits with status 1; a wrong override or
a missing required value exits with status 2; the traceback is shown only with ``--verbose``
or ``HYDRA_FULL_ERROR=1``. Any other exception is a bug and keeps its traceback. In a
multirun every job still runs: a failing job is recorded as failed in its ``metrics.json``
and the sweep reports the first failure at the end.

Where runs go: ``paths.root_dir`` is ``$FAPM_ROOT`` when set; the ``fapm`` command sets it to
the current directory (``./data``, ``./logs``), ``python train.py`` to the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from hydra.experimental.callback import Callback

from fapm.errors import UsageError, exit_code_for, find_user_error, hint_for

PROG = "fapm"

#: Hydra commands: name → (config name in fapm.conf, one-line description).
HYDRA_COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "fit a detector on a dataset, test it, save model.safetensors and metrics.json"),
    "eval": ("eval", "test a saved model.safetensors on a dataset (by default the one it was fitted on)"),
    "predict": ("predict", "score an image, a folder or a glob with a saved model.safetensors"),
}
OTHER_COMMANDS: dict[str, str] = {
    "report": "result tables (Markdown + CSV) from run or multirun folders",
    "export": "write a deployable file (TorchScript, ONNX, OpenVINO) of a model.safetensors: model=<file> format=...",
}

#: Export formats the command accepts: name → default file suffix (next to the model file).
EXPORT_FORMATS: dict[str, str] = {"torchscript": ".torchscript.pt", "onnx": ".onnx", "openvino": ".xml"}


def _exporter(fmt: str) -> Callable[[Any, Path, str], Path]:
    def export(model: Any, out: Path, precision: str) -> Path:
        return model.export(out, format=fmt, precision=precision)

    return export


#: The implemented ones: name → ``exporter(loaded FAPM model, output path, precision) -> written path``.
EXPORTERS: dict[str, Callable[[Any, Path, str], Path]] = {name: _exporter(name) for name in EXPORT_FORMATS}

VERBOSE_FLAG = "--verbose"
CONFIG_SOURCE = "pkg://fapm.conf"

EPILOG = """\
examples:
  fapm train                                        FAPM on the built-in demo (generated on first use)
  fapm train model=patchcore data.category=weave    any config key: key=value
  fapm train -m data.category=bracket,weave         a multirun: one job per value
  fapm train data=mvtec data.root=/data/mvtec data.category=screw
  fapm eval ckpt_path=logs/train/runs/<time>/model.safetensors
  fapm predict ckpt_path=logs/train/runs/<time>/model.safetensors input=<image|folder|glob>
  fapm report logs/train/multiruns/<time>
  fapm export model=logs/train/runs/<time>/model.safetensors format=onnx

`fapm <command> --help` shows a command's options (and config groups for train/eval/predict).
Runs go to ./logs and the demo data to ./data (set FAPM_ROOT to use another folder).
"""


# ----------------------------------------------------------------------------------- tasks
class RecordSweep(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): remembers the multirun folder.

    Called in the launching process whatever the launcher (local, joblib, submitit), so that
    the final error message of a sweep can count its failed jobs.
    """

    sweep_dir: ClassVar[Path | None] = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        RecordSweep.sweep_dir = Path(config.hydra.sweep.dir)


def _check_sweep_mode() -> None:
    """Refuse a sweep config (``experiment=mvtec_all``) run without ``-m``.

    Without ``-m`` Hydra ignores ``hydra.sweeper.params`` and would silently run only the
    first value. A swept key that is also given on the command line is fine (one job).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.RUN:
        return
    params = hydra_cfg.sweeper.get("params") or {}
    given = {override.split("=", 1)[0].lstrip("+~") for override in hydra_cfg.overrides.task}
    missing = [key for key in params if key not in given]
    if missing:
        swept = ", ".join(f"{key}={params[key]}" for key in missing)
        args = " ".join(hydra_cfg.overrides.task)
        raise UsageError(
            f"this config sweeps {swept} (hydra.sweeper.params), which only runs as a multirun",
            hint=f"add -m to run every job: fapm {hydra_cfg.job.name} -m {args}; "
            f"or pick one value, e.g. {missing[0]}=<value>",
        )


def _train_task(cfg: Any) -> Any:
    from fapm.pipeline.train import train

    from fapm.reporting.runs import optimized_value

    metrics = train(cfg)  # checks optimized_metric before any work
    # The value a Hydra sweeper optimises (hparams_search=fapm_optuna).
    return optimized_value(metrics, cfg.get("optimized_metric"))


def _eval_task(cfg: Any) -> Any:
    from fapm.pipeline.evaluate import evaluate

    return evaluate(cfg).get("image_auroc")


def _predict_task(cfg: Any) -> Any:
    from fapm.pipeline.predict import predict

    return predict(cfg)


TASKS: dict[str, Callable[[Any], Any]] = {"train": _train_task, "eval": _eval_task, "predict": _predict_task}


def _exit_code_of(command: str, result: Any) -> int:
    """``predict`` exits 1 when no image could be scored (docs/predict.md); others 0."""
    return int(getattr(result, "exit_code", 0) or 0) if command == "predict" else 0


# ----------------------------------------------------------------------------------- errors
def report_error(
    error: BaseException, command: str, verbose: bool, multirun: bool = False, sweep_dir: Path | None = None
) -> int:
    """Print ``error`` for the console; returns the exit status (1 user error, 2 usage, 1 bug).

    ``multirun``: the error is the first failed job of a sweep (in ``sweep_dir``, when known).
    """
    user = find_user_error(error)
    system = _os_error(error) if user is None else None
    if system is not None and not verbose:  # disk full, read-only or unreadable folder: the machine, not a bug
        print(f"{PROG} {command}: error: {_describe_os_error(system)}", file=sys.stderr)
        print(f"  hint: free disk space, or choose a folder you can write (paths.output_dir, data.root, out=) "
              f"(traceback: {VERBOSE_FLAG})", file=sys.stderr)
        return 1
    if user is None:  # a bug: everything that helps to find it
        traceback.print_exception(error)
        print(f"{PROG} {command}: unexpected error (a bug? please report it with the traceback above)",
              file=sys.stderr)
        return 1
    # predict: 1 means "no image could be scored", so a run that could not start exits 2
    code = 2 if command == "predict" else exit_code_for(user)
    if verbose:
        traceback.print_exception(error)
        return code
    message = _clean_message(user)
    hint = hint_for(user).replace("<command>", command)
    if command == "eval" and "use +data." in message:
        # Hydra suggests +data.<key>=..., which fails too: eval has no data group unless one is chosen
        key = message.split("use +data.", 1)[1].split("=", 1)[0].split()[0]
        message = (f"data.{key}: eval uses the model's own dataset settings unless a data group is chosen, "
                   "so there is no data.* key to override")
        hint = ("to test another category: category=<name>; another dataset folder: data_root=<folder>; "
                f"or choose a layout: data=mvtec data.root=<folder> data.{key}=<value>")
    where = f"{PROG} {command}" + (f" -m ({_sweep_outcome(sweep_dir)})" if multirun else "")
    print(f"{where}: error: {message}", file=sys.stderr)
    print(f"  hint: {hint + ' ' if hint else ''}(traceback: {VERBOSE_FLAG})", file=sys.stderr)
    return code


def _os_error(error: BaseException) -> OSError | None:
    """The OS error (with an errno and a file name) behind ``error``, if any: ENOSPC, EROFS, EACCES..."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno and current.filename:
            return current
        current = current.__cause__ or current.__context__
    return None


def _describe_os_error(error: OSError) -> str:
    import errno

    name = errno.errorcode.get(error.errno or 0, "")
    where = error.filename if error.filename2 is None else f"{error.filename} -> {error.filename2}"
    reason = error.strerror or os.strerror(error.errno or 0)
    return f"cannot write or read {where}: {reason}" + (f" ({name})" if name else "")


def _sweep_outcome(sweep_dir: Path | None) -> str:
    """``"2 of 3 job(s) failed ..."`` from the sweep's metrics.json files (best effort)."""
    if sweep_dir is not None:
        try:
            from fapm.reporting import collect_runs

            runs = collect_runs([sweep_dir])
            failed = sum(not r.ok for r in runs)
            return f"{failed} of {len(runs)} job(s) failed, see `{PROG} report {sweep_dir}`; the first failure"
        except Exception:  # noqa: BLE001 - the error itself is reported either way
            pass
    return "a job failed, the others ran; each job's metrics.json has its status; the first failure"


#: Lines of Hydra/OmegaConf messages that describe their internals, not the user's mistake.
_INTERNAL_LINES = ("full_key:", "object_type=", "reference_type=", "Config search path:", "provider=")


def _clean_message(error: BaseException) -> str:
    """The error's message; for Hydra/OmegaConf errors without their internal detail lines."""
    from fapm.errors import config_error_types

    text = str(error).strip() or type(error).__name__
    if "\nOriginal Traceback (most recent call last):" in text:
        # re-raised by a DataLoader worker: the worker's traceback is in the message; keep its last line
        last = text.rstrip().splitlines()[-1]
        prefix = f"{type(error).__module__}.{type(error).__qualname__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last.split(": ", 1)[-1]
    cause = error.__cause__
    if isinstance(error, config_error_types()) and cause is not None and str(cause) not in text:
        text += f"\n{cause}"  # OmegaConf's reason behind a composition error ("Key 'x' is not in struct")
    if not isinstance(error, config_error_types()):
        return text
    kept = [line for line in text.splitlines() if not line.strip().startswith(_INTERNAL_LINES)]
    return "\n".join(kept).strip()


def _exit_status(code: object) -> int:
    """``SystemExit.code`` as an exit status (None → 0, a message → 1)."""
    return code if isinstance(code, int) else 0 if code is None else 1


def _guarded(
    command: str, run: Callable[[], int], verbose: bool, sweep_dir: Callable[[], Path | None] = lambda: None
) -> int:
    """``run()``'s exit status; an exception is reported (:func:`report_error`) instead of raised.

    ``sweep_dir()``: the multirun folder once a job of a sweep has started, else None.
    """
    from fapm import signals

    try:
        with signals.sigterm_as_interrupt():
            status = run()
    except SystemExit as done:  # --help, argparse usage errors: keep their status, return it
        if signals.received is not None:  # Lightning turns an interrupt into sys.exit(1)
            print(f"{PROG} {command}: interrupted ({signals.describe()})", file=sys.stderr)
            return signals.interrupt_status()
        return _exit_status(done.code)
    except KeyboardInterrupt as interrupt:
        print(f"{PROG} {command}: interrupted ({signals.describe(interrupt)})", file=sys.stderr)
        return 128 + getattr(interrupt, "signum", 2)
    except Exception as error:  # noqa: BLE001 - the command line's last stop: report and exit
        sweep = sweep_dir()
        return report_error(error, command, verbose, multirun=sweep is not None, sweep_dir=sweep)
    if signals.received is not None:  # a job caught the interrupt (a multirun records it and goes on)
        print(f"{PROG} {command}: interrupted ({signals.describe()})", file=sys.stderr)
        return signals.interrupt_status()
    return status


# ----------------------------------------------------------------------------------- hydra
def run_hydra(command: str, args: Sequence[str], verbose: bool = False) -> int:
    """Run a Hydra command (``train``/``eval``/``predict``) with ``args`` as its command line."""
    import hydra

    from fapm import console

    config_name, description = HYDRA_COMMANDS[command]
    task = TASKS[command]
    results: list[Any] = []
    RecordSweep.sweep_dir = None

    failures: list[Exception] = []

    def task_function(cfg: Any) -> Any:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from fapm.runlock import raise_if_refused

        try:
            raise_if_refused()  # another run is writing into this run folder
            with console.session(cfg.get("runtime")), _relaunchable(command):
                _check_sweep_mode()
                result = task(cfg)
        except Exception as error:
            if HydraConfig.get().mode != RunMode.RUN:
                raise  # a multirun job: the launcher records the failure and goes on
            # a single run: re-raised after Hydra returns, so that the error is reported once
            # (Hydra would first print its own "Error executing job with overrides" line)
            failures.append(error)
            return None
        results.append(result)
        return result

    task_function.__module__ = f"fapm.{command}"  # Hydra names the job after it (hydra.job.name)
    app = hydra.main(version_base="1.3", config_path=CONFIG_SOURCE, config_name=config_name)(task_function)
    if any(a in ("-h", "--help") for a in args):
        print(f"{PROG} {command}: {description}\n")
        print(keys_help(config_name) + "\n")

    def run() -> int:
        saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
        sys.argv = [f"{PROG} {command}", *args]
        # Hydra then raises instead of printing its own traceback and exiting; report_error decides.
        os.environ["HYDRA_FULL_ERROR"] = "1"
        from fapm.runlock import release_all

        try:
            app()
        finally:
            release_all()  # an in-process caller (tests, notebooks) may run again into the folder
            sys.argv = saved_argv
            if saved_env is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = saved_env
        if failures:
            raise failures[0]
        return max((_exit_code_of(command, r) for r in results), default=0)

    # A multirun raises the first failed job's error once every job has run.
    return _guarded(command, run, verbose, lambda: RecordSweep.sweep_dir)


@contextlib.contextmanager
def _relaunchable(command: str) -> Iterator[None]:
    """Let Lightning's DDP launcher start the other ranks with this same command.

    Lightning re-runs the main module (``python -m <__main__.__spec__.name> <argv[1:]>``, or the
    file ``argv[0]`` when the main module has no spec) plus its own Hydra overrides. Hydra has
    parsed the command line by now, so for the launch the main module is presented as
    ``fapm.__main__`` and ``sys.argv`` as ``fapm <command> ...``: every rank runs ``python -m
    fapm.__main__ <command> ...`` whichever way this process was started (``fapm``, ``python -m
    fapm``, ``python train.py``). Never a file inside the package: run as a script, its folder
    would come first on ``sys.path`` and ``fapm/lightning`` would shadow Lightning itself.
    """
    import __main__

    saved_argv, saved_spec = sys.argv, getattr(__main__, "__spec__", None)
    sys.argv = ["fapm", command, *saved_argv[1:]]
    __main__.__spec__ = importlib.util.find_spec("fapm.__main__")
    try:
        yield
    finally:
        sys.argv = saved_argv
        __main__.__spec__ = saved_spec


def keys_help(config_name: str) -> str:
    """Every key of ``<config_name>.yaml`` as composed by default, grouped (for ``--help``)."""
    import textwrap

    from omegaconf import OmegaConf

    from fapm.conf import compose

    def flat(node: Any, prefix: str) -> list[str]:
        if isinstance(node, dict) and node:
            return [k for key, value in node.items() for k in flat(value, f"{prefix}.{key}")]
        return [prefix]

    cfg = OmegaConf.to_container(compose([], config_name), resolve=False)
    lines = ["== Keys (override any: key=value; `--cfg job` shows their values) =="]
    for group, node in cfg.items():  # type: ignore[union-attr]
        keys = " ".join(flat(node, str(group)))
        lines.append(textwrap.fill(keys, width=110, initial_indent="  ", subsequent_indent="    "))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- report
#: ``fapm report``'s keys (``key=value``, as every command): name → (default, help).
REPORT_KEYS: dict[str, tuple[Any, str]] = {
    "runs": ([], "multirun folder(s), run folder(s), metrics.json files or globs, comma-separated "
                 "(bare paths are runs too: fapm report logs/train/multiruns/<time>)"),
    "by": ("auto", "table rows: category (paper Table 1), model (Table 2), both; auto = from what varies"),
    "out": (None, "folder for report.md and the CSV files (default: the first run path)"),
}
REPORT_BY = ("auto", "category", "model", "both")


def report_help() -> str:
    width = max(map(len, REPORT_KEYS))
    return "\n".join([
        f"usage: {PROG} report [runs=]<path>[,<path>...] [by=auto|category|model|both] [out=DIR]",
        "",
        "Turn run folders into result tables: reads every job's metrics.json (jobs without one are reported as "
        "failed), prints the Markdown tables and writes report.md plus one .md/.csv per table into out. Exits "
        "with status 1 when some run failed.",
        "",
        "== Keys (key=value) ==",
        *(f"  {key:<{width}}  {text} (default: {default!r})" for key, (default, text) in REPORT_KEYS.items()),
    ])


def parse_report_args(argv: Sequence[str]) -> dict[str, Any]:
    """``fapm report``'s ``key=value`` arguments (bare paths are runs; ``--by``/``--out`` still read)."""
    values: dict[str, Any] = {key: (list(d) if isinstance(d, list) else d) for key, (d, _) in REPORT_KEYS.items()}
    tokens = list(argv)
    while tokens:
        token = tokens.pop(0)
        if token in ("--by", "--out") and tokens:  # the earlier flag spelling
            token = f"{token[2:]}={tokens.pop(0)}"
        key, sep, value = token.lstrip("-").partition("=") if token.startswith("--") else token.partition("=")
        if not sep:
            values["runs"].append(token)
        elif key not in REPORT_KEYS:
            raise UsageError(f"report: unknown key {key!r}", hint=f"keys: {', '.join(REPORT_KEYS)} (fapm report --help)")
        elif key == "runs":
            values["runs"] += [v for v in value.split(",") if v]
        else:
            values[key] = value
    if values["by"] not in REPORT_BY:
        raise UsageError(f"report: by={values['by']} is not one of {', '.join(REPORT_BY)}")
    if not values["runs"]:
        raise UsageError("report: no run folders given", hint="fapm report logs/train/multiruns/<time> [by=model]")
    return values


def report_main(argv: Sequence[str]) -> int:
    """``fapm report [runs=]<path>[,...] [by=...] [out=DIR]`` (also ``python report.py``)."""
    if any(a in ("-h", "--help") for a in argv):
        print(report_help())
        return 0
    args = parse_report_args(argv)

    from fapm.reporting import collect_runs, write_report
    from fapm.reporting.table import build_tables, to_markdown

    runs = collect_runs(args["runs"])
    if not runs:
        raise UsageError(f"report: no run folders (with metrics.json or .hydra/config.yaml) under {args['runs']}")
    first = Path(args["runs"][0])
    out = Path(args["out"]) if args["out"] else first if first.is_dir() else Path.cwd()
    for table in build_tables(runs, args["by"]).values():
        print(to_markdown(table))
    written = write_report(runs, out, args["by"])
    print(f"{len(runs)} run(s); wrote {', '.join(p.name for p in written)} to {out}")
    return 1 if any(not r.ok for r in runs) else 0


# ---------------------------------------------------------------------------------- export
#: ``fapm export`` keys: name → (default, one-line help). ``None`` = required.
EXPORT_KEYS: dict[str, tuple[str | None, str]] = {
    "model": (None, "the model.safetensors written by `fapm train` (required)"),
    "format": ("torchscript", f"file format: {' | '.join(EXPORT_FORMATS)}"),
    "out": ("", "output file; default: next to the model (model.torchscript.pt, model.onnx, model.xml). "
            "Its suffix must be the format's: .pt, .onnx, .xml"),
    "precision": ("fp32", "fp32 | int8 (onnx/openvino: NNCF-quantized backbone, memories rebuilt from its features "
                  "on the model's training images, thresholds re-decided on its held-out normal images)"),
    "device": ("cpu", "cpu | cuda | cuda:<n> | auto: the graph keeps the device it is exported on"),
    "overwrite": ("false", "true: replace an existing output file (never the model itself)"),
}
#: The suffix each format's output must have.
EXPORT_SUFFIXES: dict[str, tuple[str, ...]] = {"torchscript": (".pt",), "onnx": (".onnx",), "openvino": (".xml",)}


def export_help() -> str:
    width = max(map(len, EXPORT_KEYS)) + 1
    lines = [
        f"usage: {PROG} export model=<model.safetensors> [key=value ...]",
        "",
        "Write a deployable file of a model.safetensors's whole scoring path (normalisation, backbone, memory "
        "search, map and score): TorchScript runs with torch alone, ONNX with ONNX Runtime or OpenVINO, "
        "OpenVINO IR with OpenVINO (docs/predict.md). An existing file is never replaced unless overwrite=true, "
        "and the model itself never.",
        "",
        "keys:",
        *(f"  {name:<{width}} {text}" + (f" (default: {default})" if default else "")
          for name, (default, text) in EXPORT_KEYS.items()),
        "",
        "example:",
        f"  {PROG} export model=logs/train/runs/<time>/model.safetensors format=onnx out=m.onnx",
    ]
    return "\n".join(lines)


def parse_export_args(argv: Sequence[str]) -> dict[str, Any]:
    """``key=value`` arguments of ``fapm export`` → checked settings (nothing is read or written).

    Raises:
        UsageError: an unknown or repeated key, a missing model, a bad value, an output that
            would replace the model or an existing file, a suffix that is not the format's.
    """
    given: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UsageError(f"arguments are key=value, got {arg!r}",
                             hint=f"e.g. {PROG} export model={arg} ({PROG} export --help lists the keys)")
        key = key.strip().lstrip("+")
        if key not in EXPORT_KEYS:
            raise UsageError(f"unknown key {key!r} (keys: {', '.join(EXPORT_KEYS)})",
                             hint=f"{PROG} export --help lists the keys")
        if key in given:
            raise UsageError(f"{key}= given twice")
        given[key] = value.strip()
    values = {k: given.get(k, default) for k, (default, _) in EXPORT_KEYS.items()}
    if not values["model"]:
        raise UsageError("model= is required", hint=f"{PROG} export model=<model.safetensors>")
    fmt = values["format"]
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"format must be {', '.join(EXPORT_FORMATS)}; got {fmt!r}")
    if values["precision"] not in ("fp32", "int8"):
        raise UsageError(f"precision must be fp32 or int8; got {values['precision']!r}")
    if values["precision"] == "int8" and fmt == "torchscript":
        raise UsageError("precision=int8 needs format=onnx or format=openvino")
    overwrite = values["overwrite"].lower()
    if overwrite not in ("true", "false"):
        raise UsageError(f"overwrite must be true or false; got {values['overwrite']!r}")
    model = Path(values["model"])
    out = Path(values["out"]) if values["out"] else model.with_name(model.stem + EXPORT_FORMATS[fmt])
    if not out.name.endswith(EXPORT_SUFFIXES[fmt]):
        raise UsageError(
            f"format={fmt} writes a {' or '.join(EXPORT_SUFFIXES[fmt])} file, but out={out} has another suffix",
            hint=f"use out=<name>{EXPORT_SUFFIXES[fmt][0]}, or the format that suffix names",
        )
    return {"model": model, "format": fmt, "out": out, "precision": values["precision"],
            "device": values["device"], "overwrite": overwrite == "true"}


def export_outputs(out: Path, fmt: str) -> list[Path]:
    """Every file an export to ``out`` writes (the graph, OpenVINO's weights, the digest)."""
    from fapm.deploy.digest import sidecar

    files = [out, sidecar(out)]
    if fmt == "openvino":
        files.append(out.with_suffix(".bin"))
    return files


def check_export_target(model: Path, out: Path, fmt: str, overwrite: bool) -> None:
    """Refuse an output that is the model itself, or a file that exists (unless ``overwrite``)."""
    for target in export_outputs(out, fmt):
        if target.exists() and model.exists() and os.path.samefile(target, model):
            raise UsageError(f"out={out} would overwrite the model file {model} itself",
                             hint="choose another out=")
        if target.is_dir():
            raise UsageError(f"{target} is a folder", hint="out= names the file to write")
    existing = [t for t in export_outputs(out, fmt) if t.exists() or t.is_symlink()]
    if existing and not overwrite:
        raise UsageError(
            f"{', '.join(map(str, existing))} already exist(s); nothing was written",
            hint="set overwrite=true to replace it, or choose another out=",
        )


def export_main(argv: Sequence[str]) -> int:
    """``fapm export model=<model.safetensors> [format=...] [out=...] [precision=...] [device=...] [overwrite=...]``."""
    if any(a in ("-h", "--help") for a in argv):
        print(export_help())
        return 0
    args = parse_export_args(argv)
    model_path, fmt, out = args["model"], args["format"], args["out"]

    from fapm.inference.api import FAPM
    from fapm.inference.predict import PredictError, check_device
    from fapm.model_file import read_model_file

    try:
        device = check_device(args["device"])
    except PredictError as err:
        raise UsageError(f"{err}") from None
    check_export_target(model_path, out, fmt, args["overwrite"])
    read_model_file(model_path)  # one clear error for a bad model file, before the folder is made
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the folder of out={out}: {err.strerror or err}") from err
    written = EXPORTERS[fmt](FAPM.load(model_path, device=device), out, args["precision"])
    print(f"exported {model_path} -> {written} ({fmt}, {args['precision']})")
    return 0


# ------------------------------------------------------------------------------------ main
def _usage() -> str:
    width = max(map(len, [*HYDRA_COMMANDS, *OTHER_COMMANDS]))
    lines = [
        f"usage: {PROG} <command> [arguments] [{VERBOSE_FLAG}]",
        "",
        "FAPM (Fast Adaptive Patch Memory) anomaly detection, with PatchCore, the paper's ablations and LAMP.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {desc}" for name, (_, desc) in HYDRA_COMMANDS.items()),
        *(f"  {name:<{width}}  {desc}" for name, desc in OTHER_COMMANDS.items()),
        "",
        "options:",
        f"  {'-h, --help':<{width + 8}}  this message",
        f"  {'--version':<{width + 8}}  the installed version",
        f"  {VERBOSE_FLAG:<{width + 8}}  show the full traceback of an error (same as HYDRA_FULL_ERROR=1)",
        "",
        EPILOG,
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def _default_env(name: str, value: str) -> Iterator[None]:
    """``os.environ[name]`` defaults to ``value`` inside the block (for in-process callers)."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fapm`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = VERBOSE_FLAG in args or os.environ.get("HYDRA_FULL_ERROR") == "1"
    args = [a for a in args if a != VERBOSE_FLAG]
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from fapm import __version__

        print(f"{PROG} {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command in (*HYDRA_COMMANDS, *OTHER_COMMANDS):
        # The installed command works in the current directory unless FAPM_ROOT says otherwise
        # (python train.py sets FAPM_ROOT to the repository root before calling main).
        with _default_env("FAPM_ROOT", os.getcwd()):
            if command in HYDRA_COMMANDS:
                return run_hydra(command, rest, verbose)
            if command == "report":
                return _guarded(command, lambda: report_main(rest), verbose)
            return _guarded(command, lambda: export_main(rest), verbose)
    known = ", ".join([*HYDRA_COMMANDS, *OTHER_COMMANDS])
    print(f"{PROG}: unknown command {command!r} (choose from {known}; see `{PROG} --help`)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    # `python -m fapm.cli`: run the imported module's main, so that there is one RecordSweep
    # class (Hydra imports fapm.cli by name; this file is running as __main__).
    from fapm.cli import main as imported_main

    sys.exit(imported_main())
