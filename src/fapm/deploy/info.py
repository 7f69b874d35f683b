"""What a deployed scoring graph needs besides the graph: input size, normalisation, thresholds.

Stored as JSON in the ONNX file's ``metadata_props`` (key :data:`META_KEY`), so that a
user without this package reads it with ``onnx`` or ONNX Runtime::

    import json, onnxruntime as ort
    session = ort.InferenceSession("model.onnx")
    info = json.loads(session.get_modelmeta().custom_metadata_map["fapm"])
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from fapm.data.transforms import IMAGENET_MEAN, IMAGENET_STD

META_KEY = "fapm"
FORMAT = "fapm-onnx"
FORMAT_VERSION = 1


class DeployInfoError(ValueError):
    """Metadata that is missing, of another format or inconsistent."""


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class DeployInfo:
    """Pre-processing, thresholds and provenance of a deployed scoring graph.

    Attributes:
        image_size: side ``S`` of the graph's input ``[B, 3, S, S]`` (after resize and crop).
        mean: per-channel mean of the normalisation (applied inside exported graphs).
        std: per-channel standard deviation.
        image_threshold: label threshold on the raw image score (None = no label).
        pixel_threshold: threshold on the raw anomaly map (None = unknown).
        preprocess: the model file's full pre-processing (``Preprocess.to_dict()``), if known.
        facts: model facts (variant, backbone, grid, …) copied from the model file.
        backbone_precision: ``fp32`` or ``int8`` (weights and activations of the backbone).
        calibration: how an INT8 backbone was calibrated (images, seed, quantizer), else None.
    """

    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    image_threshold: float | None = None
    pixel_threshold: float | None = None
    preprocess: dict[str, Any] | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    backbone_precision: str = "fp32"
    calibration: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.image_size = int(self.image_size)
        if self.image_size <= 0:
            raise DeployInfoError(f"image_size must be positive, got {self.image_size}")
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise DeployInfoError(f"mean/std must be 3 values with std > 0, got {self.mean}, {self.std}")
        self.image_threshold = _finite(self.image_threshold)
        self.pixel_threshold = _finite(self.pixel_threshold)
        if self.backbone_precision not in ("fp32", "int8"):
            raise DeployInfoError(f"backbone_precision must be fp32 or int8, got {self.backbone_precision!r}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def to_json(self) -> str:
        data = {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> DeployInfo:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DeployInfoError(f"{source}: the {META_KEY!r} metadata is not JSON ({err})") from err
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DeployInfoError(f"{source}: not a {FORMAT} file (format {data.get('format') if isinstance(data, dict) else None!r})")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise DeployInfoError(
                f"{source}: {FORMAT} version {data['format_version']} is newer than this package reads ({FORMAT_VERSION})"
            )
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_model(cls, model: Any) -> DeployInfo:
        """From a loaded :class:`fapm.inference.FAPM` (anything with ``preprocess``,
        ``image_threshold``, ``pixel_threshold`` and ``facts``)."""
        pre = model.preprocess
        return cls(
            image_size=pre.output_size, mean=pre.mean, std=pre.std, image_threshold=model.image_threshold,
            pixel_threshold=model.pixel_threshold, preprocess=pre.to_dict(), facts=dict(model.facts),
        )

    def replace(self, **changes: Any) -> DeployInfo:
        data = asdict(self)
        data.update(changes)
        return DeployInfo(**data)


def metadata_props(info: DeployInfo) -> dict[str, str]:
    """The ``metadata_props`` entries an exported file carries."""
    return {META_KEY: info.to_json()}


def read_metadata(mapping: Mapping[str, str], source: str) -> DeployInfo:
    if META_KEY not in mapping:
        raise DeployInfoError(f"{source} has no {META_KEY!r} metadata: pass a DeployInfo, or export it with fapm.deploy")
    return DeployInfo.from_json(mapping[META_KEY], source)

