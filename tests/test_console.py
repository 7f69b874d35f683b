"""What a run prints: each log event once, no silenced framework noise, our warnings attributed
to our code, the summary last; a known error as one line and a hint, the traceback on request."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from fapm import cli, console
from tests.conftest import tiny_train_overrides

#: Texts of the framework messages fapm.console silences (each must never reach the console).
SILENCED = ("litlogger", "configure_optimizers", "LeafSpec", "in eval mode at the start of training")


@pytest.fixture(scope="module")
def console_run(obvious_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, int]:
    """``fapm train`` on tiny data in a subprocess; stdout and stderr merged as a terminal shows them."""
    work = tmp_path_factory.mktemp("console")
    env = {**os.environ, "FAPM_ROOT": str(work)}
    env.pop("HYDRA_FULL_ERROR", None)
    overrides = [*tiny_train_overrides(obvious_root), "logger=none", "save_model=false",
                 "callbacks=default", "callbacks.visualizer.num_images=1", "callbacks.visualizer.memory=false"]
    done = subprocess.run([sys.executable, "-m", "fapm.cli", "train", *overrides], cwd=work, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    (run,) = (work / "logs" / "train" / "runs").iterdir()
    return done.stdout, run, done.returncode


def lines_of(text: str) -> list[str]:
    """Printed lines, progress-bar redraws (carriage returns) split off, blank ones dropped."""
    return [line.rstrip() for line in re.split(r"[\r\n]", text) if line.strip()]


def test_each_lightning_line_once_and_no_silenced_noise(console_run: tuple[str, Path, int]) -> None:
    output, run, code = console_run
    assert code == 0, output[-3000:]
    lines = lines_of(output)
    for event in ("GPU available:", "`Trainer.fit` stopped"):
        assert sum(event in line for line in lines) == 1, (event, [line for line in lines if event in line])
    for text in SILENCED:
        assert text not in output, text
    # The run's log file still holds every event (the console handler is not the only record).
    log_file = (run / "train.log").read_text()
    for event in ("GPU available:", "`Trainer.fit` stopped", "memory layer2", "RANDOM weights"):
        assert event in log_file, event


def test_our_warning_is_attributed_to_our_code(console_run: tuple[str, Path, int]) -> None:
    output, _, _ = console_run
    # (the summary repeats it at the end, as a "!! WARNING" block of its own)
    (line,) = [line for line in lines_of(output) if "RANDOM weights" in line and "UserWarning" in line]
    assert "fapm/models/features.py" in line
    assert "hydra" not in line and "_instantiate" not in output


def test_the_summary_is_the_last_thing_printed(console_run: tuple[str, Path, int]) -> None:
    output, _, _ = console_run
    lines = lines_of(output)
    start = max(i for i, line in enumerate(lines) if line.startswith("==== train fapm on plate"))
    assert re.fullmatch(r"=+", lines[-1]), lines[-3:]
    assert all(line.startswith("  ") for line in lines[start + 1 : -1]), lines[start:]


def test_a_known_error_is_one_line_and_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    args = ["eval", f"ckpt_path={tmp_path / 'no_such' / 'model.safetensors'}", f"paths.log_dir={tmp_path}"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert errors == [f"fapm eval: error: model file not found: {tmp_path / 'no_such' / 'model.safetensors'}"]
    assert "hint:" in err and "Traceback" not in err

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ModelFileError: model file not found" in err
    monkeypatch.delenv("HYDRA_FULL_ERROR")
    assert cli.main([*args, "--verbose"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_wrong_override_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "model=no_such_model", f"paths.log_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "Could not find 'model/no_such_model'" in err and "patchcore" in err  # the options are listed
    assert "Traceback" not in err and "Config search path" not in err


def test_session_logs_warnings_as_one_line_and_restores_everything(caplog: pytest.LogCaptureFixture) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler()  # a root handler, as Hydra's logging set-up leaves one
    root.addHandler(handler)
    lightning_logger = logging.getLogger("lightning")
    before = (list(lightning_logger.handlers), lightning_logger.propagate, warnings.showwarning)
    try:
        with caplog.at_level(logging.WARNING, logger=console.WARNINGS_LOGGER), console.session():
            assert lightning_logger.handlers == [] and lightning_logger.propagate
            warnings.warn("first line\n  second line", UserWarning, stacklevel=1)
            warnings.warn("`LightningModule.configure_optimizers` returned `None`, this fit ...", UserWarning)
    finally:
        root.removeHandler(handler)
    messages = [r.getMessage() for r in caplog.records if r.name == console.WARNINGS_LOGGER]
    assert messages == [f"first line second line [UserWarning at {console.short_path(__file__)}:{_line_of('first line')}]"]
    assert (list(lightning_logger.handlers), lightning_logger.propagate, warnings.showwarning) == before


def _line_of(text: str) -> int:
    source = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(source, 1) if f'warnings.warn("{text}' in line)


def test_runtime_threads_sets_torch_threads() -> None:
    code = ("from fapm.console import apply_runtime; import torch; apply_runtime({'threads': 1}); "
            "print(torch.get_num_threads(), torch.get_num_interop_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "1"]
    from fapm.errors import FapmError

    for bad in (0, -2, "2", True):
        with pytest.raises(FapmError, match="runtime.threads"):
            console.apply_runtime({"threads": bad})
    console.apply_runtime({"threads": None})  # torch's default: nothing to do
