"""MS-SAR: SE equivalence, spatial asymmetry, parameter count, regional pooling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fapm.lamp.msar import MSSAR, regional_pool, repeat_regions


class ReferenceSE(nn.Module):
    """Squeeze-and-excitation written independently: global pool → FC → BN → ReLU → FC → sigmoid."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3))
        z = torch.sigmoid(self.fc2(torch.relu(self.bn(self.fc1(s)))))
        return x * z[:, :, None, None]


def _copy_se_weights(msar: MSSAR, se: ReferenceSE) -> None:
    branch = msar.branches[0]
    with torch.no_grad():
        se.fc1.weight.copy_(branch[0].weight.flatten(1))
        se.fc2.weight.copy_(branch[3].weight.flatten(1))
        se.bn.weight.copy_(torch.linspace(0.5, 1.5, se.bn.num_features))
        se.bn.bias.copy_(torch.linspace(-0.2, 0.2, se.bn.num_features))
        branch[1].weight.copy_(se.bn.weight)
        branch[1].bias.copy_(se.bn.bias)


@pytest.mark.parametrize("train", [True, False])
def test_scale_one_equals_squeeze_excitation(train: bool) -> None:
    torch.manual_seed(0)
    msar = MSSAR(8, scales=(1,), hidden_channels=4)
    se = ReferenceSE(8, 4)
    _copy_se_weights(msar, se)
    x = torch.randn(5, 8, 6, 6)
    if not train:
        # give both the same non-trivial running statistics
        for m in (msar.branches[0][1], se.bn):
            m.running_mean.copy_(torch.linspace(-0.1, 0.1, 4))
            m.running_var.copy_(torch.linspace(0.5, 2.0, 4))
    msar.train(train)
    se.train(train)
    torch.testing.assert_close(msar(x), se(x))
    z = msar.weights(x)
    assert torch.allclose(z, z[:, :, :1, :1].expand_as(z))  # spatially constant


def test_multi_scale_weights_differ_between_regions() -> None:
    torch.manual_seed(1)
    msar = MSSAR(12, scales=(1, 2, 4)).eval()
    x = torch.randn(2, 12, 8, 8)
    x[:, :, :4, :4] += 3.0  # make one quadrant different
    z = msar.weights(x)
    assert not torch.allclose(z[..., 0, 0], z[..., 7, 7], atol=1e-4)
    # constant within the finest (2×2-pixel) regions: upsampling by repetition
    torch.testing.assert_close(z[..., 0, 0], z[..., 1, 1])
    assert z.min() > 0 and z.max() < 1


def test_parameter_count() -> None:
    d, scales = 48, (1, 2, 4)
    msar = MSSAR(d, scales)
    L, d_hidden = len(scales), d // len(scales)
    assert msar.hidden_channels == d_hidden
    assert sum(p.numel() for p in msar.parameters()) == 2 * L * d * d_hidden + L * 2 * d_hidden
    # D' = D / L keeps the count independent of the number of scales (up to BN)
    se = MSSAR(d, (1,))
    assert sum(p.numel() for p in se.parameters()) == 2 * d * d + 2 * d


def test_regional_pool_is_region_mean() -> None:
    x = torch.randn(2, 3, 12, 8)
    for k in (1, 2, 4):
        pooled = regional_pool(x, k)
        assert pooled.shape == (2, 3, k, k)
        rh, rw = 12 // k, 8 // k
        for i in range(k):
            for j in range(k):
                region = x[:, :, i * rh : (i + 1) * rh, j * rw : (j + 1) * rw]
                torch.testing.assert_close(pooled[:, :, i, j], region.mean(dim=(2, 3)))


def test_repeat_regions_round_trip() -> None:
    z = torch.arange(8.0).view(1, 2, 2, 2)
    up = repeat_regions(z, (6, 4))
    assert up.shape == (1, 2, 6, 4)
    torch.testing.assert_close(regional_pool(up, 2), z)


def test_indivisible_map_gives_clear_error() -> None:
    msar = MSSAR(4, scales=(1, 2, 4))
    with pytest.raises(ValueError, match=r"K=4 must divide the feature map \(6×6\)"):
        msar(torch.randn(2, 4, 6, 6))


def test_gradients_reach_all_branches() -> None:
    msar = MSSAR(6, (1, 2))
    msar(torch.randn(3, 6, 4, 4)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in msar.parameters())
