"""Using a fitted model: thresholds, the Python API, the predict pipeline and export.

``from fapm.inference import FAPM`` then ``FAPM.load(path).predict(image)``; see docs/predict.md.
Names are imported lazily so that e.g. the thresholds maths does not import Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["FAPM", "PredictionResult", "Thresholds", "export_torchscript", "normalise", "predict_files"]

_MODULE_OF: dict[str, str] = {
    "FAPM": "api",
    "PredictionResult": "api",
    "Thresholds": "thresholds",
    "normalise": "thresholds",
    "export_torchscript": "export",
    "predict_files": "predict",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from fapm.inference.api import FAPM, PredictionResult
    from fapm.inference.export import export_torchscript
    from fapm.inference.predict import predict_files
    from fapm.inference.thresholds import Thresholds, normalise
