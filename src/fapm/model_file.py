"""The model file: data, never code.

A model file is a `safetensors <https://github.com/huggingface/safetensors>`_ file: raw
tensors plus one JSON header (metadata entry ``"fapm"``)::

    {"format": "fapm-model", "format_version": 3, "fapm_version": ..., "torch_version": ...,
     "model": {...}, "backbone": {...}, "data": {...} | null,   # fapm.settings, validated on load
     "preprocess": {"image_size", "crop_size", "mean", "std", "resize"},
     "thresholds": {...},                                        # fapm.inference.thresholds
     "facts": {...}, "meta": {...},                              # what the run recorded (plain data)
     "backbone_included": bool,
     "checksum": "<sha256>", "signature": "<HMAC-SHA256>" | null}

Tensors are the plain-torch detector's state (the memories; the backbone's weights only
with ``include_backbone``; LAMP's network). Nothing in the file is unpickled or
instantiated: loading parses the settings with their schema (unknown keys, ``_target_``
nodes and wrong types are refused), builds the detector with :mod:`fapm.builders` from the
package's own classes, and checks every tensor against what the settings imply (names,
shapes, dtypes, finite values, memory channels vs the backbone's layers, grid vs map size).
Neither Hydra nor Lightning is imported.

Integrity: the checksum (sha256 over the header and every tensor) catches corruption; anyone
can recompute it. Authenticity: with a key in ``FAPM_MODEL_KEY`` (the key itself) or
``FAPM_MODEL_KEY_FILE`` (a file holding it), :func:`save_model` signs the same bytes with
HMAC-SHA256 and :func:`read_model_file` refuses files whose signature is missing or wrong —
protection against tampering by anyone without the key.

Backbone weights are not stored by default: they come back from their recorded source
(``facts["weights"]``): ImageNet weights of the library (cache or download, never a silent
fall-back to random), a local file whose sha256 must match, or the seeded random init.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fapm import __version__
from fapm.errors import FapmError
from fapm.fileio import replace_atomically
from fapm.models.offline_weights import is_offline_source
from fapm.settings import (
    BackboneSettings,
    ConfigError,
    DataSettings,
    LampSettings,
    MemorySettings,
    ModelSettings,
    PreprocessSettings,
    StoredThresholdSettings,
    parse_data,
    parse_model,
)

FORMAT = "fapm-model"
FORMAT_VERSION = 3
METADATA_KEY = "fapm"
#: Tensor-name prefix of the backbone's weights (stored only with ``include_backbone``).
BACKBONE_PREFIX = "extractor."
#: Environment variables holding the signing key, or the path of a file holding it.
KEY_ENV = "FAPM_MODEL_KEY"
KEY_FILE_ENV = "FAPM_MODEL_KEY_FILE"
_HEADER_KEYS = frozenset({
    "format", "format_version", "fapm_version", "torch_version", "model", "backbone", "data", "preprocess",
    "thresholds", "facts", "meta", "backbone_included", "checksum", "signature",
})  # fmt: skip
_UNSIGNED = ("checksum", "signature")
#: Keys that would make a config instantiate or call something (Hydra's); refused anywhere.
_CODE_KEYS = frozenset({"_target_", "_partial_", "_args_", "_recursive_", "_convert_"})


class ModelFileError(FapmError, ValueError):
    """A model file that cannot be used, with the reason and the file name."""

    hint = "use the model.safetensors of a training run (or re-train); see docs/reliability.md"


# ------------------------------------------------------------------------------ signing
def signing_key() -> bytes | None:
    """The HMAC key from ``FAPM_MODEL_KEY`` or ``FAPM_MODEL_KEY_FILE``; None when neither is set.

    A variable that is set but empty is an error, never "no key": an empty key would silently
    turn verification off (``FAPM_MODEL_KEY=$UNSET_VARIABLE``).
    """
    value = os.environ.get(KEY_ENV)
    if value is not None:
        if not value.strip():
            raise ModelFileError(
                f"{KEY_ENV} is set but empty: refusing to sign or verify with an empty key",
                hint=f"set {KEY_ENV} to the signing key, or unset it (unset {KEY_ENV}) to use no key",
            )
        return value.encode()
    path = os.environ.get(KEY_FILE_ENV)
    if path is not None:
        if not path.strip():
            raise ModelFileError(
                f"{KEY_FILE_ENV} is set but empty: it must name the file holding the signing key",
                hint=f"set {KEY_FILE_ENV} to the key file, or unset it",
            )
        try:
            key = Path(path).read_bytes().strip()
        except OSError as err:
            raise ModelFileError(f"cannot read the signing key file {path} ({KEY_FILE_ENV}): {err.strerror}") from err
        if not key:
            raise ModelFileError(f"the signing key file {path} ({KEY_FILE_ENV}) is empty")
        return key
    return None


def _digest_parts(header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> list[bytes]:
    head = {k: v for k, v in header.items() if k not in _UNSIGNED}
    parts = [json.dumps(head, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()]
    for name in sorted(tensors):
        tensor = tensors[name]
        parts.append(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        parts.append(tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return parts


def checksum(header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the header (without checksum and signature) and every tensor (name, dtype, shape, bytes)."""
    digest = hashlib.sha256()
    for part in _digest_parts(header, tensors):
        digest.update(part)
    return digest.hexdigest()


