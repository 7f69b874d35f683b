"""Backbone feature extraction: named intermediate layers, nothing computed past the last one.

Any torchvision or timm CNN works: layers are named by module path (``layer2``,
``features.32``). The backbone is traced with ``torch.fx`` and pruned after the last
requested layer, so e.g. Wide-ResNet-50-2 never runs ``layer4`` or the classifier.
Each returned map goes through a local average pool (PatchCore's neighbourhood
aggregation, 3×3 / stride 1 / padding 1 by default).
"""

from __future__ import annotations

from fapm.errors import FapmError

import hashlib
import logging
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

PretrainedMode = Literal["auto", "true", "false"]


class BackboneError(FapmError, ValueError):
    """A backbone, layer or weight-file problem that the user must fix in the config."""

    hint = "check the backbone.* keys (README: Backbone weights)"


@dataclass
class WeightSource:
    """Where the backbone weights came from (recorded in metrics and model files)."""

    kind: str  # "imagenet" | "file" | "random"
    detail: str = ""

    @property
    def is_random(self) -> bool:
        return self.kind == "random"

    def __str__(self) -> str:
        return f"{self.kind}:{self.detail}" if self.detail else self.kind


def _normalise_mode(pretrained: bool | str) -> PretrainedMode:
    if isinstance(pretrained, bool):
        return "true" if pretrained else "false"
    value = str(pretrained).lower()
    if value not in ("auto", "true", "false"):
        raise BackboneError(f"backbone.pretrained must be auto, true or false, got {pretrained!r}")
    return value  # type: ignore[return-value]


def _online(host: str, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _build_torchvision(name: str, imagenet: bool, weights_tag: str | None) -> nn.Module:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError as err:
        raise BackboneError(f"torchvision has no model named {name!r} (backbone.name)") from err
    if not imagenet:
        return builder(weights=None)
    weights_enum = torchvision.models.get_model_weights(name)
    weights = weights_enum[weights_tag] if weights_tag else weights_enum.DEFAULT
    return builder(weights=weights)


def _torchvision_weights_cached(name: str, weights_tag: str | None) -> bool:
    import torchvision

    weights_enum = torchvision.models.get_model_weights(name)
    weights = weights_enum[weights_tag] if weights_tag else weights_enum.DEFAULT
    filename = os.path.basename(weights.url)
    return (Path(torch.hub.get_dir()) / "checkpoints" / filename).is_file()


def _build_timm(name: str, imagenet: bool) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=imagenet)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise BackboneError(f"timm has no model named {name!r} (backbone.name)") from err
        raise


