"""Fixtures of the deployment tests: the demo data at 64 px and small fitted detectors.

Random-init ResNet-18 backbones, 2×2 grids: each export takes seconds, not minutes. The
exports are module-scoped (``torch.onnx.export`` dominates these tests' time).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fapm.data import generate_demo, load_rgb
from fapm.data.transforms import Preprocess
from fapm.deploy.info import DeployInfo

SIZE = 64
CATEGORY = "bracket"


def rgb(paths: list[Path], size: int = SIZE) -> torch.Tensor:
    """RGB ``[N, 3, size, size]`` in ``[0, 1]`` (resize only, as the graph's input)."""
    pre = Preprocess(image_size=size, crop_size=None)
    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    return torch.stack([pre(load_rgb(p)) * std + mean for p in paths])


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """``{"train": [10, 3, 64, 64], "test": [6, 3, 64, 64]}`` RGB in [0, 1] from the demo category."""
    root = generate_demo(tmp_path_factory.mktemp("demo"), [CATEGORY], n_train=10, n_test_good=2,
                         n_test_defect_per_type=1, size=SIZE)
    cat = root / CATEGORY
    test = sorted((cat / "test" / "good").glob("*.png")) + sorted(
        p for p in (cat / "test").glob("*/*.png") if p.parent.name != "good")
    return {"train": rgb(sorted((cat / "train" / "good").glob("*.png"))), "test": rgb(test)}


@pytest.fixture(scope="session")
def info() -> DeployInfo:
    return DeployInfo(image_size=SIZE, image_threshold=2.5, pixel_threshold=2.0, facts={"model": "test"})
