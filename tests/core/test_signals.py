"""SIGTERM is treated like Ctrl-C; a finished test keeps its metrics; OS errors are one line (issue 25, point 5)."""

import errno
import json
import os
import signal
from pathlib import Path

import pytest

from fapm import cli
from tests.conftest import make_obvious_category, tiny_train_overrides


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_obvious_category(tmp_path / "data", n_train=6, n_good=3, n_defect=3, size=64)


def _overrides(root: Path, out: Path) -> list[str]:
    return [*tiny_train_overrides(root), "data.image_size=64", "data.crop_size=64", "model.grid=[2,2]",
            "model.image_score=max", "data.normal_holdout=0.2", "logger=none", f"hydra.run.dir={out}"]


def _sigterm(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not interrupt")  # pragma: no cover


@pytest.mark.parametrize(("stage", "target"), [
    ("fit", "fapm.lightning.memory_module.MemoryBankModule.training_step"),
    ("test", "fapm.lightning.base.AnomalyModule.test_step"),
])
def test_sigterm_exits_143_with_a_failure_record(root: Path, tmp_path: Path, monkeypatch, capsys, stage, target) -> None:
    """Failed before: SIGTERM during fit or test exited 0 with no metrics.json."""
    monkeypatch.setattr(target, _sigterm)
    out = tmp_path / "run"
    assert cli.main(["train", *_overrides(root, out)]) == 143
    assert "fapm train: interrupted (SIGTERM)" in capsys.readouterr().err
    written = json.loads((out / "metrics.json").read_text())
    assert written["status"] == "failed" and written["failed_stage"] == stage
    assert written["error"] == f"interrupted (SIGTERM) during {stage}"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the command


def test_an_interrupt_while_figures_are_drawn_keeps_the_test_metrics(root: Path, tmp_path: Path, monkeypatch) -> None:
    """Failed before: Ctrl-C while the figures were drawn discarded the finished test metrics."""
    from fapm.lightning.base import AnomalyModule

    def drawing(self, *args, **kwargs):  # what the figure callback does after the test epoch
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C

    monkeypatch.setattr(AnomalyModule, "on_test_end", drawing, raising=False)
    out = tmp_path / "run"
    assert cli.main(["train", *_overrides(root, out)]) == 130
    written = json.loads((out / "metrics.json").read_text())
    assert written["status"] == "failed" and written["test_completed"] is True
    assert written["image_auroc"] >= 0.9 and "pixel_auroc" in written
    assert written["error"] == "interrupted (SIGINT) during test"


def test_test_metrics_are_on_disk_before_the_figures_are_drawn(root: Path, tmp_path: Path, monkeypatch) -> None:
    """A kill -9 while the figures are drawn (nothing can catch it) still leaves the test metrics."""
    from fapm.lightning.base import AnomalyModule

    out = tmp_path / "run"
    seen = []

    def drawing(self, *args, **kwargs):  # runs after every callback's on_test_end, as late as any figure
        seen.append(json.loads((out / "metrics.json").read_text()))

    monkeypatch.setattr(AnomalyModule, "on_test_end", drawing, raising=False)
    assert cli.main(["train", *_overrides(root, out)]) == 0
    (during,) = seen
    assert during["image_auroc"] >= 0.9 and during["failed_stage"] == "figures" and during["test_completed"] is True
    assert json.loads((out / "metrics.json").read_text())["status"] == "ok"


def test_disk_full_and_read_only_are_one_line_naming_path_and_errno(capsys) -> None:
    """Failed before: OSError tracebacks ending in 'a bug? please report it'."""
    for code, name in ((errno.ENOSPC, "ENOSPC"), (errno.EROFS, "EROFS"), (errno.EACCES, "EACCES")):
        error = OSError(code, os.strerror(code), "/runs/x/metrics.json")
        assert cli.report_error(error, "train", verbose=False) == 1
        err = capsys.readouterr().err
        assert "a bug?" not in err and "Traceback" not in err
        first = err.splitlines()[0]
        assert first == f"fapm train: error: cannot write or read /runs/x/metrics.json: {os.strerror(code)} ({name})"


def test_disk_full_inside_safetensors_names_enospc(tmp_path: Path, monkeypatch) -> None:
    """Failed before: a SafetensorError traceback."""
    import safetensors.torch
    import torch

    from fapm.model_file import ModelFileError, save_model
    from fapm.settings import BackboneSettings, MemorySettings

    def full(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                          "message: \"No space left on device\" }) (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    preprocess = {"image_size": 64, "crop_size": 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    with pytest.raises(ModelFileError, match=r"cannot write the model file .*m\.safetensors: No space left on device \(ENOSPC\)"):
        save_model(tmp_path / "m.safetensors", torch.nn.Linear(1, 1), MemorySettings(), BackboneSettings(), preprocess)
    assert os.listdir(tmp_path) == []
