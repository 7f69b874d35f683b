"""The composition root: validated settings (:mod:`fapm.settings`) → plain-torch objects.

One construction path serves training (Hydra composes the settings) and loading a model
file (its header holds the settings): what a file can ask for is exactly what these
functions build from the package's own classes, so a file never names code. Neither
Hydra nor Lightning is imported here; :func:`build_module` imports Lightning lazily.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from fapm.settings import (
    BackboneSettings,
    DataSettings,
    FolderDataSettings,
    LampSettings,
    MemorySettings,
    ModelSettings,
    MVTecDataSettings,
    SearchSettings,
    VisADataSettings,
)

if TYPE_CHECKING:
    from fapm.data.base import AnomalyDataModule
    from fapm.lamp.detector import LampDetector
    from fapm.lamp.loss import ReconstructionLoss
    from fapm.lightning.base import AnomalyModule
    from fapm.models.detector import MemoryDetector
    from fapm.models.features import FeatureExtractor
    from fapm.models.knn import KNNSearch


def build_extractor(backbone: BackboneSettings) -> FeatureExtractor:
    """The frozen backbone: pruned after its last layer, pooled, weights from ``backbone``'s source."""
    from fapm.models.features import FeatureExtractor

    return FeatureExtractor(
        name=backbone.name,
        layers=list(backbone.layers),
        library=backbone.library,
        pretrained=backbone.pretrained,
        weights=backbone.weights,
        weights_prefix=backbone.weights_prefix,
        weights_tag=backbone.weights_tag,
        pool_size=backbone.pool_size,
        seed=backbone.seed,
        fold_batchnorm=backbone.fold_batchnorm,
        channels_last=backbone.channels_last,
        autocast_dtype=backbone.autocast_dtype,
    )


def build_memory_detector(
    model: MemorySettings, backbone: BackboneSettings, seed: int = 0, extractor: FeatureExtractor | None = None
) -> MemoryDetector:
    """FAPM, PatchCore or an ablation: the same detector, composed from ``model``'s values.

    Args:
        model: the memory-bank settings.
        backbone: the backbone settings (ignored when ``extractor`` is given).
        seed: seed of the coreset's random choices.
        extractor: an already built backbone to reuse.
    """
    from fapm.models.adaptive import AdaptiveCoreset
    from fapm.models.alignment import Aligner
    from fapm.models.coreset import ComposableKCenter, GreedyKCenter
    from fapm.models.detector import MemoryDetector
    from fapm.models.scoring import make_image_score
    from fapm.models.streams import make_streams

    chunks = {"chunk_mb": model.coreset_chunk_mb, "device_chunk_mb": model.coreset_device_chunk_mb}
    composable = {"shard_size": model.coreset.shard_size, "oversample": model.coreset.oversample}
    samplers = {  # model.coreset.strategy (conf/model/coreset/)
        "greedy": lambda: GreedyKCenter(projection_dim=model.projection_dim, **chunks),
        "composable": lambda: ComposableKCenter(projection_dim=model.projection_dim, **composable, **chunks),
    }
    coreset = AdaptiveCoreset(
        ratio=model.coreset_ratio,
        sampler=samplers[model.coreset.strategy](),
        adaptive=model.adaptive,
        d_th=model.d_th,
        factor=model.adaptive_factor,
        distance_scale=model.distance_scale,
        threshold_mode=model.threshold_mode,
        memory_cap=model.memory_cap,
    )
    return MemoryDetector(
        extractor if extractor is not None else build_extractor(backbone),
        streams=make_streams(model.fusion, model.fusion_upsample),
        grid=model.grid,
        coreset=coreset,
        search=build_search(model.search),
        k=model.k,
        layer_weights=model.layer_weights,
        image_score=make_image_score(model.image_score, model.num_neighbors),
        map_upsample=model.map_upsample,
        blur_sigma=model.blur_sigma,
        neighbourhood=model.neighbourhood,
        neighbourhood_border=model.neighbourhood_border,
        seed=seed,
        feature_dtype=getattr(torch, model.feature_dtype),
        feature_host=model.feature_storage == "host",
        aligner=None if model.align == "none" else Aligner(
            model.align, model.align_resolution, model.align_min_confidence, model.align_fallback_neighbourhood
        ),
    )


