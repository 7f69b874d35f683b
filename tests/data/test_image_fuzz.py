"""Fuzzing the image reader: mutated and truncated PNG/JPEG/TIFF/WebP/BMP files.

Whatever the bytes, the reader gives a valid 8-bit RGB image (or mask) or a ``DataError``
naming the file (``InputError`` in the predictor) — never another exception type. A seeded
loop (no extra dependency), a few hundred small files, a few seconds.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fapm.data.errors import DataError
from fapm.data.image_io import load_mask, load_rgb, read_size
from fapm.inference.images import InputError, open_image

N_MUTANTS = 80  # per format


def _valid_file(fmt: str, rng: np.random.Generator) -> bytes:
    pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    pixels[8:16, 10:20] = 255
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # an orientation tag, so EXIF parsing is fuzzed too
    buffer = io.BytesIO()
    options = {"TIFF": {"compression": "tiff_lzw"}, "WEBP": {"lossless": True}}.get(fmt, {})
    image.save(buffer, format=fmt, exif=exif.tobytes(), **options) if fmt != "BMP" else image.save(buffer, format=fmt)
    return buffer.getvalue()


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """Flip random bytes, truncate, cut out or insert a slice, append bytes, or overwrite the header / EXIF block."""
    buf = bytearray(data)
    kind = int(rng.integers(0, 7))
    if kind == 0:
        for pos in rng.integers(0, len(buf), int(rng.integers(1, 9))):
            buf[pos] = int(rng.integers(0, 256))
    elif kind == 1:
        buf = buf[: int(rng.integers(0, len(buf)))]
    elif kind == 2:
        start = int(rng.integers(0, len(buf)))
        del buf[start : start + int(rng.integers(1, 64))]
    elif kind == 3:
        start = int(rng.integers(0, len(buf)))
        buf[start:start] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif kind == 4:  # trailing bytes after the image
        buf += rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif kind == 5:  # the first 64 bytes hold the sizes, modes and offsets of every format here
        for pos in rng.integers(0, min(64, len(buf)), int(rng.integers(1, 5))):
            buf[pos] = int(rng.integers(0, 256))
    else:  # the EXIF block (a little TIFF: byte order, IFD offsets, tag types and counts)
        start = max(buf.find(b"MM\x00*"), buf.find(b"II*\x00"), 0)
        for pos in rng.integers(start, min(start + 80, len(buf)), int(rng.integers(1, 5))):
            buf[pos] = int(rng.integers(0, 256))
    return bytes(buf)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "WEBP", "BMP"])
def test_mutated_files_give_an_image_or_a_data_error(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(sum(map(ord, fmt)))
    valid = _valid_file(fmt, rng)
    outcomes = {"image": 0, "error": 0}
    for i in range(N_MUTANTS):
        path = tmp_path / f"m{i:03d}.{fmt.lower()}"
        path.write_bytes(_mutate(valid, rng))
        try:
            image = load_rgb(path)
        except DataError as err:
            assert path.name in str(err)
            outcomes["error"] += 1
        else:  # whatever decoded is a real RGB image
            assert image.mode == "RGB" and min(image.size) >= 1
            assert np.asarray(image).dtype == np.uint8
            outcomes["image"] += 1
        try:
            mask = load_mask(path)
        except DataError as err:
            assert path.name in str(err)
        else:
            assert mask.dtype == bool and mask.ndim == 2
        try:
            width, height = read_size(path)
        except DataError as err:
            assert path.name in str(err)
        else:
            assert width >= 0 and height >= 0
        try:
            scored = open_image(path, min_side=1)
        except InputError as err:
            assert path.name in str(err)
        else:
            assert scored.mode == "RGB"
    # The mutations are neither all harmless nor all fatal, so both branches were exercised.
    assert outcomes["error"] > 0 and outcomes["image"] > 0, outcomes
