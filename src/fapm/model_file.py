"""One self-describing model file: memory, thresholds, pre-processing, facts and config.

The file is a ``torch.save`` of plain containers, tensors, numbers and strings only, read
back with ``torch.load(weights_only=True)`` — no code is ever unpickled::

    {"format": "fapm-model", "format_version": 2, "fapm_version": "0.1.0", "torch_version": ...,
     "config": <YAML of the data/backbone/model config>,
     "facts": {"model", "backbone", "layers", "grid", "weights"},   # what the memory was built with
     "preprocess": {"image_size", "crop_size", "mean", "std"},
     "thresholds": {...},                                           # fapm.inference.thresholds
     "backbone_included": bool, "state_dict": {...}, "meta": {...},
     "checksum": <sha256 of everything above>}

Backbone weights are not stored by default: they come back from their recorded source
(``facts["weights"]``): the ImageNet weights of the library (cache or download; never a
silent fall-back to random), a local file whose sha256 must match, or the seeded random
init. ``include_backbone=True`` stores them too (11 MB for ResNet-18 up to layer3, 100 MB
for WRN-50-2), so the file scores on machines without that source.

:func:`read_model_file` rejects missing, truncated, corrupt (checksum) and non-model
files and files of a newer format; :func:`load_module` also rejects a config that asks
for another backbone, layers or grid than the file was built with.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fapm import __version__

FORMAT = "fapm-model"
FORMAT_VERSION = 2
#: Versions this code reads (1: before facts, thresholds and the checksum).
READABLE_VERSIONS = (1, 2)
BACKBONE_PREFIX = "detector.extractor."
#: Facts of ``module.facts()`` recorded in the file (those the module reports).
FACT_KEYS = ("model", "backbone", "layers", "grid", "weights")
#: Fact → config key that asks for it (checked on load).
CONFIG_KEYS = {"backbone": "backbone.name", "layers": "backbone.layers", "grid": "model.grid"}
_HASHED = ("format", "format_version", "config", "facts", "preprocess", "thresholds", "backbone_included", "meta")


class ModelFileError(ValueError):
    """A model file that cannot be used, with the reason and the file name."""


# ---------------------------------------------------------------------------------- writing
def _persisted_keys(state: dict[str, torch.Tensor], include_backbone: bool, prefixes: tuple[str, ...]) -> dict:
    keep = {}
    for key, value in state.items():
        if not key.startswith(prefixes):
            continue
        if key.startswith(BACKBONE_PREFIX) and not include_backbone:
            continue
        keep[key] = value.detach().cpu().contiguous()
    return keep


def _plain(value: Any) -> Any:
    """Python scalars/containers only (``weights_only`` refuses numpy scalars and OmegaConf nodes)."""
    if isinstance(value, (DictConfig,)) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return str(value)


def module_facts(module: Any) -> dict[str, Any]:
    """The facts of ``module.facts()`` that define what its memory was built with."""
    facts = module.facts() if hasattr(module, "facts") else {}
    return {k: _plain(facts[k]) for k in FACT_KEYS if k in facts}


def checksum(payload: Mapping[str, Any]) -> str:
    """sha256 over the payload's entries (JSON) and its state-dict tensors (bytes)."""
    digest = hashlib.sha256()
    head = {k: payload.get(k) for k in _HASHED}
    digest.update(json.dumps(head, sort_keys=True, default=str).encode())
    for key in sorted(payload["state_dict"]):
        tensor = payload["state_dict"][key]
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_model(
    path: str | Path,
    module: torch.nn.Module,
    config: DictConfig | dict,
    meta: dict[str, Any] | None = None,
    include_backbone: bool = False,
    prefixes: tuple[str, ...] = ("detector.",),
    thresholds: Mapping[str, Any] | None = None,
    preprocess: Mapping[str, Any] | None = None,
    facts: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``module``'s persistent state, ``config`` and facts to ``path`` (atomically).

    Args:
        path: the file to write (parents created).
        module: the fitted module; ``prefixes`` select its state to store.
        config: the config that rebuilds ``module`` (``model.module`` is instantiated on load).
        meta: free-form plain data (run facts, metrics).
        include_backbone: store the backbone weights too (self-contained file).
        thresholds: :meth:`Thresholds.to_dict` (empty = none decided).
        preprocess: :meth:`Preprocess.to_dict` of the images the module was fitted on.
        facts: what the memory was built with; default :func:`module_facts`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = config if isinstance(config, DictConfig) else OmegaConf.create(config)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fapm_version": __version__,
        "torch_version": str(torch.__version__),  # TorchVersion is a class weights_only refuses
        "config": OmegaConf.to_yaml(cfg, resolve=True),
        "facts": _plain(dict(facts) if facts is not None else module_facts(module)),
        "preprocess": _plain(dict(preprocess)) if preprocess is not None else None,
        "thresholds": _plain(dict(thresholds or {})),
        "backbone_included": bool(include_backbone),
        "state_dict": _persisted_keys(module.state_dict(), include_backbone, prefixes),
        "meta": _plain(dict(meta or {})),
    }
    payload["checksum"] = checksum(payload)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------- reading
