"""Reconstruction losses: per-element base losses (L2, L1, SSIM) and LAMP amplification.

LAMP (Park et al., Eq. 1–2)::

    L' = L_base / max(L_base) · (1 − ε)
    L_LAMP = Σ_{h,w,c} −log(1 − L')

Where the max is taken: per sample by default (``max_over="sample"``). Eq. 1 defines the
loss of *one* image ``y ∈ R^{H×W×C}`` and Eq. 2 normalises "its" base loss, so the
per-sample max is the literal reading; it also keeps a sample's loss independent of the
other images in its batch, hence of the batch size and of how the validation set is
batched. ``max_over="batch"`` (one max over the whole mini-batch, what a framework
``reduce_max`` over the batch tensor gives) is available for comparison.

Gradient through the max: by default autograd differentiates Eq. 2 as written
(``detach_max=False``). ``detach_max=True`` treats the max as a constant normaliser.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

MaxOver = Literal["sample", "batch"]
Reduction = Literal["sum", "mean"]


def squared_error(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Per-element L2: ``(ŷ − y)²``, ``[B, C, H, W]``."""
    return (reconstruction - target).square()


def absolute_error(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Per-element L1: ``|ŷ − y|``, ``[B, C, H, W]``."""
    return (reconstruction - target).abs()


def gaussian_kernel1d(size: int, sigma: float, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
    """Normalised 1-D Gaussian, ``[size]``."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    kernel = torch.exp(-coords.square() / (2 * sigma**2))
    return kernel / kernel.sum()


class SSIMDissimilarity(nn.Module):
    """Per-element structural dissimilarity ``1 − SSIM`` (Gaussian window, per channel).

    The local statistics use a separable Gaussian window with reflect padding, so the
    map keeps the input size and every element has a loss value (needed by LAMP's
    element-wise amplification). Values lie in ``[0, 2]``.

    Args:
        window_size: odd window side (11 in Wang et al. 2004).
        sigma: Gaussian standard deviation of the window.
        data_range: dynamic range of the images (1 for ``[0, 1]`` images).
        k1, k2: SSIM stabilising constants.
    """

    def __init__(self, window_size: int = 11, sigma: float = 1.5, data_range: float = 1.0, k1: float = 0.01, k2: float = 0.03) -> None:
        super().__init__()
        if window_size % 2 != 1:
            raise ValueError(f"SSIM window_size must be odd, got {window_size}")
        self.window_size = window_size
        self.c1 = (k1 * data_range) ** 2
        self.c2 = (k2 * data_range) ** 2
        # float64 so that double-precision inputs get an exactly normalised window
        self.register_buffer("kernel", gaussian_kernel1d(window_size, sigma, dtype=torch.float64), persistent=False)

    def _filter(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        pad = self.window_size // 2
        mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
        x = F.pad(x, (pad, pad, pad, pad), mode=mode)
        k = self.kernel.to(x.dtype)
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    def forward(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        """``[B, C, H, W]`` × 2 → ``1 − SSIM`` map ``[B, C, H, W]``."""
        x, y = reconstruction, target
        mu_x, mu_y = self._filter(x), self._filter(y)
        var_x = self._filter(x * x) - mu_x.square()
        var_y = self._filter(y * y) - mu_y.square()
        cov = self._filter(x * y) - mu_x * mu_y
        ssim = ((2 * mu_x * mu_y + self.c1) * (2 * cov + self.c2)) / (
            (mu_x.square() + mu_y.square() + self.c1) * (var_x + var_y + self.c2)
        )
        return 1.0 - ssim


def lamp_normalise(base: Tensor, epsilon: float, max_over: MaxOver = "sample", detach_max: bool = False) -> Tensor:
    """Eq. 2: ``L' = L / max(L) · (1 − ε)``, same shape as ``base`` (``[B, ...]``).

    An all-zero ``L`` (perfect reconstruction) has max 0; the max is clamped to the
    smallest positive float so ``L' = 0`` there instead of ``0/0``.
    """
    if max_over == "sample":
        peak = base.flatten(1).amax(dim=1).view(-1, *([1] * (base.dim() - 1)))
    elif max_over == "batch":
        peak = base.amax()
    else:
        raise ValueError(f"max_over must be 'sample' or 'batch', got {max_over!r}")
    if detach_max:
        peak = peak.detach()
    peak = peak.clamp_min(torch.finfo(base.dtype).tiny)
    return base / peak * (1.0 - epsilon)


def lamp_terms(base: Tensor, epsilon: float, max_over: MaxOver = "sample", detach_max: bool = False) -> Tensor:
    """Element-wise LAMP terms ``−log(1 − L')`` (Eq. 1 before the sum), shape of ``base``."""
    return -torch.log1p(-lamp_normalise(base, epsilon, max_over, detach_max))


class ReconstructionLoss(nn.Module):
    """Training objective: a per-element base loss, optionally LAMP-amplified.

    Per sample the element terms are summed over ``C·H·W`` (Eq. 1; ``reduction="mean"``
    divides by ``C·H·W``), then averaged over the batch.

    Args:
        base: ``"l2"``, ``"l1"`` or ``"ssim"`` (per-element ``1 − SSIM``).
        lamp: amplify the base loss with LAMP.
        epsilon: ``ε`` of Eq. 2, in ``(0, 1)``; the largest element contributes ``−log ε``.
        max_over: ``"sample"`` or ``"batch"``: where Eq. 2's max is taken (see module doc).
        detach_max: stop the gradient through the max.
        reduction: ``"sum"`` (Eq. 1) or ``"mean"`` over the elements of a sample.
        ssim_window, ssim_sigma, data_range: SSIM window and the images' dynamic range.
    """

    def __init__(
        self,
        base: Literal["l2", "l1", "ssim"] = "l2",
        lamp: bool = True,
        epsilon: float = 1e-3,
        max_over: MaxOver = "sample",
        detach_max: bool = False,
        reduction: Reduction = "sum",
        ssim_window: int = 11,
        ssim_sigma: float = 1.5,
        data_range: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 < epsilon < 1.0:
            raise ValueError(f"LAMP epsilon must lie in (0, 1), got {epsilon}")
        if max_over not in ("sample", "batch"):
            raise ValueError(f"max_over must be 'sample' or 'batch', got {max_over!r}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        bases: dict[str, Callable[[], Callable[[Tensor, Tensor], Tensor]]] = {
            "l2": lambda: squared_error,
            "l1": lambda: absolute_error,
            "ssim": lambda: SSIMDissimilarity(ssim_window, ssim_sigma, data_range),
        }
        if base not in bases:
            raise ValueError(f"base loss must be one of {sorted(bases)}, got {base!r}")
        self.base = base
        self.lamp = lamp
        self.epsilon = epsilon
        self.max_over: MaxOver = max_over
        self.detach_max = detach_max
        self.reduction: Reduction = reduction
        self.base_fn = bases[base]()

    def base_map(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        """Per-element base loss ``[B, C, H, W]`` (no amplification, no reduction)."""
        return self.base_fn(reconstruction, target)

    def elementwise(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        """Per-element terms that are summed into the loss, ``[B, C, H, W]``."""
        base = self.base_map(reconstruction, target)
        if not self.lamp:
            return base
        return lamp_terms(base, self.epsilon, self.max_over, self.detach_max)

    def per_sample(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        """Loss of each sample, ``[B]``."""
        terms = self.elementwise(reconstruction, target).flatten(1)
        return terms.sum(dim=1) if self.reduction == "sum" else terms.mean(dim=1)

    def forward(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        """``[B, C, H, W]`` × 2 → scalar, mean over the batch of the per-sample loss."""
        return self.per_sample(reconstruction, target).mean()

    def extra_repr(self) -> str:
        return (
            f"base={self.base}, lamp={self.lamp}, epsilon={self.epsilon}, max_over={self.max_over}, "
            f"detach_max={self.detach_max}, reduction={self.reduction}"
        )
