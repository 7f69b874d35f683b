"""Synthetic demo dataset: determinism, exact masks, visible defects, idempotent writing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fapm.data.demo import DEMO_CATEGORIES, DEMO_DEFECT_TYPES, MARKER_NAME, generate_demo, main, render_sample
from fapm.data.errors import DataError

SMALL = {"n_train": 2, "n_test_good": 2, "n_test_defect_per_type": 2, "size": 128}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo"), seed=0, **SMALL)


def test_categories_and_defect_types() -> None:
    assert len(DEMO_CATEGORIES) >= 2 and {"bracket", "weave"} <= set(DEMO_CATEGORIES)
    assert all(len(DEMO_DEFECT_TYPES[c]) >= 3 for c in DEMO_CATEGORIES)


def test_layout_and_image_format(small_demo: Path) -> None:
    for category in DEMO_CATEGORIES:
        cat = small_demo / category
        assert len(list((cat / "train" / "good").glob("*.png"))) == 2
        assert len(list((cat / "test" / "good").glob("*.png"))) == 2
        assert not (cat / "ground_truth" / "good").exists()
        assert sorted(p.name for p in (cat / "ground_truth").iterdir()) == sorted(DEMO_DEFECT_TYPES[category])
        for defect in DEMO_DEFECT_TYPES[category]:
            for image in sorted((cat / "test" / defect).glob("*.png")):
                img = Image.open(image)
                assert img.mode == "RGB" and img.size == (128, 128)
                mask = np.asarray(Image.open(cat / "ground_truth" / defect / f"{image.stem}_mask.png"))
                assert mask.shape == (128, 128) and set(np.unique(mask)) == {0, 255}


def test_same_seed_is_byte_identical_and_other_seed_differs(small_demo: Path, tmp_path: Path) -> None:
    again = generate_demo(tmp_path / "again", seed=0, **SMALL)
    assert _files(again) == _files(small_demo)
    other = _files(generate_demo(tmp_path / "other", categories=["weave"], seed=1, **SMALL))
    reference = _files(small_demo)
    same = [k for k, v in other.items() if k.endswith(".png") and reference[k] == v]
    assert not same


@pytest.mark.parametrize("category", DEMO_CATEGORIES)
def test_defects_change_only_masked_pixels(category: str) -> None:
    for defect in DEMO_DEFECT_TYPES[category]:
        for index in range(2):
            sample = render_sample(category, 0, "test", defect, index, size=128)
            assert sample.mask.any(), (defect, index)
            changed = sample.image != sample.clean
            assert not changed[~sample.mask].any()  # outside the mask: identical to the clean scene
            diff = np.abs(sample.image.astype(int) - sample.clean.astype(int)).max(axis=2)
            assert diff[sample.mask].mean() > 20, (defect, index)
            margin = int(0.08 * 128)  # defects survive the 224/256 centre crop
            inner = np.zeros_like(sample.mask)
            inner[margin:-margin, margin:-margin] = True
            assert not (sample.mask & ~inner).any()


def test_good_samples_have_empty_masks() -> None:
    for category in DEMO_CATEGORIES:
        sample = render_sample(category, 0, "test", "good", 0, size=128)
        assert not sample.mask.any() and np.array_equal(sample.image, sample.clean)


def test_good_images_vary_but_stay_aligned() -> None:
    # Natural variation between normal images, yet the same object layout (per-region memory works).
    a = render_sample("bracket", 0, "train", "good", 0, size=128).image.astype(float)
    b = render_sample("bracket", 0, "train", "good", 1, size=128).image.astype(float)
    assert np.abs(a - b).mean() > 1
    assert np.corrcoef(a.mean(2).ravel(), b.mean(2).ravel())[0, 1] > 0.7


def test_idempotent_and_safe(tmp_path: Path) -> None:
    root = generate_demo(tmp_path / "d", categories=["bracket"], **SMALL)
    marker = root / "bracket" / MARKER_NAME
    stamp = marker.stat().st_mtime_ns
    generate_demo(root, categories=["bracket"], **SMALL)
    assert marker.stat().st_mtime_ns == stamp  # skipped: marker matched
    generate_demo(root, categories=["bracket"], seed=5, **SMALL)
    assert '"seed": 5' in marker.read_text()
    assert sorted(p.name for p in root.iterdir()) == ["bracket"]  # no temp/stale folders left
    (root / "weave").mkdir()
    with pytest.raises(DataError, match=re.escape(str(root / "weave"))):
        generate_demo(root, categories=["weave"], **SMALL)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--root", str(tmp_path / "cli"), "--seed", "2", "--categories", "weave",
          "--n-train", "1", "--n-test-good", "1", "--n-test-defect-per-type", "1", "--size", "96"])  # fmt: skip
    assert len(list((tmp_path / "cli" / "weave" / "test").rglob("*.png"))) == 1 + len(DEMO_DEFECT_TYPES["weave"])
    assert "weave" in capsys.readouterr().out
