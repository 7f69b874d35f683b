"""Metric names: the single source of truth for the keys of ``AnomalyMetrics.compute()``.

Import these constants instead of repeating the strings (logging, reports, configs).
"""

from __future__ import annotations

IMAGE_AUROC = "image_auroc"
IMAGE_F1_MAX = "image_f1_max"
IMAGE_F1_THRESHOLD = "image_f1_threshold"

PIXEL_AUROC = "pixel_auroc"
PIXEL_AUPRO = "pixel_aupro"
PIXEL_F1_MAX = "pixel_f1_max"
PIXEL_F1_THRESHOLD = "pixel_f1_threshold"

IMAGE_METRICS: tuple[str, ...] = (IMAGE_AUROC, IMAGE_F1_MAX, IMAGE_F1_THRESHOLD)
PIXEL_METRICS: tuple[str, ...] = (PIXEL_AUROC, PIXEL_AUPRO, PIXEL_F1_MAX, PIXEL_F1_THRESHOLD)

# Speed over the timed test batches (images per second, median milliseconds per image).
FPS = "fps"
LATENCY_MS = "latency_ms"

PER_DEFECT_SEPARATOR = "/"


def per_defect(metric: str, defect_type: str) -> str:
    """Key of a per-defect-type metric, e.g. ``per_defect(IMAGE_AUROC, "crack") == "image_auroc/crack"``."""
    return f"{metric}{PER_DEFECT_SEPARATOR}{defect_type}"


def split_per_defect(key: str) -> tuple[str, str | None]:
    """Inverse of :func:`per_defect`: ``"image_auroc/crack" -> ("image_auroc", "crack")``;
    a key without a defect type gives ``(key, None)``."""
    metric, sep, defect_type = key.partition(PER_DEFECT_SEPARATOR)
    return (metric, defect_type) if sep else (key, None)
