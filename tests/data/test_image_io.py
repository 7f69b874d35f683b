"""Image/mask loading from every PIL mode, orientation, formats, sizes, and corrupt-file errors."""

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


def test_mask_any_nonzero_value_is_a_defect(tmp_path: Path) -> None:
    values = np.array([[0, 1, 127, 128, 255]], dtype=np.uint8)
    mask = load_mask(_save(Image.fromarray(values), tmp_path / "m.png"))
    assert mask.dtype == bool and mask.tolist() == [[False, True, True, True, True]]


def test_zero_one_mask_reads_as_defect(tmp_path: Path) -> None:
    """A 0/1 mask (looks black in a viewer) marks its 1-pixels as defect, like a 0/255 one."""
    values = np.zeros((6, 8), dtype=np.uint8)
    values[2:4, 3:6] = 1
    zero_one = load_mask(_save(Image.fromarray(values), tmp_path / "01.png"))
    zero_255 = load_mask(_save(Image.fromarray(values * 255), tmp_path / "0255.png"))
    assert zero_one.sum() == 6 and np.array_equal(zero_one, zero_255)


def test_sixteen_bit_mask_by_raw_value(tmp_path: Path) -> None:
    values = np.array([[0, 1, 40000, 65535]], dtype=np.uint16)
    mask = load_mask(_save(Image.fromarray(values), tmp_path / "m16.png"))
    assert mask.tolist() == [[False, True, True, True]]


def test_id_masks_any_nonzero(tmp_path: Path) -> None:
    values = np.array([[0, 1, 2, 255]], dtype=np.uint8)
    assert load_mask(_save(Image.fromarray(values), tmp_path / "ids.png")).tolist() == [[False, True, True, True]]


def test_colour_and_palette_masks_any_nonzero_channel(tmp_path: Path) -> None:
    rgb = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 0, 1]]], dtype=np.uint8)
    mask = load_mask(_save(Image.fromarray(rgb), tmp_path / "rgbmask.png"))
    assert mask.tolist() == [[True, False, True, True]]
    palette = Image.new("P", (3, 1))
    palette.putpalette([0, 0, 0, 255, 255, 255, 0, 128, 0] + [0] * (253 * 3))
    palette.putdata([0, 1, 2])
    assert load_mask(_save(palette, tmp_path / "pmask.png")).tolist() == [[False, True, True]]


def test_lossy_mask_thresholded_at_half_range(tmp_path: Path) -> None:
    """JPEG noise around a 0/255 square must not turn the whole mask into defect."""
    values = np.zeros((32, 32), dtype=np.uint8)
    values[5:21, 7:23] = 255  # not on the 8x8 JPEG blocks: ringing around the edges
    path = _save(Image.fromarray(values), tmp_path / "m.jpg")
    assert (np.asarray(Image.open(path)) != 0).sum() > 16 * 16 + 32  # compression noise outside the square
    mask = load_mask(path)
    assert abs(int(mask.sum()) - 16 * 16) <= 16 and mask[12, 14] and not mask[0, 0]


def test_float_images_with_nan_or_inf_are_refused(tmp_path: Path) -> None:
    for bad in (np.nan, np.inf, -np.inf):
        values = np.full((20, 20), 0.5, dtype=np.float32)
        values[3, 4] = bad
        path = _save(Image.fromarray(values, mode="F"), tmp_path / "f.tif")
        with pytest.raises(DataError, match=r"f\.tif.*NaN or infinite"):
            load_rgb(path)
        with pytest.raises(DataError, match="NaN or infinite"):
            load_mask(path)
    finite = np.linspace(0, 1, 400, dtype=np.float32).reshape(20, 20)
    out = np.asarray(load_rgb(_save(Image.fromarray(finite, mode="F"), tmp_path / "ok.tif")))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".webp"])
