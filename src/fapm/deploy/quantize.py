"""INT8 post-training quantization of the backbone, with the memory rebuilt from INT8 features.

A memory-bank detector compares test features with stored training features, so the two
must come from the same network: quantizing only the scoring pass would compare INT8
features with float memories and shift every distance. :func:`build_int8` therefore

1. exports the float backbone (``images → features_0 …``) to ONNX;
2. quantizes it with NNCF (weights and activations INT8, QDQ nodes; min–max statistics
   and fast bias correction on ``calibration_images`` normal *training* images chosen by
   ``seed``; NNCF's statistics are deterministic, so one seed gives one model);
3. runs the quantized backbone in the runtime that will score (OpenVINO or ONNX Runtime:
   their INT8 kernels round differently) over every training image, and rebuilds the
   memories from those features with the detector's own coreset code;
4. exports the head with the new memories and merges it behind the quantized backbone:
   one ONNX file, INT8 backbone + float32 head (search, fusion, map, score). The merged
   file also outputs the backbone's features (``backbone/features_i``).
5. OpenVINO only: its low-precision transformations treat the backbone's last layers
   differently when the head follows (measured: features differ by ~0.2 % of their range
   from the backbone compiled alone), so the training features are extracted a second
   time *through the merged graph* (its feature outputs), the memories rebuilt from them
   and the head re-exported. The feature outputs stay in the file: the graph that scores
   is the graph that made the memories (a training image then scores ~0).

The head stays float32 because its top-k ranking of near-equal distances is where low
precision would change results; it is ~2–4 % of WRN-50-2's FLOPs.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from fapm.deploy.graph import INPUT_NAME
from fapm.deploy.info import DeployInfo
from fapm.deploy.onnx_export import export_backbone, export_head, merge, require, save

if TYPE_CHECKING:
    import onnx

    from fapm.models.build_report import BuildReport
    from fapm.models.detector import MemoryDetector

log = logging.getLogger(__name__)

QUANTIZERS = ("nncf",)


def calibration_indices(available: int, count: int, seed: int) -> list[int]:
    """``count`` distinct indices of ``available`` training images, a seeded random choice (sorted)."""
    if available < 1:
        raise ValueError("INT8 calibration needs at least one normal training image")
    generator = torch.Generator().manual_seed(int(seed))
    chosen = torch.randperm(available, generator=generator)[: min(count, available)]
    return sorted(int(i) for i in chosen)


def _stack(images: Sequence[Tensor], indices: Sequence[int]) -> Tensor:
    return torch.stack([images[i] for i in indices]).float()


def quantize_backbone(
    backbone: onnx.ModelProto, calibration: Tensor, preset: str = "performance", fast_bias_correction: bool = True,
) -> onnx.ModelProto:
    """INT8 QDQ version of an exported float backbone (NNCF, ONNX backend).

    Args:
        backbone: :func:`~fapm.deploy.onnx_export.export_backbone`'s graph.
        calibration: RGB ``[N, 3, S, S]`` in ``[0, 1]``, normal images only; all ``N`` are
            used (one at a time) for the activation statistics.
        preset: ``performance`` (symmetric activations, fastest) or ``mixed``
            (asymmetric activations).
        fast_bias_correction: NNCF's bias correction of quantized convolutions.
    """
    nncf = require("nncf")
    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    if preset not in presets:
        raise ValueError(f"preset must be one of {sorted(presets)}, got {preset!r}")
    items = [{INPUT_NAME: calibration[i : i + 1].contiguous().numpy()} for i in range(len(calibration))]
    logging.getLogger("nncf").setLevel(logging.WARNING)
    return nncf.quantize(
        backbone, nncf.Dataset(items), preset=presets[preset], subset_size=len(items),
        fast_bias_correction=fast_bias_correction,
    )


class BackboneRunner:
    """A backbone graph in ONNX Runtime or OpenVINO: ``RGB [B, 3, S, S] → [features_i, …]`` tensors.

    Args:
        model: the graph (or its file).
        runtime: ``onnxruntime`` or ``openvino``.
        threads: intra-op threads (None = the runtime's default).
        outputs: run only the outputs whose names start with this (default: all outputs).
    """

    def __init__(
        self, model: onnx.ModelProto | str | Path, runtime: str = "openvino", threads: int | None = None,
        outputs: str = "",
    ) -> None:
        from fapm.deploy.runtimes import ort_session, ov_compile

        self._tmp: tempfile.TemporaryDirectory | None = None
        if hasattr(model, "graph"):
            self._tmp = tempfile.TemporaryDirectory()
            model = save(model, Path(self._tmp.name) / "backbone.onnx")  # type: ignore[arg-type]
        self.runtime = runtime
        if runtime == "onnxruntime":
            session = ort_session(model, threads)
            names = [o.name for o in session.get_outputs() if o.name.startswith(outputs)]
            self._run: Callable[[np.ndarray], list[np.ndarray]] = lambda x: session.run(names, {INPUT_NAME: x})
        elif runtime == "openvino":
            compiled = ov_compile(model, "f32", threads)
            request = compiled.create_infer_request()
            ports = [p for p in compiled.outputs if p.get_any_name().startswith(outputs)]
            self._run = lambda x: [np.array(v) for v in (lambda r: [r[p] for p in ports])(request.infer({INPUT_NAME: x}))]
        else:
            raise ValueError(f"runtime must be onnxruntime or openvino, got {runtime!r}")

    def __call__(self, images: Tensor) -> list[Tensor]:
        return [torch.from_numpy(a) for a in self._run(images.float().contiguous().numpy())]


@dataclass
class Int8Model:
    """The result of :func:`build_int8`.

    Attributes:
        path: the merged ONNX file (INT8 backbone + float32 head).
        detector: a copy of the input detector whose memories hold INT8 features (its
            own float backbone no longer matches them: score through ``path``).
        backbone: the quantized backbone graph alone.
        info: the file's metadata (``backbone_precision="int8"``, ``calibration``).
        report: the memory build report.
    """

    path: Path
    detector: MemoryDetector
    backbone: onnx.ModelProto
    info: DeployInfo
    report: BuildReport


def build_int8(
    detector: MemoryDetector,
    train_images: Sequence[Tensor],
    info: DeployInfo,
    path: str | Path,
    calibration_images: int = 64,
    seed: int = 0,
    runtime: str = "openvino",
    batch_size: int = 8,
    preset: str = "performance",
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> Int8Model:
    """Quantize ``detector``'s backbone, rebuild its memories from INT8 features, export both.

    Args:
        detector: a :class:`~fapm.models.detector.MemoryDetector` on the CPU (fitted or not;
            it is copied, never changed).
        train_images: the normal training images, RGB ``[3, S, S]`` in ``[0, 1]`` each
            (a tensor ``[N, 3, S, S]`` or any indexable sequence).
        info: metadata of the export; its thresholds are dropped (they were decided on the
            float model's scores: decide new ones on held-out normal images scored by the
            INT8 model, e.g. with :func:`fapm.inference.thresholds.normal_thresholds`).
        path: output ``.onnx`` file.
        calibration_images: how many training images calibrate the activation ranges.
        seed: which training images calibrate (:func:`calibration_indices`).
        runtime: the runtime that will score (``openvino`` or ``onnxruntime``); it also
            extracts the training features, so that the memories hold exactly the features
            scoring will see.
        batch_size: images per batch of the feature extraction.
        preset: NNCF preset (``performance`` or ``mixed``).
        progress: optional tqdm-like wrapper over the extraction batches.
    """
    nncf = require("nncf")
    n = len(train_images)
    chosen = calibration_indices(n, calibration_images, seed)
    det = copy.deepcopy(detector).cpu().eval()
    float_info = info.replace(image_threshold=None, pixel_threshold=None, backbone_precision="fp32", calibration=None)
    backbone = quantize_backbone(export_backbone(det, float_info), _stack(train_images, chosen), preset=preset)
    report = _rebuild(det, BackboneRunner(backbone, runtime), train_images, batch_size, progress)
    int8_info = float_info.replace(
        backbone_precision="int8",
        calibration={"quantizer": "nncf", "nncf_version": nncf.__version__, "preset": preset, "seed": int(seed),
                     "images": len(chosen), "indices": chosen, "feature_runtime": runtime, "train_images": n},
    )
    merged = with_feature_outputs(merge(backbone, export_head(det, int8_info), int8_info))
    if runtime == "openvino":
        report = _rebuild(det, BackboneRunner(merged, runtime, outputs=FEATURE_OUTPUTS), train_images, batch_size, progress)
        merged = with_feature_outputs(merge(backbone, export_head(det, int8_info), int8_info))
    return Int8Model(save(merged, path), det, backbone, int8_info, report)


FEATURE_OUTPUTS = "backbone/features_"


def with_feature_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the merged graph's backbone features (``backbone/features_i``) to its outputs."""
    onnx = require("onnx")
    produced = {o for node in model.graph.node for o in node.output}
    existing = {o.name for o in model.graph.output}
    i = 0
    while f"{FEATURE_OUTPUTS}{i}" in produced:
        name = f"{FEATURE_OUTPUTS}{i}"
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        i += 1
    return model


def _rebuild(
    det: MemoryDetector, runner: BackboneRunner, train_images: Sequence[Tensor], batch_size: int,
    progress: Callable[[Iterable[int]], Iterable[int]] | None,
) -> BuildReport:
    """Build ``det``'s memories from ``runner``'s features of every training image (its public fit stage)."""
    n = len(train_images)
    starts: Iterable[int] = range(0, n, batch_size)
    if progress is not None:
        starts = progress(starts)
    with torch.inference_mode():
        batches = (dict(zip(det.extractor.layers, runner(_stack(train_images, range(lo, min(n, lo + batch_size))))))
                   for lo in starts)
        return det.fit_features(batches, expected_images=n)


def backbone_outputs_equal(a: onnx.ModelProto, b: onnx.ModelProto, images: Tensor, runtime: str = "onnxruntime") -> bool:
    """True when two backbone graphs give bit-identical features on ``images`` (determinism checks)."""
    fa, fb = BackboneRunner(a, runtime)(images), BackboneRunner(b, runtime)(images)
    return all(torch.equal(x, y) for x, y in zip(fa, fb))


def describe_quantized(model: onnx.ModelProto) -> dict[str, Any]:
    """Counts of quantize/dequantize nodes and quantized convolutions (for reports)."""
    ops = [node.op_type for node in model.graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear"),
            "Conv": ops.count("Conv"), "nodes": len(ops)}
