"""Robust image and mask file reading (any PIL mode -> 8-bit RGB image / boolean mask)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fapm.data.errors import DataError

#: File extensions (lower case) treated as images when listing folders.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

# What PIL raises for unreadable, truncated or hostile files.
_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def is_image_file(path: Path) -> bool:
    """True for a regular file whose extension is in ``IMAGE_EXTENSIONS`` (case-insensitive)."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by name; hidden files skipped."""
    return sorted(p for p in Path(folder).iterdir() if not p.name.startswith(".") and is_image_file(p))


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """Scale a single-channel integer/float array to uint8 by its bit depth (never clip a 16-bit range)."""
    if mode in _SIXTEEN_BIT_MODES:
        bits = 16
    elif mode == "F":
        # Float images: [0, 1] data is scaled, anything else is taken as already 0..255.
        scale = 255.0 if float(np.nanmax(array, initial=0.0)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(array * scale), 0, 255).round().astype(np.uint8)
    else:
        # Mode "I" (32-bit signed) carries no bit depth; it is almost always 16-bit data
        # (older Pillow decodes 16-bit PNGs this way), so assume 16 bits unless values exceed it.
        bits = 16 if int(array.max(initial=0)) <= 0xFFFF else 32
    max_value = float(2**bits - 1)
    scaled = np.clip(array.astype(np.float64), 0, max_value) * (255.0 / max_value)
    return scaled.round().astype(np.uint8)


def _open_loaded(path: Path) -> Image.Image:
    """Open and fully decode ``path`` (so truncated files fail here), as a detached PIL image."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Image file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette-transparency notices; not actionable here
            with Image.open(path) as img:
                img.load()
                return img.copy()
    except _READ_ERRORS as exc:
        raise DataError(f"Cannot read image file {path}: {exc}") from exc


def _grey_array_uint8(img: Image.Image) -> np.ndarray:
    """``[H, W]`` uint8 luminance of any-mode image (16-bit/32-bit/float scaled, not clipped)."""
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        return _to_uint8(np.asarray(img), img.mode)
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    return np.asarray(img.convert("L"))


def load_rgb(path: str | Path) -> Image.Image:
    """Load any image file as an 8-bit RGB PIL image.

    Greyscale (L, 1), 16-bit greyscale (I;16, I) and float (F) images are scaled to 8 bits
    by their bit depth (65535 -> 255), then replicated to 3 channels. Alpha (RGBA, LA, PA)
    is dropped (not composited), palette and CMYK images are converted by PIL.

    Raises:
        DataError: the file is missing, not an image, or corrupt/truncated.
    """
    return to_rgb(_open_loaded(Path(path)), str(path))


def to_rgb(img: Image.Image, source: str = "image") -> Image.Image:
    """Any-mode PIL image → 8-bit RGB, with :func:`load_rgb`'s rules (``source`` names it in errors)."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        return Image.fromarray(_grey_array_uint8(img)).convert("RGB")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    try:
        return img.convert("RGB")
    except ValueError as exc:  # exotic modes PIL cannot convert directly
        raise DataError(f"Unsupported image mode {img.mode!r} in {source}") from exc


def load_mask(path: str | Path, nonzero: bool = False) -> np.ndarray:
    """Load a ground-truth mask file as a boolean ``[H, W]`` array (True = defect).

    The file is converted to 8-bit luminance first (16-bit masks are scaled by bit depth,
    colour masks use PIL's L conversion). By default a pixel is a defect when its 8-bit value
    is ``> 127`` (robust to JPEG-ish noise around 0/255 masks). With ``nonzero=True`` any
    nonzero raw value is a defect (VisA-style masks that store 0/1 or instance ids).

    Raises:
        DataError: the file is missing, not an image, or corrupt/truncated.
    """
    img = _open_loaded(Path(path))
    if nonzero:
        if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F", "L", "P", "1"):
            return np.asarray(img) != 0
        return np.asarray(img.convert("L")) != 0
    return _grey_array_uint8(img) > 127


def read_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header only (no pixel decoding).

    Raises:
        DataError: the file is missing or not a recognisable image.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Image file not found: {path}")
    try:
        with Image.open(path) as img:
            return img.size
    except _READ_ERRORS as exc:
        raise DataError(f"Cannot read image file {path}: {exc}") from exc
