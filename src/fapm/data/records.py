"""Sample records (one image + its mask/label) and the dataset that turns them into tensors."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from fapm.data.errors import DataError
from fapm.data.image_io import MAX_PIXELS, MIN_SIDE, check_size, load_mask, load_rgb, read_size
from fapm.data.transforms import Preprocess

#: ``defect_type`` of normal images.
GOOD = "good"


class MaskWarning(UserWarning):
    """A defective image's mask marks no pixel (usually a mask stored in another convention)."""


@dataclass(frozen=True)
class SampleRecord:
    """One dataset entry before loading.

    Attributes:
        image_path: the image file.
        mask_path: its ground-truth mask, or ``None`` (normal image, or mask unknown).
        label: 0 normal, 1 defective.
        defect_type: ``"good"`` for normal images, else the defect class name.
        has_mask: whether the pixel ground truth is known. Normal images have a known,
            all-zero mask; a defective image without ``mask_path`` has ``has_mask=False``.
    """

    image_path: Path
    mask_path: Path | None
    label: int
    defect_type: str
    has_mask: bool = True


def _size_mismatch(mask: Path, mask_size: tuple[int, int], image: Path, image_size: tuple[int, int]) -> str:
    return (
        f"mask {mask} is {mask_size[0]}x{mask_size[1]} but image {image} is "
        f"{image_size[0]}x{image_size[1]} (width x height)"
    )


def validate_records(
    records: Sequence[SampleRecord], max_listed: int = 5, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS
) -> None:
    """Check every image (and mask) exists, has a readable header, an accepted size, and mask size == image size.

    Only headers are read, so this is fast. Sizes are the displayed ones (EXIF orientation
    applied), and the size limits are predict's (:func:`fapm.data.image_io.check_size`), so a
    model is never fitted or tested on images it would refuse to score. All problems are
    collected and raised as ONE ``DataError`` listing the first ``max_listed``.
    """
    problems: list[str] = []
    for rec in records:
        try:
            image_size = read_size(rec.image_path)
            check_size(*image_size, str(rec.image_path), min_side, max_pixels)
            if rec.label == 1 and rec.has_mask and rec.mask_path is None:
                problems.append(f"defective image {rec.image_path} has no mask file")
                continue
            if rec.mask_path is None:
                continue
            if not rec.mask_path.is_file():
                problems.append(f"mask file not found for {rec.image_path}: expected {rec.mask_path}")
                continue
            mask_size = read_size(rec.mask_path)
            if mask_size != image_size:
                problems.append(_size_mismatch(rec.mask_path, mask_size, rec.image_path, image_size))
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        more = f"\n  ... and {len(problems) - max_listed} more" if len(problems) > max_listed else ""
        listed = "\n  ".join(problems[:max_listed])
        raise DataError(f"Invalid dataset ({len(problems)} problem(s)):\n  {listed}{more}")


class SampleListDataset(Dataset):
    """Map-style dataset over ``SampleRecord``s.

    Each item is a dict: ``image`` float ``[3, S, S]``, ``mask`` float ``[1, S, S]`` in {0, 1}
    (zeros when normal or unknown), ``label`` int64 scalar, ``defect_type`` str, ``path`` str,
    ``has_mask`` bool. Batched by the default collate into ``[B, ...]`` tensors, lists of str
    and a bool tensor ``[B]``.

    Masks: any non-zero pixel is a defect (:func:`fapm.data.image_io.load_mask`). A
    defective image whose mask marks no pixel gets a :class:`MaskWarning` naming both files
    (once per file), since its pixel ground truth then says "no defect anywhere".
    """

    def __init__(self, records: Sequence[SampleRecord], preprocess: Preprocess | None = None) -> None:
        self.records = list(records)
        self.preprocess = preprocess if preprocess is not None else Preprocess()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        image = load_rgb(rec.image_path)
        if rec.mask_path is not None:
            mask_array = load_mask(rec.mask_path)
            if mask_array.shape != (image.height, image.width):  # only if built without validate_records
                mask_size = (mask_array.shape[1], mask_array.shape[0])
                raise DataError(_size_mismatch(rec.mask_path, mask_size, rec.image_path, image.size))
            if rec.label == 1 and not mask_array.any():
                warnings.warn(
                    f"mask {rec.mask_path} of defective image {rec.image_path} marks no defect pixel "
                    "(all zero); its pixel metrics count it as defect-free",
                    MaskWarning,
                    stacklevel=2,
                )
            mask = self.preprocess.mask(mask_array)
        else:
            mask = self.preprocess.empty_mask()
        return {
            "image": self.preprocess(image),
            "mask": mask,
            # the pixels that show the image (not letterbox padding): the pixel metrics count these only
            "valid": self.preprocess.valid(image.width, image.height),
            "label": torch.tensor(rec.label, dtype=torch.int64),
            "defect_type": rec.defect_type,
            "path": str(rec.image_path),
            "has_mask": bool(rec.has_mask),
        }
