"""Shared pytest fixtures."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


# ---------------------------------------------------------------------------------------------
# Data layer: tiny on-the-fly image trees
# ---------------------------------------------------------------------------------------------
def _keep_absl_off_pytest_streams() -> None:
    """absl's log handler (absl comes with openvino and nncf) closes its stream when logging is
    reconfigured, unless that stream is the *current* ``sys.stderr``. Imported during collection,
    its stream is pytest's session-wide capture buffer, and the next in-process Hydra run
    (``logging.config.dictConfig`` shuts every handler down) would close that buffer for the rest
    of the session. Point it at the real stderr, which absl never closes."""
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__


_keep_absl_off_pytest_streams()


def _write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)
    return path


@pytest.fixture
def write_png() -> Callable[[Path, np.ndarray], Path]:
    """``write_png(path, uint8 array [H, W] or [H, W, 3]) -> path`` (parents created)."""
    return _write_png


@pytest.fixture
def mvtec_tree(tmp_path: Path) -> Callable[..., Path]:
    """Factory for a tiny MVTec-layout category; returns the dataset root.

    ``mvtec_tree(category="widget", n_train=4, n_test_good=2, defects={"crack": 2}, size=(48, 40))``
    writes random RGB images of ``size`` (width, height) and, for each defect image, a mask
    with a filled rectangle.
    """

    def make(
        category: str = "widget",
        n_train: int = 4,
        n_test_good: int = 2,
        defects: dict[str, int] | None = None,
        size: tuple[int, int] = (48, 40),
        root: Path | None = None,
    ) -> Path:
        root = root or tmp_path / "mvtec"
        rng = np.random.default_rng(0)
        width, height = size
        cat = root / category

        def image() -> np.ndarray:
            return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)

        for i in range(n_train):
            _write_png(cat / "train" / "good" / f"{i:03d}.png", image())
        for i in range(n_test_good):
            _write_png(cat / "test" / "good" / f"{i:03d}.png", image())
        for defect, count in (defects if defects is not None else {"crack": 2}).items():
            for i in range(count):
                _write_png(cat / "test" / defect / f"{i:03d}.png", image())
                mask = np.zeros((height, width), dtype=np.uint8)
                mask[height // 4 : height // 2, width // 4 : width // 2] = 255
                _write_png(cat / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
        return root

    return make


# ---------------------------------------------------------------------------------------------
# Core: a category with obvious defects (smooth textures, bright/dark patches)
# ---------------------------------------------------------------------------------------------
def make_obvious_category(root: Path, category: str = "plate", n_train: int = 10, n_good: int = 6,
                          n_defect: int = 6, size: int = 128, seed: int = 0) -> Path:
    """A tiny MVTec-layout category: smooth shaded images; defects are high-contrast squares."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size

    def normal() -> np.ndarray:
        phase = rng.uniform(0, 2 * np.pi)
        base = 0.5 + 0.15 * np.sin(6 * xx + phase) * np.cos(4 * yy) + rng.normal(0, 0.01, (size, size))
        return np.clip(np.stack([base, base * 0.9, base * 0.8], -1) * 255, 0, 255).astype(np.uint8)

    cat = root / category
    for i in range(n_train):
        _write_png(cat / "train" / "good" / f"{i:03d}.png", normal())
    for i in range(n_good):
        _write_png(cat / "test" / "good" / f"{i:03d}.png", normal())
    for i in range(n_defect):
        img = normal()
        s = int(rng.integers(size // 8, size // 4))
        y0, x0 = (int(v) for v in rng.integers(size // 8, size - size // 8 - s, 2))
        img[y0 : y0 + s, x0 : x0 + s] = (255, 20, 20) if i % 2 else (0, 0, 0)
        mask = np.zeros((size, size), np.uint8)
        mask[y0 : y0 + s, x0 : x0 + s] = 255
        _write_png(cat / "test" / "blob" / f"{i:03d}.png", img)
        _write_png(cat / "ground_truth" / "blob" / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture(scope="session")
def obvious_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny obvious-defect MVTec-layout dataset with category ``plate``."""
    return make_obvious_category(tmp_path_factory.mktemp("obvious"))


# ---------------------------------------------------------------------------------------------
# Hydra: compose the real configs, shrunk for tests
# ---------------------------------------------------------------------------------------------
from fapm.conf import CONFIG_DIR as CONF_DIR  # noqa: E402  (the packaged configs)


def compose_config(config_name: str, overrides: list[str], output_dir: Path):
    """Compose ``conf/<config_name>.yaml`` with ``overrides``; outputs go to ``output_dir``."""
    from fapm.conf import compose

    return compose([f"paths.output_dir={output_dir}", f"paths.root_dir={output_dir}", *overrides], config_name)


def tiny_train_overrides(data_root: Path, category: str = "plate") -> list[str]:
    """A resnet18 (random init) run on a tiny MVTec-layout category at 128 px."""
    return [
        "backbone=resnet18",
        "backbone.pretrained=false",
        "data=mvtec",
        f"data.root={data_root}",
        f"data.category={category}",
        "data.image_size=128",
        "data.crop_size=112",
        "data.num_workers=0",
        "data.train_batch_size=4",
        "data.eval_batch_size=4",
        "trainer.accelerator=cpu",
        "callbacks=none",
        "logger=csv",
    ]
