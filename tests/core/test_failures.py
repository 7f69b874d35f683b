"""Never lose a fit: whatever fails after the memory is built, the model file is there and
``metrics.json`` says ``failed``, the stage and why; bad set-ups fail before any backbone is built."""

import errno
import json
from pathlib import Path

import pytest
from PIL import Image

from fapm.data.errors import DataError
from fapm.inference import FAPM
from fapm.model_file import ModelFileError
from fapm.pipeline.train import train
from fapm.settings import ConfigError
from tests.conftest import compose_config, make_obvious_category, tiny_train_overrides


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_obvious_category(tmp_path / "data", n_train=6, n_good=3, n_defect=3, size=64)


def _overrides(root: Path) -> list[str]:
    return [*tiny_train_overrides(root), "data.image_size=64", "data.crop_size=64", "model.grid=[2,2]",
            "model.image_score=max", "data.normal_holdout=0.2"]


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_a_corrupt_test_image_keeps_the_fitted_model(root: Path, tmp_path: Path) -> None:
    victim = next((root / "plate" / "test" / "blob").glob("*.png"))
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # the header is intact: set-up passes, decoding fails
    out = tmp_path / "run"
    with pytest.raises(DataError, match=victim.name):
        train(compose_config("train", _overrides(root), out))
    written = _metrics(out)
    assert written["status"] == "failed" and written["failed_stage"] == "test"
    assert victim.name in written["error"]
    model = FAPM.load(written["model_file"])  # usable, with the thresholds decided before the test
    assert model.image_threshold is not None


def test_ctrl_c_during_test_keeps_the_fitted_model(root: Path, tmp_path: Path, monkeypatch) -> None:
    from fapm.lightning.base import AnomalyModule

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(AnomalyModule, "test_step", interrupted)
    out = tmp_path / "run"
    with pytest.raises(SystemExit):  # Lightning's graceful Ctrl-C handling exits with status 1
        train(compose_config("train", _overrides(root), out))
    written = _metrics(out)
    assert written["status"] == "failed" and written["error"] == "interrupted during test"
    assert Path(written["model_file"]).is_file()
    FAPM.load(written["model_file"])


def test_disk_full_at_save_reports_enospc(root: Path, tmp_path: Path, monkeypatch) -> None:
    import safetensors.torch

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "run"
    with pytest.raises(ModelFileError, match="ENOSPC"):
        train(compose_config("train", _overrides(root), out))
    written = _metrics(out)
    assert written["status"] == "failed" and written["failed_stage"] == "save" and "ENOSPC" in written["error"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".") or p.suffix == ".tmp") == []


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ("data.root=/nonexistent/fapm", DataError),
        ("thresholds.image_quantile=2", ConfigError),
        ("model.d_th=abc", ConfigError),
    ],
)
def test_bad_set_up_fails_before_any_backbone_is_built(root: Path, tmp_path: Path, monkeypatch, override, error) -> None:
    from fapm.models import features

    def never(*args, **kwargs):
        raise AssertionError("the backbone was built before the set-up was checked")

    monkeypatch.setattr(features.FeatureExtractor, "__init__", never)
    out = tmp_path / "run"
    with pytest.raises(error):
        train(compose_config("train", [*_overrides(root), override], out))
    written = _metrics(out)
    assert written["status"] == "failed" and "model_file" not in written


def test_unwritable_output_folder_is_one_clear_error(root: Path, tmp_path: Path) -> None:
    from fapm.pipeline.common import OutputDirError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputDirError, match="cannot write to the output folder"):
        train(compose_config("train", _overrides(root), blocker / "run"))


def test_no_holdout_means_no_labels(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = train(compose_config("train", [*_overrides(root), "data.normal_holdout=0"], out))
    assert "threshold/image_quantile" not in metrics and "threshold/image_f1" in metrics  # F1 is a metric only
    model = FAPM.load(metrics["model_file"])
    assert model.image_threshold is None and not model.has_labels
    image = Image.open(next((root / "plate" / "test" / "blob").glob("*.png")))
    result = model.predict(image)
    assert result.label is None and result.mask is None and result.score > 0
    assert FAPM.load(metrics["model_file"], threshold="f1").image_threshold == metrics["threshold/image_f1"]
