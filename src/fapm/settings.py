"""Typed, validated settings: the single description of a model, its backbone and its data.

Every value a run or a model file gives is parsed here before any work starts: the
right type, inside its range, no unknown key. A problem raises one :class:`ConfigError`
naming every offending key with what it accepts (``model.d_th: expected a number, got
'abc'``). The same classes describe what a model file stores, so loading one never
instantiates anything named in the file: :mod:`fapm.builders` builds the plain-torch
detector from these settings, choosing among the package's own classes only.

The Hydra configs under ``conf/model``, ``conf/backbone`` and ``conf/data`` are pure data
with exactly these keys; ``python train.py +model.foo=1`` is refused.

Annotations understood by the parser: ``int``, ``float``, ``bool``, ``str``, ``Literal``,
``X | None``, ``tuple[T, ...]``, ``tuple[T, T]`` and nested settings dataclasses. Ranges
come from each field's metadata (:func:`setting`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union

from fapm.errors import FapmError

T = TypeVar("T")

# Upper bounds of size-like settings (issue 25): one value must never cost hours or all memory.
# They apply to the command line, config files and model files alike (the same schema).
#: Largest image side (resize or crop), pixels: 4096² RGB is 48 MiB per image before the backbone.
MAX_IMAGE_SIDE = 4096
#: Largest patch-grid side and neighbourhood radius, in regions.
MAX_GRID = 64
#: Largest Gaussian blur sigma of an anomaly map, pixels (the kernel is ~8 sigma wide).
MAX_BLUR_SIGMA = 64.0
#: Largest number of neighbours of the k-NN search.
MAX_K = 1024
#: Largest memory cap, vectors per region.
MAX_MEMORY_CAP = 10_000_000
#: Largest batch size.
MAX_BATCH = 1024
#: Seeds numpy and Lightning accept.
MAX_SEED = 2**32 - 1

#: ImageNet channel statistics (torchvision backbones).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConfigError(FapmError, ValueError):
    """One or more configuration values that are missing, of the wrong type or out of range."""

    hint = "fix the named key(s) on the command line or in the config file"
    exit_code = 2  # a usage error: the command line or a config file is wrong

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} configuration problems:\n  " + "\n  ".join(self.problems)
        super().__init__(text)


# ------------------------------------------------------------------------------------ fields
def setting(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    check: Callable[[Any], str | None] | None = None,
    doc: str = "",
) -> Any:
    """A settings field with a range (``ge``/``gt``/``le``/``lt``) or a ``check`` returning an
    error text, and a one-line ``doc`` used in error messages."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "check": check, "doc": doc}
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults (settings are frozen)")
    return field(default=default, metadata=meta)


def _range_text(meta: Mapping[str, Any]) -> str | None:
    lo = f"[{meta['ge']}" if meta.get("ge") is not None else f"({meta['gt']}" if meta.get("gt") is not None else None
    hi = f"{meta['le']}]" if meta.get("le") is not None else f"{meta['lt']})" if meta.get("lt") is not None else None
    if lo and hi:
        return f"in {lo}, {hi}"
    if lo:
        return f">= {meta['ge']}" if meta.get("ge") is not None else f"> {meta['gt']}"
    if hi:
        return f"<= {meta['le']}" if meta.get("le") is not None else f"< {meta['lt']}"
    return None


def _out_of_range(value: float, meta: Mapping[str, Any]) -> bool:
    return (
        (meta.get("ge") is not None and not value >= meta["ge"])
        or (meta.get("gt") is not None and not value > meta["gt"])
        or (meta.get("le") is not None and not value <= meta["le"])
        or (meta.get("lt") is not None and not value < meta["lt"])
    )


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


class _Invalid(Exception):
    """Internal: one value's problem (the parser adds the key)."""


def _is_settings(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp) and issubclass(tp, Settings)


