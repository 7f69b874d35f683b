"""What export and serving need of a loaded model: :class:`fapm.inference.FAPM` satisfies it.

The exporters take this interface rather than the ``FAPM`` class, so that ``fapm.inference.api``
(which calls them) and the exporters do not import each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from fapm.data.transforms import Preprocess
    from fapm.inference.thresholds import Thresholds
    from fapm.model_file import ModelFile


class LoadedModel(Protocol):
    """A fitted detector with its model file, pre-processing, device and thresholds."""

    detector: torch.nn.Module
    file: ModelFile
    device: torch.device
    preprocess: Preprocess
    thresholds: Thresholds
    image_threshold: float | None
    pixel_threshold: float | None
    facts: dict[str, Any]
