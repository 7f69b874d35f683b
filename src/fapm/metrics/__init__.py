"""Anomaly-detection metrics (MVTec AD protocol): image/pixel AUROC, AUPRO, F1-max.

Metric names live in :mod:`fapm.metrics.names`; import them from there (or from here).
Names are imported lazily: ``fapm.metrics.names`` alone does not import torchmetrics, so
scoring a model (which needs the names, not the metrics) starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "AnomalyMetrics",
    "IMAGE_AUROC",
    "IMAGE_F1_MAX",
    "IMAGE_F1_THRESHOLD",
    "PIXEL_AUPRO",
    "PIXEL_AUROC",
    "PIXEL_F1_MAX",
    "PIXEL_F1_THRESHOLD",
    "PixelSweepResult",
    "aupro",
    "auroc",
    "f1_max",
    "label_regions",
    "names",
    "per_defect",
    "pixel_sweep",
    "pro_curve",
]

# The function ``aupro`` shares its name with its sub-module, so it is bound eagerly (the
# sub-module imports numpy, scipy and torch, not torchmetrics).
from fapm.metrics.aupro import PixelSweepResult, aupro, label_regions, pixel_sweep, pro_curve  # noqa: E402

# public name -> sub-module defining it
_MODULE_OF: dict[str, str] = {
    "AnomalyMetrics": "anomaly_metrics",
    **dict.fromkeys(["auroc", "f1_max"], "functional"),
    **dict.fromkeys(
        ["IMAGE_AUROC", "IMAGE_F1_MAX", "IMAGE_F1_THRESHOLD", "PIXEL_AUPRO", "PIXEL_AUROC", "PIXEL_F1_MAX",
         "PIXEL_F1_THRESHOLD", "per_defect"],
        "names",
    ),
}


def __getattr__(name: str) -> Any:
    if name == "names":
        return importlib.import_module(f"{__name__}.names")
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from fapm.metrics import names
    from fapm.metrics.anomaly_metrics import AnomalyMetrics
    from fapm.metrics.aupro import PixelSweepResult, aupro, label_regions, pixel_sweep, pro_curve
    from fapm.metrics.functional import auroc, f1_max
    from fapm.metrics.names import (
        IMAGE_AUROC,
        IMAGE_F1_MAX,
        IMAGE_F1_THRESHOLD,
        PIXEL_AUPRO,
        PIXEL_AUROC,
        PIXEL_F1_MAX,
        PIXEL_F1_THRESHOLD,
        per_defect,
    )