def test_exif_orientation_applied_to_images_masks_and_sizes(tmp_path: Path, suffix: str, orientation: int) -> None:
    """Image, mask and header size all come out as a viewer shows them (every EXIF orientation)."""
    raw = np.zeros((30, 40), dtype=np.uint8)  # 40 wide, 30 high as stored
    raw[2:6, 30:38] = 255  # a marker near the top-right corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"quality": 100} if suffix == ".jpg" else {"lossless": True} if suffix == ".webp" else {}
    image = tmp_path / f"img{suffix}"
    Image.fromarray(raw).convert("RGB").save(image, exif=exif.tobytes(), **options)
    mask = tmp_path / f"mask{suffix}"
    Image.fromarray(raw).save(mask, exif=exif.tobytes(), **options)
    expected = _oriented(raw, orientation)
    loaded = np.asarray(load_rgb(image))[..., 0] > 127
    assert loaded.shape == expected.shape and read_size(image) == (expected.shape[1], expected.shape[0])
    assert np.array_equal(loaded, expected > 127)
    assert np.array_equal(load_mask(mask), expected > 127)
    assert read_size(mask) == read_size(image)


def _oriented(raw: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for stored pixels ``raw`` with an EXIF ``orientation`` (the EXIF 2.3 table)."""
    return {
        1: raw, 2: raw[:, ::-1], 3: raw[::-1, ::-1], 4: raw[::-1, :],
        5: raw.T, 6: np.rot90(raw, -1), 7: raw[::-1, ::-1].T, 8: np.rot90(raw, 1),
    }[orientation]  # fmt: skip


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
    with pytest.raises(ValueError, match=r"nothere\.png"):  # callers that catch bad input as ValueError get it
        load_rgb(tmp_path / "nothere.png")


def test_read_size_and_list_images(tmp_path: Path) -> None:
    _save(Image.new("RGB", (7, 5)), tmp_path / "b.PNG")
    _save(Image.new("L", (3, 3)), tmp_path / "a.jpeg")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub.png").mkdir()
    assert read_size(tmp_path / "b.PNG") == (7, 5)
    assert [p.name for p in list_images(tmp_path)] == ["a.jpeg", "b.PNG"]


def test_one_list_of_formats_webp_in_gif_out(tmp_path: Path) -> None:
    """Training listings and the reader accept the same formats: WebP yes, GIF no (even renamed)."""
    rgb = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.webp", lossless=True)
    Image.fromarray(rgb).save(tmp_path / "b.gif")
    Image.fromarray(rgb).save(tmp_path / "c.png", format="GIF")  # a GIF under a PNG name
    assert [p.name for p in list_images(tmp_path)] == ["a.webp", "c.png"]
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "a.webp")), rgb)
    for name in ("b.gif", "c.png"):
        with pytest.raises(DataError, match=rf"{name}.*supported format \(PNG, JPEG, BMP, TIFF, WEBP\)"):
            load_rgb(tmp_path / name)
        with pytest.raises(DataError, match="supported format"):
            read_size(tmp_path / name)


def test_check_size_limits() -> None:
    from fapm.data.image_io import MIN_SIDE, check_size

    check_size(MIN_SIDE, 300, "ok.png")  # the smallest side accepted ...
    with pytest.raises(DataError, match=r"edge\.png.*too small"):
        check_size(MIN_SIDE - 1, 300, "edge.png")  # ... and one pixel less is refused
    with pytest.raises(DataError, match=r"tiny\.png.*1x1 pixels is too small"):
        check_size(1, 1, "tiny.png")
    with pytest.raises(DataError, match="exceeds the limit of 100 pixels"):
        check_size(20, 20, "big.png", max_pixels=100)


def test_huge_header_refused_before_decoding(tmp_path: Path) -> None:
    path = _save(Image.new("L", (300, 200)), tmp_path / "big.png")
    with pytest.raises(DataError, match=r"big\.png.*exceeds the limit of 1000 pixels"):
        load_rgb(path, max_pixels=1000)
