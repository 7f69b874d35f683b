"""Small typed results shared by every detector, the Lightning glue and the metrics.

(Named ``outputs`` rather than ``types``: a module called ``types`` beside a script would
shadow the standard library's.)
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class AnomalyOutput:
    """What a detector returns for a batch of images.

    Attributes:
        image_scores: ``[B]`` one anomaly score per image (higher = more anomalous).
        anomaly_maps: ``[B, H, W]`` per-pixel anomaly scores at the input resolution.
        patch_scores: ``[B, h, w]`` the fused nearest-neighbour distance on the finest
            feature grid, before resize and blur (memory-bank detectors' scoring stage;
            ``None`` where a detector does not have it).
        aligned: ``[B]`` bool, which images test-time alignment warped (the others fell back
            to the neighbourhood search); ``None`` when alignment is off or not applicable.
            The caller counts them: the detector keeps no running counts.
    """

    image_scores: Tensor
    anomaly_maps: Tensor
    patch_scores: Tensor | None = None
    aligned: Tensor | None = None
