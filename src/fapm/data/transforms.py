"""Pre-processing: resize (squashed, or letterboxed to keep the aspect ratio), optional centre crop, normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
import torch.nn.functional as F
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


RESIZE_MODES = ("squash", "letterbox")


@dataclass(frozen=True)
class Box:
    """Where an image lies on the resized ``S × S`` canvas: rows ``top:top+height``, columns ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int


class Preprocess:
    """Image/mask pre-processing with plain-dict parameters (storable in a model file).

    Images: bilinear antialiased resize to ``image_size`` x ``image_size`` — ``squash`` stretches
    the image to the square; ``letterbox`` keeps its aspect ratio (the long side becomes
    ``image_size``) and pads the short side on both sides with the normalisation mean (0 after
    normalising) — then an optional centre crop to ``crop_size`` (``None`` = none: the whole
    image is inspected), scale to [0, 1], normalise with ``mean``/``std``.
    Masks: the same geometry with nearest-neighbour resize, binarised to float {0, 1}.
    :meth:`valid` marks the pixels that come from the image (not the letterbox padding), which
    the pixel metrics count; :meth:`to_original` maps an anomaly map back onto the image.
    """

    def __init__(
        self,
        image_size: int = 256,
        crop_size: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        resize: str = "squash",
    ) -> None:
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if crop_size is not None and not 0 < int(crop_size) <= int(image_size):
            raise ValueError(f"crop_size must be in (0, image_size={image_size}] or None, got {crop_size}")
        if len(mean) != 3 or len(std) != 3 or any(float(v) <= 0 for v in std):
            raise ValueError(f"mean/std must be 3 values with std > 0, got mean={mean}, std={std}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.image_size = int(image_size)
        self.crop_size = None if crop_size is None else int(crop_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.resize = resize

    @property
    def output_size(self) -> int:
        """Side length of the produced tensors (the crop size, or the resize size without crop)."""
        return self.image_size if self.crop_size is None else self.crop_size

    def box(self, width: int, height: int) -> Box:
        """Where an image of ``width × height`` lands on the resized ``image_size²`` canvas (before the crop)."""
        side = self.image_size
        if self.resize == "squash":
            return Box(0, 0, side, side)
        scale = side / max(width, height)
        w, h = max(1, min(side, round(width * scale))), max(1, min(side, round(height * scale)))
        return Box((side - h) // 2, (side - w) // 2, h, w)

    def _crop_offset(self) -> int:
        return 0 if self.crop_size is None else round((self.image_size - self.crop_size) / 2.0)

    def _geometry(self, tensor: Tensor) -> Tensor:
        return tensor if self.crop_size is None else _centre_crop(tensor, self.crop_size)

    def _canvas(self, resized: Tensor, box: Box, fill: Sequence[float]) -> Tensor:
        """``[C, h, w]`` → ``[C, S, S]`` with the image in ``box`` and ``fill`` (one value per channel) around it."""
        if (box.height, box.width) == (self.image_size, self.image_size):
            return resized
        canvas = torch.tensor(fill, dtype=resized.dtype).view(-1, 1, 1).repeat(1, self.image_size, self.image_size)
        canvas[:, box.top : box.top + box.height, box.left : box.left + box.width] = resized
        return canvas

    def __call__(self, image: Image.Image) -> Tensor:
        """RGB PIL image of any size -> normalised float tensor ``[3, S, S]`` (``S = output_size``)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        box = self.box(*image.size)
        size = (box.width, box.height)
        # PIL's BILINEAR widens its kernel when downscaling, i.e. it is antialiased.
        resized = image.resize(size, Image.Resampling.BILINEAR) if image.size != size else image
        array = np.asarray(resized, dtype=np.float32) / 255.0
        tensor = self._canvas(torch.from_numpy(array).permute(2, 0, 1), box, self.mean)
        tensor = self._geometry(tensor)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return ((tensor - mean) / std).contiguous()

    def mask(self, mask: np.ndarray) -> Tensor:
        """Boolean/0-255 mask ``[H, W]`` -> float ``{0, 1}`` tensor ``[1, S, S]`` aligned with ``__call__``."""
        binary = np.asarray(mask) > (127 if np.asarray(mask).dtype == np.uint8 else 0)
        pil = Image.fromarray(binary.astype(np.uint8) * 255)
        box = self.box(pil.width, pil.height)
        size = (box.width, box.height)
        if pil.size != size:
            pil = pil.resize(size, Image.Resampling.NEAREST)
        tensor = torch.from_numpy(np.asarray(pil) > 127).to(torch.float32).unsqueeze(0)
        return self._geometry(self._canvas(tensor, box, (0.0,))).contiguous()

    def valid(self, width: int, height: int) -> Tensor:
        """``[1, S, S]`` bool: True where the pixel shows the ``width × height`` image (False on letterbox padding)."""
        box = self.box(width, height)
        canvas = torch.zeros(1, self.image_size, self.image_size, dtype=torch.bool)
        canvas[:, box.top : box.top + box.height, box.left : box.left + box.width] = True
        return self._geometry(canvas).contiguous()

    def hidden_share(self, width: int, height: int) -> float:
        """Share of a ``width × height`` image's area that the centre crop removes (0 without a crop)."""
        if self.crop_size is None:
            return 0.0
        box = self.box(width, height)
        lo, hi = self._crop_offset(), self._crop_offset() + self.crop_size
        rows = max(0, min(hi, box.top + box.height) - max(lo, box.top))
        cols = max(0, min(hi, box.left + box.width) - max(lo, box.left))
        return 1.0 - rows * cols / (box.height * box.width)

    def border_share(self) -> float:
        """Share of a square image's area that the centre crop removes: the most any image loses
        (a letterboxed non-square image loses less, some of the crop falling on padding)."""
        return self.hidden_share(self.image_size, self.image_size)

    def border_note(self) -> str:
        """One line saying what the crop leaves out ('' without a crop)."""
        if self.crop_size is None or self.crop_size == self.image_size:
            return ""
        return (f"crop_size={self.crop_size} of image_size={self.image_size}: the outer "
                f"{100 * self.border_share():.1f} % of every image's area (a {(self.image_size - self.crop_size) // 2}"
                f"-pixel border at that size) is not inspected; crop_size=null inspects the whole image")

    def to_original(self, maps: Tensor, size: tuple[int, int], fill: float = 0.0) -> Tensor:
        """Maps ``[B, S, S]`` of pre-processed inputs → ``[B, H, W]`` on the original image of ``size = (W, H)``.

        Undoes the centre crop (the border it removed gets ``fill``), takes the image's part of a
        letterboxed canvas, and undoes the resize (bilinear).
        """
        side = self.image_size
        if self.crop_size is not None and self.crop_size != side:
            top = self._crop_offset()
            canvas = maps.new_full((maps.shape[0], side, side), fill)
            canvas[:, top : top + self.crop_size, top : top + self.crop_size] = maps
            maps = canvas
        width, height = size
        box = self.box(width, height)
        maps = maps[:, box.top : box.top + box.height, box.left : box.left + box.width]
        if tuple(maps.shape[-2:]) == (height, width):
            return maps
        return F.interpolate(maps.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False).squeeze(1)

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
            "resize": self.resize,
        }

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> Preprocess:
        """Inverse of ``to_dict``; unknown keys are rejected so stale model files fail loudly.

        ``resize`` may be absent: files written before it existed squashed every image.
        """
        unknown = set(params) - {"image_size", "crop_size", "mean", "std", "resize"}
        if unknown:
            raise ValueError(f"Unknown Preprocess parameters: {sorted(unknown)}")
        return cls(**params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Preprocess) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Preprocess(image_size={self.image_size}, crop_size={self.crop_size}, resize={self.resize!r})"