def _convert(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """``value`` as type ``tp``; raises :class:`_Invalid` with the reason."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(value, option, key, problems)
            except _Invalid as err:
                errors.append(str(err))
        if value is None:
            raise _Invalid("a value is required (null is not allowed)")
        raise _Invalid(" or ".join(dict.fromkeys(errors)) + ("" if type(None) not in args else " or null"))
    if origin is Literal:
        if isinstance(value, bool) and all(isinstance(a, str) for a in args) and str(value).lower() in args:
            return str(value).lower()  # YAML's true/false for Literal["true", "false", ...]
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise _Invalid(f"must be one of {', '.join(repr(a) for a in args)}; got {_describe(value)}")
    if origin is tuple:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise _Invalid(f"expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]", problems) for i, v in enumerate(value))
        if len(value) != len(args):
            raise _Invalid(f"expected a list of {len(args)} values, got {len(value)}: {list(value)!r}")
        return tuple(_convert(v, a, f"{key}[{i}]", problems) for i, (v, a) in enumerate(zip(value, args)))
    if _is_settings(tp):
        if not isinstance(value, Mapping):
            raise _Invalid(f"expected a group of keys, got {_describe(value)}")
        return tp._parse(value, key, problems)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Invalid(f"expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Invalid(f"expected an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise _Invalid(f"expected a finite number, got {value!r}")
            return float(value)
        raise _Invalid(f"expected a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Invalid(f"expected a string, got {_describe(value)} (quote it: '...')")
    if tp is Any:
        return value
    raise TypeError(f"settings field {key}: unsupported annotation {tp!r}")  # a bug, not a user error


S = TypeVar("S", bound="Settings")


@dataclass(frozen=True)
class Settings:
    """Base of every settings group: strict parsing from a mapping and back to plain data."""

    @classmethod
    def parse(cls: type[S], data: Mapping[str, Any] | None, where: str) -> S:
        """``data`` (plain mapping: YAML, a resolved Hydra node, a model file) → settings.

        Raises:
            ConfigError: every problem found, each naming ``<where>.<key>``.
        """
        problems: list[str] = []
        result = cls._parse(data or {}, where, problems)
        if problems:
            raise ConfigError(problems)
        return result

    @classmethod
    def _parse(cls: type[S], data: Mapping[str, Any], where: str, problems: list[str]) -> S:
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        data = cls._normalise(dict(data))
        unknown = sorted(set(data) - set(fields))
        for key in unknown:
            problems.append(f"{where}.{key}: unknown key (known keys of {where}: {', '.join(sorted(fields))})")
        values: dict[str, Any] = {}
        for name, f in fields.items():
            key = f"{where}.{name}"
            if name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                    problems.append(f"{key}: missing (required)")
                continue
            before = len(problems)
            try:
                value = _convert(data[name], hints[name], key, problems)
            except _Invalid as err:
                doc = f" ({f.metadata['doc']})" if f.metadata.get("doc") else ""
                problems.append(f"{key}: {err}{doc}")
                continue
            if len(problems) > before:
                continue
            message = cls._check_value(value, f.metadata)
            if message:
                doc = f" ({f.metadata['doc']})" if f.metadata.get("doc") else ""
                problems.append(f"{key}: {message}{doc}")
                continue
            values[name] = value
        if len(values) < sum(1 for n in fields if n in data) or unknown:
            return None  # type: ignore[return-value]  # problems were recorded
        try:
            result = cls(**values)
        except TypeError as err:  # a required field missing (already recorded)
            if not problems:
                problems.append(f"{where}: {err}")
            return None  # type: ignore[return-value]
        for message in result._cross_checks():
            problems.append(f"{where}.{message}")
        return result

    @staticmethod
    def _check_value(value: Any, meta: Mapping[str, Any]) -> str | None:
        numbers = value if isinstance(value, tuple) else (value,)
        for number in numbers:
            if isinstance(number, (int, float)) and not isinstance(number, bool) and _out_of_range(number, meta):
                return f"must be {_range_text(meta)}, got {value!r}"
        check = meta.get("check")
        return check(value) if check is not None and value is not None else None

    @classmethod
    def _normalise(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Hook: rewrite accepted spellings before parsing (e.g. legacy keys)."""
        return data

    def _cross_checks(self) -> list[str]:
        """Hook: problems involving several keys, as ``"<key>: <message>"``."""
        return []

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON/YAML): tuples become lists, nested settings dicts."""

        def plain(value: Any) -> Any:
            if isinstance(value, Settings):
                return value.to_dict()
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            return value

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes`` (validated like parsed data)."""
        data = self.to_dict()
        data.update(changes)
        return type(self).parse(data, type(self).__name__)


def _odd(value: int) -> str | None:
    return None if value % 2 == 1 else f"must be odd (a centred window), got {value}"


