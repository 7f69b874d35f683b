"""Composable (sharded) greedy k-center: exact with one shard, near-exact covering with many."""

from pathlib import Path

import pytest
import torch

from fapm.models.coreset import ComposableKCenter, GreedyKCenter, exact_assignment, shard_quotas, split_sizes


def clustered(r: int = 1, n: int = 600, c: int = 12, seed: int = 0) -> torch.Tensor:
    """``[r, n, c]`` points around 8 centres of different spreads (a coreset has structure to find)."""
    g = torch.Generator().manual_seed(seed)
    centres = 6 * torch.randn(r, 8, c, generator=g)
    which = torch.randint(8, (r, n), generator=g)
    spread = torch.linspace(0.2, 2.0, 8)[which].unsqueeze(-1)
    return torch.gather(centres, 1, which.unsqueeze(-1).expand(-1, -1, c)) + spread * torch.randn(r, n, c, generator=g)


def radius(x: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    return exact_assignment(x, selected)[0].amax(dim=1).sqrt()


@pytest.mark.parametrize("projection_dim", [None, 8])
def test_one_shard_is_the_exact_greedy(projection_dim: int | None) -> None:
    x = clustered(r=3, n=200, c=16)
    exact = GreedyKCenter(projection_dim).select(x, 30, torch.Generator().manual_seed(5))
    one = ComposableKCenter(shard_size=200, projection_dim=projection_dim).select(x, 30, torch.Generator().manual_seed(5))
    assert torch.equal(one.selected, exact.selected)  # same centres, same order
    assert torch.allclose(one.nearest_sq, exact.nearest_sq, atol=1e-3)
    # a block of regions of a layer draws as the whole layer does
    block = ComposableKCenter(shard_size=200, projection_dim=projection_dim).select(
        x[1:], 30, torch.Generator().manual_seed(5), regions=slice(1, 3), total=3)
    assert torch.equal(block.selected, exact.selected[1:])


@pytest.mark.parametrize("shard_size,oversample", [(200, 1.0), (100, 1.0), (200, 2.0)])
def test_many_shards_cover_almost_as_well_as_exact(shard_size: int, oversample: float) -> None:
    x = clustered(r=2, n=800)
    k = 80
    exact = GreedyKCenter().select(x, k, torch.Generator().manual_seed(1)).selected
    sampler = ComposableKCenter(shard_size=shard_size, oversample=oversample)
    approx = sampler.select(x, k, torch.Generator().manual_seed(1), statistics=False).selected
    assert approx.shape == (2, k)
    assert all(len(set(row.tolist())) == k for row in approx)  # k distinct candidates
    # greedy k-center is a 2-approximation, so no selection of k covers better than half the exact radius
    ratio = radius(x, approx) / radius(x, exact)
    assert bool((ratio > 0.5).all()) and bool((ratio < 1.5).all()), ratio
    # every shard contributed its share (oversample 1: the union is the coreset)
    if oversample == 1.0:
        sizes = sampler.shard_sizes(800)
        assert sizes == [shard_size] * (800 // shard_size)
        bounds = torch.tensor(sizes).cumsum(0)
        counts = torch.bincount(torch.bucketize(approx[0], bounds, right=True), minlength=len(sizes))
        assert counts.tolist() == shard_quotas(sizes, k)


def test_statistics_are_the_nearest_centre_distances() -> None:
    x = clustered(r=2, n=300)
    state = ComposableKCenter(shard_size=100).select(x, 25, torch.Generator().manual_seed(2))
    expected, _ = exact_assignment(x, state.selected)
    centre = torch.zeros_like(expected, dtype=torch.bool).scatter_(1, state.selected, True)
    assert torch.allclose(state.nearest_sq[~centre], expected[~centre], rtol=1e-4, atol=1e-3)
    assert bool((state.nearest_raw[centre] == -1).all())  # never picked again when the run is extended
    longer = ComposableKCenter(shard_size=100).extend(state, 40)
    assert torch.equal(longer.selected[:, :25], state.selected) and longer.k == 40


def test_quotas_and_sizes() -> None:
    assert split_sizes(10, 3) == [4, 3, 3]
    assert split_sizes(2, 5) == [1, 1]
    assert shard_quotas([4, 3, 3], 5) == [2, 2, 1]
    assert sum(shard_quotas([7, 7, 6, 1], 13)) == 13
    assert shard_quotas([2, 1], 3) == [2, 1]
    with pytest.raises(ValueError):
        shard_quotas([2, 1], 4)
    assert ComposableKCenter(shard_size=4).shard_sizes(10) == [4, 3, 3]
    assert ComposableKCenter(shard_size=4).rank_shard_sizes([5, 3]) == [3, 2, 3]
    with pytest.raises(ValueError, match="shard_size"):
        ComposableKCenter(shard_size=0)


def test_patchcore_scalable_config_selects_the_composable_sampler(tmp_path: Path) -> None:
    from fapm.builders import build_memory_detector
    from fapm.pipeline.common import validated_settings
    from tests.conftest import compose_config

    settings = {}
    for name in ("patchcore", "patchcore_scalable"):
        cfg = compose_config("train", [f"model={name}", "backbone=resnet18", "backbone.pretrained=false"], tmp_path)
        settings[name] = validated_settings(cfg).model
    exact, scalable = settings["patchcore"], settings["patchcore_scalable"]
    assert (exact.coreset.strategy, scalable.coreset.strategy) == ("greedy", "composable")
    assert scalable.search.backend == "auto"
    # everything else is PatchCore's
    assert scalable.replace(name="patchcore", coreset=exact.coreset.to_dict(), search=exact.search.to_dict()) == exact
    detector = build_memory_detector(scalable, validated_settings(cfg).backbone)
    assert detector.coreset.sampler.composable and detector.coreset.sampler.shard_size == scalable.coreset.shard_size
    g = torch.Generator().manual_seed(0)
    detector.add_features([torch.randn(6, 384, 12, 12, generator=g)])
    detector.build()
    assert detector.memory_vectors() == 87  # 10 % of 6 x 144 candidates, as PatchCore's exact coreset


def test_default_memory_cap_switches_on_where_the_docs_say(tmp_path: Path) -> None:
    """FAPM's per-region memories are capped by default (1,000 first-pass centres); the cap binds from
    625 training images for a stride-8 layer at 224 px (16 vectors per region per image, ratio 0.1).
    One global memory (PatchCore, ablation C) stays uncapped."""
    from fapm.builders import build_memory_detector
    from fapm.pipeline.common import validated_settings
    from tests.conftest import compose_config

    caps = {}
    for name in ("fapm", "fapm_nbhd", "ablation_d", "patchcore", "ablation_c", "patchcore_scalable"):
        cfg = compose_config("train", [f"model={name}", "backbone=resnet18", "backbone.pretrained=false"], tmp_path)
        settings = validated_settings(cfg)
        caps[name] = settings.model.memory_cap
        if name == "fapm":
            coreset = build_memory_detector(settings.model, settings.backbone).coreset
    assert caps == {"fapm": 1000, "fapm_nbhd": 1000, "ablation_d": 1000, "patchcore": None, "ablation_c": None,
                    "patchcore_scalable": None}
    per_image = 16
    assert coreset.sizes(624 * per_image) == (999, 1997)  # not binding: 10 %, enlarged 20 %
    assert coreset.sizes(625 * per_image) == (1000, 2000)
    assert coreset.sizes(5000 * per_image) == (1000, 2000)  # bound from there on
