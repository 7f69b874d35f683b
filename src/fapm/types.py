"""Small typed results shared by every detector, the Lightning glue and the metrics."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class AnomalyOutput:
    """What a detector returns for a batch of images.

    Attributes:
        image_scores: ``[B]`` one anomaly score per image (higher = more anomalous).
        anomaly_maps: ``[B, H, W]`` per-pixel anomaly scores at the input resolution.
    """

    image_scores: Tensor
    anomaly_maps: Tensor