def _three_numbers(value: tuple[float, ...]) -> str | None:
    return None if len(value) == 3 else f"needs 3 values (R, G, B), got {len(value)}"


def _positive_std(value: tuple[float, ...]) -> str | None:
    if len(value) != 3:
        return f"needs 3 values (R, G, B), got {len(value)}"
    return None if all(v > 0 for v in value) else f"every value must be > 0, got {list(value)}"


def _non_empty(value: tuple[Any, ...]) -> str | None:
    return None if value else "must name at least one layer"


def _weights_source(value: str) -> str | None:
    """Known offline sources only (``imagenet:<package>``); files are checked when the backbone is built."""
    from fapm.models.offline_weights import OFFLINE_SOURCES, PREFIX

    if value.startswith(PREFIX) and value[len(PREFIX):] not in OFFLINE_SOURCES:
        known = ", ".join(PREFIX + name for name in OFFLINE_SOURCES)
        return f"unknown offline source {value!r}; known: {known}"
    if value in ("", "file:"):
        return "names no file"
    return None


# ---------------------------------------------------------------------------------- backbone
@dataclass(frozen=True)
class BackboneSettings(Settings):
    """``backbone.*``: the frozen CNN and how its features are read (see :class:`FeatureExtractor`)."""

    name: str = setting("wide_resnet50_2", doc="model name in the library")
    library: Literal["torchvision", "timm"] = "torchvision"
    layers: tuple[str, ...] = setting(("layer2", "layer3"), check=_non_empty, doc="module paths, shallow to deep")
    pretrained: Literal["auto", "true", "false"] = "auto"
    weights: str | None = setting(
        None, check=_weights_source, doc="a state-dict file (path or file:<path>), or imagenet:<package>"
    )
    weights_prefix: str = ""
    weights_tag: str | None = None
    pool_size: int = setting(3, ge=1, le=31, check=_odd, doc="local average pooling window")
    seed: int = setting(0, ge=0, le=MAX_SEED)
    fold_batchnorm: bool = True
    channels_last: bool = False
    autocast_dtype: Literal["bfloat16", "float16"] | None = None
    mean: tuple[float, ...] = setting(IMAGENET_MEAN, check=_three_numbers, doc="input normalisation mean")
    std: tuple[float, ...] = setting(IMAGENET_STD, check=_positive_std, doc="input normalisation std")


# ------------------------------------------------------------------------------------ models
_FACTORY = re.compile(r"^(Flat|HNSW\d+(,Flat)?|IVF(\{nlist\}|\d+),(Flat|PQ(\{pq_m\}|\d+)))$")


def _factory_check(value: str) -> str | None:
    if _FACTORY.match(value):
        return None
    return (
        f"must be a FAISS factory string of the form Flat, IVF{{nlist}},Flat, IVF{{nlist}},PQ{{pq_m}} or HNSW<links> "
        f"({{nlist}}/{{pq_m}} are filled from model.search.nlist/pq_m, or give numbers), got {value!r}"
    )


@dataclass(frozen=True)
class SearchSettings(Settings):
    """``model.search``: the per-region k-NN backend (configs in ``conf/model/search/``)."""

    backend: Literal["torch", "faiss", "auto"] = setting("torch", doc="torch (exact), faiss, or auto by memory size")
    factory: str = setting("Flat", check=_factory_check, doc="FAISS index factory string")
    nlist: int | None = setting(None, ge=1, le=1 << 20, doc="IVF cells per memory, null = sqrt(size) capped at size/39")
    nprobe: int = setting(8, ge=1, le=1 << 20, doc="IVF cells visited per query")
    ef_search: int = setting(64, ge=1, le=1 << 16, doc="HNSW candidate list size at query time")
    pq_m: int = setting(64, ge=1, le=1024, doc="IVF-PQ sub-quantizers (bytes per vector); must divide the feature dims")
    use_gpu: Literal["auto", "true", "false"] = setting("auto", doc="FAISS on the GPU when the memory is on CUDA")
    temp_memory_mb: int | None = setting(None, ge=0, doc="scratch MiB of the process's FAISS GPU resources")
    auto_min_vectors: int = setting(10_000, ge=1, doc="auto: FAISS from this many vectors per memory (CPU)")
    auto_min_vectors_cuda: int = setting(1_000_000, ge=1, doc="auto: the same rule on CUDA")


