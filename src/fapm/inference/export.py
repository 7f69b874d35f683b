"""Export the whole scoring path (normalisation → backbone → memory search → map and score) to TorchScript.

The exported file runs without this package::

    import json, torch
    extra = {"fapm.json": ""}
    graph = torch.jit.load("model.torchscript.pt", _extra_files=extra)
    info = json.loads(extra["fapm.json"])
    scores, maps = graph(images)   # images: RGB float [B, 3, S, S] in [0, 1], resized and cropped

Inputs are RGB in ``[0, 1]`` already resized to ``preprocess.image_size`` and centre-cropped
to ``preprocess.crop_size`` (``S``); the ImageNet normalisation is inside the graph.
Outputs are the raw image scores ``[B]`` and anomaly maps ``[B, S, S]``; ``fapm.json``
holds the pre-processing, thresholds and normalisation statistics to turn them into
labels and normalised scores (see docs/predict.md).

The graph is made with ``torch.jit.trace`` (the memories become constants of the graph)
and checked against the eager model on batch sizes other than the traced one: any batch
size works; the image side must be the one the model was fitted at. Tracing keeps the
device: export on the device the graph will run on.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fapm import __version__

if TYPE_CHECKING:
    from fapm.inference.loaded import LoadedModel

EXPORT_FORMAT = "fapm-torchscript"
EXPORT_VERSION = 1
META_FILE = "fapm.json"


class ExportError(RuntimeError):
    """The traced graph does not reproduce the eager model."""


class ScoringGraph(nn.Module):
    """RGB ``[B, 3, S, S]`` in ``[0, 1]`` → ``(image scores [B], anomaly maps [B, S, S])``.

    Args:
        module: the fitted detector (``module(normalised images) -> AnomalyOutput``).
        mean: per-channel mean of the normalisation.
        std: per-channel standard deviation.
    """

    def __init__(self, module: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        output = self.module((images - self.mean) / self.std)
        return output.image_scores, output.anomaly_maps


def export_metadata(model: LoadedModel) -> dict[str, Any]:
    """What a user of the exported graph needs besides the graph (stored as ``fapm.json``)."""
    side = model.preprocess.output_size
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "fapm_version": __version__,
        "input": {"shape": ["B", 3, side, side], "dtype": "float32", "range": [0.0, 1.0], "channels": "RGB"},
        "outputs": {"image_scores": ["B"], "anomaly_maps": ["B", side, side]},
        "preprocess": model.preprocess.to_dict(),
        "image_threshold": model.image_threshold,
        "pixel_threshold": model.pixel_threshold,
        "thresholds": model.thresholds.to_dict(),
        "facts": model.facts,
    }


def _check(traced: nn.Module, eager: nn.Module, inputs: Tensor, atol: float) -> None:
    with torch.inference_mode():
        want = eager(inputs)
        try:
            got = traced(inputs)
        except RuntimeError as err:  # e.g. a Python list length frozen at the traced batch size
            raise ExportError(
                f"the traced graph fails at batch size {inputs.shape[0]} where the eager model runs: this "
                f"model's scoring depends on Python control flow that tracing freezes ({str(err).splitlines()[-1]})"
            ) from err
    for name, a, b in zip(("image scores", "anomaly maps"), want, got):
        if a.shape != b.shape or not torch.allclose(a, b, rtol=0.0, atol=atol):
            diff = (a - b).abs().max().item() if a.shape == b.shape else f"shape {tuple(b.shape)} vs {tuple(a.shape)}"
            raise ExportError(
                f"the traced graph's {name} differ from the eager model's at batch size {inputs.shape[0]} "
                f"(max diff {diff}): this model's scoring depends on Python control flow that tracing freezes"
            )


def export_torchscript(
    model: LoadedModel, path: str | Path, trace_batch: int = 2, check_batches: Sequence[int] = (1, 3), atol: float = 1e-4,
    seed: int = 0,
) -> Path:
    """Trace ``model``'s scoring path and save it with its metadata.

    Args:
        model: the loaded model (:class:`fapm.inference.FAPM`).
        path: output file (``.pt``).
        trace_batch: batch size of the example input.
        check_batches: other batch sizes on which the graph must reproduce the eager model.
        atol: largest accepted absolute difference of scores and maps.
        seed: seed of the random example inputs.

    Raises:
        ExportError: the graph does not reproduce the eager model.
    """
    aligner = getattr(model.detector, "aligner", None)
    if aligner is not None:
        raise ExportError(
            f"model.align={aligner.mode} is scored eagerly only (each image's registration decides whether it "
            "is warped or falls back): export a model fitted with model.align=none"
        )
    side = model.preprocess.output_size
    graph = ScoringGraph(model.detector, model.preprocess.mean, model.preprocess.std).to(model.device).eval()
    generator = torch.Generator().manual_seed(seed)

    def example(batch: int) -> Tensor:
        return torch.rand(batch, 3, side, side, generator=generator).to(model.device)

    with torch.inference_mode():
        graph(example(1))  # builds the search structures outside the trace
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about frozen Python values, which _check verifies
        with torch.no_grad():
            traced = torch.jit.trace(graph, example(trace_batch), check_trace=False)
    for batch in (trace_batch, *check_batches):
        _check(traced, graph, example(batch), atol)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(path), _extra_files={META_FILE: json.dumps(export_metadata(model))})
    return path


def load_exported(path: str | Path, device: str = "cpu") -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """``(graph, metadata)`` of an exported file (what a user without this package does by hand)."""
    extra = {META_FILE: ""}
    graph = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    return graph, json.loads(extra[META_FILE])
