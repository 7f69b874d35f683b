"""Pictures of a prediction: heat-map overlay and binary mask, at the image's original size."""

from __future__ import annotations

import numpy as np
from PIL import Image


def heatmap(values: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """``[H, W]`` values in ``[0, 1]`` → ``[H, W, 3]`` uint8 colours (matplotlib colormap)."""
    from matplotlib import colormaps  # lazy: matplotlib is slow to import

    rgba = colormaps[colormap](np.clip(values, 0.0, 1.0))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def overlay(image: Image.Image, normalised_map: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
    """Blend the normalised map's heat map (0.5 = threshold) over ``image``; same size as ``image``.

    Args:
        image: the original RGB image ``W × H``.
        normalised_map: ``[H, W]`` in ``[0, 1]``.
        alpha: weight of the heat map.
    """
    if normalised_map.shape != (image.height, image.width):
        raise ValueError(f"map {normalised_map.shape} does not match the image {image.height}x{image.width}")
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1.0 - alpha) * base + alpha * heatmap(normalised_map, colormap).astype(np.float32)
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))


def mask_image(mask: np.ndarray) -> Image.Image:
    """Boolean ``[H, W]`` mask → 8-bit greyscale PNG-ready image (255 = defect)."""
    return Image.fromarray(np.ascontiguousarray(mask, dtype=bool).astype(np.uint8) * 255)
