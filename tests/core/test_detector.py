"""Correctness anchors of the memory detector (FAPM, PatchCore and ablations share one code path)."""

import math

import pytest
import torch
import torch.nn.functional as F

from fapm.builders import build_memory_detector
from fapm.models.adaptive import AdaptiveCoreset
from fapm.models.detector import MemoryDetector
from fapm.models.features import FeatureExtractor
from fapm.models.patch_memory import split_regions
from fapm.models.scoring import PatchCoreWeightedScore, gaussian_blur
from fapm.models.streams import ConcatLayers
from fapm.pipeline.common import validated_settings
from tests.conftest import compose_config

VARIANTS = ["patchcore", "ablation_b", "ablation_c", "ablation_d", "fapm"]


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    with pytest.warns(UserWarning, match="RANDOM"):
        return FeatureExtractor("resnet18", pretrained="false", seed=0)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 3, 112, 112, generator=g)
    return base + 0.3 * torch.randn(8, 3, 112, 112, generator=g)


def build(variant: str, tmp_path, overrides=()) -> MemoryDetector:
    cfg = compose_config(
        "train", [f"model={variant}", "backbone=resnet18", "backbone.pretrained=false", *overrides], tmp_path
    )
    settings = validated_settings(cfg)
    return build_memory_detector(settings.model, settings.backbone, settings.seed)


def fit(det: MemoryDetector, images: torch.Tensor) -> MemoryDetector:
    det.collect(images[:4])
    det.collect(images[4:])
    det.build()
    return det


#: what each variant changes from model=fapm (the module docstring's table: grid, streams, adaptive;
#: PatchCore also its projection, k and image score; the single global memories of PatchCore and C
#: are not capped per region)
VARIANT_CHANGES = {
    "patchcore": {"grid", "fusion", "adaptive", "projection_dim", "k", "image_score", "memory_cap"},
    "ablation_b": {"fusion", "adaptive"},
    "ablation_c": {"grid", "adaptive", "memory_cap"},
    "ablation_d": {"adaptive"},
}


@pytest.mark.parametrize("variant", list(VARIANT_CHANGES))
def test_variants_differ_exactly_in_the_table_keys(tmp_path, variant) -> None:
    from omegaconf import OmegaConf

    base = OmegaConf.to_container(compose_config("train", ["model=fapm"], tmp_path).model, resolve=True)
    other = OmegaConf.to_container(compose_config("train", [f"model={variant}"], tmp_path).model, resolve=True)
    assert set(other) == set(base)  # a variant adds no key of its own
    changed = {k for k in base if base[k] != other[k]} - {"name"}
    assert changed == VARIANT_CHANGES[variant]


def test_patchcore_config_matches_a_direct_patchcore_computation(tmp_path, images) -> None:
    """``model=patchcore`` through the shared code path equals PatchCore written out directly:
    layer3 resized bilinearly onto layer2's grid and concatenated, nearest distance to the one
    global memory (float64 cdist), bilinear resize to the input, Gaussian blur."""
    det = fit(build("patchcore", tmp_path), images)
    assert det.grid == (1, 1) and len(det.memories) == 1
    test = images[:3] + 0.5
    with torch.no_grad():
        out = det(test)
        feats = det.extractor(test)
    l2, l3 = feats["layer2"], feats["layer3"]
    l3_up = F.interpolate(l3, size=l2.shape[-2:], mode="bilinear", align_corners=False)
    concat = torch.cat([l2, l3_up], 1).permute(0, 2, 3, 1)  # [B, h, w, C]
    memory = det.memories[0].memory[0, : int(det.memories[0].lengths[0])].double()
    assert memory.shape[0] == math.ceil(0.1 * 8 * l2.shape[-1] * l2.shape[-2])  # 10 % of every position
    patch = torch.cdist(concat.reshape(-1, concat.shape[-1]).double(), memory).min(1).values
    patch = patch.view(3, 1, *l2.shape[-2:]).float()
    expected = gaussian_blur(F.interpolate(patch, size=(112, 112), mode="bilinear", align_corners=False)[:, 0], 4.0)
    torch.testing.assert_close(out.anomaly_maps, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant,grid", [*((v, None) for v in VARIANTS), ("fapm", "5"), ("ablation_b", "[4,6]")],
                         ids=[*VARIANTS, "fapm_uneven_5x5", "ablation_b_uneven_4x6"])
