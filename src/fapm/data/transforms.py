"""Pre-processing as in the released FAPM code: resize, centre-crop, ImageNet normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

#: ImageNet channel statistics used by the torchvision backbones.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def denormalize(
    images: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Undo the normalisation for display: ``[B, 3, H, W]`` (or ``[3, H, W]``) -> same shape in ``[0, 1]``."""
    shape = (3, 1, 1) if images.dim() == 3 else (1, 3, 1, 1)
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images * s + m).clamp(0.0, 1.0)


def _centre_crop(tensor: Tensor, size: int) -> Tensor:
    """Crop the centre ``size`` x ``size`` of a ``[C, H, W]`` tensor (torchvision's rounding of the offset)."""
    height, width = tensor.shape[-2:]
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return tensor[..., top : top + size, left : left + size]


class Preprocess:
    """Image/mask pre-processing with plain-dict parameters (storable in a model file).

    Images: bilinear antialiased resize to ``image_size`` x ``image_size``, centre crop to
    ``crop_size`` (``None`` = no crop), scale to [0, 1], normalise with ``mean``/``std``.
    Masks: the same geometry with nearest-neighbour resize, binarised to float {0, 1}.
    """

    def __init__(
        self,
        image_size: int = 256,
        crop_size: int | None = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if crop_size is not None and not 0 < int(crop_size) <= int(image_size):
            raise ValueError(f"crop_size must be in (0, image_size={image_size}] or None, got {crop_size}")
        if len(mean) != 3 or len(std) != 3 or any(float(v) <= 0 for v in std):
            raise ValueError(f"mean/std must be 3 values with std > 0, got mean={mean}, std={std}")
        self.image_size = int(image_size)
        self.crop_size = None if crop_size is None else int(crop_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    @property
    def output_size(self) -> int:
        """Side length of the produced tensors (the crop size, or the resize size without crop)."""
        return self.image_size if self.crop_size is None else self.crop_size

    def _geometry(self, tensor: Tensor) -> Tensor:
        return tensor if self.crop_size is None else _centre_crop(tensor, self.crop_size)

    def __call__(self, image: Image.Image) -> Tensor:
        """RGB PIL image of any size -> normalised float tensor ``[3, S, S]`` (``S = output_size``)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        size = (self.image_size, self.image_size)
        # PIL's BILINEAR widens its kernel when downscaling, i.e. it is antialiased.
        resized = image.resize(size, Image.Resampling.BILINEAR) if image.size != size else image
        array = np.asarray(resized, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        tensor = self._geometry(tensor)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return ((tensor - mean) / std).contiguous()

    def mask(self, mask: np.ndarray) -> Tensor:
        """Boolean/0-255 mask ``[H, W]`` -> float ``{0, 1}`` tensor ``[1, S, S]`` aligned with ``__call__``."""
        binary = np.asarray(mask) > (127 if np.asarray(mask).dtype == np.uint8 else 0)
        pil = Image.fromarray(binary.astype(np.uint8) * 255)
        size = (self.image_size, self.image_size)
        if pil.size != size:
            pil = pil.resize(size, Image.Resampling.NEAREST)
        tensor = torch.from_numpy(np.asarray(pil) > 127).to(torch.float32).unsqueeze(0)
        return self._geometry(tensor).contiguous()

    def empty_mask(self) -> Tensor:
        """All-zero mask ``[1, S, S]`` (normal images, or images whose mask is unknown)."""
        return torch.zeros(1, self.output_size, self.output_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain-python parameters (JSON/YAML/torch.save friendly)."""
        return {
            "image_size": self.image_size,
            "crop_size": self.crop_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> Preprocess:
        """Inverse of ``to_dict``; unknown keys are rejected so stale model files fail loudly."""
        unknown = set(params) - {"image_size", "crop_size", "mean", "std"}
        if unknown:
            raise ValueError(f"Unknown Preprocess parameters: {sorted(unknown)}")
        return cls(**params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Preprocess) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Preprocess(image_size={self.image_size}, crop_size={self.crop_size})"
