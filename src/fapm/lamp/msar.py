"""Multi-scale spatially-asymmetric recalibration (MS-SAR, Wang et al.), regional strategy.

For every scale ``K`` the feature map is cut into a ``K×K`` grid of equal regions; each
region's mean vector goes through ``1×1 conv D→D'`` → BN → ReLU → ``1×1 conv D'→D`` →
sigmoid, and the resulting ``[B, D, K, K]`` weights are repeated back over their regions.
The weights of all scales are averaged and multiply the input:
``X̃ = X ⊙ (1/L) Σ_l Z^(l)``. With ``scales=(1,)`` this is squeeze-and-excitation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def regional_pool(x: Tensor, k: int) -> Tensor:
    """Mean of each region of a ``k×k`` grid of equal regions.

    Args:
        x: ``[B, D, H, W]`` with ``H`` and ``W`` divisible by ``k``.
        k: regions per side.

    Returns:
        ``[B, D, k, k]``; entry ``(i, j)`` is the mean over rows ``i·H/k … (i+1)·H/k − 1``
        and columns ``j·W/k … (j+1)·W/k − 1``.

    Raises:
        ValueError: if ``k`` does not divide ``H`` or ``W`` (regions would be unequal).
    """
    h, w = x.shape[-2:]
    if k < 1 or h % k or w % k:
        raise ValueError(
            f"MS-SAR scale K={k} must divide the feature map ({h}×{w}) into K×K equal regions; "
            f"choose scales that divide every recalibrated map, or change the input size"
        )
    return F.avg_pool2d(x, kernel_size=(h // k, w // k))


def repeat_regions(z: Tensor, size: tuple[int, int]) -> Tensor:
    """Upsample ``[B, D, K, K]`` to ``[B, D, H, W]`` by repeating each value over its region."""
    k_h, k_w = z.shape[-2:]
    h, w = size
    return z.repeat_interleave(h // k_h, dim=-2).repeat_interleave(w // k_w, dim=-1)


class MSSAR(nn.Module):
    """MS-SAR recalibration block (regional coordinate sets).

    Args:
        channels: ``D``, channels of the recalibrated map.
        scales: grid sizes ``K^(l)``; ``(1,)`` is squeeze-and-excitation.
        hidden_channels: ``D'``; default ``max(1, D // L)`` so that the parameter count does
            not grow with the number of scales (paper §3.5).

    Parameters per scale: ``Ω1`` (``D'×D``), BN (``2·D'``), ``Ω2`` (``D×D'``); the 1×1
    convolutions have no bias (the BN after ``Ω1`` makes its bias redundant, and the paper
    counts exactly ``2·L·D·D'`` weights).

    As in squeeze-and-excitation, the scale-1 branch batch-normalises one pooled vector
    per image, so training needs batches of at least 2 images.
    """

    def __init__(self, channels: int, scales: Sequence[int] = (1, 2, 4), hidden_channels: int | None = None) -> None:
        super().__init__()
        scales = tuple(int(k) for k in scales)
        if not scales or any(k < 1 for k in scales):
            raise ValueError(f"MS-SAR needs at least one positive scale, got {scales}")
        self.channels = channels
        self.scales = scales
        self.hidden_channels = hidden_channels or max(1, channels // len(scales))
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, self.hidden_channels, kernel_size=1, bias=False),
                nn.BatchNorm2d(self.hidden_channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(self.hidden_channels, channels, kernel_size=1, bias=False),
                nn.Sigmoid(),
            )
            for _ in scales
        )

    def weights(self, x: Tensor) -> Tensor:
        """Recalibration weights ``Z = (1/L) Σ_l Z^(l)``: ``[B, D, H, W]`` in ``(0, 1)``."""
        size = (x.shape[-2], x.shape[-1])
        pooled = [regional_pool(x, k) for k in self.scales]  # validates every scale first
        z = torch.zeros_like(x)
        for y, branch in zip(pooled, self.branches):
            z = z + repeat_regions(branch(y), size)
        return z / len(self.scales)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, D, H, W]`` → ``X ⊙ Z``, same shape."""
        return x * self.weights(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden_channels}, scales={self.scales}"