def test_full_memory_scores_training_images_zero(tmp_path, images, variant, grid) -> None:
    """Each variant's own grid and streams with every vector kept: a training vector is in its region's memory.

    Also on grids that divide neither the 14x14 nor the 7x7 map (uneven regions, padded with repeats)."""
    det = fit(build(variant, tmp_path, ["model.coreset_ratio=1.0", *([f"model.grid={grid}"] if grid else [])]), images)
    out = det(images[:3])
    assert float(out.image_scores.abs().max()) == 0.0
    assert float(out.anomaly_maps.abs().max()) == 0.0
    assert float(det(images[:3] + 1.0).image_scores.min()) > 0  # and other images do not


def test_adaptive_enlargement_reaches_the_scoring_path(tmp_path, images) -> None:
    """Half the vectors per region, doubled by the adaptive rule: enlarged regions hold everything."""
    base = ["model.coreset_ratio=0.5", "model.adaptive_factor=2.0", "model.threshold_mode=absolute"]
    every = fit(build("fapm", tmp_path, [*base, "model.d_th=0.0"]), images)
    none = fit(build("fapm", tmp_path, [*base, "model.d_th=1.0"]), images)
    for memory in every.memories:
        assert bool(memory.enlarged.all()) and bool((memory.lengths == memory.lengths.max()).all())
    assert all(not bool(m.enlarged.any()) for m in none.memories)
    assert float(every(images[:3]).anomaly_maps.abs().max()) == 0.0  # all regions full: training scores 0
    assert float(none(images[:3]).image_scores.min()) > 0  # half memories: some training vectors left out


def test_layerwise_vs_concatenated_distances(extractor, images) -> None:
    """The paper's 'operates identically' holds for one fixed memory item, not for neighbours searched per layer."""
    feats = extractor(images)
    l2, l3 = feats["layer2"], feats["layer3"]
    l3_up = l3.repeat_interleave(2, -2).repeat_interleave(2, -1)  # layer3 repeated onto layer2's grid
    a2, a3 = l2[:4].permute(0, 2, 3, 1).reshape(-1, l2.shape[1]), l3_up[:4].permute(0, 2, 3, 1).reshape(-1, l3.shape[1])
    q2, q3 = l2[4:6].permute(0, 2, 3, 1).reshape(-1, l2.shape[1]), l3_up[4:6].permute(0, 2, 3, 1).reshape(-1, l3.shape[1])
    d2, d3 = torch.cdist(q2.double(), a2.double()), torch.cdist(q3.double(), a3.double())
    concat = torch.cdist(torch.cat([q2, q3], 1).double(), torch.cat([a2, a3], 1).double())
    # (1) one fixed memory item: per-layer squared distances add up to the concatenated one
    assert torch.allclose(d2**2 + d3**2, concat**2, rtol=1e-9, atol=1e-6)
    # (2) neighbours searched separately per layer give a different quantity
    nearest_concat = concat.min(1).values
    sep_sq = d2.min(1).values ** 2 + d3.min(1).values ** 2
    summed = d2.min(1).values + d3.min(1).values  # what the released code fuses
    assert bool((sep_sq <= nearest_concat**2 + 1e-6).all())  # separate search is a lower bound
    assert bool((summed <= math.sqrt(2) * nearest_concat + 1e-6).all())
    assert bool((summed >= sep_sq.sqrt() - 1e-6).all())
    assert not torch.allclose(summed, nearest_concat, rtol=1e-3)


def test_neighbourhood_search_is_superset(tmp_path, images) -> None:
    det = fit(build("fapm", tmp_path, ["model.adaptive=false"]), images)
    test = images[:2] + 0.4
    plain = det.nearest(det.extract(test))
    det.scorer.neighbourhood = 1
    wider = det.nearest(det.extract(test))
    for p, w in zip(plain, wider):
        assert bool((w.distances <= p.distances + 1e-5).all())
        assert bool((w.distances < p.distances - 1e-4).any())


