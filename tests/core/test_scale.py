"""Bounded fit memory and a coreset that scales: narrow/host feature storage, chunked and
region-subset builds, the projected coreset, the per-region memory cap (issue 13)."""

import pytest
import torch

from fapm.builders import build_memory_detector
from fapm.models.adaptive import AdaptiveCoreset
from fapm.models.coreset import GreedyKCenter, region_chunk
from fapm.models.feature_store import FeatureStore
from fapm.pipeline.common import validated_settings
from tests.conftest import compose_config


def separated(regions: int = 6, clusters: int = 12, per: int = 5, dims: int = 8, seed: int = 0) -> torch.Tensor:
    """``[R, clusters·per, C]`` small clusters far apart, few members each: every greedy choice
    (which cluster, and which member) has a margin far above float16's rounding."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(regions, clusters, 1, dims, generator=g)
    points = centres + 0.3 * torch.randn(regions, clusters, per, dims, generator=g)
    order = torch.randperm(clusters * per, generator=g)
    labels = torch.arange(clusters).repeat_interleave(per)[order]
    return points.reshape(regions, clusters * per, dims)[:, order].contiguous(), labels


def coreset(**kwargs) -> AdaptiveCoreset:
    sampler = GreedyKCenter(projection_dim=kwargs.pop("projection_dim", None), chunk_mb=kwargs.pop("chunk_mb", 8.0))
    # these tests pin the absolute rule (d_imax > d_th); the constructor's default is the quantile rule
    kwargs.setdefault("threshold_mode", "absolute")
    return AdaptiveCoreset(sampler=sampler, distance_scale="per_channel", **kwargs)


# ------------------------------------------------------------------------- storage
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_narrow_storage_same_selection_on_separated_data(dtype) -> None:
    x, labels = separated()
    # ratio 0.2 of 60 = 12 centres, one per cluster
    full = coreset(ratio=0.2, d_th=0.5)(x, torch.Generator().manual_seed(1))
    narrow = coreset(ratio=0.2, d_th=0.5)(x.to(dtype), torch.Generator().manual_seed(1))
    assert sorted(labels[full.indices[0]].tolist()) == list(range(12))  # one centre per cluster
    if dtype == torch.float16:  # 11-bit mantissa: even the member chosen in a cluster agrees
        assert torch.equal(full.indices, narrow.indices)
    else:  # bfloat16 (8 bits) may pick another member, of the same clusters
        assert torch.equal(labels[full.indices].sort(1).values, labels[narrow.indices].sort(1).values)
    assert torch.equal(full.lengths, narrow.lengths) and torch.equal(full.enlarged, narrow.enlarged)
    assert torch.allclose(full.d_max, narrow.d_max, rtol=0.02)


def test_feature_store_dtype_and_host() -> None:
    store = FeatureStore(1, dtype=torch.float16, host=True)
    store.reset(expected_images=3)
    a, b = torch.randn(4, 2 * 5, 3), torch.randn(4, 5, 3)
    store.add(0, a, images=2)
    store.add(0, b, images=1)
    out = store.take(0)
    assert out.dtype == torch.float16 and out.device.type == "cpu"
    assert torch.equal(out, torch.cat([a, b], 1).half())


def test_fp16_detector_scores_close_to_fp32(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 3, 112, 112, generator=g)
    train = base + 0.3 * torch.randn(6, 3, 112, 112, generator=g)
    test = base + 0.5 * torch.randn(2, 3, 112, 112, generator=g)
    outputs = {}
    for dtype in ("float32", "float16"):
        cfg = compose_config(
            "train",
            ["model=fapm", "backbone=resnet18", "backbone.pretrained=false", f"model.feature_dtype={dtype}"],
            tmp_path,
        )
        settings = validated_settings(cfg)
        with pytest.warns(UserWarning, match="RANDOM"):
            det = build_memory_detector(settings.model, settings.backbone, settings.seed)
        det.collect(train)
        det.build()
        assert det.memories[0].memory.dtype == torch.float32  # the memory itself stays float32
        outputs[dtype] = det(test)
    # float16 rounds features by ~5e-4 relative: the selection may differ where the greedy
    # margin is that small, so scores are compared within 2 % (stated tolerance)
    a, b = outputs["float32"], outputs["float16"]
    assert torch.allclose(a.image_scores, b.image_scores, rtol=0.02)
    assert torch.allclose(a.anomaly_maps, b.anomaly_maps, rtol=0.02, atol=0.02 * float(a.anomaly_maps.max()))


# ---------------------------------------------------------------------- chunking
@pytest.mark.parametrize("projection_dim", [None, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_chunked_and_unchunked_builds_identical(projection_dim, dtype) -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 150, 12, generator=g).to(dtype)
    results = []
    for chunk_mb in (0, 0.01):  # all regions at once | chunks of ~1 region
        assert region_chunk(x, torch.device("cpu"), chunk_mb) == (7 if chunk_mb == 0 else 1)
        c = coreset(ratio=0.1, d_th=0.0, threshold_mode="quantile", projection_dim=projection_dim, chunk_mb=chunk_mb)
        results.append(c(x, torch.Generator().manual_seed(2)))
    a, b = results
    assert torch.equal(a.indices, b.indices) and torch.equal(a.lengths, b.lengths)
    assert torch.equal(a.d_max.isnan(), b.d_max.isnan())
    # d_max may differ in the last bit (a bmm over 1 or 7 regions rounds differently); the memory does not
    assert torch.allclose(a.d_max.nan_to_num(), b.d_max.nan_to_num(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("projection_dim", [None, 4])
def test_region_subset_build_equals_full_build_rows(projection_dim) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 120, 10, generator=g)
    c = coreset(ratio=0.1, d_th=0.3, projection_dim=projection_dim, chunk_mb=0.01)
    c.d_th = float(c(x, torch.Generator().manual_seed(3)).d_max.median())  # enlarge some regions, not all
    full = c(x, torch.Generator().manual_seed(3))
    assert 0 < int(full.enlarged.sum()) < 9
    regions = torch.tensor([7, 1, 4])
    part = c(x[regions], torch.Generator().manual_seed(3), regions=regions, total=9)
    width = int(part.lengths.max())
    assert torch.equal(part.indices, full.indices[regions, :width])
    assert torch.equal(part.lengths, full.lengths[regions])
    assert torch.equal(part.enlarged, full.enlarged[regions])


def test_region_subset_refuses_quantile_without_all_d_max() -> None:
    c = coreset(ratio=0.1, threshold_mode="quantile", d_th=0.5)
    with pytest.raises(ValueError, match="first_pass"):
        c(torch.randn(2, 50, 4), torch.Generator(), regions=torch.tensor([0, 1]), total=4)


# ---------------------------------------------------------------- projection, cap
def test_projected_adaptive_coreset_deterministic_per_seed() -> None:
    x = torch.randn(4, 200, 32, generator=torch.Generator().manual_seed(6))
    c = coreset(ratio=0.1, d_th=0.2, projection_dim=8)
    a = c(x, torch.Generator().manual_seed(9))
    b = c(x, torch.Generator().manual_seed(9))
    other = c(x, torch.Generator().manual_seed(10))
    exact = coreset(ratio=0.1, d_th=0.2)(x, torch.Generator().manual_seed(9))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.d_max, b.d_max)
    assert not torch.equal(a.indices, other.indices)
    assert not torch.equal(a.indices, exact.indices)  # the projection changes the space


def test_memory_cap_bounds_sizes_and_keeps_greedy_prefix() -> None:
    x = torch.randn(5, 400, 8, generator=torch.Generator().manual_seed(7))
    free = coreset(ratio=0.1, adaptive=False)(x, torch.Generator().manual_seed(1))
    capped = coreset(ratio=0.1, adaptive=False, memory_cap=15)(x, torch.Generator().manual_seed(1))
    assert free.lengths.tolist() == [40] * 5 and capped.lengths.tolist() == [15] * 5
    assert torch.equal(capped.indices, free.indices[:, :15])  # greedy's prefix property
    enlarging = coreset(ratio=0.1, d_th=0.0, memory_cap=15)(x, torch.Generator().manual_seed(1))
    assert enlarging.lengths.tolist() == [30] * 5  # adaptive_factor 2 times the cap
    assert AdaptiveCoreset(ratio=0.1, memory_cap=15).sizes(100) == (10, 20)  # cap not binding


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host storage streamed to a GPU: needs CUDA")
def test_host_pinned_storage_streams_chunks_to_the_gpu() -> None:  # pragma: no cover - CUDA only
    x = torch.randn(7, 300, 24, generator=torch.Generator().manual_seed(8))
    on_gpu = coreset(ratio=0.1, d_th=0.0, threshold_mode="quantile")(x.cuda(), torch.Generator().manual_seed(2))
    sampler = GreedyKCenter(device_chunk_mb=0.03)  # ~1 region per streamed chunk
    assert region_chunk(x.half(), torch.device("cuda"), 8.0, 0.03) == 1
    store = FeatureStore(1, dtype=torch.float16, host=True)
    store.add(0, x.cuda(), images=1)
    host = store.take(0)
    assert host.device.type == "cpu" and host.is_pinned()
    streamed = AdaptiveCoreset(ratio=0.1, d_th=0.0, threshold_mode="quantile", sampler=sampler,
                               distance_scale="per_channel")(host, torch.Generator().manual_seed(2), device="cuda")
    assert streamed.indices.is_cuda
    assert (streamed.indices == on_gpu.indices).float().mean() > 0.9  # float16 storage: near-ties may differ
