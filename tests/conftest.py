"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


# ---------------------------------------------------------------------------------------------
# Data layer: tiny on-the-fly image trees
# ---------------------------------------------------------------------------------------------
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