def _timm_weights_cached(name: str) -> bool:
    """True when timm can load ``name``'s pretrained weights without the network."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        _build_timm(name, imagenet=True)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        return False
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def load_state_dict_file(path: str | Path, prefix: str = "") -> dict[str, Tensor]:
    """Read a ``.pth``/``.pt``/``.ckpt`` (``weights_only``) or ``.safetensors`` state dict.

    Nested ``state_dict``/``model`` entries (Lightning and self-supervised checkpoints)
    are unwrapped; keys starting with ``prefix`` keep only the rest, others are dropped
    when a prefix is given.
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"backbone.weights: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - reported with the file name
        raise BackboneError(f"backbone.weights: cannot read {path}: {err}") from err
    for key in ("state_dict", "model", "teacher", "student"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise BackboneError(f"backbone.weights: {path} does not hold a state dict of tensors")
    if prefix:
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not stripped:
            raise BackboneError(f"backbone.weights_prefix {prefix!r} matches no key in {path}")
        state = stripped
    return state


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FeatureExtractor(nn.Module):
    """Frozen CNN returning pooled intermediate feature maps.

    Args:
        name: model name in the chosen library (``wide_resnet50_2``, ``resnet18``, ``vgg16_bn``).
        layers: module paths of the layers to return, shallow to deep (``["layer2", "layer3"]``).
        library: ``torchvision`` or ``timm``.
        pretrained: ``true`` downloads/caches ImageNet weights (error when offline), ``false``
            uses random weights, ``auto`` uses ImageNet weights when they can be had and
            random weights otherwise (with a warning; see :attr:`weight_source`).
        weights: optional local state-dict file (``.pth``/``.safetensors``); overrides
            ``pretrained``. Only the parameters of the kept layers must be present.
        weights_prefix: key prefix to strip from ``weights`` (e.g. ``"module.backbone."``).
        weights_tag: torchvision weights enum member (``IMAGENET1K_V1``); ``None`` = default.
        pool_size: local average pooling kernel (stride 1, same padding); 1 disables it.
        seed: seed for random initialisation (used when no weights are loaded).
        fold_batchnorm: fold each frozen BatchNorm into the convolution before it (same
            function up to float rounding, one memory-bound pass less per layer).
        channels_last: run the backbone in channels-last memory format.
        autocast_dtype: ``float16``/``bfloat16`` to run the backbone under autocast
            (outputs are returned as float32).
    """

    def __init__(
        self,
        name: str = "wide_resnet50_2",
        layers: Sequence[str] = ("layer2", "layer3"),
        library: str = "torchvision",
        pretrained: bool | str = "auto",
        weights: str | None = None,
        weights_prefix: str = "",
        weights_tag: str | None = None,
        pool_size: int = 3,
        seed: int = 0,
        fold_batchnorm: bool = True,
        channels_last: bool = False,
        autocast_dtype: str | None = None,
    ) -> None:
        super().__init__()
        if not layers:
            raise BackboneError("backbone.layers must name at least one layer")
        if library not in ("torchvision", "timm"):
            raise BackboneError(f"backbone.library must be torchvision or timm, got {library!r}")
        self.name = name
        self.layers = list(layers)
        self.library = library
        self.pool_size = int(pool_size)
        self.channels_last = channels_last
        self.autocast_dtype = autocast_dtype
        mode = _normalise_mode(pretrained)

        model, source = self._build(name, library, mode, weights, weights_prefix, weights_tag, seed)
        self.weight_source = source
        self.body = self._prune(model, self.layers)
        if weights:
            self._load_file(weights, weights_prefix)
        self.body.eval().requires_grad_(False)
        if fold_batchnorm:
            from torch.fx.experimental.optimization import fuse

            # in place: a deep copy of a traced module would come back in training mode
            self.body = fuse(self.body, inplace=True)
            self.body.eval().requires_grad_(False)
        self.fold_batchnorm = fold_batchnorm
        if channels_last:
            self.body = self.body.to(memory_format=torch.channels_last)
        self.pool = (
            nn.AvgPool2d(self.pool_size, stride=1, padding=self.pool_size // 2)
            if self.pool_size > 1
            else nn.Identity()
        )
        if source.is_random:
            warnings.warn(
                f"backbone {name}: running with RANDOM weights ({source.detail}). Random features "
                "score near chance on real photographs; use ImageNet or local weights for real data.",
                stacklevel=1,  # attributed to this file: the caller is usually Hydra's instantiate
            )

    # --------------------------------------------------------------- building
    @staticmethod
    def _build(
        name: str,
        library: str,
        mode: PretrainedMode,
        weights: str | None,
        weights_prefix: str,
        weights_tag: str | None,
        seed: int,
    ) -> tuple[nn.Module, WeightSource]:
        if weights:
            if not Path(weights).is_file():
                raise BackboneError(f"backbone.weights: file not found: {weights}")
            # The file's weights replace the kept layers' parameters below.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = _build_timm(name, False) if library == "timm" else _build_torchvision(name, False, None)
            prefix = f" prefix={weights_prefix!r}" if weights_prefix else ""
            return model, WeightSource("file", f"{weights} sha256={_sha256(weights)[:12]}{prefix}")
        use_imagenet = mode == "true"
        if mode == "auto":
            if library == "timm":
                use_imagenet = _timm_weights_cached(name) or _online("huggingface.co")
            else:
                use_imagenet = _torchvision_weights_cached(name, weights_tag) or _online("download.pytorch.org")
        if use_imagenet:
            try:
                model = _build_timm(name, True) if library == "timm" else _build_torchvision(name, True, weights_tag)
            except BackboneError:
                raise
            except Exception as err:  # noqa: BLE001 - network/cache errors of two libraries
                if mode == "true":
                    raise BackboneError(
                        f"could not get ImageNet weights for {library} {name} ({type(err).__name__}: {err}). "
                        "Offline? Put the file in the library's cache, set backbone.weights=<file>, "
                        "or use backbone.pretrained=auto|false."
                    ) from err
                log.warning("ImageNet weights for %s unavailable (%s); using random weights", name, err)
            else:
                tag = weights_tag or ("pretrained" if library == "timm" else "DEFAULT")
                return model, WeightSource("imagenet", f"{library}:{name}:{tag}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _build_timm(name, False) if library == "timm" else _build_torchvision(name, False, None)
        return model, WeightSource("random", f"{library} init, seed {seed}")

    @staticmethod
    def _prune(model: nn.Module, layers: list[str]) -> nn.Module:
        """Trace ``model`` and keep only what the requested layers need."""
        known = dict(model.named_modules())
        missing = [layer for layer in layers if layer not in known]
        if missing:
            top = [n for n, _ in model.named_children()]
            raise BackboneError(f"backbone.layers: {missing} not found; top-level modules are {top}")
        return_nodes = {layer: layer for layer in layers}
        if isinstance(model, nn.Module) and type(model).__module__.startswith("timm"):
            from timm.models import create_feature_extractor
        else:
            from torchvision.models.feature_extraction import create_feature_extractor
        try:
            return create_feature_extractor(model, return_nodes=return_nodes)
        except Exception as err:  # noqa: BLE001 - fx tracing errors vary by model
            raise BackboneError(f"cannot extract layers {layers} from {type(model).__name__}: {err}") from err

    def _load_file(self, path: str, prefix: str) -> None:
        state = load_state_dict_file(path, prefix)
        own = self.body.state_dict()
        needed = [k for k in own if not k.endswith("num_batches_tracked")]
        missing = [k for k in needed if k not in state]
        if missing:
            raise BackboneError(
                f"backbone.weights {path} lacks {len(missing)} tensors the layers {self.layers} need, "
                f"e.g. {missing[:5]} (check backbone.name and backbone.weights_prefix)"
            )
        wrong = [k for k in needed if tuple(state[k].shape) != tuple(own[k].shape)]
        if wrong:
            k = wrong[0]
            raise BackboneError(
                f"backbone.weights {path}: shape mismatch for {k}: file {tuple(state[k].shape)} vs "
                f"model {tuple(own[k].shape)} (is backbone.name right?)"
            )
        self.body.load_state_dict({k: state[k] for k in own if k in state}, strict=False)

    # --------------------------------------------------------------- running
    def train(self, mode: bool = True) -> "FeatureExtractor":
        """The backbone stays in eval mode (frozen BN statistics) whatever Lightning asks."""
        super().train(mode)
        self.body.eval()
        return self

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``images [B, 3, H, W]`` → ``{layer: [B, C_l, H_l, W_l]}`` pooled, float32."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype:
            dtype = getattr(torch, self.autocast_dtype)
            with torch.autocast(device_type=images.device.type, dtype=dtype):
                raw = self.body(images)
        else:
            raw = self.body(images)
        return {layer: self.pool(raw[layer].float()).contiguous() for layer in self.layers}

    @torch.no_grad()
    def output_shapes(self, image_size: int | tuple[int, int] = 224) -> dict[str, tuple[int, int, int]]:
        """``{layer: (C, H, W)}`` for an input of ``image_size``, from one dummy forward."""
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        device = next(self.body.parameters()).device
        out = self.forward(torch.zeros(1, 3, h, w, device=device))
        return {k: tuple(v.shape[1:]) for k, v in out.items()}  # type: ignore[misc]
