"""Anomaly-detection metrics (MVTec AD protocol): image/pixel AUROC, AUPRO, F1-max.

Metric names live in :mod:`fapm.metrics.names`; import them from there (or from here).
"""

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