def signature(header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], key: bytes) -> str:
    """HMAC-SHA256 with ``key`` over the same bytes as :func:`checksum`."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in _digest_parts(header, tensors):
        mac.update(part)
    return mac.hexdigest()


# ------------------------------------------------------------------------------ writing
def _plain(value: Any) -> Any:
    """JSON-safe plain data: NaN/inf become None, tuples lists, unknown objects their text."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if hasattr(value, "item"):  # numpy / torch scalars
        return _plain(value.item())
    return str(value)


def detector_tensors(detector: nn.Module, include_backbone: bool = False) -> dict[str, torch.Tensor]:
    """The state a model file stores: every persistent tensor, the backbone's only if asked."""
    out = {}
    for name, tensor in detector.state_dict().items():
        if name.startswith(BACKBONE_PREFIX) and not include_backbone:
            continue
        if name.endswith("num_batches_tracked"):
            continue
        out[name] = tensor.detach().cpu().contiguous()
    return out


def save_model(
    path: str | Path,
    detector: nn.Module,
    model: ModelSettings,
    backbone: BackboneSettings | None,
    preprocess: Mapping[str, Any],
    data: DataSettings | None = None,
    thresholds: Mapping[str, Any] | None = None,
    facts: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    include_backbone: bool = False,
) -> Path:
    """Write ``detector`` and its settings to ``path`` atomically (temp file, fsync, rename).

    Args:
        path: the file to write (parents created).
        detector: the fitted plain-torch detector.
        model, backbone, data: the validated settings it was built and fitted with.
        preprocess: :meth:`Preprocess.to_dict` of the images it was fitted on.
        thresholds: :meth:`Thresholds.to_dict` (empty = none decided).
        facts: what the run recorded about the model (backbone weight source, memory sizes…).
        meta: free-form plain data (run metrics).
        include_backbone: store the backbone weights too (a self-contained file).

    Raises:
        ModelFileError: the file cannot be written (disk full, permissions), with the OS reason;
            nothing is left behind.
    """
    path = Path(path)
    header: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fapm_version": __version__,
        "torch_version": str(torch.__version__),
        "model": _model_dict(model),
        "backbone": backbone.to_dict() if backbone is not None else None,
        "data": data.to_dict() if data is not None else None,
        "preprocess": _plain(dict(preprocess)),
        "thresholds": _plain(dict(thresholds or {})),
        "facts": _plain(dict(facts or {})),
        "meta": _plain(dict(meta or {})),
        "backbone_included": bool(include_backbone),
    }
    tensors = detector_tensors(detector, include_backbone)
    header["checksum"] = checksum(header, tensors)
    key = signing_key()
    header["signature"] = signature(header, tensors, key) if key is not None else None

    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(header)})
        except OSError:
            raise
        except Exception as err:  # noqa: BLE001 - safetensors' own error wraps the OS error in its text
            found = re.search(r"os error (\d+)", str(err))
            code = int(found.group(1)) if found else errno.EIO
            raise OSError(code, os.strerror(code), str(tmp)) from err

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, write)
    except OSError as err:
        raise ModelFileError(f"cannot write the model file {path}: {os_reason(err)}") from err
    return path


