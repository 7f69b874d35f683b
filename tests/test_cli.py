"""The ``fapm`` command: declared as a console script, ``--help``, a tiny train, export and report.

The installed ``fapm`` script is used when it is on PATH (CI: ``pip install -e ".[dev]"``),
else ``python -m fapm.cli`` (the same ``main``; e.g. a source checkout on PYTHONPATH).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fapm import cli
from tests.conftest import tiny_train_overrides

REPO = Path(__file__).resolve().parents[1]


def fapm_command() -> list[str]:
    script = shutil.which("fapm")
    return [script] if script else [sys.executable, "-m", "fapm.cli"]


def run_fapm(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FAPM_ROOT": str(cwd)}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([*fapm_command(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_console_script_runs_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    """The ``fapm`` script declared in pyproject.toml resolves to a function that runs the commands."""
    import importlib

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["fapm"]
    module, _, attr = target.partition(":")
    entry = getattr(importlib.import_module(module), attr)
    assert entry(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("train", "eval", "predict", "report", "export"))


def test_help_lists_the_commands(tmp_path: Path) -> None:
    done = run_fapm(["--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    for command in ("train", "eval", "predict", "report", "export"):
        assert f"\n  {command} " in done.stdout, command


def test_train_help_is_hydras_with_the_config_groups(tmp_path: Path) -> None:
    done = run_fapm(["train", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "usage: fapm train [key=value ...]" in done.stdout
    model_line = next(line for line in done.stdout.splitlines() if line.startswith("model: "))
    assert "fapm" in model_line and "patchcore" in model_line
    assert not (tmp_path / "logs").exists()  # --help runs nothing


@pytest.mark.parametrize("command, keys", [
    ("train", ["model.k", "data.category", "backbone.name", "runtime.threads"]),
    ("eval", ["ckpt_path", "runtime.threads"]),
    ("predict", ["ckpt_path", "input", "runtime.threads"]),
])
def test_help_of_every_hydra_command_lists_its_keys(command: str, keys: list[str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "== Keys" in out
    listed = set(out[out.index("== Keys") :].split())
    assert set(keys) <= listed, set(keys) - listed


def test_report_takes_key_value_and_lists_its_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {key} " in out for key in cli.REPORT_KEYS)
    args = cli.parse_report_args(["runs=a,b", "c", "by=model", "out=o"])
    assert args == {"runs": ["a", "b", "c"], "by": "model", "out": "o"}
    assert cli.parse_report_args(["a", "--by", "both", "--out=o"])["by"] == "both"  # the earlier flags still read
    assert cli.main(["report", "a", "by=row"]) == 2
    assert "by=row is not one of" in capsys.readouterr().err
    assert cli.main(["report", "a", "colour=red"]) == 2
    assert "unknown key 'colour'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_by_cli(obvious_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A tiny ``fapm train`` in a subprocess, in an empty working folder."""
    work = tmp_path_factory.mktemp("cli_train")
    done = run_fapm(["train", *tiny_train_overrides(obvious_root), "logger=none", "model.image_score=max"], work)
    return work, done


def test_tiny_train_through_the_command(trained_by_cli: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    work, done = trained_by_cli
    assert done.returncode == 0, done.stderr[-3000:]
    # The installed command writes under the working folder (paths.root_dir = cwd).
    (run,) = (work / "logs" / "train" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["category"] == "plate"
    assert metrics["image_auroc"] >= 0.9
    assert (run / "model.safetensors").is_file()
    assert "==== train fapm on plate" in done.stdout


def test_export_and_report_on_the_trained_run(
    trained_by_cli: tuple[Path, subprocess.CompletedProcess[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    work, done = trained_by_cli
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (work / "logs" / "train" / "runs").iterdir()
    assert cli.main(["export", f"model={run / 'model.safetensors'}"]) == 0
    assert (run / "model.torchscript.pt").is_file()
    assert cli.main(["export", f"model={run / 'model.safetensors'}", "precision=int8"]) == 2
    assert "precision=int8 needs format=onnx or format=openvino" in capsys.readouterr().err
    if importlib.util.find_spec("onnxruntime") is not None:  # the deploy extra (CI installs it)
        assert cli.main(["export", f"model={run / 'model.safetensors'}", "format=onnx"]) == 0
        assert (run / "model.onnx").is_file()
    assert cli.main(["report", f"runs={run}", f"out={work / 'report'}"]) == 0
    assert "| plate |" in (work / "report" / "report.md").read_text()


def test_unknown_command_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fit"]) == 2
    assert "unknown command 'fit'" in capsys.readouterr().err
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("fapm ")


def test_sweep_experiment_without_multirun_says_add_m(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = [f"paths.log_dir={tmp_path / 'logs'}", "backbone=resnet18", "backbone.pretrained=false",
              "logger=none", "callbacks=none", f"data.root={tmp_path / 'nowhere'}", "data.generate_demo=false"]
    assert cli.main(["train", "experiment=demo_all", *common]) == 2
    err = capsys.readouterr().err
    assert "data.category=bracket,weave" in err and "add -m" in err and "Traceback" not in err
    # The swept key given on the command line: a single run (which then stops on the missing data).
    assert cli.main(["train", "experiment=demo_all", "data.category=weave", *common]) == 1
    assert "Dataset root not found" in capsys.readouterr().err


def test_runtime_threads_is_a_key_of_every_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """``runtime.threads=N`` composes for every command (an unknown key would be refused) and its
    node sets torch's threads."""
    import torch

    from fapm import console
    from tests.conftest import compose_config

    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(torch, "get_num_interop_threads", lambda: 3)  # leave the process's inter-op pool alone
    for name in cli.HYDRA_COMMANDS:
        cfg = compose_config(name, ["runtime.threads=3"], Path("unused"))
        console.apply_runtime(cfg.runtime)
    assert calls == [3] * len(cli.HYDRA_COMMANDS)


def test_missing_data_root_fails_before_any_backbone_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fapm.models import features

    built: list[object] = []

    def refuse(self: object, *args: object, **kwargs: object) -> None:
        built.append(kwargs.get("name"))
        raise RuntimeError("the backbone was built before the data root was checked")

    monkeypatch.setattr(features.FeatureExtractor, "__init__", refuse)
    code = cli.main(["train", "data=mvtec", f"data.root={tmp_path / 'missing'}", "data.category=screw",
                     f"paths.log_dir={tmp_path / 'logs'}", "logger=none", "callbacks=none"])
    err = capsys.readouterr().err
    assert built == []
    assert code == 1 and "Dataset root not found" in err and "Traceback" not in err
