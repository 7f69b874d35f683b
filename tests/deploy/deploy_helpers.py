"""Helpers of the deployment tests (small fitted detectors of every variant)."""

from __future__ import annotations

import warnings

import torch

from fapm.deploy.info import DeployInfo
from fapm.models.adaptive import AdaptiveCoreset
from fapm.models.detector import MemoryDetector
from fapm.models.features import FeatureExtractor
from fapm.models.scoring import PatchCoreWeightedScore
from fapm.models.streams import ConcatLayers


def extractor() -> FeatureExtractor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FeatureExtractor("resnet18", pretrained="false", seed=0)


VARIANTS = {
    "fapm": lambda: MemoryDetector(extractor(), grid=(2, 2), coreset=AdaptiveCoreset(0.3)),
    # B: concatenated streams on the grid; C: separate layers, one region; A: PatchCore
    "ablation_b": lambda: MemoryDetector(extractor(), ConcatLayers(), grid=(2, 2), coreset=AdaptiveCoreset(0.3, adaptive=False)),
    "ablation_c": lambda: MemoryDetector(extractor(), grid=(1, 1), coreset=AdaptiveCoreset(0.3, adaptive=False)),
    # neighbourhood windows searched in place (the graph holds index tables, not a union copy);
    # PatchCore's support score covers the window's support set too
    "fapm_nbhd": lambda: MemoryDetector(
        extractor(), grid=(4, 4), coreset=AdaptiveCoreset(0.3), neighbourhood=1,
        image_score=PatchCoreWeightedScore(num_neighbors=3),
    ),
    # uneven regions: a 3x3 grid on ResNet-18's 8x8 and 4x4 maps at 64 px (regions of 2 or 3 rows/columns,
    # and 1 or 2), with the neighbourhood window and PatchCore's support set, which index regions by position
    "fapm_uneven": lambda: MemoryDetector(
        extractor(), grid=(3, 3), coreset=AdaptiveCoreset(0.3), neighbourhood=1,
        image_score=PatchCoreWeightedScore(num_neighbors=3),
    ),
    "fapm_nbhd_shift": lambda: MemoryDetector(
        extractor(), grid=(4, 4), coreset=AdaptiveCoreset(0.3), neighbourhood=1, neighbourhood_border="shift",
    ),
    "patchcore": lambda: MemoryDetector(
        extractor(), ConcatLayers(), grid=(1, 1), coreset=AdaptiveCoreset(0.2, adaptive=False), k=1,
        image_score=PatchCoreWeightedScore(num_neighbors=4),
    ),
}


def fit(variant: str, train: torch.Tensor, info: DeployInfo) -> MemoryDetector:
    det = VARIANTS[variant]().eval()
    mean, std = torch.tensor(info.mean).view(1, 3, 1, 1), torch.tensor(info.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        det.collect((train - mean) / std)
        det.build()
    return det


def normalised(images: torch.Tensor, info: DeployInfo) -> torch.Tensor:
    return (images - torch.tensor(info.mean).view(1, 3, 1, 1)) / torch.tensor(info.std).view(1, 3, 1, 1)