def os_reason(err: OSError) -> str:
    """``"No space left on device (ENOSPC)"``: the OS reason and the errno name."""
    name = errno.errorcode.get(err.errno or 0, "")
    return f"{err.strerror or err}" + (f" ({name})" if name else "")


def _model_dict(model: ModelSettings) -> dict[str, Any]:
    data = model.to_dict()
    if isinstance(model, LampSettings):  # training-only Hydra nodes: never stored
        data.pop("optimizer", None)
        data.pop("scheduler", None)
    return data


# ------------------------------------------------------------------------------ reading
@dataclass
class ModelFile:
    """A validated model file: its settings, tensors and recorded facts.

    Attributes:
        path: where it was read from.
        model, backbone, data: the parsed settings (``backbone`` is None for LAMP files).
        preprocess: pre-processing of the images it was fitted on.
        thresholds: the stored decision thresholds (plain data).
        facts, meta: what the run recorded.
        backbone_included: the backbone's weights are in ``tensors``.
        tensors: name → tensor, on the CPU.
        checksum: the file's sha256 checksum (identifies its contents, e.g. for caches).
        signed: the file carries a signature; ``verified``: it was checked with the key.
    """

    path: Path
    model: ModelSettings
    backbone: BackboneSettings | None
    data: DataSettings | None
    preprocess: dict[str, Any]
    thresholds: dict[str, Any]
    facts: dict[str, Any]
    meta: dict[str, Any]
    backbone_included: bool
    tensors: dict[str, torch.Tensor] = field(repr=False)
    checksum: str = ""
    signed: bool = False
    verified: bool = False