def build_search(search: SearchSettings) -> Callable[[], KNNSearch]:
    """Factory of fresh per-region searches for ``model.search`` (a ``conf/model/search/`` config)."""
    from fapm.models.knn import AutoKNN, FaissKNN, TorchKNN

    faiss = functools.partial(
        FaissKNN,
        factory=search.factory,
        nlist=search.nlist,
        nprobe=search.nprobe,
        ef_search=search.ef_search,
        pq_m=search.pq_m,
        use_gpu=search.use_gpu,
        temp_memory_mb=search.temp_memory_mb,
    )
    if search.backend == "torch":
        return TorchKNN
    if search.backend == "faiss":
        return faiss
    return functools.partial(
        AutoKNN, faiss=faiss, min_vectors=search.auto_min_vectors, min_vectors_cuda=search.auto_min_vectors_cuda
    )


def build_lamp_detector(model: LampSettings, mean: Any, std: Any) -> LampDetector:
    """LAMP's autoencoder and scoring; ``mean``/``std`` are the data's normalisation, undone before
    reconstruction."""
    from fapm.lamp.autoencoder import ConvAutoencoder
    from fapm.lamp.detector import LampDetector

    autoencoder = ConvAutoencoder(
        in_channels=3,
        input_size=model.input_size,
        depth=model.depth,
        base_channels=model.base_channels,
        max_channels=model.max_channels,
        kernel_size=model.kernel_size,
        negative_slope=model.negative_slope,
        patches_per_side=model.patches_per_side,
        recalibration=model.recalibration,
        msar_scales=model.msar_scales,
        pad_mode="reflect",
        output_activation=nn.Sigmoid() if model.output_activation == "sigmoid" else None,
    )
    return LampDetector(autoencoder, blur_sigma=model.blur_sigma, pixel_mean=mean, pixel_std=std)


def build_lamp_loss(model: LampSettings) -> ReconstructionLoss:
    """LAMP's training objective."""
    from fapm.lamp.loss import ReconstructionLoss

    return ReconstructionLoss(
        base=model.base_loss,
        lamp=model.lamp,
        epsilon=model.epsilon,
        max_over=model.max_over,
        detach_max=model.detach_max,
        reduction=model.loss_reduction,
        ssim_window=model.ssim_window,
    )


def build_detector(model: ModelSettings, backbone: BackboneSettings, mean: Any, std: Any, seed: int = 0) -> nn.Module:
    """The plain-torch detector of either family (``images [B, 3, H, W] → AnomalyOutput``)."""
    if isinstance(model, MemorySettings):
        return build_memory_detector(model, backbone, seed)
    return build_lamp_detector(model, mean, std)


def build_module(
    model: ModelSettings,
    backbone: BackboneSettings,
    mean: Any,
    std: Any,
    seed: int = 0,
    optimizer: Any = None,
    scheduler: Any = None,
) -> AnomalyModule:
    """The LightningModule that fits and tests the detector of ``model``'s family.

    ``optimizer``/``scheduler``: LAMP's ``params → Optimizer`` / ``optimizer → scheduler``
    factories (instantiated by the caller from the user's config).
    """
    if isinstance(model, MemorySettings):
        from fapm.lightning.memory_module import MemoryBankModule

        return MemoryBankModule(
            build_memory_detector(model, backbone, seed), name=model.name, timing_warmup=model.timing_warmup
        )
    from fapm.lightning.lamp_module import LampModule

    if optimizer is None:
        raise ValueError("LAMP trains with an optimiser: pass the factory built from model.optimizer")
    return LampModule(
        build_lamp_detector(model, mean, std),
        build_lamp_loss(model),
        optimizer=optimizer,
        scheduler=scheduler,
        name=model.name,
        restore_best=model.restore_best,
        timing_warmup=model.timing_warmup,
    )


def build_datamodule(data: DataSettings) -> AnomalyDataModule:
    """The data module of ``data``'s layout (MVTec / demo, VisA, plain folders)."""
    values = data.to_dict()
    values.pop("type")
    if isinstance(data, MVTecDataSettings):
        from fapm.data.mvtec import MVTecDataModule

        return MVTecDataModule(**values)
    if isinstance(data, VisADataSettings):
        from fapm.data.visa import VisADataModule

        return VisADataModule(**values)
    assert isinstance(data, FolderDataSettings)
    from fapm.data.folder import FolderDataModule

    return FolderDataModule(**values)
