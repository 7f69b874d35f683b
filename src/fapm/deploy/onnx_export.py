"""Export a fitted detector's whole scoring path to ONNX (opset 18, dynamic batch axis).

    from fapm.deploy import DeployInfo, export_onnx
    export_onnx(detector, "model.onnx", DeployInfo(image_size=224, image_threshold=3.2))

The file: input ``images`` — RGB float32 ``[B, 3, S, S]`` in ``[0, 1]``, already resized
and centre-cropped (the normalisation is inside the graph, as in the TorchScript export);
outputs ``image_scores [B]`` (float32), ``anomaly_maps [B, S, S]`` (float32) and ``labels
[B]`` (bool, ``score >= image_threshold``; all False when no threshold was stored). The
batch axis is dynamic; ``S`` is fixed: ONNX Runtime and OpenVINO refuse another size
themselves (ORT: "Got invalid dimensions for input: images ... Expected: 224"; OpenVINO:
"Can't set the input tensor ... shape"), and :mod:`fapm.deploy.runtimes` refuses it first
with an error naming the expected size. ``metadata_props["fapm"]`` holds a
:class:`~fapm.deploy.info.DeployInfo` as JSON.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript). The
TorchScript-based exporter (``dynamo=False``) freezes the batch size inside the image
score's gather and fails at other batch sizes, so it is not offered. Needs ``onnx`` and
``onnxscript`` (the ``deploy`` extra); ``check=True`` also needs ``onnxruntime``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fapm.deploy.graph import INPUT_NAME, OUTPUT_NAMES, BackboneGraph, HeadGraph, ScoringGraph
from fapm.deploy.info import DeployInfo, metadata_props

if TYPE_CHECKING:
    import onnx

    from fapm.models.detector import MemoryDetector

log = logging.getLogger(__name__)

OPSET = 18
#: Largest batch the exported graphs declare (a bound torch.export needs; not a real limit).
MAX_BATCH = 4096


class ExportError(RuntimeError):
    """The exported graph does not reproduce the eager model, or cannot be made."""


def require(module: str, extra: str = "deploy") -> Any:
    """Import an optional dependency or fail with the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{module} is needed for this (pip install 'fapm[{extra}]' or pip install {module})") from err


def _to_onnx(module: nn.Module, example: tuple[Tensor, ...], input_names: Sequence[str], output_names: Sequence[str]) -> onnx.ModelProto:
    """``torch.onnx.export(dynamo=True)`` with a dynamic first axis on every input."""
    require("onnxscript")
    onnx = require("onnx")
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    dynamic = tuple({0: batch} for _ in example)
    # HeadGraph takes *features: its dynamic shapes are one tuple for the varargs
    shapes: Any = (dynamic,) if isinstance(module, HeadGraph) else dynamic
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        path = Path(tmp) / "graph.onnx"
        try:
            torch.onnx.export(
                module, example, str(path), dynamo=True, input_names=list(input_names), output_names=list(output_names),
                dynamic_shapes=shapes, opset_version=OPSET, external_data=False, verbose=False,
            )
        except Exception as err:  # noqa: BLE001 - torch.export's errors are many and long
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ExportError(f"torch.onnx.export failed for {type(module).__name__}: {first}") from err
        return onnx.load(str(path))


def _set_metadata(model: onnx.ModelProto, info: DeployInfo) -> None:
    del model.metadata_props[:]
    for key, value in metadata_props(info).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _prepare(detector: MemoryDetector, memory: bool = True) -> None:
    if memory and not detector.fitted:
        from fapm.models.detector import NotFittedError

        raise NotFittedError("export needs a fitted detector (build or load its memory first)")
    if getattr(detector, "aligner", None) is not None:
        raise ExportError(
            f"model.align={detector.aligner.mode} is scored eagerly only (each image's registration decides "
            "whether it is warped or falls back): export a model fitted with model.align=none"
        )
    if next(detector.extractor.parameters()).device.type != "cpu":
        raise ExportError("export on the CPU: move the detector there first (detector.cpu())")
    detector.eval()


def export_backbone(detector: MemoryDetector, info: DeployInfo) -> onnx.ModelProto:
    """The backbone alone: ``images`` → ``features_0 … features_{L-1}`` (pooled, float32).

    The detector need not be fitted (only its extractor is exported)."""
    _prepare(detector, memory=False)
    module = BackboneGraph(detector, info.mean, info.std).eval()
    example = (torch.rand(2, *info.input_shape, generator=torch.Generator().manual_seed(0)),)
    names = [f"features_{i}" for i in range(len(module.layers))]
    model = _to_onnx(module, example, [INPUT_NAME], names)
    _set_metadata(model, info)
    return model


def export_head(detector: MemoryDetector, info: DeployInfo) -> onnx.ModelProto:
    """The head alone: ``features_0 …`` → ``image_scores, anomaly_maps, labels``."""
    _prepare(detector)
    backbone = BackboneGraph(detector, info.mean, info.std).eval()
    head = HeadGraph(detector, (info.image_size, info.image_size), info.image_threshold).eval()
    with torch.no_grad():
        example = backbone(torch.rand(2, *info.input_shape, generator=torch.Generator().manual_seed(0)))
    names = [f"features_{i}" for i in range(len(example))]
    model = _to_onnx(head, tuple(example), names, OUTPUT_NAMES)
    _set_metadata(model, info)
    return model