def _find_code(value: Any, where: str) -> str | None:
    """The first key that would make a config call code (Hydra's ``_target_``…), as ``where.key``."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key in _CODE_KEYS:
                return f"{where}.{key}"
            found = _find_code(item, f"{where}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _find_code(item, f"{where}[{i}]")
            if found:
                return found
    return None


def _read_raw(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Header and tensors of a safetensors file; :class:`ModelFileError` on anything unreadable."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic[:2] == b"PK":
        raise ModelFileError(
            f"{path} is a zip/pickle container (a torch.save file, a Lightning checkpoint, or a format-1/2 "
            f"fapm model), not a format-{FORMAT_VERSION} model file; such files are not loaded because "
            "unpickling can run code. Re-train to get a model.safetensors."
        )
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as err:  # noqa: BLE001 - the safetensors parser's errors vary by corruption
        raise ModelFileError(f"cannot read model file {path}: truncated, corrupt or not a model file ({err})") from err
    text = metadata.get(METADATA_KEY)
    if text is None:
        raise ModelFileError(f"{path} is a safetensors file without a {FORMAT} header (not a fapm model file)")
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ModelFileError(f"model file {path}: its header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise ModelFileError(f"model file {path}: its header is not a JSON object")
    return header, tensors


def read_model_file(path: str | Path) -> ModelFile:
    """Read and validate a model file (no detector is built yet).

    Raises:
        ModelFileError: missing, unreadable, corrupt (checksum), tampered (signature), of
            another format or version, or holding settings that are invalid or name code.
    """
    path = Path(path)
    _check_file_type(path)
    try:
        header, tensors = _read_raw(path)
        return _validate(path, header, tensors)
    except ModelFileError:
        raise
    except Exception as err:  # noqa: BLE001 - a file we did not foresee: one clear error, never a crash
        raise ModelFileError(f"model file {path} is invalid: {type(err).__name__}: {err}") from err


def _check_file_type(path: Path) -> None:
    """:class:`ModelFileError` unless ``path`` (links followed) is a regular file: a folder, FIFO,
    socket or device is refused by its type (a FIFO is never opened: reading one would block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise ModelFileError(f"model file {path} is a broken symbolic link") from None
        raise ModelFileError(f"model file not found: {path}") from None
    except OSError as err:
        raise ModelFileError(f"cannot read model file {path}: {os_reason(err)}") from err
    if stat.S_ISREG(mode):
        return
    kind = (
        "a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
        else "not a regular file"
    )
    raise ModelFileError(
        f"model file {path} is {kind}, not a model file", hint="ckpt_path must name a model.safetensors file"
    )


def _validate(path: Path, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ModelFile:
    if header.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a {FORMAT} file (format {header.get('format')!r})")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelFileError(f"{path} has no valid format version ({version!r}): corrupt file")
    if version != FORMAT_VERSION:
        newer = version > FORMAT_VERSION
        raise ModelFileError(
            f"{path} has model-file format {version}; this fapm {__version__} reads format {FORMAT_VERSION}"
            + (": upgrade fapm" if newer else " (re-train to get a current file)")
        )
    unknown = sorted(set(header) - _HEADER_KEYS)
    if unknown:
        raise ModelFileError(f"model file {path}: unknown header entries {unknown}")
    for key in ("model", "preprocess", "checksum", "backbone_included"):
        if key not in header:
            raise ModelFileError(f"model file {path} lacks its {key!r} entry (corrupt?)")
    for section in ("model", "backbone", "data", "preprocess", "thresholds"):
        found = _find_code(header.get(section), section)
        if found:
            raise ModelFileError(
                f"model file {path}: {found} asks to call code; a model file is data and is never "
                "instantiated (refused)"
            )
    if not isinstance(header["checksum"], str) or not hmac.compare_digest(header["checksum"], checksum(header, tensors)):
        raise ModelFileError(f"model file {path} is corrupt: its checksum does not match its contents")
    signed = isinstance(header.get("signature"), str)
    key = signing_key()
    verified = False
    if key is not None:
        if not signed:
            raise ModelFileError(
                f"model file {path} is not signed, but a signing key is set ({KEY_ENV}/{KEY_FILE_ENV}): "
                "only signed files are loaded"
            )
        if not hmac.compare_digest(header["signature"], signature(header, tensors, key)):
            raise ModelFileError(f"model file {path}: its signature does not match (tampered, or another key)")
        verified = True
    try:
        model = parse_model(header["model"], "model")
        backbone = (
            BackboneSettings.parse(header["backbone"], "backbone") if header.get("backbone") is not None else None
        )
        data = parse_data(header["data"], "data") if header.get("data") is not None else None
        for name in ("preprocess", "thresholds"):
            if header.get(name) is not None and not isinstance(header[name], dict):
                raise ConfigError([f"{name}: expected a group of keys, got {type(header[name]).__name__}"])
        preprocess = PreprocessSettings.parse(header["preprocess"], "preprocess")
        StoredThresholdSettings.parse(header.get("thresholds") or {}, "thresholds")
    except ConfigError as err:
        raise ModelFileError(f"model file {path} holds invalid settings: {err}") from err
    if isinstance(model, MemorySettings) and backbone is None:
        raise ModelFileError(f"model file {path}: a memory-bank model without backbone settings")
    facts = header.get("facts") or {}
    if isinstance(model, MemorySettings) and isinstance(facts, dict) and backbone is not None:
        # what the settings ask for must be what the memory was built with
        for fact, wanted in (("backbone", backbone.name), ("layers", list(backbone.layers)), ("grid", list(model.grid))):
            if fact in facts and facts[fact] != wanted:
                raise ModelFileError(
                    f"model file {path}: its settings ask for {fact} {wanted} but its memory was built with "
                    f"{facts[fact]}"
                )
    stated = isinstance(header.get("preprocess"), dict) and {"mean", "std"} <= set(header["preprocess"])
    if isinstance(model, MemorySettings) and backbone is not None and stated:
        if (list(preprocess.mean), list(preprocess.std)) != (list(backbone.mean), list(backbone.std)):
            raise ModelFileError(
                f"model file {path}: preprocess.mean/std differ from the backbone's normalisation "
                f"({list(preprocess.mean)}/{list(preprocess.std)} vs {list(backbone.mean)}/{list(backbone.std)})"
            )
    for name in ("facts", "meta"):
        value = header.get(name) or {}
        if not isinstance(value, dict):
            raise ModelFileError(f"model file {path}: its {name!r} entry is not a mapping")
    if not isinstance(header["backbone_included"], bool):
        raise ModelFileError(f"model file {path}: 'backbone_included' must be true or false")
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        # d_max is NaN where the adaptive statistic was not computed (e.g. a projected coreset)
        bad = torch.isinf(tensor) if name.endswith(".d_max") else ~torch.isfinite(tensor)
        if bool(bad.any()):
            raise ModelFileError(f"model file {path}: tensor {name!r} holds NaN or infinite values")
    return ModelFile(
        path=path,
        model=model,
        backbone=backbone,
        data=data,
        preprocess=preprocess.to_dict(),
        thresholds=dict(header.get("thresholds") or {}),
        facts=dict(header.get("facts") or {}),
        meta=dict(header.get("meta") or {}),
        backbone_included=header["backbone_included"],
        tensors=tensors,
        checksum=header["checksum"],
        signed=signed,
        verified=verified,
    )


# ------------------------------------------------------------------------------ building
def _source_backbone(file: ModelFile) -> BackboneSettings:
    """Backbone settings that rebuild the weights the memory was built with, never others."""
    assert file.backbone is not None
    if file.backbone_included:
        return file.backbone.replace(pretrained="false", weights=None)  # a skeleton; the file's weights follow
    kind = str(file.facts.get("weights", "")).split(":", 1)[0]
    if kind == "imagenet":
        if is_offline_source(file.backbone.weights):
            return file.backbone  # a package installed with fapm (imagenet:<package>)
        return file.backbone.replace(pretrained="true", weights=None)  # download or fail, never random
    if kind == "random":
        return file.backbone.replace(pretrained="false", weights=None)
    return file.backbone  # "file": the recorded path, its hash checked below


def _check_source(detector: nn.Module, file: ModelFile) -> None:
    recorded = file.facts.get("weights")
    if recorded is None or file.backbone_included:
        return
    rebuilt = str(detector.extractor.weight_source)
    kind = str(recorded).split(":", 1)[0]
    if kind == "file":  # the file may live elsewhere on this machine: its hash must match, not its path
        same = rebuilt.split(":", 1)[0] == kind and _sha(rebuilt) == _sha(str(recorded))
    else:
        same = rebuilt == str(recorded)
    if not same:
        raise ModelFileError(
            f"{file.path}: the memory was built with backbone weights {recorded} but they rebuilt as {rebuilt}: "
            "the scores would be meaningless. Provide the same weights, or save the model with the backbone "
            "included (save_backbone=true at training)."
        )


def _sha(weights: str) -> str | None:
    marker = "sha256="
    return weights.split(marker, 1)[1].split()[0] if marker in weights else None


def _check_tensors(file: ModelFile, detector: nn.Module) -> None:
    """Every tensor the file holds is one the detector has, of the same dtype and a shape it can take."""
    own = {k: v for k, v in detector.state_dict().items() if not k.endswith("num_batches_tracked")}
    expected = {k for k in own if file.backbone_included or not k.startswith(BACKBONE_PREFIX)}
    unknown = sorted(set(file.tensors) - expected)
    missing = sorted(expected - set(file.tensors))
    if unknown or missing:
        raise ModelFileError(
            f"{file.path}: its tensors do not fit the model its settings describe"
            + (f"; unexpected {unknown[:3]}" if unknown else "")
            + (f"; missing {missing[:3]}" if missing else "")
        )
    for name in expected:
        stored, mine = file.tensors[name], own[name]
        if stored.dtype != mine.dtype:
            raise ModelFileError(f"{file.path}: tensor {name!r} is {stored.dtype}, expected {mine.dtype}")
        if ".memories." in f".{name}" or name.startswith("memories."):
            continue  # memories are sized by their training data: checked by _check_memories
        if tuple(stored.shape) != tuple(mine.shape):
            raise ModelFileError(
                f"{file.path}: tensor {name!r} has shape {tuple(stored.shape)}, the model needs {tuple(mine.shape)}"
            )


def _check_memories(file: ModelFile, detector: nn.Module) -> None:
    """Memory shapes against the grid and the backbone's channels and map sizes at the fitted input size."""
    from fapm.models.patch_memory import GridError, check_grid

    side = int(file.preprocess.get("crop_size") or file.preprocess.get("image_size") or 0)
    if side <= 0:
        raise ModelFileError(f"{file.path}: its preprocess entry has no image size")
    with torch.no_grad():
        streams = detector.extract(torch.zeros(1, 3, side, side))
    grid = detector.grid
    regions = grid[0] * grid[1]
    for i, (name, stream) in enumerate(zip(detector.stream_names, streams)):
        try:
            check_grid(stream.shape[-2], stream.shape[-1], grid, what=f"feature map of stream {name!r}")
        except GridError as err:
            raise ModelFileError(f"{file.path}: {err}") from err
        vectors = file.tensors[f"memories.{i}.memory"]
        lengths = file.tensors[f"memories.{i}.lengths"]
        if vectors.dim() != 3 or vectors.shape[0] != regions or vectors.shape[1] < 1:
            raise ModelFileError(
                f"{file.path}: memory of stream {name!r} has shape {tuple(vectors.shape)}, expected "
                f"[{regions} regions, K, C] for grid {list(grid)}"
            )
        if vectors.shape[2] != stream.shape[1]:
            raise ModelFileError(
                f"{file.path}: memory of stream {name!r} has {vectors.shape[2]} channels but the backbone "
                f"{file.facts.get('backbone', '')} gives {stream.shape[1]} (another backbone or layers?)"
            )
        for extra in ("lengths", "d_max", "enlarged"):
            if tuple(file.tensors[f"memories.{i}.{extra}"].shape) != (regions,):
                raise ModelFileError(f"{file.path}: memories.{i}.{extra} must hold one value per region ({regions})")
        if bool((lengths < 1).any()) or bool((lengths > vectors.shape[1]).any()):
            raise ModelFileError(
                f"{file.path}: memory lengths of stream {name!r} must be in [1, {vectors.shape[1]}], "
                f"got {lengths.min().item()}..{lengths.max().item()}"
            )


def load_detector(path: str | Path, extractor: nn.Module | None = None) -> tuple[nn.Module, ModelFile]:
    """Rebuild the plain-torch detector a model file holds (on the CPU, in eval mode).

    Args:
        path: the model file.
        extractor: an already built backbone to reuse (it must be the one the file needs).

    Returns:
        ``(detector, file)``.

    Raises:
        ModelFileError: anything wrong with the file, or backbone weights that cannot be had.
    """
    from fapm.builders import build_lamp_detector, build_memory_detector
    from fapm.models.features import BackboneError

    file = read_model_file(path)
    mean = file.preprocess.get("mean")
    std = file.preprocess.get("std")
    try:
        if isinstance(file.model, MemorySettings):
            detector = build_memory_detector(file.model, _source_backbone(file), extractor=extractor)
        else:
            if mean is None or std is None:
                raise ModelFileError(f"{file.path}: its preprocess entry lacks mean/std")
            detector = build_lamp_detector(file.model, mean, std)
    except ModelFileError:
        raise
    except (BackboneError, ValueError) as err:
        raise ModelFileError(
            f"{file.path}: cannot rebuild the model (backbone weights {file.facts.get('weights', '?')}): {err}"
        ) from err
    _check_tensors(file, detector)
    if isinstance(file.model, MemorySettings):
        _check_memories(file, detector)
    try:
        detector.load_state_dict(file.tensors, strict=False)
    except RuntimeError as err:
        raise ModelFileError(f"{file.path}: its tensors do not fit the model ({err})") from err
    if isinstance(file.model, MemorySettings):
        _check_source(detector, file)
    detector.eval()
    return detector, file
