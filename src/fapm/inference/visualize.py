"""Pictures of a prediction: heat-map overlay and binary mask, at the image's original size.

Both stay light on large images: the heat map is a 256-entry colour table indexed by the
8-bit quantised map (3 bytes per pixel), and the blend is PIL's.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image


@lru_cache(maxsize=4)
def colour_table(colormap: str = "jet") -> np.ndarray:
    """``[256, 3]`` uint8 colours of a matplotlib colormap."""
    from matplotlib import colormaps  # lazy: matplotlib is slow to import

    rgba = colormaps[colormap](np.linspace(0.0, 1.0, 256))
    return (rgba[:, :3] * 255.0 + 0.5).astype(np.uint8)


def heatmap(values: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """``[H, W]`` values in ``[0, 1]`` → ``[H, W, 3]`` uint8 colours."""
    index = (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return colour_table(colormap)[index]


def overlay(image: Image.Image, normalised_map: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
    """Blend the normalised map's heat map (0.5 = threshold) over ``image``; same size as ``image``.

    Args:
        image: the original RGB image ``W × H``.
        normalised_map: ``[H, W]`` in ``[0, 1]``.
        alpha: weight of the heat map.
    """
    if normalised_map.shape != (image.height, image.width):
        raise ValueError(f"map {normalised_map.shape} does not match the image {image.height}x{image.width}")
    return Image.blend(image.convert("RGB"), Image.fromarray(heatmap(normalised_map, colormap)), alpha)


def mask_image(mask: np.ndarray) -> Image.Image:
    """Boolean ``[H, W]`` mask → 8-bit greyscale image (255 = defect)."""
    return Image.fromarray(np.ascontiguousarray(mask, dtype=bool).astype(np.uint8) * 255)
