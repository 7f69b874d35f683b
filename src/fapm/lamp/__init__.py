"""LAMP: a convolutional autoencoder trained on normal images with an amplified
reconstruction loss, and MS-SAR recalibration for its encoder (second model family)."""

from fapm.lamp.autoencoder import ConvAutoencoder, default_channels, default_depth, recalibration_scales
from fapm.lamp.detector import LampDetector
from fapm.lamp.loss import ReconstructionLoss, SSIMDissimilarity, lamp_normalise, lamp_terms
from fapm.lamp.msar import MSSAR, regional_pool, repeat_regions

__all__ = [
    "MSSAR",
    "ConvAutoencoder",
    "LampDetector",
    "ReconstructionLoss",
    "SSIMDissimilarity",
    "default_channels",
    "default_depth",
    "lamp_normalise",
    "lamp_terms",
    "recalibration_scales",
    "regional_pool",
    "repeat_regions",
]