@dataclass(frozen=True)
class CoresetSettings(Settings):
    """``model.coreset``: how the greedy k-center selection runs (configs in ``conf/model/coreset/``)."""

    strategy: Literal["greedy", "composable"] = setting(
        "greedy", doc="greedy (exact) | composable (greedy per shard, then over the union of their picks)"
    )
    shard_size: int = setting(16384, ge=1, le=1 << 24, doc="composable: candidates per contiguous block (run of training images)")
    oversample: float = setting(1.0, ge=1.0, le=64.0, doc="composable: all shards' picks as a multiple of the coreset size")


def _grid_check(value: tuple[int, int]) -> str | None:
    if not all(v >= 1 for v in value):
        return f"needs two positive integers (rows, columns), got {list(value)}"
    return None if all(v <= MAX_GRID for v in value) else f"each side must be <= {MAX_GRID}, got {list(value)}"


@dataclass(frozen=True)
class MemorySettings(Settings):
    """``model.*`` of the memory-bank family: FAPM, PatchCore and the ablations B–D."""

    family: Literal["memory"] = "memory"
    name: str = "fapm"
    grid: tuple[int, int] = setting((7, 7), check=_grid_check, doc="patch grid rows, columns (one number n = n x n)")
    fusion: Literal["separate", "concat"] = "separate"
    fusion_upsample: Literal["bilinear", "nearest"] = "bilinear"
    layer_weights: tuple[float, ...] | None = None
    coreset_ratio: float = setting(0.1, gt=0.0, le=1.0, doc="share of each memory kept")
    projection_dim: int | None = setting(None, ge=1, le=65536, doc="random projection for the coreset, null = exact")
    adaptive: bool = True
    d_th: float = setting(0.5, ge=0.0, le=1.0, doc="D_th on d_imax, or the quantile in quantile mode")
    adaptive_factor: float = setting(2.0, ge=1.0, le=64.0)
    distance_scale: Literal["raw", "per_channel", "relative"] = "raw"
    # quantile: the widest 1 − d_th share of each layer's regions is enlarged on any feature scale
    # (absolute compares a saturated Eq. 1 with d_th: all or none; docs/accuracy.md)
    threshold_mode: Literal["absolute", "quantile"] = "quantile"
    k: int = setting(4, ge=1, le=MAX_K, doc="neighbours per test vector")
    neighbourhood: int = setting(0, ge=0, le=MAX_GRID, doc="radius in regions of the search, 0 = own region")
    neighbourhood_border: Literal["clip", "shift"] = "clip"
    align: Literal["none", "translation", "similarity", "auto"] = "none"
    align_resolution: int = setting(128, ge=32, le=1024, doc="side of the grey thumbnails registered")
    align_min_confidence: float = setting(10.0, ge=0.0, doc="registration PSR below which an image falls back")
    align_fallback_neighbourhood: int = setting(1, ge=0, le=MAX_GRID, doc="search radius of images that are not warped")
    search: SearchSettings = SearchSettings()
    coreset: CoresetSettings = CoresetSettings()
    # max: measured best with ImageNet features (docs/accuracy.md); softmax = the released code's
    image_score: Literal["softmax", "max", "patchcore"] = "max"
    num_neighbors: int = setting(9, ge=1, le=MAX_K, doc="support-set size of the patchcore image score")
    map_upsample: Literal["bilinear", "nearest", "bicubic"] = "bilinear"
    blur_sigma: float = setting(4.0, ge=0.0, le=MAX_BLUR_SIGMA, doc="Gaussian blur of the map, 0 = none")
    coreset_chunk_mb: float = setting(8.0, ge=0.0, le=65536.0, doc="CPU cache budget of a coreset chunk, 0 = all at once")
    # --- bounded fit memory (docs/scale.md)
    feature_dtype: Literal["float32", "float16", "bfloat16"] = setting(
        "float32", doc="dtype the collected training features are stored in (distances are computed in float32)"
    )
    feature_storage: Literal["device", "host"] = setting(
        "device", doc="where collected features live: the trainer's device, or host memory (pinned under CUDA)"
    )
    coreset_device_chunk_mb: float = setting(
        0.0, ge=0.0, le=1 << 20, doc="MiB of float32 candidates streamed to the device per coreset chunk, 0 = 1/4 of free memory"
    )
    memory_cap: int | None = setting(
        1000, ge=1, le=MAX_MEMORY_CAP, doc="most first-pass centres per region (enlarged regions get adaptive_factor times), null = none"
    )
    timing_warmup: int = setting(2, ge=0, le=1000, doc="test batches not counted in the latency")

    @classmethod
    def _normalise(cls, data: dict[str, Any]) -> dict[str, Any]:
        # model.grid=8 is the square grid 8x8 (a bool is not a grid size: left to the parser's error)
        grid = data.get("grid")
        if isinstance(grid, int) and not isinstance(grid, bool):
            data["grid"] = (grid, grid)
        return data

    def streams(self, backbone: BackboneSettings) -> int:
        """Number of feature streams (separate layers, or one concatenation)."""
        return len(backbone.layers) if self.fusion == "separate" else 1


