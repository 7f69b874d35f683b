"""Every option of every config group composes, validates and builds (with a small backbone)."""

from pathlib import Path

import hydra
import pytest
import torch

from fapm.builders import build_datamodule, build_extractor
from fapm.pipeline.common import validated_settings
from fapm.pipeline.train import _build_module
from fapm.settings import ConfigError, LampSettings, MemorySettings
from tests.conftest import CONF_DIR, compose_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


BASE = ["backbone=resnet18", "backbone.pretrained=false"]


@pytest.mark.parametrize("model", options("model"))
def test_model_configs_validate_and_build(model: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"model={model}", *BASE], tmp_path)
    settings = validated_settings(cfg)
    module = _build_module(cfg, settings)
    assert module.facts()["model"] == cfg.model.name == settings.model.name
    if isinstance(settings.model, MemorySettings):
        assert module.detector.grid == tuple(cfg.model.grid)
        assert module.detector.k == cfg.model.k and module.detector.neighbourhood == cfg.model.neighbourhood
        assert module.detector.coreset.ratio == cfg.model.coreset_ratio
        assert len(module.detector.memories) == settings.model.streams(settings.backbone)
    else:  # the trained family (LAMP) brings its own trainer and callbacks
        from fapm.lightning.lamp_module import VAL_LOSS
        from fapm.pipeline.common import instantiate_group

        assert isinstance(settings.model, LampSettings)
        # early stopping and the best checkpoint watch the loss the LAMP module logs, and validation runs
        monitors = {c.monitor for c in instantiate_group(cfg.callbacks) if hasattr(c, "monitor")}
        assert monitors == {VAL_LOSS}
        trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
        assert trainer.max_epochs > 1 and trainer.limit_val_batches > 0


@pytest.mark.parametrize("backbone", options("backbone"))
def test_backbone_configs_validate_and_build(backbone: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"backbone={backbone}"], tmp_path)
    settings = validated_settings(cfg)
    assert len(settings.backbone.layers) == 2
    if backbone != "vgg16_bn_craft":  # that one needs ../shared/weights, used by benchmarks only
        extractor = build_extractor(settings.backbone.replace(pretrained="false"))
        shapes = extractor.output_shapes(112)
        assert list(shapes) == list(settings.backbone.layers)
        assert shapes[settings.backbone.layers[0]][1] == 2 * shapes[settings.backbone.layers[1]][1]  # strides 8, 16


@pytest.mark.parametrize("data", options("data"))
def test_data_configs_validate_and_build(data: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"data={data}", *BASE], tmp_path)
    settings = validated_settings(cfg)
    dm = build_datamodule(settings.data)
    # the paper's protocol (256 -> centre 224) for the public benchmarks, the whole image elsewhere
    paper = data in ("mvtec", "visa")
    assert dm.preprocess.crop_size == (224 if paper else None)
    assert dm.preprocess.output_size == (224 if paper else settings.data.image_size)
    assert dm.preprocess.mean == tuple(settings.backbone.mean)  # the backbone's normalisation


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.d_th=abc", r"model\.d_th: expected a number, got 'abc'"),
        ("model.k=four", r"model\.k: expected an integer"),
        ("model.k=0", r"model\.k: must be in \[1, 1024\]"),
        ("+model.foo=1", r"model\.foo: unknown key"),
        ("model.blur_sigma=-1", r"model\.blur_sigma: must be in \[0\.0, 64\.0\]"),
        ("model.coreset_ratio=1.5", r"model\.coreset_ratio: must be in \(0\.0, 1\.0\]"),
        ("model.grid=[7]", r"model\.grid: expected a list of 2 values"),
        ("model.image_score=mean", r"model\.image_score: must be one of"),
        ("model.layer_weights=[1.0]", r"model\.layer_weights: needs 2 value"),
        ("backbone.pool_size=0", r"backbone\.pool_size: must be in \[1, 31\]"),
        ("backbone.pool_size=2", r"backbone\.pool_size: must be odd"),
        ("data.crop_size=300", r"data\.crop_size: must be <= image_size"),
        ("data.normal_holdout=1.0", r"data\.normal_holdout: must be in \[0\.0, 1\.0\)"),
        ("thresholds.image_quantile=2", r"thresholds\.image_quantile: must be in \(0\.0, 1\.0\)"),
        ("seed=abc", r"seed: expected an integer"),
        # issue 25: one value must not cost all memory or hours
        ("data.image_size=30000", r"data\.image_size: must be in \[16, 4096\]"),
        ("model.neighbourhood=1000000000", r"model\.neighbourhood: must be in \[0, 64\]"),
        ("model.blur_sigma=1e5", r"model\.blur_sigma: must be in \[0\.0, 64\.0\]"),
        ("model.memory_cap=1e12", r"model\.memory_cap: must be in \[1, 10000000\]"),
        ("model.grid=[9999,9999]", r"model\.grid: each side must be <= 64"),
        ("seed=-5", r"seed: must be in \[0, 4294967295\]"),
        ("trainer.max_epochs=0", r"trainer\.max_epochs: must be an integer >= 1"),
        ("backbone.name=resnet999", r"backbone\.name: \w+ has no model named 'resnet999'"),
    ],
)
def test_bad_values_are_refused_with_their_key(override: str, message: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [*BASE, override], tmp_path)
    with pytest.raises(ConfigError, match=message):
        validated_settings(cfg)