def test_patchcore_support_distances_match_direct(extractor, images) -> None:
    det = MemoryDetector(
        extractor, ConcatLayers(), grid=(1, 1), coreset=AdaptiveCoreset(ratio=0.3, adaptive=False), k=1,
        image_score=PatchCoreWeightedScore(num_neighbors=5),
    )
    fit(det, images)
    test = images[:2] + 0.5
    out = det(test)
    memory = det.memories[0].memory[0]
    feats = split_regions(det.extract(test)[0], (1, 1))[0].view(2, -1, memory.shape[1])
    for b in range(2):
        d = torch.cdist(feats[b].double(), memory.double())
        nearest, item = d.min(1)
        pos = int(nearest.argmax())
        support = torch.cdist(memory[item[pos]].double().unsqueeze(0), memory.double())[0].topk(5, largest=False).indices
        dist = (memory[support].double() - feats[b, pos].double()).norm(dim=1)
        expected = (1 - torch.softmax(dist, 0)[0]) * nearest[pos]
        assert float(out.image_scores[b]) == pytest.approx(float(expected), rel=1e-4)


def test_support_distances_per_region_match_direct(extractor, images) -> None:
    """Multi-region, multi-stream support sets equal a direct per-image computation."""
    det = MemoryDetector(
        extractor, grid=(7, 7), coreset=AdaptiveCoreset(ratio=0.5, adaptive=False), k=1,
        image_score=PatchCoreWeightedScore(num_neighbors=4), layer_weights=[1.0, 0.5],
    )
    fit(det, images)
    test = images[:3] + 0.5
    streams = det.extract(test)
    results = det.nearest(streams)
    fused = det.scorer.fuse(results, 3)
    pos = fused[:, 0].flatten(1).argmax(dim=1)
    _, k_max = det.search_limits()
    got = det.scorer.support(results, fused.shape[-2:], [m.searchable() for m in det.memories], k_max, pos, 4)
    height, width = fused.shape[-2:]
    for b in range(3):
        y, x = int(pos[b]) // width, int(pos[b]) % width
        expected = torch.zeros(4, dtype=torch.float64)
        for stream, memory, weight in zip(streams, det.memories, det.scorer.layer_weights):
            hs, ws = stream.shape[-2:]
            ys, xs = y * hs // height, x * ws // width
            region = (ys // (hs // 7)) * 7 + xs // (ws // 7)
            bank = memory.memory[region, : int(memory.lengths[region])].double()
            query = stream[b, :, ys, xs].double()
            item = bank[torch.cdist(query[None], bank)[0].argmin()]
            support = torch.cdist(item[None], bank)[0].topk(4, largest=False).indices
            expected += weight * (bank[support] - query).norm(dim=1)
        assert torch.allclose(got[b].double(), expected, rtol=1e-4), (got[b], expected)


@pytest.mark.parametrize("expected", [8, 5, 20])  # exact, too few (surplus in pieces), too many
def test_reserved_collection_builds_the_same_memory(tmp_path, images, expected) -> None:
    reference = fit(build("fapm", tmp_path), images)
    det = build("fapm", tmp_path)
    det.reset_fit(expected_images=expected)
    for lo in range(0, 8, 3):  # batches of 3, 3, 2
        det.collect(images[lo : lo + 3])
    store = det.features
    assert store._reserved[0] is not None and store._reserved[0].shape[1] >= store._filled[0] > 0
    det.build()
    for a, b in zip(det.memories, reference.memories):
        assert torch.equal(a.memory, b.memory) and torch.equal(a.lengths, b.lengths)
    assert store._reserved == [None, None] and store._pieces == [[], []]  # nothing held after build


def test_softmax_score_with_one_neighbour_falls_back_to_max_and_warns(extractor, images) -> None:
    """Effective k = 1 (one-vector region memories): 1 − max softmax would be 0 for every image."""
    from fapm.models.scoring import MaxScore, ScoreContext, SoftmaxWeightedScore

    fused = torch.rand(3, 1, 4, 4) + 1.0
    assert torch.equal(SoftmaxWeightedScore()(ScoreContext(fused)), MaxScore()(ScoreContext(fused)))
    # a fitted detector: one training image, 7x7 regions of a 112-px input (layer3 is 7x7): one vector per region
    det = MemoryDetector(
        extractor, grid=(7, 7), coreset=AdaptiveCoreset(0.1, adaptive=False), k=4, image_score=SoftmaxWeightedScore()
    )
    det.collect(images[:1])
    with pytest.warns(UserWarning, match="effective k is 1.*falls back to the max score"):
        det.build()
    with torch.no_grad():
        out = det(images[1:4])
    assert det.effective_k() == 1
    assert torch.all(out.image_scores > 0)
    assert torch.equal(out.image_scores, out.patch_scores.flatten(1).amax(dim=1))


def _direct_fused(det: MemoryDetector, test: torch.Tensor, k: int) -> torch.Tensor:
    """Fused ``[B, k, H, W]`` neighbour distances written out: per stream, per region, float64 cdist to
    the region's memory, the k smallest, deeper streams repeated onto the finest grid, summed."""
    streams = det.extract(test)
    height = max(s.shape[-2] for s in streams)
    width = max(s.shape[-1] for s in streams)
    rows, cols = det.grid
    fused = torch.zeros(test.shape[0], k, height, width, dtype=torch.float64)
    for stream, memory in zip(streams, det.memories):
        b, c, h, w = stream.shape
        dist = torch.zeros(b, k, h, w, dtype=torch.float64)
        rh, rw = h // rows, w // cols
        for r in range(rows):
            for q in range(cols):
                bank = memory.memory[r * cols + q, : int(memory.lengths[r * cols + q])].double()
                patch = stream[:, :, r * rh : (r + 1) * rh, q * rw : (q + 1) * rw].double()
                queries = patch.permute(0, 2, 3, 1).reshape(b, rh * rw, c)
                nearest = torch.cdist(queries, bank.expand(b, -1, -1)).topk(k, dim=-1, largest=False).values
                dist[:, :, r * rh : (r + 1) * rh, q * rw : (q + 1) * rw] = nearest.permute(0, 2, 1).reshape(b, k, rh, rw)
        fused += dist.repeat_interleave(height // h, -2).repeat_interleave(width // w, -1)
    return fused


@pytest.mark.parametrize("score", ["default", "softmax", "max"])
def test_image_score_end_to_end(tmp_path, images, score) -> None:
    """The fapm config's image score (its default, and each option) from images to numbers, against
    the formula written out on directly computed distances."""
    overrides = [] if score == "default" else [f"model.image_score={score}"]
    # a 50 % coreset: every region keeps >= 2 vectors (k_eff >= 2, the softmax score is not degenerate)
    det = fit(build("fapm", tmp_path, [*overrides, "model.coreset_ratio=0.5"]), images)
    assert det.effective_k() >= 2
    kind = compose_config("train", ["model=fapm", *overrides], tmp_path).model.image_score
    test = images[:3] + 0.3 * torch.randn(3, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = det(test)
    fused = _direct_fused(det, test, det.effective_k())
    s_star, pos = fused[:, 0].flatten(1).max(dim=1)
    if kind == "max":
        expected = s_star
    else:
        assert kind == "softmax"
        neighbours = fused.flatten(2)[torch.arange(3), :, pos]  # [B, k] at the most anomalous position
        expected = (1 - torch.softmax(neighbours, dim=1).amax(dim=1)) * s_star
        assert bool((expected < s_star).all()) and bool((expected > 0).all())
    torch.testing.assert_close(out.image_scores.double(), expected, rtol=1e-4, atol=1e-5)


def test_public_stages_equal_the_image_path(tmp_path, images) -> None:
    """fit_features on extracted layers builds the memory collect/build builds from the images, and
    score_features on the test layers gives forward's output (the stages benchmarks and exports use)."""
    from fapm.models.detector import layer_batches

    reference = fit(build("fapm", tmp_path), images)
    det = build("fapm", tmp_path)
    with torch.no_grad():
        layers = det.extractor(images)
        report = det.fit_features(layer_batches(layers, 3), expected_images=len(images))
    assert report.sizes == reference.last_build.sizes
    for a, b in zip(det.memories, reference.memories):
        assert torch.equal(a.memory, b.memory) and torch.equal(a.lengths, b.lengths)
    test = images[:3] + 0.3
    with torch.no_grad():
        out = det.score_features(det.extractor(test), tuple(test.shape[-2:]))
        expected = reference(test)
    assert torch.equal(out.image_scores, expected.image_scores)
    assert torch.equal(out.anomaly_maps, expected.anomaly_maps)
    assert out.patch_scores.shape[0] == 3 and torch.equal(out.image_scores, out.patch_scores.flatten(1).amax(1))
