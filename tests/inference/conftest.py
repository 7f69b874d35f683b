"""Fixtures of the inference tests: one tiny demo dataset and one model trained on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import compose_config

CATEGORY = "bracket"


def tiny_overrides(data_root: Path) -> list[str]:
    """resnet18 (random init) on a 64-px demo category, 2x2 grid, thresholds from 2 held-out normals."""
    return [
        "backbone=resnet18",
        "backbone.pretrained=false",
        "data=demo",
        f"data.root={data_root}",
        f"data.category={CATEGORY}",
        "data.generate_demo=false",
        "data.image_size=64",
        "data.crop_size=64",
        "data.normal_holdout=0.2",
        "data.train_batch_size=8",
        "data.eval_batch_size=4",
        "model.grid=[2,2]",
        "trainer.accelerator=cpu",
        "callbacks=none",
        "logger=none",
    ]


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny demo dataset (64 px): 10 train, 3 good + 1 per defect type in test."""
    from fapm.data import generate_demo

    root = tmp_path_factory.mktemp("demo")
    return generate_demo(root, [CATEGORY], n_train=10, n_test_good=3, n_test_defect_per_type=1, size=64)


@pytest.fixture(scope="session")
def trained(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """``(metrics, model file)`` of one real training run on the tiny demo."""
    from fapm.pipeline.train import train

    out = tmp_path_factory.mktemp("run")
    metrics = train(compose_config("train", tiny_overrides(demo_root), out))
    return metrics, out / "model.safetensors"


@pytest.fixture(scope="session")
def model_path(trained: tuple[dict, Path]) -> Path:
    return trained[1]


@pytest.fixture(scope="session")
def demo_images(demo_root: Path) -> list[Path]:
    """The tiny demo's test images (good first, then one per defect type)."""
    test = demo_root / CATEGORY / "test"
    return sorted((test / "good").glob("*.png")) + sorted(p for p in test.glob("*/*.png") if p.parent.name != "good")