# LAMP's autoencoder and loss (docs/lamp.md); the optimiser is a training-only Hydra node.
@dataclass(frozen=True)
class LampSettings(Settings):
    """``model.*`` of the LAMP family (autoencoder trained on normal images)."""

    family: Literal["lamp"] = "lamp"
    name: str = "lamp"
    base_loss: Literal["l2", "l1", "ssim"] = "l2"
    lamp: bool = True
    epsilon: float = setting(1e-3, gt=0.0, lt=1.0)
    max_over: Literal["sample", "batch"] = "sample"
    detach_max: bool = False
    loss_reduction: Literal["sum", "mean"] = "sum"
    ssim_window: int = setting(11, ge=3, le=63, check=_odd)
    input_size: int = setting(224, ge=8, le=MAX_IMAGE_SIDE, doc="image side the network is built for")
    depth: int | None = setting(None, ge=1, le=16)
    base_channels: int = setting(8, ge=1, le=4096)
    max_channels: int = setting(64, ge=1, le=4096)
    kernel_size: int = setting(3, ge=1, le=31, check=_odd)
    negative_slope: float = setting(0.2, ge=0.0)
    patches_per_side: int = setting(1, ge=1, le=MAX_GRID)
    recalibration: Literal["none", "se", "msar"] = "none"
    msar_scales: tuple[int, ...] = setting((1, 2, 4), ge=1, le=MAX_GRID)
    output_activation: Literal["sigmoid", "none"] = "sigmoid"
    blur_sigma: float = setting(4.0, ge=0.0, le=MAX_BLUR_SIGMA)
    restore_best: bool = True
    timing_warmup: int = setting(2, ge=0, le=1000)
    # Training-only Hydra nodes (``_target_`` of an optimiser / scheduler class, from the
    # user's own config); never stored in a model file.
    optimizer: Any = None
    scheduler: Any = None


ModelSettings = Union[MemorySettings, LampSettings]
#: ``model.family`` → its settings class.
MODEL_FAMILIES: dict[str, type[Settings]] = {"memory": MemorySettings, "lamp": LampSettings}


def parse_model(data: Mapping[str, Any] | None, where: str = "model") -> ModelSettings:
    """``model.*`` → the settings of its family (``model.family``, default ``memory``)."""
    data = dict(data or {})
    family = data.get("family", "memory")
    if not isinstance(family, str) or family not in MODEL_FAMILIES:
        raise ConfigError([f"{where}.family: must be one of {', '.join(map(repr, MODEL_FAMILIES))}; got {family!r}"])
    return MODEL_FAMILIES[family].parse(data, where)  # type: ignore[return-value]


# -------------------------------------------------------------------------------------- data
def _crop_le_size(settings: Any) -> list[str]:
    if settings.crop_size is not None and settings.crop_size > settings.image_size:
        return [f"crop_size: must be <= image_size ({settings.image_size}), got {settings.crop_size}"]
    return []


@dataclass(frozen=True)
class _DataCommon(Settings):
    root: str = setting(doc="dataset root folder")
    image_size: int = setting(256, ge=16, le=MAX_IMAGE_SIDE, doc="side of the square the images are resized to")
    crop_size: int | None = setting(None, ge=16, le=MAX_IMAGE_SIDE,
                                    doc="centre crop after the resize, null = none (the whole image)")
    resize: Literal["squash", "letterbox"] = setting(
        "squash", doc="squash = stretch to the square; letterbox = keep the aspect ratio and pad the short side")
    train_batch_size: int = setting(8, ge=1, le=MAX_BATCH)
    eval_batch_size: int = setting(1, ge=1, le=MAX_BATCH)
    num_workers: int = setting(0, ge=0, le=256)
    normal_holdout: float = setting(0.0, ge=0.0, lt=1.0, doc="share of train/good held out for thresholds")
    seed: int = setting(0, ge=0, le=MAX_SEED)
    mean: tuple[float, ...] = setting(IMAGENET_MEAN, check=_three_numbers)
    std: tuple[float, ...] = setting(IMAGENET_STD, check=_positive_std)

    def _cross_checks(self) -> list[str]:
        return _crop_le_size(self)