def test_align_resolution_larger_than_the_input_is_a_config_error(tmp_path: Path) -> None:
    """Failed before: a ValueError from inside the fit ("a bug?")."""
    cfg = compose_config("train", [*BASE, "model.align=translation", "data.image_size=96", "data.crop_size=64"], tmp_path)
    with pytest.raises(ConfigError, match=r"model\.align_resolution: 128 is larger than the input images \(64 px"):
        validated_settings(cfg)


def test_a_run_that_needs_more_memory_than_the_machine_has_is_refused(tmp_path: Path, monkeypatch) -> None:
    """The estimate of one batch's activations is checked against the available memory, naming the key."""
    import fapm.settings as settings_module

    cfg = compose_config("train", [*BASE, "data.image_size=4096", "data.crop_size=4096"], tmp_path)
    monkeypatch.setattr(settings_module, "available_memory", lambda: 8 * 1024**3)
    with pytest.raises(ConfigError, match=r"data\.image_size: 4096 px with data\.train_batch_size=8 needs about 50\.0 GiB"):
        validated_settings(cfg)
    monkeypatch.setattr(settings_module, "available_memory", lambda: 64 * 1024**3)
    assert validated_settings(cfg).data.image_size == 4096


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    cfg = compose_config("train", [*BASE, "model.k=four", "model.d_th=abc", "data.train_batch_size=0"], tmp_path)
    with pytest.raises(ConfigError) as info:
        validated_settings(cfg)
    assert len(info.value.problems) == 3


@pytest.mark.parametrize("group", ["logger", "callbacks", "trainer"])
def test_other_groups_instantiate(group: str, tmp_path: Path) -> None:
    from fapm.pipeline.common import instantiate_group

    for option in options(group):
        cfg = compose_config("train", [f"{group}={option}", *BASE], tmp_path)
        if group == "trainer":
            if cfg.trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
                # composes; instantiating it needs a GPU (checked on a lent GPU machine)
                assert cfg.trainer.devices >= 1
                continue
            trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
            # every trainer keeps the memory bank's contract: one pass over the data, no validation loop
            assert trainer.max_epochs == 1 and trainer.limit_val_batches == 0 and trainer.num_sanity_val_steps == 0
            if option.startswith("ddp"):  # fapm shards the data itself, each sample once
                assert type(trainer.strategy).__name__ == "MemoryBankDDPStrategy"
                assert trainer.world_size == 2 and not trainer._accelerator_connector.use_distributed_sampler
        else:
            objects = instantiate_group(cfg[group])
            assert len(objects) == sum(1 for v in cfg[group].values() if "_target_" in v)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_compose_and_validate(experiment: str, tmp_path: Path) -> None:
    from fapm.conf import compose

    paths = [f"paths.output_dir={tmp_path}", f"paths.root_dir={tmp_path}"]
    cfg = compose([f"experiment={experiment}", *BASE, *paths], return_hydra_config=True)
    settings = validated_settings(cfg)
    swept = dict(cfg.hydra.sweeper.params or {})
    assert swept, "an experiment is a multirun recipe: it sweeps at least one key"
    assert settings.model.name == cfg.model.name
    # every job of the sweep is a valid run, with the swept value applied
    for key, values in swept.items():
        assert isinstance(values, str) and "," in values, key
        for value in values.split(","):
            job = compose_config("train", [f"experiment={experiment}", f"{key}={value}", *BASE], tmp_path)
            job_settings = validated_settings(job)
            if key == "model":
                assert job_settings.model.name == value