def merge(backbone: onnx.ModelProto, head: onnx.ModelProto, info: DeployInfo) -> onnx.ModelProto:
    """One graph: ``backbone``'s ``features_i`` outputs feed ``head``'s inputs of the same name."""
    onnx = require("onnx")
    from onnx import compose

    backbone, head = (onnx.ModelProto.FromString(m.SerializeToString()) for m in (backbone, head))
    head.ir_version = backbone.ir_version
    for model in (backbone, head):
        del model.metadata_props[:]  # the merged file gets ``info``
    names = [o.name for o in backbone.graph.output]
    wanted = [i.name for i in head.graph.input]
    if names != wanted:
        raise ExportError(f"backbone outputs {names} do not match the head's inputs {wanted}")
    backbone = compose.add_prefix(backbone, "backbone/", rename_inputs=False, rename_outputs=True)
    head = compose.add_prefix(head, "head/", rename_inputs=True, rename_outputs=False)
    io_map = [(f"backbone/{n}", f"head/{n}") for n in names]
    merged = compose.merge_models(backbone, head, io_map=io_map)
    _set_metadata(merged, info)
    return merged


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    onnx = require("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def eager_outputs(detector: MemoryDetector, images: Tensor, info: DeployInfo) -> tuple[Tensor, Tensor]:
    """The eager detector's ``(scores, maps)`` for RGB ``images`` in ``[0, 1]``."""
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        out = detector((images - mean) / std)
    return out.image_scores, out.anomaly_maps


def check_onnx(
    path: str | Path, detector: MemoryDetector, info: DeployInfo, batches: Sequence[int] = (1, 3), atol: float = 1e-4,
    seed: int = 0, images: Tensor | None = None, rtol: float = 1e-5,
) -> float:
    """Run the file in ONNX Runtime and compare with the eager detector; returns the max abs difference.

    Args:
        images: RGB inputs in ``[0, 1]`` to compare on (default: random images of the
            graph's size; one batch per entry of ``batches``).
        atol, rtol: accepted difference ``atol + rtol·|eager|`` per value. Random inputs are
            far from any memory, so their distances are large (tens to hundreds) and the
            backbone's float32 rounding in another runtime (≈ 1e-6 relative) alone exceeds
            a fixed 1e-4 there; on real images (the demo) the differences stay below 1e-5.

    Raises:
        ExportError: a score or map differs by more than that, or a label disagrees
            with ``score >= image_threshold``.
    """
    ort = require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    batches_in = [images] if images is not None else [torch.rand(b, *info.input_shape, generator=generator) for b in batches]
    for x in batches_in:
        want_scores, want_maps = eager_outputs(detector, x, info)
        scores, maps, labels = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
        for name, want, got in (("image scores", want_scores, scores), ("anomaly maps", want_maps, maps)):
            got_t = torch.from_numpy(got)
            if got_t.shape != want.shape:
                raise ExportError(f"ONNX {name} have shape {tuple(got_t.shape)}, eager {tuple(want.shape)} (batch {len(x)})")
            diff = float((got_t - want).abs().max()) if want.numel() else 0.0
            worst = max(worst, diff)
            excess = (got_t - want).abs() - (atol + rtol * want.abs())
            if want.numel() and float(excess.max()) > 0:
                raise ExportError(
                    f"ONNX {name} differ from the eager detector by up to {diff:.3g} (> {atol} + {rtol}·|value|) at "
                    f"batch {len(x)}"
                )
        threshold = info.image_threshold
        expected = (scores >= threshold) if threshold is not None else (scores != scores)
        if (labels != expected).any():
            raise ExportError(f"ONNX labels disagree with score >= {threshold} at batch {len(x)}")
    return worst


def export_onnx(
    detector: MemoryDetector,
    path: str | Path,
    info: DeployInfo,
    backbone: onnx.ModelProto | str | Path | None = None,
    check: bool = True,
    check_batches: Sequence[int] = (1, 3),
    atol: float = 1e-4,
    rtol: float = 1e-5,
    check_images: Tensor | None = None,
) -> Path:
    """Export ``detector``'s whole scoring path to ``path`` (see the module docstring).

    Args:
        detector: a fitted :class:`~fapm.models.detector.MemoryDetector` on the CPU (put in
            eval mode). Its memories become constants of the graph.
        path: output ``.onnx`` file.
        info: input size, normalisation, thresholds and facts to embed.
        backbone: an already exported (e.g. INT8-quantized) backbone graph to use instead of
            exporting the detector's own; its outputs must be ``features_0 …``.
        check: run the file in ONNX Runtime on random inputs at ``check_batches`` and compare
            with the eager detector (skipped when ``backbone`` is given: a quantized
            backbone is not expected to equal the float one).
        atol, rtol: accepted difference of scores and maps, ``atol + rtol·|eager|``.
        check_images: RGB images in ``[0, 1]`` to check on instead of random ones.

    Raises:
        ExportError: export failed or the file does not reproduce the eager detector.
    """
    _prepare(detector)
    if backbone is None:
        graph = ScoringGraph(BackboneGraph(detector, info.mean, info.std),
                             HeadGraph(detector, (info.image_size, info.image_size), info.image_threshold)).eval()
        example = (torch.rand(2, *info.input_shape, generator=torch.Generator().manual_seed(0)),)
        model = _to_onnx(graph, example, [INPUT_NAME], OUTPUT_NAMES)
        _set_metadata(model, info)
    else:
        if not hasattr(backbone, "graph"):
            backbone = require("onnx").load(str(backbone))
        model = merge(backbone, export_head(detector, info), info)  # type: ignore[arg-type]
    path = save(model, path)
    if check and backbone is None:
        try:
            check_onnx(path, detector, info, check_batches, atol, images=check_images, rtol=rtol)
        except ExportError:
            path.unlink(missing_ok=True)
            raise
    return path