@dataclass(frozen=True)
class MVTecDataSettings(_DataCommon):
    """``data.*`` for the MVTec AD layout (and the generated demo)."""

    type: Literal["mvtec"] = "mvtec"
    category: str = setting("bottle", doc="category folder under root")
    generate_demo: bool = False
    demo_seed: int = setting(0, ge=0, le=MAX_SEED)


@dataclass(frozen=True)
class VisADataSettings(_DataCommon):
    """``data.*`` for VisA in its split_csv layout."""

    type: Literal["visa"] = "visa"
    category: str = "candle"
    split_csv: str = "split_csv/1cls.csv"


@dataclass(frozen=True)
class FolderDataSettings(_DataCommon):
    """``data.*`` for plain folders of normal / abnormal images."""

    type: Literal["folder"] = "folder"
    normal_dir: str = "train/good"
    test_normal_dir: str = "test/good"
    abnormal_dir: str = "test/bad"
    mask_dir: str | None = None
    mask_suffix: str = ""


DataSettings = Union[MVTecDataSettings, VisADataSettings, FolderDataSettings]
#: ``data.type`` → its settings class.
DATA_TYPES: dict[str, type[Settings]] = {"mvtec": MVTecDataSettings, "visa": VisADataSettings, "folder": FolderDataSettings}


def parse_data(data: Mapping[str, Any] | None, where: str = "data") -> DataSettings:
    """``data.*`` → the settings of its layout (``data.type``)."""
    data = dict(data or {})
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in DATA_TYPES:
        raise ConfigError([f"{where}.type: must be one of {', '.join(map(repr, DATA_TYPES))}; got {kind!r}"])
    return DATA_TYPES[kind].parse(data, where)  # type: ignore[return-value]


# -------------------------------------------------------------------------- model-file entries
@dataclass(frozen=True)
class PreprocessSettings(Settings):
    """A model file's ``preprocess`` entry: how the images it was fitted on were pre-processed."""

    image_size: int = setting(256, ge=16, le=MAX_IMAGE_SIDE, doc="side of the square resize")
    crop_size: int | None = setting(None, ge=16, le=MAX_IMAGE_SIDE, doc="centre crop after the resize, null = none")
    mean: tuple[float, ...] = setting(IMAGENET_MEAN, check=_three_numbers)
    std: tuple[float, ...] = setting(IMAGENET_STD, check=_positive_std)
    # files written before the letterbox option squashed every image
    resize: Literal["squash", "letterbox"] = setting("squash", doc="squash | letterbox (aspect ratio kept, padded)")

    def _cross_checks(self) -> list[str]:
        return _crop_le_size(self)


@dataclass(frozen=True)
class LevelThresholdSettings(Settings):
    """One level (image or pixel) of a model file's stored thresholds; null = not decided."""

    quantile: float | None = None
    f1: float | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class StoredThresholdSettings(Settings):
    """A model file's ``thresholds`` entry (:meth:`fapm.inference.thresholds.Thresholds.to_dict`)."""

    image: LevelThresholdSettings | None = None
    pixel: LevelThresholdSettings | None = None
    image_q: float | None = setting(None, gt=0.0, lt=1.0)
    pixel_q: float | None = setting(None, gt=0.0, lt=1.0)
    n_normal: int = setting(0, ge=0)


#: Schemas of model-file sections that are not configuration keys (the configuration reference
#: lists the groups of :class:`RunSettings`; these describe what ``fapm train`` stored).
MODEL_FILE_SECTIONS: tuple[type[Settings], ...] = (PreprocessSettings, StoredThresholdSettings, LevelThresholdSettings)


