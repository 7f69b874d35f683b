"""The one image and mask reader of the package: training, testing and predict all read through it.

Rules (docs/predict.md, "Images the model accepts"):

* **Formats**: PNG, JPEG, BMP, TIFF and WebP, by content (PIL is only allowed to try these
  decoders, so an obscure or hostile format is never even parsed). Folder listings use the
  matching extensions, :data:`IMAGE_EXTENSIONS`. GIF is not accepted: it holds at most 256
  colours (the pixel statistics differ from the camera images a model is fitted on) and may be
  animated; convert it to PNG.
* **Orientation**: an EXIF orientation tag is applied (as ``ImageOps.exif_transpose`` does) to images
  AND masks, and :func:`read_size` reports the displayed size, so an image, its mask and the
  anomaly map all have the orientation a viewer shows.
* **Size**: :func:`check_size` — at least :data:`MIN_SIDE` pixels on each side, at most
  :data:`MAX_PIXELS` pixels (checked from the header, before decoding).
* **Pixels**: any mode becomes 8-bit RGB (16-bit scaled by bit depth, alpha dropped, palette
  and CMYK converted by PIL). Float images holding NaN or ±Inf are refused.
* **Masks**: a pixel is a defect when its value is non-zero (0/1, 0/255 and instance-id masks
  all work). Masks in a lossy format (JPEG, WebP) are compared at half range instead
  (8-bit luminance > 127), because compression leaves small non-zero values everywhere.

Every problem is a :class:`~fapm.data.errors.DataError` naming the file; no other exception
type leaves this module for a file's content (tested by fuzzing, tests/data/test_image_fuzz.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from fapm.data.errors import DataError

#: File extensions (lower case) treated as images when listing folders (training, testing, predict).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
#: PIL decoders the reader may use (JPEG includes MPO, the multi-picture JPEG of phone cameras).
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
#: Lossy formats: their masks are thresholded at half range (see the module docstring).
_LOSSY_FORMATS = frozenset({"JPEG", "MPO", "WEBP"})
#: Smallest accepted side in pixels, for training, test and predict images alike.
MIN_SIDE = 16
#: Largest accepted image in pixels (about 7000 × 7000), checked from the header before decoding.
MAX_PIXELS = 50_000_000

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ORIENTATION = ExifTags.Base.Orientation
_SWAPS_SIDES = frozenset({5, 6, 7, 8})  # EXIF orientations that rotate by 90°
#: EXIF orientation -> the transposition that shows the stored pixels as displayed (ImageOps.exif_transpose's table).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def is_image_file(path: Path) -> bool:
    """True for a regular file whose extension is in ``IMAGE_EXTENSIONS`` (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by name; hidden files skipped."""
    return sorted(p for p in Path(folder).iterdir() if not p.name.startswith(".") and is_image_file(p))


def check_size(width: int, height: int, source: str, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> None:
    """``DataError`` naming ``source`` if a ``width × height`` image is too small to inspect or too large to load."""
    if min(width, height) < min_side:
        raise DataError(
            f"{source}: image of {width}x{height} pixels is too small to inspect (min side {min_side} px)"
        )
    if width * height > max_pixels:
        raise DataError(
            f"{source}: image of {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{max_pixels} pixels (max_pixels)"
        )


def _formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)


def _unreadable(path: Path, exc: BaseException) -> DataError:
    reason = str(exc) or type(exc).__name__
    if "cannot identify image file" in reason:
        reason = f"not an image in a supported format ({', '.join(IMAGE_FORMATS)})"
    return DataError(f"Cannot read image file {path}: {reason}")


def _orientation(img: Image.Image) -> int:
    """The EXIF (or XMP) orientation of an opened image, 1 when none or unreadable.

    The same decision for :func:`read_size` (header only) and :func:`_open_loaded` (decoded).
    """
    if img.format == "TIFF":
        return 1  # PIL's TIFF plugin already reports the displayed size and rotates on decoding
    if img.format == "PNG" and "exif" not in img.info and not any("xmp" in str(k).lower() for k in img.info):
        return 1  # PNG.getexif() decodes the pixels to look for a late eXIf chunk: skip when there is none
    try:
        value = img.getexif().get(_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - an unreadable EXIF block: the pixels as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def multi_frame_message(frames: int) -> str:
    """Why an image of several frames is refused (rather than scoring its first frame only)."""
    return (
        f"holds {frames} frames (a multi-page TIFF or an animated PNG/WebP); only single-frame images are "
        "read, since scoring the first frame alone could call a defect on another frame good: save each "
        "frame as its own file"
    )


def _open_loaded(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, str]:
    """Open, size-check (header), fully decode and EXIF-orient ``path``.

    Returns ``(detached PIL image, PIL format name)``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Image file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette-transparency notices; not actionable here
            # Opened from a file object, not a name: Pillow then never memory-maps the pixels. Its
            # memory-mapped path mis-reads uncompressed TIFFs with an EXIF rotation (Pillow 13).
            with open(path, "rb") as handle, Image.open(handle, formats=_formats()) as img:
                width, height = img.size
                if width * height > max_pixels:  # before decoding: a huge header costs nothing
                    check_size(width, height, str(path), 1, max_pixels)
                frames = int(getattr(img, "n_frames", 1) or 1)
                if frames > 1:
                    raise DataError(f"{path}: {multi_frame_message(frames)}")
                img.load()
                orientation = _orientation(img)
                image = img.copy()  # detached from the file
            if orientation in _TRANSPOSE:
                image = image.transpose(_TRANSPOSE[orientation])
            return image, str(img.format)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL's decoders raise many types on hostile bytes; all mean "unreadable"
        raise _unreadable(path, exc) from exc


def _require_finite(array: np.ndarray, source: str) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise DataError(f"{source}: float image holds {bad} NaN or infinite value(s); refusing to guess its pixels")


def _to_uint8(array: np.ndarray, mode: str, source: str) -> np.ndarray:
    """Scale a single-channel integer/float array to uint8 by its bit depth (never clip a 16-bit range)."""
    if mode in _SIXTEEN_BIT_MODES:
        bits = 16
    elif mode == "F":
        _require_finite(array, source)
        # Float images: [0, 1] data is scaled, anything else is taken as already 0..255.
        scale = 255.0 if float(np.max(array, initial=0.0)) <= 1.0 else 1.0
        return np.clip(array.astype(np.float64) * scale, 0, 255).round().astype(np.uint8)
    else:
        # Mode "I" (32-bit signed) carries no bit depth; it is almost always 16-bit data
        # (older Pillow decodes 16-bit PNGs this way), so assume 16 bits unless values exceed it.
        bits = 16 if int(array.max(initial=0)) <= 0xFFFF else 32
    max_value = float(2**bits - 1)
    scaled = np.clip(array.astype(np.float64), 0, max_value) * (255.0 / max_value)
    return scaled.round().astype(np.uint8)


def _grey_array_uint8(img: Image.Image, source: str) -> np.ndarray:
    """``[H, W]`` uint8 luminance of any-mode image (16-bit/32-bit/float scaled, not clipped)."""
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        return _to_uint8(np.asarray(img), img.mode, source)
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    return np.asarray(img.convert("L"))


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Load any accepted image file as an 8-bit RGB PIL image, EXIF orientation applied.

    Greyscale (L, 1), 16-bit greyscale (I;16, I) and float (F) images are scaled to 8 bits
    by their bit depth (65535 -> 255), then replicated to 3 channels. Alpha (RGBA, LA, PA)
    is dropped (not composited), palette and CMYK images are converted by PIL. The minimum
    side is not checked here (see :func:`check_size`); the pixel limit is, before decoding.

    Raises:
        DataError: the file is missing, not an image in an accepted format, corrupt or
            truncated, larger than ``max_pixels``, or a float image with NaN/Inf values.
    """
    return to_rgb(_open_loaded(Path(path), max_pixels)[0], str(path))


def to_rgb(img: Image.Image, source: str = "image") -> Image.Image:
    """Any-mode PIL image → 8-bit RGB, with :func:`load_rgb`'s rules (``source`` names it in errors)."""
    if img.mode == "RGB":
        return img
    try:
        if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
            return Image.fromarray(_grey_array_uint8(img, source)).convert("RGB")
        if img.mode in ("P", "PA"):
            img = img.convert("RGBA")
        return img.convert("RGB")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - exotic modes PIL cannot convert
        raise DataError(f"Unsupported image mode {img.mode!r} in {source}: {exc}") from exc


def load_mask(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Load a ground-truth mask file as a boolean ``[H, W]`` array (True = defect), EXIF-oriented.

    A pixel is a defect when its stored value is non-zero: greyscale and 16-bit masks by
    their raw value (0/1, 0/255, 0/65535 and instance ids all work), colour and palette masks
    when any RGB channel is non-zero (alpha ignored). Masks in a lossy format (JPEG, WebP)
    use ``8-bit luminance > 127`` instead, as compression noise is non-zero almost everywhere.

    Raises:
        DataError: the file is missing, not an image, corrupt/truncated, or holds NaN/Inf.
    """
    path = Path(path)
    img, file_format = _open_loaded(path, max_pixels)
    try:
        if file_format in _LOSSY_FORMATS:
            return _grey_array_uint8(img, str(path)) > 127
        if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F", "L", "1"):
            array = np.asarray(img)
            _require_finite(array, str(path))
            return array != 0
        if img.mode in ("P", "PA"):
            img = img.convert("RGBA")
        return np.asarray(img.convert("RGB")).any(axis=-1)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - see _open_loaded
        raise _unreadable(path, exc) from exc


def read_size(path: str | Path) -> tuple[int, int]:
    """Displayed ``(width, height)`` of an image file from its header only (EXIF rotation applied).

    Raises:
        DataError: the file is missing or not a recognisable image in an accepted format.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Image file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(path, "rb") as handle, Image.open(handle, formats=_formats()) as img:
                width, height = img.size
                frames = int(getattr(img, "n_frames", 1) or 1)
                if frames > 1:  # refused at set-up already, before any fit
                    raise DataError(f"{path}: {multi_frame_message(frames)}")
                if _orientation(img) in _SWAPS_SIDES:
                    width, height = height, width
                return width, height
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - see _open_loaded
        raise _unreadable(path, exc) from exc
