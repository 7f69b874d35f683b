"""Python API for embedding a fitted model in an inspection program (no Hydra needed).

    from fapm.inference import FAPM

    model = FAPM.load("model.safetensors", device="cuda")      # or "cpu" / "auto"
    result = model.predict("part.png")                 # path, PIL image, array or tensor
    result.score, result.normalised_score, result.label, result.anomaly_map, result.mask
    results = model.predict(["a.png", "b.png"])        # a list / [B, 3, H, W] batch → a list

Every input goes through the model file's own pre-processing (resize, centre crop, the
backbone's normalisation); maps and masks come back at the input's original size. The
region outside the centre crop is not inspected: its map is 0 and its mask False.

Loading reads the model file as data (:mod:`fapm.model_file`) and rebuilds the plain-torch
detector; neither Hydra nor Lightning is imported.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from fapm.data.transforms import Preprocess
from fapm.inference.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, ImageInput, as_items, to_pil
from fapm.inference.thresholds import Thresholds
from fapm.model_file import ModelFile, load_detector, save_model
from fapm.models.cuda_graph import GraphCache
from fapm.outputs import AnomalyOutput


@dataclass
class PredictionResult:
    """One image's prediction.

    Attributes:
        score: raw image score (model units; higher = more anomalous).
        normalised_score: ``score`` mapped to ``[0, 1]`` with the image threshold at 0.5
            (None when the model has no image threshold).
        label: True = defective (``score >= image_threshold``; also True for a NaN score,
            which callers should treat as an error: check ``math.isfinite(score)``); None
            without a threshold.
        anomaly_map: ``[H, W]`` float32 raw pixel scores at the original image size.
        normalised_map: ``[H, W]`` float32 in ``[0, 1]``, pixel threshold at 0.5 (None without one).
        mask: ``[H, W]`` bool, ``anomaly_map >= pixel_threshold`` (NaN pixels are True; None
            without a pixel threshold).
        path: the image file, when the input was a path.
    """

    score: float
    normalised_score: float | None
    label: bool | None
    anomaly_map: np.ndarray
    normalised_map: np.ndarray | None
    mask: np.ndarray | None
    path: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the original image."""
        return self.anomaly_map.shape[1], self.anomaly_map.shape[0]


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else as torch reads it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class FAPM:
    """A fitted model loaded from its model file, ready to score images.

    Args:
        detector: the rebuilt plain-torch detector (``detector(images) -> AnomalyOutput``).
        file: the validated model file (:func:`fapm.model_file.read_model_file`).
        device: where to score.
        threshold: image threshold: ``auto | quantile | f1 | <number>``. ``auto`` is the
            threshold chosen at fit time from held-out normal images; a model fitted without
            a hold-out has none, and then no labels are given unless a number (or ``f1``, the
            test set's F1-max threshold, fitted on the test set) is passed explicitly.
        pixel_threshold: pixel threshold, same choices.
        min_side: smallest accepted image side (pixels).
        max_pixels: largest accepted image (pixels).
        cuda_graph: on a CUDA device, replay each batch shape's scoring pass as one CUDA
            graph (captured on first use; :mod:`fapm.models.cuda_graph`). Cuts batch-1
            latency, which is kernel-launch bound on a GPU.
        runtime: ``torch`` (the detector itself) or ``onnxruntime`` / ``openvino``: the whole
            scoring pass exported to ONNX once (cached, :mod:`fapm.deploy.serving`) and run by
            that runtime on the CPU (the ``deploy`` extra).
        precision: ``f32``, or ``bf16`` with OpenVINO on a CPU that supports it.
        threads: CPU threads of the runtime (None = its default).
    """

    def __init__(
        self,
        detector: torch.nn.Module,
        file: ModelFile,
        device: str | torch.device = "cpu",
        threshold: str | float = "auto",
        pixel_threshold: str | float = "auto",
        min_side: int = DEFAULT_MIN_SIDE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cuda_graph: bool = False,
        runtime: str = "torch",
        precision: str = "f32",
        threads: int | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.detector = detector.to(self.device).eval()
        if cuda_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a CUDA device, got {self.device}")
        self._graphs = GraphCache(self.detector) if cuda_graph else None
        self.file = file
        self.facts: dict[str, Any] = dict(file.facts)
        self.thresholds = Thresholds.from_dict(file.thresholds)
        self.preprocess = Preprocess.from_dict(file.preprocess)
        self.image_threshold = self.thresholds.select("image", threshold)
        self.pixel_threshold = self.thresholds.select("pixel", pixel_threshold)
        self.min_side = int(min_side)
        self.max_pixels = int(max_pixels)
        self.runtime = runtime
        self._scorer = None
        if runtime != "torch":
            from fapm.deploy.serving import scorer_for

            self._scorer = scorer_for(self, runtime, precision, threads)

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        threshold: str | float = "auto",
        pixel_threshold: str | float = "auto",
        cuda_graph: bool = False,
        runtime: str = "torch",
        precision: str = "f32",
        threads: int | None = None,
        **limits: int,
    ) -> FAPM:
        """Load a model file (data only: see :mod:`fapm.model_file`).

        Args:
            path: the ``model.safetensors`` of a training run.
            device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto``.
            threshold: image threshold ``auto | quantile | f1 | <number>`` (see the class).
            pixel_threshold: the same for the pixel mask.
            cuda_graph: replay the scoring pass as a CUDA graph (CUDA devices only).
            runtime: ``torch``, ``onnxruntime`` or ``openvino`` (see the class).
            precision: ``f32`` or ``bf16`` (OpenVINO).
            threads: CPU threads of the runtime.
            **limits: ``min_side`` / ``max_pixels`` (see :mod:`fapm.inference.images`).

        Raises:
            ModelFileError: the file is missing, corrupt, tampered or not a model file.
            ThresholdError: a threshold asked for that the file does not hold.
        """
        detector, file = load_detector(path)
        return cls(
            detector, file, device, threshold, pixel_threshold, cuda_graph=cuda_graph, runtime=runtime,
            precision=precision, threads=threads, **limits,
        )

    @property
    def verified(self) -> bool:
        """True only when everything that scores was verified with the signing key: the model file
        and, with ``runtime=onnxruntime|openvino``, the cached graph the runtime runs."""
        return bool(self.file.verified) and (self._scorer is None or bool(getattr(self._scorer, "verified", False)))

    @property
    def has_labels(self) -> bool:
        """True when an image threshold is set (results carry labels)."""
        return self.image_threshold is not None

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def score(self, images: Tensor) -> AnomalyOutput:
        """Raw scores of pre-processed ``images [B, 3, S, S]`` (maps ``[B, S, S]``, not resized)."""
        side = self.preprocess.output_size
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (side, side):
            raise ValueError(
                f"score() takes pre-processed images [B, 3, {side}, {side}], got {list(images.shape)}; "
                "use predict() for images of any size"
            )
        if self._scorer is not None:  # onnxruntime / openvino
            out = self._scorer.score(images.cpu())
            return AnomalyOutput(out.image_scores, out.anomaly_maps)
        images = images.to(self.device)
        if self._graphs is None:
            return self.detector(images)
        out = self._graphs(images)  # static graph outputs: copy them before the next replay
        return AnomalyOutput(out.image_scores.clone(), out.anomaly_maps.clone())

    @overload
    def predict(self, inputs: ImageInput, batch_size: int = ...) -> PredictionResult: ...

    @overload
    def predict(self, inputs: Sequence[ImageInput], batch_size: int = ...) -> list[PredictionResult]: ...

    def predict(
        self, inputs: ImageInput | Sequence[ImageInput], batch_size: int = 8
    ) -> PredictionResult | list[PredictionResult]:
        """Score one image (→ a result) or a batch (list, ``[B, C, H, W]`` tensor → a list of results).

        Raises:
            InputError: an input that cannot be read or is too small / too large.
        """
        items, single = as_items(inputs)
        results = list(self.predict_iter(items, batch_size))
        return results[0] if single else results

    def predict_iter(self, items: Sequence[ImageInput], batch_size: int = 8) -> Iterator[PredictionResult]:
        """Results of ``items`` in order, scored ``batch_size`` at a time (images loaded per batch)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(items), batch_size):
            loaded = [
                to_pil(item, start + i, self.min_side, self.max_pixels)
                for i, item in enumerate(items[start : start + batch_size])
            ]
            yield from self.predict_pil([image for image, _ in loaded], [path for _, path in loaded])

    def predict_pil(self, images: Sequence[Image.Image], paths: Sequence[str | None] | None = None) -> list[PredictionResult]:
        """Score RGB PIL images as one batch."""
        if not images:
            return []
        paths = list(paths) if paths is not None else [None] * len(images)
        batch = torch.stack([self.preprocess(image) for image in images])
        output = self.score(batch)
        return [
            self._result(output.image_scores[i], output.anomaly_maps[i], image.size, paths[i])
            for i, image in enumerate(images)
        ]

    def _result(self, score: Tensor, patch_map: Tensor, size: tuple[int, int], path: str | None) -> PredictionResult:
        raw = self.preprocess.to_original(patch_map.unsqueeze(0).float(), size)[0]
        value = float(score)
        labelled = self.image_threshold is not None
        masked = self.pixel_threshold is not None
        # Fail closed: "not below the threshold" makes a NaN score / pixel defective, never good.
        return PredictionResult(
            score=value,
            normalised_score=(
                float(self.thresholds.normalise("image", score.float().cpu(), self.image_threshold)) if labelled else None
            ),
            label=(not value < self.image_threshold) if labelled else None,
            anomaly_map=raw.cpu().numpy(),
            normalised_map=(
                self.thresholds.normalise("pixel", raw, self.pixel_threshold).cpu().numpy() if masked else None
            ),
            mask=(~(raw < self.pixel_threshold)).cpu().numpy() if masked else None,
            path=path,
        )

    # ------------------------------------------------------------------ saving, export
    def save(self, path: str | Path, include_backbone: bool = False) -> Path:
        """Write this model to a new model file (e.g. with the backbone included, for deployment)."""
        f = self.file
        return save_model(
            path, self.detector.cpu(), f.model, f.backbone, f.preprocess, data=f.data, thresholds=f.thresholds,
            facts=f.facts, meta=f.meta, include_backbone=include_backbone,
        )

    def export(self, path: str | Path, format: str = "torchscript", precision: str = "fp32") -> Path:
        """A file of the whole scoring path that runs without this package.

        Args:
            path: the output file (``.pt``, ``.onnx`` or OpenVINO's ``.xml``).
            format: ``torchscript`` (:func:`fapm.inference.export.export_torchscript`), ``onnx``
                or ``openvino`` (:func:`fapm.deploy.serving.export_model`).
            precision: ``fp32``, or ``int8`` for ``onnx``/``openvino`` (NNCF-quantized backbone,
                memories rebuilt from its features on the model's training images).
        """
        from fapm.deploy import digest

        if format == "torchscript":
            if precision != "fp32":
                raise ValueError("TorchScript export is fp32 only")
            from fapm.inference.export import export_torchscript

            written = export_torchscript(self, path)
        else:
            from fapm.deploy.serving import export_model

            written = export_model(self, Path(path), format, precision)
        digest.write(written, self.file.checksum)  # checked before use (fapm.deploy.digest)
        return written

    def __repr__(self) -> str:
        facts = ", ".join(f"{k}={self.facts[k]}" for k in ("model", "backbone", "layers", "grid", "weights") if k in self.facts)
        threshold = "none" if self.image_threshold is None else f"{self.image_threshold:.4g}"
        return f"FAPM({facts}, device={self.device}, image_threshold={threshold})"