# ----------------------------------------------------------------------------- machine check
#: Bytes of backbone activations per input pixel and image, all layers together (a CNN such as
#: Wide-ResNet50 keeps ~100 float32 values per input pixel alive); a deliberate over-estimate.
ACTIVATION_BYTES_PER_PIXEL = 400


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (None when unknown)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(side: int, batch: int, side_key: str, batch_key: str) -> None:
    """:class:`ConfigError` naming ``side_key`` when a batch of ``batch`` images of ``side`` px would
    need more memory than the machine has available (an estimate, checked before any work)."""
    need = batch * side * side * ACTIVATION_BYTES_PER_PIXEL
    have = available_memory()
    if have is not None and need > have:
        gib = 1024**3
        raise ConfigError([
            f"{side_key}: {side} px with {batch_key}={batch} needs about {need / gib:.1f} GiB for one batch's "
            f"backbone activations, but this machine has {have / gib:.1f} GiB available; use a smaller "
            f"{side_key} or {batch_key}"
        ])


def check_data_memory(data: DataSettings) -> None:
    """:func:`check_memory` for a run's data settings (the largest batch at the resize size)."""
    if data.train_batch_size >= data.eval_batch_size:
        check_memory(data.image_size, data.train_batch_size, "data.image_size", "data.train_batch_size")
    else:
        check_memory(data.image_size, data.eval_batch_size, "data.image_size", "data.eval_batch_size")


# --------------------------------------------------------------------------------------- run
@dataclass(frozen=True)
class ThresholdSettings(Settings):
    """``thresholds.*``: quantiles of the held-out normal images' scores taken as thresholds."""

    image_quantile: float = setting(0.995, gt=0.0, lt=1.0)
    pixel_quantile: float = setting(0.995, gt=0.0, lt=1.0)


@dataclass(frozen=True)
class RunSettings:
    """Everything a training run validates before any work."""

    model: ModelSettings
    backbone: BackboneSettings
    data: DataSettings
    thresholds: ThresholdSettings
    seed: int


def parse_run(cfg: Mapping[str, Any]) -> RunSettings:
    """Validate a resolved run config (``model``, ``backbone``, ``data``, ``thresholds``, ``seed``).

    All groups are checked and every problem is reported together.
    """
    problems: list[str] = []
    parsed: dict[str, Any] = {}
    for group, parse in (
        ("model", parse_model),
        ("backbone", lambda d, w: BackboneSettings.parse(d, w)),
        ("data", parse_data),
        ("thresholds", lambda d, w: ThresholdSettings.parse(d, w)),
    ):
        try:
            parsed[group] = parse(cfg.get(group), group)
        except ConfigError as err:
            problems.extend(err.problems)
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append(f"seed: expected an integer, got {_describe(seed)}")
    elif not 0 <= seed <= MAX_SEED:
        # backbone.seed and data.seed copy it (${seed}): one problem, not three
        problems[:] = [p for p in problems if not (p.startswith(("backbone.seed:", "data.seed:")) and p.endswith(f"got {seed}"))]
        problems.append(f"seed: must be in [0, {MAX_SEED}], got {seed}")
    if not problems and isinstance(parsed["model"], MemorySettings):
        model, backbone = parsed["model"], parsed["backbone"]
        streams = model.streams(backbone)
        if model.layer_weights is not None and len(model.layer_weights) != streams:
            problems.append(
                f"model.layer_weights: needs {streams} value(s), one per feature stream "
                f"(fusion {model.fusion!r} of layers {list(backbone.layers)}), got {list(model.layer_weights)}"
            )
        data = parsed["data"]
        side = data.crop_size or data.image_size
        if model.align != "none" and model.align_resolution > side:
            problems.append(
                f"model.align_resolution: {model.align_resolution} is larger than the input images ({side} px, "
                f"data.crop_size / data.image_size): set it to at most {side}"
            )
        if tuple(parsed["data"].mean) != tuple(backbone.mean) or tuple(parsed["data"].std) != tuple(backbone.std):
            problems.append(
                f"data.mean/std {list(parsed['data'].mean)}/{list(parsed['data'].std)} differ from the "
                f"backbone's {list(backbone.mean)}/{list(backbone.std)}: the backbone must see the "
                "normalisation it was trained with (the data configs take it from ${backbone.mean})"
            )
    if problems:
        raise ConfigError(problems)
    return RunSettings(parsed["model"], parsed["backbone"], parsed["data"], parsed["thresholds"], seed)
