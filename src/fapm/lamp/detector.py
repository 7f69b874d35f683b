"""LAMP detector: the autoencoder plus reconstruction-error scoring (plain ``nn.Module``).

The data pipeline hands over ImageNet-normalised images. The detector undoes that
normalisation (``pixel_mean``/``pixel_std``) and the autoencoder reconstructs the image in
``[0, 1]``: SSIM's constants and the per-element losses then have their usual scale, and
errors are comparable between categories. With ``pixel_mean = 0`` and ``pixel_std = 1``
(and no output sigmoid) the autoencoder reconstructs the normalised tensor directly.

Scoring: per-pixel error ``e = mean_c (x̂ − x)²`` ``[B, H, W]``; image score = L2
reconstruction error (mean of ``e`` over the image, unblurred); anomaly map = ``e``
blurred with the same Gaussian as FAPM's maps (σ = 4, :func:`fapm.models.scoring.gaussian_blur`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fapm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fapm.lamp.autoencoder import ConvAutoencoder
from fapm.models.scoring import gaussian_blur
from fapm.outputs import AnomalyOutput


class LampDetector(nn.Module):
    """Reconstruction-based anomaly detector.

    Args:
        autoencoder: the reconstruction network (``[B, C, H, W]`` → same shape).
        blur_sigma: σ of the Gaussian applied to the anomaly maps (0 = none).
        pixel_mean, pixel_std: the normalisation of the incoming images, undone before
            reconstruction.
    """

    def __init__(
        self,
        autoencoder: ConvAutoencoder | nn.Module,
        blur_sigma: float = 4.0,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.blur_sigma = float(blur_sigma)
        self.register_buffer("pixel_mean", torch.tensor(list(pixel_mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(list(pixel_std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def to_target(self, images: Tensor) -> Tensor:
        """Normalised ``[B, C, H, W]`` → the image the autoencoder must reproduce, same shape."""
        return images * self.pixel_std.to(images.dtype) + self.pixel_mean.to(images.dtype)

    def reconstruct(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised images ``[B, C, H, W]`` → ``(target, reconstruction)``, both ``[B, C, H, W]``."""
        target = self.to_target(images)
        return target, self.autoencoder(target)

    def score(self, target: Tensor, reconstruction: Tensor) -> AnomalyOutput:
        """Scores from a reconstruction: ``image_scores [B]``, ``anomaly_maps [B, H, W]``."""
        error = (reconstruction - target).square().mean(dim=1)
        return AnomalyOutput(
            image_scores=error.flatten(1).mean(dim=1),
            anomaly_maps=gaussian_blur(error, self.blur_sigma),
        )

    def forward(self, images: Tensor) -> AnomalyOutput:
        """Normalised images ``[B, C, H, W]`` → :class:`AnomalyOutput`."""
        return self.score(*self.reconstruct(images))

    def facts(self) -> dict[str, Any]:
        """What the network is (for ``metrics.json`` and model files)."""
        ae = self.autoencoder
        return {
            "model_family": "lamp",
            "parameters": sum(p.numel() for p in self.parameters()),
            "recalibration": getattr(ae, "recalibration", "none"),
            "recalibration_scales": list(getattr(ae, "scales", None) or []),
            "depth": getattr(ae, "depth", None),
            "channels": list(getattr(ae, "channels", [])),
            "patches_per_side": getattr(ae, "patches_per_side", 1),
            "blur_sigma": self.blur_sigma,
        }
