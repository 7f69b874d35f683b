"""Deployment on a CPU: ONNX export of the whole scoring path, three runtimes, INT8 backbones.

* :func:`export_onnx` — fitted detector → one ``.onnx`` file (dynamic batch, opset 18).
* :class:`TorchScorer`, :class:`OnnxRuntimeScorer`, :class:`OpenVINOScorer` — one
  interface, ``score(images) -> DeployOutput``; :func:`make_scorer` picks one by name.
* :func:`build_int8` — NNCF INT8 backbone, memories rebuilt from its features, exported.

``onnx``/``onnxscript``/``onnxruntime``/``openvino``/``nncf`` are optional (the ``deploy``
extra) and imported only when used. Names are imported lazily.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_MODULE_OF = {
    "DeployInfo": "info",
    "ExportError": "onnx_export",
    "export_onnx": "onnx_export",
    "export_backbone": "onnx_export",
    "export_head": "onnx_export",
    "check_onnx": "onnx_export",
    "Scorer": "runtimes",
    "TorchScorer": "runtimes",
    "OnnxRuntimeScorer": "runtimes",
    "OpenVINOScorer": "runtimes",
    "DeployOutput": "runtimes",
    "InputSizeError": "runtimes",
    "make_scorer": "runtimes",
    "RUNTIMES": "runtimes",
    "build_int8": "quantize",
    "Int8Model": "quantize",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from fapm.deploy.info import DeployInfo
    from fapm.deploy.onnx_export import ExportError, check_onnx, export_backbone, export_head, export_onnx
    from fapm.deploy.quantize import Int8Model, build_int8
    from fapm.deploy.runtimes import (RUNTIMES, DeployOutput, InputSizeError, OnnxRuntimeScorer, OpenVINOScorer,
                                      Scorer, TorchScorer, make_scorer)
