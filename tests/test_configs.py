"""Every option of every config group composes and instantiates (with a small backbone)."""

from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from fapm.models.features import FeatureExtractor
from tests.conftest import CONF_DIR, compose_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


BASE = ["backbone=resnet18", "backbone.pretrained=false"]


@pytest.mark.parametrize("model", options("model"))
def test_model_configs_instantiate(model: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"model={model}", *BASE], tmp_path)
    module = hydra.utils.instantiate(cfg.model.module)
    assert module.facts()["model"] == cfg.model.name
    if "grid" in cfg.model:  # the memory family (FAPM, PatchCore, ablations)
        assert module.detector.grid == tuple(cfg.model.grid)
        assert isinstance(module.detector.extractor, FeatureExtractor)
    else:  # the trained family (LAMP) brings its own trainer and callbacks
        assert cfg.trainer.max_epochs > 1
        assert "early_stopping" in cfg.callbacks


@pytest.mark.parametrize("backbone", options("backbone"))
def test_backbone_configs_compose(backbone: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"backbone={backbone}"], tmp_path)
    node = OmegaConf.to_container(cfg.backbone, resolve=True)
    assert node["_target_"] == "fapm.models.features.FeatureExtractor"
    assert len(node["layers"]) == 2
    if backbone != "vgg16_bn_craft":  # that one needs ../shared/weights, used by benchmarks only
        extractor = hydra.utils.instantiate(cfg.backbone, pretrained="false")
        assert list(extractor.output_shapes(112)) == node["layers"]


@pytest.mark.parametrize("data", options("data"))
def test_data_configs_instantiate(data: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"data={data}", *BASE], tmp_path)
    dm = hydra.utils.instantiate(cfg.data)
    assert dm.preprocess.output_size == 224


@pytest.mark.parametrize("group", ["logger", "callbacks", "trainer"])
def test_other_groups_instantiate(group: str, tmp_path: Path) -> None:
    from fapm.pipeline.common import instantiate_group

    for option in options(group):
        cfg = compose_config("train", [f"{group}={option}", *BASE], tmp_path)
        if group == "trainer":
            if cfg.trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
                # composes; instantiating it needs a GPU (checked on the lent GPU machine)
                assert cfg.trainer.devices == 1
                continue
            trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
            assert trainer.max_epochs >= 1
        else:
            objects = instantiate_group(cfg[group])
            assert len(objects) == sum(1 for v in cfg[group].values() if "_target_" in v)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_compose(experiment: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"experiment={experiment}", *BASE], tmp_path)
    assert cfg.model.module._target_.startswith("fapm.")
