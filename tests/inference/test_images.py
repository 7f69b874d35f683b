"""What the predictor accepts as an image: float data with NaN/Inf is refused, never scored as some colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fapm.inference.images import InputError, open_image, to_pil


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_arrays_tensors_and_pil_images_with_non_finite_values_are_refused(bad: float) -> None:
    array = np.full((20, 24, 3), 0.5, dtype=np.float32)
    array[5, 6, 1] = bad
    with pytest.raises(InputError, match=r"input #3: float image holds 1 NaN or infinite value"):
        to_pil(array, index=3)
    tensor = torch.from_numpy(array).permute(2, 0, 1).to(torch.float16)
    with pytest.raises(InputError, match="NaN or infinite"):
        to_pil(tensor)
    with pytest.raises(InputError, match="NaN or infinite"):
        to_pil(Image.fromarray(np.ascontiguousarray(array[..., 1]), mode="F"))


def test_float_tiff_with_nan_is_refused(tmp_path: Path) -> None:
    values = np.full((20, 20), 0.25, dtype=np.float32)
    values[0, 0] = np.nan
    path = tmp_path / "nan.tif"
    Image.fromarray(values, mode="F").save(path)
    with pytest.raises(InputError, match=r"nan\.tif.*NaN or infinite"):
        open_image(path)


def test_finite_float_inputs_still_scale_as_before() -> None:
    ramp = np.linspace(0, 1, 20 * 20, dtype=np.float32).reshape(20, 20)
    image, path = to_pil(ramp)
    out = np.asarray(image)
    assert path is None and out.shape == (20, 20, 3) and out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    image, _ = to_pil(torch.from_numpy(ramp).half())
    assert np.asarray(image)[-1, -1, 0] == 255


@pytest.mark.parametrize("high", [255.0, 1.0001])
def test_float_inputs_outside_zero_one_are_refused(high: float) -> None:
    """Failed before: one value of 1.0001 made the whole array read as 0-255 (score 101 instead of 28.6)."""
    ramp = np.linspace(0, high, 20 * 20, dtype=np.float32).reshape(20, 20)
    with pytest.raises(InputError, match=r"a float image must hold values in \[0, 1\], got 0\.\.1\.0001|got 0\.\.255"):
        to_pil(ramp)
    with pytest.raises(InputError, match=r"must hold values in \[0, 1\]"):
        to_pil(torch.from_numpy(ramp))
    with pytest.raises(InputError, match=r"must hold values in \[0, 1\]"):
        to_pil(-np.ones((20, 20), np.float32))


@pytest.mark.parametrize("suffix", [".tif", ".png", ".webp"])
def test_multi_frame_images_are_refused(tmp_path: Path, suffix: str) -> None:
    """Failed before: a multi-page TIFF or an animated PNG was scored on frame 1 only."""
    from PIL import Image

    from fapm.data.errors import DataError
    from fapm.data.image_io import load_rgb, read_size
    from fapm.inference.images import open_image

    frames = [Image.new("RGB", (32, 32), (v, v, v)) for v in (0, 255)]
    path = tmp_path / f"two{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match="holds 2 frames"):
        load_rgb(path)
    with pytest.raises(DataError, match="holds 2 frames"):  # the header check of a data set's set-up
        read_size(path)
    with pytest.raises(InputError, match="holds 2 frames"):
        open_image(path)
    with Image.open(path) as opened, pytest.raises(InputError, match="holds 2 frames"):
        to_pil(opened)
    single = tmp_path / f"one{suffix}"
    frames[0].save(single)
    assert load_rgb(single).size == (32, 32)


def test_tiny_inputs_use_the_shared_minimum_side() -> None:
    from fapm.data.image_io import MIN_SIDE

    with pytest.raises(InputError, match=f"min side {MIN_SIDE} px"):
        to_pil(np.zeros((MIN_SIDE - 1, 40, 3), np.uint8))
    assert to_pil(np.zeros((MIN_SIDE, 40, 3), np.uint8))[0].size == (40, MIN_SIDE)
