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
    image, _ = to_pil(torch.from_numpy(ramp * 255.0))
    assert np.asarray(image)[-1, -1, 0] == 255


def test_tiny_inputs_use_the_shared_minimum_side() -> None:
    from fapm.data.image_io import MIN_SIDE

    with pytest.raises(InputError, match=f"min side {MIN_SIDE} px"):
        to_pil(np.zeros((MIN_SIDE - 1, 40, 3), np.uint8))
    assert to_pil(np.zeros((MIN_SIDE, 40, 3), np.uint8))[0].size == (40, MIN_SIDE)