def _load_error(err: Exception) -> str:
    """The useful line of a ``torch.load`` error."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds pickled Python objects ({found.group(1)}), which are never loaded"
    first = text.strip().splitlines()[0][:200] if text.strip() else ""
    return first or type(err).__name__


def read_model_file(path: str | Path) -> dict[str, Any]:
    """Read and validate a model file; returns the payload with ``config`` as a DictConfig.

    Raises:
        ModelFileError: missing, truncated, corrupt or non-model file, or a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, corrupt, pickled code or not a torch file
        raise ModelFileError(
            f"cannot read model file {path}: truncated, corrupt or not a {FORMAT} file ({_load_error(err)})"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a {FORMAT} file (a Lightning checkpoint? use the model.pt of a run)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path} has no valid format version ({version!r}): corrupt file")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model-file format {version}, newer than this fapm {__version__} reads "
            f"(format {FORMAT_VERSION}): upgrade fapm"
        )
    required = ("config", "state_dict", "meta") + (("facts", "thresholds", "checksum") if version >= 2 else ())
    for key in required:
        if key not in payload:
            raise ModelFileError(f"model file {path} lacks its {key!r} entry (corrupt?)")
    if not isinstance(payload["state_dict"], dict) or not all(
        isinstance(v, torch.Tensor) for v in payload["state_dict"].values()
    ):
        raise ModelFileError(f"model file {path}: its state_dict is not a dict of tensors (corrupt?)")
    if version >= 2 and checksum(payload) != payload["checksum"]:
        raise ModelFileError(f"model file {path} is corrupt: its checksum does not match its contents")
    payload.setdefault("facts", {})
    payload.setdefault("thresholds", {})
    payload.setdefault("preprocess", None)
    payload.setdefault("backbone_included", False)
    try:
        payload["config"] = OmegaConf.create(payload["config"])
    except Exception as err:  # noqa: BLE001 - YAML errors
        raise ModelFileError(f"model file {path}: its config is not valid YAML ({err})") from err
    return payload


def _listify(value: Any) -> Any:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return list(value) if isinstance(value, (list, tuple)) else value


def check_config(facts: Mapping[str, Any], config: DictConfig | Mapping[str, Any], path: str | Path) -> None:
    """Error if ``config`` asks for another backbone, layers or grid than the file's ``facts``.

    Only keys present in both are compared (a config without ``backbone`` asks for nothing).
    """
    cfg = config if isinstance(config, DictConfig) else OmegaConf.create(dict(config))
    for fact, key in CONFIG_KEYS.items():
        if fact not in facts:
            continue
        asked = OmegaConf.select(cfg, key, default=None)
        if asked is None:
            continue
        if _listify(asked) != _listify(facts[fact]):
            raise ModelFileError(
                f"the config asks for {key}={_listify(asked)} but the model file {path} was built with "
                f"{fact} {facts[fact]}: use a model trained with that setting, or drop the override"
            )


