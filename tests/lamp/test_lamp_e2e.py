"""`python train.py model=lamp trainer.max_epochs=2` through the real Hydra configs, on tiny data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fapm.metrics import names
from fapm.pipeline.evaluate import evaluate
from fapm.pipeline.common import validated_settings
from fapm.pipeline.train import _build_module, train
from tests.conftest import compose_config, make_obvious_category


def _overrides(root: Path) -> list[str]:
    return [
        "model=lamp",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "data=mvtec",
        f"data.root={root}",
        "data.category=plate",
        "data.image_size=64",
        "data.crop_size=64",
        "data.num_workers=0",
        "data.train_batch_size=4",
        "data.eval_batch_size=4",
        "model.base_channels=8",
        "model.max_channels=16",
    ]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_obvious_category(tmp_path_factory.mktemp("lamp_data"), n_train=12, n_good=4, n_defect=4, size=64)


@pytest.fixture(scope="module")
def lamp_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("lamp_run")
    cfg = compose_config("train", _overrides(data_root), out)
    return cfg, train(cfg), out


def test_model_lamp_selects_its_trainer_callbacks_and_holdout(lamp_run) -> None:
    cfg, _, _ = lamp_run
    assert cfg.trainer.max_epochs == 2
    assert cfg.trainer.limit_val_batches == 1.0 and cfg.trainer.enable_checkpointing
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss"
    assert cfg.callbacks.early_stopping.monitor == "val/loss"
    assert cfg.data.normal_holdout > 0


def test_train_end_to_end_and_loss_goes_down(lamp_run) -> None:
    _, metrics, out = lamp_run
    assert metrics["epochs_trained"] == 2
    losses = metrics["train_loss_per_epoch"]
    assert losses[1] < losses[0], losses
    assert metrics["train_base_loss_per_epoch"][1] < metrics["train_base_loss_per_epoch"][0]
    assert len(metrics["val_loss_per_epoch"]) == 2
    written = json.loads((out / "metrics.json").read_text())
    for key in (names.IMAGE_AUROC, names.PIXEL_AUROC, names.PIXEL_AUPRO, "fps", "latency_ms", "parameters"):
        assert written[key] is not None and math.isfinite(written[key]), key
    assert written["model"] == "lamp" and written["lamp"] is True and written["base_loss"] == "l2"
    assert (out / "model.safetensors").is_file()
    assert any((out / "checkpoints").glob("*.ckpt"))


def test_saved_model_reproduces_test_metrics(lamp_run, tmp_path: Path) -> None:
    cfg0, metrics, out = lamp_run
    cfg = compose_config("eval", [f"ckpt_path={out / 'model.safetensors'}", "callbacks=none", "trainer.accelerator=cpu",
                                  f"data_root={cfg0.data.root}"], tmp_path)
    again = evaluate(cfg)
    for key in (names.IMAGE_AUROC, names.PIXEL_AUROC, names.PIXEL_AUPRO):
        assert again[key] == pytest.approx(metrics[key], abs=1e-9), key


@pytest.mark.parametrize(
    ("overrides", "optimizer", "scales"),
    [
        (["model.recalibration=se"], torch.optim.Adam, (1,)),
        (["model.recalibration=msar", "model.optimizer._target_=torch.optim.SGD", "+model.optimizer.momentum=0.9"],
         torch.optim.SGD, (1, 2, 4)),
        (["model.base_loss=ssim", "model.lamp=false", "model.optimizer._target_=torch.optim.RMSprop"],
         torch.optim.RMSprop, None),
    ],
)
def test_config_variants_instantiate(data_root: Path, tmp_path: Path, overrides, optimizer, scales) -> None:
    cfg = compose_config("train", [*_overrides(data_root), *overrides], tmp_path)
    module = _build_module(cfg, validated_settings(cfg))
    assert isinstance(module.configure_optimizers(), optimizer)
    assert module.detector.autoencoder.scales == scales
    assert module.loss.base == cfg.model.base_loss and module.loss.lamp == cfg.model.lamp
    out = module.eval()(torch.randn(2, 3, 64, 64))
    assert out.image_scores.shape == (2,) and out.anomaly_maps.shape == (2, 64, 64)
