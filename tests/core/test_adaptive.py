"""Eq. 1 on hand-computed values and the adaptive rule on both sides of D_th."""

import math

import pytest
import torch

from fapm.models.adaptive import AdaptiveCoreset, cluster_spread, scale_sq_distances


@pytest.mark.parametrize("sq", [0.0, 0.5, 1.0, 2.0, 10.0])
def test_eq1_matches_paper_form(sq: float) -> None:
    paper = 1 - 2 / (1 + math.exp(sq))
    assert float(cluster_spread(torch.tensor(sq))) == pytest.approx(paper, abs=1e-7)


def test_eq1_hand_values_and_saturation() -> None:
    # 1 - 2/(1+e^0) = 0 ; 1 - 2/(1+e^2) = 0.76159... ; huge distances saturate at 1 without overflow
    assert float(cluster_spread(torch.tensor(0.0))) == 0.0
    assert float(cluster_spread(torch.tensor(2.0))) == pytest.approx(0.7615942, abs=1e-6)
    assert float(cluster_spread(torch.tensor(1e6))) == 1.0


def two_cluster_memory(spread: float) -> torch.Tensor:
    """One memory of 40 points: 20 at 0 and 20 at (10, 0), each cluster with radius ``spread``."""
    angles = torch.linspace(0, 2 * math.pi, 21)[:-1]
    ring = torch.stack([torch.cos(angles), torch.sin(angles)], 1) * spread
    return torch.cat([ring, ring + torch.tensor([10.0, 0.0])]).unsqueeze(0)


def test_rule_enlarges_only_above_threshold() -> None:
    tight, loose = two_cluster_memory(0.3), two_cluster_memory(1.5)
    x = torch.cat([tight, loose])  # [2, 40, 2]
    coreset = AdaptiveCoreset(ratio=0.05, d_th=0.5, factor=2.0, threshold_mode="absolute")  # k = 2 then 4
    result = coreset(x, torch.Generator().manual_seed(0))
    # with 2 centres (one per cluster) the farthest member is ~radius (or diameter) away
    assert result.lengths.tolist() == [2, 4]
    assert result.enlarged.tolist() == [False, True]
    assert float(result.d_max[0]) < 0.5 < float(result.d_max[1])
    # the enlarged memory's first centres are those of the plain run (prefix property)
    plain = AdaptiveCoreset(ratio=0.05, adaptive=False)(x, torch.Generator().manual_seed(0))
    assert torch.equal(result.indices[1, :2], plain.indices[1, :2])
    assert plain.lengths.tolist() == [2, 2]


def test_d_max_is_max_cluster_spread() -> None:
    x = torch.randn(3, 50, 4, generator=torch.Generator().manual_seed(0))
    result = AdaptiveCoreset(ratio=0.1)(x, torch.Generator().manual_seed(1))
    assert result.cluster_spread is not None
    assert torch.allclose(result.d_max, result.cluster_spread.amax(dim=1))
    # direct computation of Eq. 1 from the farthest member of each cluster
    for r in range(3):
        idx = result.indices[r, :5]
        d = torch.cdist(x[r], x[r, idx])
        owner = d.argmin(1)
        far = torch.stack([d[owner == j, j].max() for j in range(5)])
        assert torch.allclose(result.cluster_spread[r], cluster_spread(far**2), atol=1e-5)


def test_quantile_mode_enlarges_fixed_share() -> None:
    x = torch.randn(10, 60, 6, generator=torch.Generator().manual_seed(0)) * torch.linspace(1, 3, 10).view(10, 1, 1)
    result = AdaptiveCoreset(ratio=0.1, d_th=0.7, threshold_mode="quantile", distance_scale="relative")(
        x, torch.Generator().manual_seed(0)
    )
    assert int(result.enlarged.sum()) == 3  # d_max above the 70 % quantile of 10 values


def test_scales() -> None:
    x = torch.full((1, 4, 8), 2.0)
    sq = torch.tensor([16.0])
    assert float(scale_sq_distances(sq, x, "raw")) == 16.0
    assert float(scale_sq_distances(sq, x, "per_channel")) == 2.0
    assert float(scale_sq_distances(sq, x, "relative")) == pytest.approx(16.0 / 32.0)
    with pytest.raises(ValueError):
        scale_sq_distances(sq, x, "bogus")  # type: ignore[arg-type]


def test_ratio_one_keeps_everything() -> None:
    x = torch.randn(2, 9, 3)
    result = AdaptiveCoreset(ratio=1.0)(x, torch.Generator().manual_seed(0))
    assert result.lengths.tolist() == [9, 9]
    assert sorted(result.indices[0].tolist()) == list(range(9))


def test_quantile_mode_ranks_before_saturation() -> None:
    """Raw CNN-scale distances saturate Eq. 1 (every d_imax == 1.0): the quantile mode must still
    enlarge the regions whose clusters are widest (it ranked the tanh values, all tied, before)."""
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0])
    memories = torch.randn(10, 60, 8, generator=g) * scales.view(-1, 1, 1)  # squared radii >> 17
    result = AdaptiveCoreset(ratio=0.1, d_th=0.7, threshold_mode="quantile", distance_scale="raw")(memories, g)
    assert torch.all(result.d_max == 1.0)  # saturated
    assert result.enlarged.tolist() == [False] * 7 + [True] * 3  # the three widest
    assert result.lengths.tolist() == [6] * 7 + [12] * 3
