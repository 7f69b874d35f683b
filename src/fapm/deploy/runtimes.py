"""Three ways to run a fitted model behind one small interface.

    scorer = TorchScorer(detector, info)                       # the eager detector
    scorer = OnnxRuntimeScorer("model.onnx")                   # info from the file
    scorer = OpenVINOScorer("model.onnx", precision="f32")     # or "bf16" on CPUs that have it
    out = scorer.score(images)        # pre-processed, normalised [B, 3, S, S] (as the detector takes)
    out = scorer.score_rgb(images)    # or RGB in [0, 1] [B, 3, S, S] (as the exported graph takes)
    out.image_scores [B], out.anomaly_maps [B, S, S], out.labels [B]   # torch tensors, CPU

Scores and maps are in the detector's units (raw distances). A scorer refuses inputs of
any size but the one the model was exported for (:class:`InputSizeError`), before running.
``onnxruntime`` and ``openvino`` are imported only when their scorer is made.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from fapm.deploy.graph import INPUT_NAME, OUTPUT_NAMES
from fapm.deploy.info import DeployInfo, read_metadata
from fapm.deploy.onnx_export import require
from fapm.outputs import AnomalyOutput

if TYPE_CHECKING:
    from fapm.models.detector import MemoryDetector

RUNTIMES = ("torch", "onnxruntime", "openvino")


class InputSizeError(ValueError):
    """Images of another shape than the model was exported (or fitted) for."""


class NonFiniteInputError(ValueError):
    """Images holding NaN or infinite pixels: never scored (a runtime may ignore them and say "good")."""


@dataclass
class DeployOutput(AnomalyOutput):
    """:class:`~fapm.outputs.AnomalyOutput` plus ``labels [B]`` (bool, ``score >= image_threshold``)."""

    labels: Tensor | None = None


def check_images(images: Tensor | np.ndarray, info: DeployInfo, what: str) -> None:
    """``[B, 3, S, S]`` with ``S = info.image_size``, else :class:`InputSizeError`."""
    shape = tuple(images.shape)
    side = info.image_size
    if len(shape) != 4 or shape[1:] != (3, side, side) or shape[0] < 1:
        raise InputSizeError(
            f"{what} was exported for images [B, 3, {side}, {side}] (RGB, resized and cropped to {side}x{side} "
            f"as in its pre-processing), got {list(shape)}; a graph cannot score another size: pre-process the "
            f"images to {side}x{side} or export the model again for that size"
        )
    values = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        bad = ~torch.isfinite(values).flatten(1).all(1)
        raise NonFiniteInputError(
            f"{what}: image(s) {bad.nonzero().flatten().tolist()} of the batch hold NaN or infinite pixels; "
            "they are not scored (fix the pre-processing that produced them)"
        )


def labels_for(scores: Tensor, threshold: float | None) -> Tensor:
    """``score >= threshold``, failing closed: a NaN score is defective, never good."""
    if threshold is None:
        return torch.isnan(scores)
    return ~(scores < threshold)


class Scorer(ABC):
    """One runtime's scorer: ``score(images) -> DeployOutput``.

    Attributes:
        info: input size, normalisation and thresholds.
        name: the runtime's name (``torch``, ``onnxruntime``, ``openvino``).
    """

    name: str = ""
    #: the graph scored was checked against a digest signed with the signing key (fapm.deploy.digest)
    verified: bool = False

    def __init__(self, info: DeployInfo) -> None:
        self.info = info
        self._mean = torch.tensor(info.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(info.std).view(1, 3, 1, 1)

    def score(self, images: Tensor) -> DeployOutput:
        """Pre-processed, normalised ``images [B, 3, S, S]`` (what the detector takes)."""
        check_images(images, self.info, self.describe())
        return self._score_rgb(images.detach().float().cpu() * self._std + self._mean)

    def score_rgb(self, images: Tensor | np.ndarray) -> DeployOutput:
        """RGB ``images [B, 3, S, S]`` in ``[0, 1]`` (what the exported graph takes)."""
        check_images(images, self.info, self.describe())
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        return self._score_rgb(images.detach().float().cpu())

    __call__ = score

    @abstractmethod
    def _score_rgb(self, images: Tensor) -> DeployOutput: ...

    def describe(self) -> str:
        return f"this {self.name} model"

    def _wrap(self, scores: np.ndarray, maps: np.ndarray) -> DeployOutput:
        """Outputs as CPU tensors; labels from ``info.image_threshold`` (which may override the
        threshold stored in the graph, whose own ``labels`` output is for users without this package)."""
        s = torch.from_numpy(np.asarray(scores, dtype=np.float32))
        return DeployOutput(s, torch.from_numpy(np.asarray(maps, dtype=np.float32)), labels=labels_for(s, self.info.image_threshold))


class TorchScorer(Scorer):
    """The eager detector (on its own device) behind the scorer interface.

    Args:
        detector: a fitted :class:`~fapm.models.detector.MemoryDetector`.
        info: input size, normalisation, thresholds.
        backbone_dtype: ``None`` (float32) or ``bfloat16``/``float16``: runs the backbone
            under autocast (``detector.extractor.autocast_dtype`` is set for the duration of
            each call, so scorers of different dtypes can share one detector); memories,
            search, map and score stay float32.
    """

    name = "torch"

    def __init__(self, detector: MemoryDetector, info: DeployInfo, backbone_dtype: str | None = None) -> None:
        super().__init__(info)
        if backbone_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"backbone_dtype must be None, float32, bfloat16 or float16, got {backbone_dtype!r}")
        self.detector = detector.eval()
        self.backbone_dtype = None if backbone_dtype in (None, "float32") else backbone_dtype
        self.device = next(detector.extractor.parameters()).device

    def _run(self, normalised: Tensor) -> DeployOutput:
        extractor = self.detector.extractor
        previous, extractor.autocast_dtype = extractor.autocast_dtype, self.backbone_dtype
        try:
            with torch.inference_mode():
                out = self.detector(normalised.to(self.device))
        finally:
            extractor.autocast_dtype = previous
        scores = out.image_scores.float().cpu()
        return DeployOutput(scores, out.anomaly_maps.float().cpu(), labels=labels_for(scores, self.info.image_threshold))

    def _score_rgb(self, images: Tensor) -> DeployOutput:
        return self._run((images - self._mean) / self._std)

    def score(self, images: Tensor) -> DeployOutput:
        check_images(images, self.info, self.describe())
        return self._run(images)  # already normalised: no round trip


class OnnxRuntimeScorer(Scorer):
    """An exported ``.onnx`` file in an ONNX Runtime CPU session.

    Args:
        path: the exported file.
        info: overrides the file's own metadata (e.g. other thresholds); default: read it.
        threads: intra-op threads (None = ONNX Runtime's default, all cores).
        providers: execution providers (default CPU).
    """

    name = "onnxruntime"

    def __init__(
        self, path: str | Path, info: DeployInfo | None = None, threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        if info is None:  # a user's exported file: checked against its digest before use
            from fapm.deploy.digest import verify

            self.verified = verify(path)
        self.session = ort_session(path, threads, providers)
        self.path = Path(path)
        if info is None:
            info = read_metadata(self.session.get_modelmeta().custom_metadata_map, str(path))
        super().__init__(info)

    def describe(self) -> str:
        return f"{self.path} (onnxruntime)"

    def _score_rgb(self, images: Tensor) -> DeployOutput:
        scores, maps = self.session.run(list(OUTPUT_NAMES[:2]), {INPUT_NAME: images.contiguous().numpy()})
        return self._wrap(scores, maps)


class OpenVINOScorer(Scorer):
    """An exported ``.onnx`` (or OpenVINO IR ``.xml``) file compiled for the CPU by OpenVINO.

    Args:
        path: the exported file.
        info: overrides the file's own metadata; default: read it.
        precision: ``f32`` or ``bf16`` (OpenVINO's ``INFERENCE_PRECISION_HINT``); ``bf16``
            needs a CPU with bf16 instructions (AVX-512 BF16 or AMX) and is refused
            elsewhere, where OpenVINO would silently run f32. An INT8 file runs its
            quantized layers in INT8 whatever this says.
        threads: ``INFERENCE_NUM_THREADS`` (None = OpenVINO's default).
        hint: ``PERFORMANCE_HINT``: ``LATENCY`` (default) or ``THROUGHPUT``.
    """

    name = "openvino"

    def __init__(
        self, path: str | Path, info: DeployInfo | None = None, precision: str = "f32", threads: int | None = None,
        hint: str = "LATENCY",
    ) -> None:
        if info is None:  # a user's exported file: checked against its digest before use
            from fapm.deploy.digest import verify

            self.verified = verify(path)
        self.compiled = ov_compile(path, precision, threads, hint)
        self.path = Path(path)
        self.precision = precision
        if info is None:
            info = read_metadata(_ov_metadata(path), str(path))
        super().__init__(info)
        self._outputs = [self.compiled.output(name) for name in OUTPUT_NAMES]
        self._request = self.compiled.create_infer_request()

    def describe(self) -> str:
        return f"{self.path} (openvino {self.precision})"

    def _score_rgb(self, images: Tensor) -> DeployOutput:
        result = self._request.infer({INPUT_NAME: images.contiguous().numpy()})
        return self._wrap(np.array(result[self._outputs[0]]), np.array(result[self._outputs[1]]))


# ------------------------------------------------------------------ sessions (also used alone)
def ort_session(path: str | Path, threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Any:
    """An ONNX Runtime session with all graph optimisations on."""
    ort = require("onnxruntime")
    if not Path(path).is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=list(providers))


def cpu_supports_bf16() -> bool:
    """True when OpenVINO's CPU plugin reports bf16 among its optimisation capabilities."""
    ov = require("openvino")
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def ov_compile(path: str | Path, precision: str = "f32", threads: int | None = None, hint: str = "LATENCY") -> Any:
    """An OpenVINO compiled model for the CPU (see :class:`OpenVINOScorer` for the arguments)."""
    ov = require("openvino")
    if not Path(path).is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    if precision not in ("f32", "bf16"):
        raise ValueError(f"OpenVINO precision must be f32 or bf16, got {precision!r}")
    core = ov.Core()
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if precision == "bf16" and "BF16" not in capabilities:
        raise RuntimeError(
            f"this CPU ({core.get_property('CPU', 'FULL_DEVICE_NAME')}) has no bf16 support in OpenVINO "
            f"(capabilities {list(capabilities)}): it would run f32; use precision='f32' or an INT8 model"
        )
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return core.compile_model(str(path), "CPU", config)


def _ov_metadata(path: str | Path) -> dict[str, str]:
    """ONNX ``metadata_props`` as OpenVINO keeps them (``rt_info["framework"]``)."""
    ov = require("openvino")
    model = ov.Core().read_model(str(path))
    from fapm.deploy.info import META_KEY

    if model.has_rt_info(["framework", META_KEY]):
        return {META_KEY: str(model.get_rt_info(["framework", META_KEY]).value)}
    return {}


def make_scorer(
    runtime: str,
    *,
    detector: MemoryDetector | None = None,
    path: str | Path | None = None,
    info: DeployInfo | None = None,
    **options: Any,
) -> Scorer:
    """The scorer of ``runtime`` (``torch`` needs ``detector`` and ``info``; the others ``path``).

    ``options`` go to the scorer (``backbone_dtype``; ``threads``; ``precision``, ``hint``).
    """
    factories: dict[str, Callable[[], Scorer]] = {
        "torch": lambda: TorchScorer(_need(detector, "detector", runtime), _need(info, "info", runtime), **options),
        "onnxruntime": lambda: OnnxRuntimeScorer(_need(path, "path", runtime), info, **options),
        "openvino": lambda: OpenVINOScorer(_need(path, "path", runtime), info, **options),
    }
    if runtime not in factories:
        raise ValueError(f"runtime must be one of {list(RUNTIMES)}, got {runtime!r}")
    return factories[runtime]()


def _need(value: Any, what: str, runtime: str) -> Any:
    if value is None:
        raise ValueError(f"runtime={runtime!r} needs {what}")
    return value
