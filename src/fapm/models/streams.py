"""How backbone layers become feature streams, each with its own memories.

* :class:`SeparateLayers` — one stream per layer (FAPM's layer-wise memory).
* :class:`ConcatLayers` — deeper layers resized to the first layer's grid and concatenated
  into one stream (PatchCore; ablation B).
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


class FeatureStreams(Protocol):
    def count(self, layers: Sequence[str]) -> int:
        """Number of streams made from ``layers``."""

    def __call__(self, features: dict[str, Tensor]) -> list[Tensor]:
        """``{layer: [B, C_l, H_l, W_l]}`` (shallow to deep) → streams ``[B, C_s, H_s, W_s]``."""


class SeparateLayers:
    """Every layer is its own stream."""

    def count(self, layers: Sequence[str]) -> int:
        return len(layers)

    def __call__(self, features: dict[str, Tensor]) -> list[Tensor]:
        return list(features.values())


class ConcatLayers:
    """All layers resized to the first layer's size and concatenated along channels.

    Args:
        mode: interpolation for the deeper layers (``bilinear`` as PatchCore, or ``nearest``).
    """

    def __init__(self, mode: str = "bilinear") -> None:
        self.mode = mode

    def count(self, layers: Sequence[str]) -> int:
        return 1

    def __call__(self, features: dict[str, Tensor]) -> list[Tensor]:
        maps = list(features.values())
        size = maps[0].shape[-2:]
        kwargs = {} if self.mode == "nearest" else {"align_corners": False}
        resized = [maps[0]] + [
            m if m.shape[-2:] == size else F.interpolate(m, size=size, mode=self.mode, **kwargs) for m in maps[1:]
        ]
        return [torch.cat(resized, dim=1)]


STREAMS: dict[str, Callable[[str], FeatureStreams]] = {
    "separate": lambda upsample: SeparateLayers(),
    "concat": ConcatLayers,
}


def make_streams(fusion: str, upsample: str = "bilinear") -> FeatureStreams:
    """Feature streams by the config name of the fusion (``separate`` or ``concat``)."""
    if fusion not in STREAMS:
        raise ValueError(f"model.fusion must be one of {sorted(STREAMS)}, got {fusion!r}")
    return STREAMS[fusion](upsample)
