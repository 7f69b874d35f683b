"""What the predictor accepts as an image, turned into checked 8-bit RGB PIL images.

Accepted: a file path, a PIL image, a numpy array (``[H, W]``, ``[H, W, 1|3|4]``; uint8,
uint16, bool or float in [0, 1]) or a tensor (``[3, H, W]``, ``[1, H, W]``, ``[H, W]``;
uint8 or float in [0, 1]). Files are read by :mod:`fapm.data.image_io`, the reader training
and testing use (same formats, EXIF orientation, pixel rules). Greyscale is replicated to
RGB, alpha is dropped, 16-bit data is scaled by its bit depth. Float data holding NaN or
±Inf is refused (never scored as some colour).

Size limits (the same as the data modules', docs/predict.md): an image needs at least
``min_side`` pixels on each side (a 1-pixel image cannot be inspected; a 0-byte file is not
an image) and at most ``max_pixels`` pixels, checked from the file header before decoding
(so a decompression bomb costs nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fapm.data import image_io
from fapm.data.errors import DataError
from fapm.data.image_io import load_rgb, read_size, to_rgb

ImageInput = str | Path | Image.Image | np.ndarray | Tensor

#: Smallest accepted side in pixels (the data modules' :data:`fapm.data.image_io.MIN_SIDE`).
DEFAULT_MIN_SIDE = image_io.MIN_SIDE
#: Largest accepted image in pixels (about 7000 × 7000); PIL itself refuses above ~179 M.
DEFAULT_MAX_PIXELS = image_io.MAX_PIXELS


class InputError(DataError):
    """One input image that cannot be scored; the message names it."""


def check_size(width: int, height: int, source: str, min_side: int, max_pixels: int) -> None:
    """:class:`InputError` if a ``width × height`` image is too small to inspect or too large to load."""
    try:
        image_io.check_size(width, height, source, min_side, max_pixels)
    except DataError as err:
        raise InputError(str(err)) from None


def open_image(path: str | Path, min_side: int = DEFAULT_MIN_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read an image file as RGB after checking its header size; :class:`InputError` on any problem."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise InputError(f"{path}: empty file (0 bytes)")
        width, height = read_size(path)
        check_size(width, height, str(path), min_side, max_pixels)
        image = load_rgb(path, max_pixels)
    except InputError:
        raise
    except DataError as err:
        raise InputError(str(err)) from err
    except OSError as err:  # e.g. permission denied on stat
        raise InputError(f"Cannot read image file {path}: {err}") from err
    check_size(image.width, image.height, str(path), min_side, max_pixels)
    return image


def _array_to_uint8(array: np.ndarray, source: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return np.round(array.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            raise InputError(
                f"{source}: float image holds {bad} NaN or infinite value(s); refusing to guess its pixels"
            )
        if values.size and (float(values.min()) < 0.0 or float(values.max()) > 1.0):
            raise InputError(
                f"{source}: a float image must hold values in [0, 1], got {float(values.min()):.6g}.."
                f"{float(values.max()):.6g}; pass 0-255 data as uint8 (or divide it by 255)"
            )
        return np.round(values * 255.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(array, 0, 255).astype(np.uint8)
    raise InputError(f"{source}: unsupported array dtype {array.dtype}")


def array_to_pil(array: np.ndarray, source: str = "array") -> Image.Image:
    """``[H, W]`` or ``[H, W, 1|3|4]`` numpy image → RGB PIL image."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InputError(f"{source}: expected an [H, W] or [H, W, 1|3|4] image array, got shape {array.shape}")
    data = np.ascontiguousarray(_array_to_uint8(array, source))
    return to_rgb(Image.fromarray(data), source)


def tensor_to_pil(tensor: Tensor, source: str = "tensor") -> Image.Image:
    """``[3, H, W]``, ``[1, H, W]`` or ``[H, W]`` tensor (uint8, or float in [0, 1]) → RGB PIL image."""
    data = tensor.detach().cpu()
    if data.ndim == 3:
        if data.shape[0] not in (1, 3, 4):
            raise InputError(f"{source}: expected a [3, H, W] image tensor, got shape {tuple(tensor.shape)}")
        data = data.permute(1, 2, 0)
    elif data.ndim != 2:
        raise InputError(f"{source}: expected a [3, H, W] image tensor, got shape {tuple(tensor.shape)}")
    if data.dtype in (torch.float16, torch.bfloat16):
        data = data.float()
    return array_to_pil(data.numpy(), source)


def to_pil(
    item: ImageInput, index: int = 0, min_side: int = DEFAULT_MIN_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[Image.Image, str | None]:
    """One input → ``(RGB PIL image, its path or None)``; :class:`InputError` when unusable."""
    if isinstance(item, (str, Path)):
        return open_image(item, min_side, max_pixels), str(item)
    source = f"input #{index}"
    try:
        if isinstance(item, Image.Image):
            frames = int(getattr(item, "n_frames", 1) or 1)
            if frames > 1:
                raise InputError(f"{source}: {image_io.multi_frame_message(frames)}")
            image = to_rgb(item, source)
        elif isinstance(item, np.ndarray):
            image = array_to_pil(item, source)
        elif isinstance(item, Tensor):
            image = tensor_to_pil(item, source)
        else:
            raise InputError(f"{source}: cannot predict on a {type(item).__name__} (path, PIL image, array or tensor)")
    except InputError:
        raise
    except DataError as err:  # e.g. a float PIL image with NaN, an exotic mode
        raise InputError(str(err)) from err
    check_size(image.width, image.height, source, min_side, max_pixels)
    return image, None


def as_items(inputs: ImageInput | Sequence[ImageInput]) -> tuple[list[ImageInput], bool]:
    """Split ``inputs`` into single images; returns ``(items, was_a_single_image)``.

    A list/tuple, a ``[B, C, H, W]`` tensor and a ``[B, H, W, C]`` array are batches.
    """
    if isinstance(inputs, (list, tuple)):
        return list(inputs), False
    if isinstance(inputs, Tensor) and inputs.ndim == 4:
        return list(inputs.unbind(0)), False
    if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
        return list(inputs), False
    return [inputs], True