def _source_overrides(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Backbone settings that rebuild the backbone from the file's recorded weight source."""
    if payload.get("backbone_included"):
        return {"pretrained": False, "weights": None}  # random skeleton, then the stored weights
    kind = str(payload.get("facts", {}).get("weights", "")).split(":", 1)[0]
    if kind == "imagenet":
        return {"pretrained": True, "weights": None}  # download or fail, never random
    if kind == "random":
        return {"pretrained": False, "weights": None}
    return {}  # "file": the recorded path, checked by hash below


def _backbone_nodes(config: DictConfig) -> list[DictConfig]:
    """``config.backbone`` and its resolved copies inside ``config.model`` (same ``_target_``)."""
    target = OmegaConf.select(config, "backbone._target_", default=None)
    if target is None:
        return []
    found: list[DictConfig] = []

    def walk(node: Any) -> None:
        if isinstance(node, DictConfig):
            if node.get("_target_") == target and "pretrained" in node:
                found.append(node)
            for key in node:
                if not OmegaConf.is_missing(node, key):
                    walk(node[key])
        elif OmegaConf.is_list(node):
            for item in node:
                walk(item)

    walk(config)
    return found


def _sha(weights: str) -> str | None:
    found = re.search(r"sha256=([0-9a-f]+)", weights)
    return found.group(1) if found else None


def _check_source(module: Any, payload: Mapping[str, Any], path: str | Path) -> None:
    recorded = payload.get("facts", {}).get("weights")
    if recorded is None or payload.get("backbone_included"):
        return
    rebuilt = str(module_facts(module).get("weights"))
    kind = str(recorded).split(":", 1)[0]
    if kind == "file":  # the file may live elsewhere on this machine: its hash must match, not its path
        same = rebuilt.split(":", 1)[0] == kind and _sha(rebuilt) == _sha(str(recorded))
    else:  # imagenet:<library>:<name>:<tag> or random:<library> init, seed <n>
        same = rebuilt == str(recorded)
    if not same:
        raise ModelFileError(
            f"{path}: the memory was built with backbone weights {recorded} but they rebuilt as {rebuilt}: "
            "the scores would be meaningless. Provide the same weights, or save the model with "
            "include_backbone=True (save_backbone=true at training)."
        )


def load_state(
    module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, backbone_included: bool = False
) -> None:
    """Load a model file's ``state`` into a freshly built ``module``; every stored key must fit."""
    own = module.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ModelFileError(f"{path}: the model built from its config has no {unknown[:3]} (config/file mismatch)")
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ModelFileError(f"{path}: its tensors do not fit the model built from its config ({err})") from err
    missing = [
        k for k in result.missing_keys
        if k.startswith("detector.") and (backbone_included or not k.startswith(BACKBONE_PREFIX))
    ]
    if missing:
        raise ModelFileError(f"{path}: the file lacks {missing[:3]} (truncated or from another model)")


def load_module(
    path: str | Path, overrides: DictConfig | Mapping[str, Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """Rebuild the module stored in a model file (on the CPU, in eval mode).

    Args:
        path: the model file.
        overrides: config merged into the stored one. The stored config is resolved, so
            override what is built, e.g. ``{"model": {"module": {"detector": {"k": 1}}}}``;
            asking for another backbone, layers or grid than the file's is an error.

    Returns:
        ``(module, payload)`` with ``payload["config"]`` the merged config.
    """
    import hydra

    payload = read_model_file(path)
    facts = payload["facts"]
    config: DictConfig = payload["config"]
    check_config(facts, config, path)
    if overrides is not None:
        check_config(facts, overrides, path)
        config = OmegaConf.merge(config, overrides)
    build = config.copy()
    for node in _backbone_nodes(build):
        node.merge_with(_source_overrides(payload))
    try:
        module = hydra.utils.instantiate(build.model.module)
    except Exception as err:  # noqa: BLE001 - reported with the file and the recorded source
        cause = err.__cause__ or err
        raise ModelFileError(
            f"{path}: cannot rebuild the model from its config (backbone weights {facts.get('weights', '?')}): "
            f"{cause}"
        ) from err
    built = module_facts(module)
    for fact in CONFIG_KEYS:
        if fact in facts and fact in built and _listify(built[fact]) != _listify(facts[fact]):
            raise ModelFileError(
                f"the config builds a model with {fact} {built[fact]} but the model file {path} was built with "
                f"{facts[fact]}: use a model trained with that setting, or drop the override"
            )
    load_state(module, payload["state_dict"], path, bool(payload["backbone_included"]))
    _check_source(module, payload, path)
    module.eval()
    payload["config"] = config
    return module, payload
