"""Image/mask loading from every PIL mode, and corrupt-file errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fapm.data.errors import DataError
from fapm.data.image_io import list_images, load_mask, load_rgb, read_size


def _save(img: Image.Image, path: Path) -> Path:
    img.save(path)
    return path


def test_greyscale_loads_as_rgb_with_same_values(tmp_path: Path) -> None:
    grey = np.array([[0, 17], [128, 255]], dtype=np.uint8)
    out = load_rgb(_save(Image.fromarray(grey), tmp_path / "g.png"))
    assert out.mode == "RGB" and out.size == (2, 2)
    assert np.array_equal(np.asarray(out), np.repeat(grey[..., None], 3, axis=2))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_is_scaled_by_bit_depth_not_clipped(tmp_path: Path, suffix: str) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / f"d16{suffix}")
    assert Image.open(path).mode in ("I;16", "I")
    out = np.asarray(load_rgb(path))
    assert out.dtype == np.uint8 and out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist()[:2] == [0, 1]
    assert abs(int(out[0, 2, 0]) - 128) <= 1
    assert out[0, 3].tolist() == [255, 255, 255]


def test_mode_i_holding_sixteen_bit_data_is_scaled(tmp_path: Path) -> None:
    values = np.array([[0, 32768, 65535]], dtype=np.int32)
    path = _save(Image.fromarray(values), tmp_path / "i32.tif")
    assert Image.open(path).mode == "I"
    out = np.asarray(load_rgb(path))[0, :, 0]
    assert out[0] == 0 and abs(int(out[1]) - 128) <= 1 and out[2] == 255


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 255]]], dtype=np.uint8)
    out = np.asarray(load_rgb(_save(Image.fromarray(rgba), tmp_path / "a.png")))
    assert out.tolist() == [[[10, 20, 30], [200, 100, 50]]]


def test_palette_loads_palette_colours(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 200, 30] + [0] * (254 * 3))
    img.putdata([1, 0])
    out = np.asarray(load_rgb(_save(img, tmp_path / "p.png")))
    assert out.tolist() == [[[0, 200, 30], [255, 0, 0]]]


def test_cmyk_converts_to_rgb(tmp_path: Path) -> None:
    img = Image.new("CMYK", (2, 1))
    img.putdata([(0, 0, 0, 0), (0, 0, 0, 255)])
    out = np.asarray(load_rgb(_save(img, tmp_path / "c.tif")))
    assert out.tolist() == [[[255, 255, 255], [0, 0, 0]]]


def test_mask_threshold_is_above_127(tmp_path: Path) -> None:
    values = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    mask = load_mask(_save(Image.fromarray(values), tmp_path / "m.png"))
    assert mask.dtype == bool and mask.tolist() == [[False, False, True, True]]


def test_sixteen_bit_mask_scaled_before_threshold(tmp_path: Path) -> None:
    values = np.array([[0, 30000, 40000, 65535]], dtype=np.uint16)
    mask = load_mask(_save(Image.fromarray(values), tmp_path / "m16.png"))
    assert mask.tolist() == [[False, False, True, True]]


def test_mask_nonzero_mode_for_id_masks(tmp_path: Path) -> None:
    values = np.array([[0, 1, 2, 255]], dtype=np.uint8)
    path = _save(Image.fromarray(values), tmp_path / "ids.png")
    assert load_mask(path, nonzero=True).tolist() == [[False, True, True, True]]
    assert load_mask(path).tolist() == [[False, False, False, True]]


def test_colour_mask_uses_luminance(tmp_path: Path) -> None:
    rgb = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]]], dtype=np.uint8)
    mask = load_mask(_save(Image.fromarray(rgb), tmp_path / "rgbmask.png"))
    assert mask.tolist() == [[True, False, False]]  # pure red has luminance 76


def test_garbage_file_raises_data_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not an image")
    for fn in (load_rgb, load_mask, read_size):
        with pytest.raises(DataError, match=r"broken\.png"):
            fn(bad)


def test_truncated_file_raises_data_error(tmp_path: Path) -> None:
    good = _save(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), tmp_path / "t.png"
    )
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.png"):
        load_rgb(good)


def test_missing_file_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nothere\.png"):
        load_rgb(tmp_path / "nothere.png")
    assert issubclass(DataError, ValueError)


def test_read_size_and_list_images(tmp_path: Path) -> None:
    _save(Image.new("RGB", (7, 5)), tmp_path / "b.PNG")
    _save(Image.new("L", (3, 3)), tmp_path / "a.jpeg")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub.png").mkdir()
    assert read_size(tmp_path / "b.PNG") == (7, 5)
    assert [p.name for p in list_images(tmp_path)] == ["a.jpeg", "b.PNG"]
