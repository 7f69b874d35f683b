"""One self-describing model file: memory, config and facts, loaded without unpickling code.

The file is a ``torch.save`` of plain containers, tensors and strings only, read back
with ``torch.load(weights_only=True)``:

``{"format": "fapm-model", "format_version": 1, "fapm_version": ..., "config": <YAML of
the data/backbone/model config>, "state_dict": {...}, "meta": {...}}``

By default the backbone weights are not stored (they come back from their recorded
source: ImageNet cache, a local file checked by hash, or the seeded random init);
``include_backbone=True`` stores them too, for machines without that source.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fapm import __version__

FORMAT = "fapm-model"
FORMAT_VERSION = 1
BACKBONE_PREFIX = "detector.extractor."


class ModelFileError(ValueError):
    """A model file that cannot be used, with the reason and the file name."""


def _persisted_keys(state: dict[str, torch.Tensor], include_backbone: bool, prefixes: tuple[str, ...]) -> dict:
    keep = {}
    for key, value in state.items():
        if not key.startswith(prefixes):
            continue
        if key.startswith(BACKBONE_PREFIX) and not include_backbone:
            continue
        keep[key] = value.detach().cpu()
    return keep


def save_model(
    path: str | Path,
    module: torch.nn.Module,
    config: DictConfig | dict,
    meta: dict[str, Any] | None = None,
    include_backbone: bool = False,
    prefixes: tuple[str, ...] = ("detector.",),
) -> Path:
    """Write ``module``'s persistent state and ``config`` to ``path`` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = config if isinstance(config, DictConfig) else OmegaConf.create(config)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fapm_version": __version__,
        "config": OmegaConf.to_yaml(cfg, resolve=True),
        "state_dict": _persisted_keys(module.state_dict(), include_backbone, prefixes),
        "meta": dict(meta or {}),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_model_file(path: str | Path) -> dict[str, Any]:
    """Read and validate a model file; returns the payload with ``config`` as a DictConfig."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, corrupt or not a torch file
        raise ModelFileError(f"cannot read model file {path}: truncated, corrupt or not a model file ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a {FORMAT} file (a Lightning checkpoint? use the model.pt of a run)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model-file format {version}, newer than this fapm {__version__} reads "
            f"(format {FORMAT_VERSION}): upgrade fapm"
        )
    for key in ("config", "state_dict", "meta"):
        if key not in payload:
            raise ModelFileError(f"model file {path} lacks its {key!r} entry (corrupt?)")
    payload["config"] = OmegaConf.create(payload["config"])
    return payload


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load a model file's ``state`` into a freshly built ``module``; every stored key must fit."""
    own = module.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ModelFileError(f"{path}: the model built from its config has no {unknown[:3]} (config/file mismatch)")
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(BACKBONE_PREFIX) and k.startswith("detector.")]
    if missing:
        raise ModelFileError(f"{path}: the file lacks {missing[:3]} (truncated or from another model)")
