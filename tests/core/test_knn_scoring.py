"""Search backends agree; fusion, map, blur and image scores."""

import math

import pytest
import torch

from fapm.models.knn import FaissKNN, TorchKNN
from fapm.models.scoring import (
    MaxScore,
    ScoreContext,
    SoftmaxWeightedScore,
    anomaly_map,
    fuse_streams,
    gaussian_blur,
    softmax_weight,
)


def padded_memory(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(5, 40, 16, generator=g)
    norms = (vectors * vectors).sum(-1)
    lengths = torch.tensor([40, 30, 25, 40, 12])
    pad = torch.arange(40) >= lengths.unsqueeze(1)
    vectors[pad] = 0
    return vectors, norms.masked_fill(pad, math.inf)


def brute(queries, vectors, norms, k):
    d = torch.cdist(queries.double(), vectors.double())
    d = d.masked_fill(torch.isinf(norms).unsqueeze(1), math.inf)
    return d.topk(k, largest=False)


@pytest.mark.parametrize("backend", [TorchKNN, FaissKNN])
def test_backend_equals_brute_force(backend) -> None:
    vectors, norms = padded_memory()
    queries = torch.randn(5, 17, 16, generator=torch.Generator().manual_seed(1))
    search = backend()
    search.fit(vectors, norms)
    dist, idx = search.search(queries, 4)
    ref_d, ref_i = brute(queries, vectors, norms, 4)
    assert torch.equal(idx, ref_i)
    assert torch.allclose(dist.double(), ref_d, atol=1e-4)
    assert bool((idx < torch.tensor([40, 30, 25, 40, 12]).view(5, 1, 1)).all())  # never a padding row


def test_torch_and_faiss_same_neighbours_and_chunking() -> None:
    vectors, norms = padded_memory(3)
    queries = torch.randn(5, 64, 16, generator=torch.Generator().manual_seed(4))
    t, f, small = TorchKNN(), FaissKNN(), TorchKNN(max_elements=5 * 40 * 7)
    for s in (t, f, small):
        s.fit(vectors, norms)
    (dt, it), (df, i_f), (ds, i_s) = t.search(queries, 3), f.search(queries, 3), small.search(queries, 3)
    assert torch.equal(it, i_f) and torch.equal(it, i_s)
    assert torch.allclose(dt, df, atol=1e-4) and torch.allclose(dt, ds, atol=1e-5)


def test_fusion_repeats_coarse_grid_and_weights() -> None:
    fine = torch.ones(1, 2, 4, 4)
    coarse = torch.arange(4.0).view(1, 1, 2, 2).expand(1, 2, 2, 2)
    fused = fuse_streams([fine, coarse], [1.0, 0.5])
    assert fused.shape == (1, 2, 4, 4)
    assert float(fused[0, 0, 0, 0]) == 1.0 and float(fused[0, 0, 0, 1]) == 1.0  # coarse cell 0 (=0)
    assert float(fused[0, 0, 3, 3]) == 1.0 + 0.5 * 3
    with pytest.raises(ValueError):
        fuse_streams([fine, coarse], [1.0])


def test_blur_preserves_constant_and_mass() -> None:
    x = torch.full((2, 40, 40), 3.0)
    assert torch.allclose(gaussian_blur(x, 4.0), x, atol=1e-5)
    spike = torch.zeros(1, 101, 101)
    spike[0, 50, 50] = 1
    out = gaussian_blur(spike, 4.0)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-4)
    # second moment of the blurred spike ≈ sigma^2 per axis
    ys = torch.arange(101.0) - 50
    var = float((out[0].sum(1) * ys**2).sum())
    assert var == pytest.approx(16.0, rel=0.02)


def test_anomaly_map_size_and_modes() -> None:
    patch = torch.rand(2, 28, 28)
    for mode in ("bilinear", "nearest"):
        assert anomaly_map(patch, (224, 224), 4.0, mode).shape == (2, 224, 224)
    nearest = anomaly_map(patch, (56, 56), 0.0, "nearest")
    assert torch.equal(nearest[:, ::2, ::2], patch)


def test_stable_softmax_weight_equals_direct() -> None:
    d = torch.rand(6, 4) * 5
    direct = 1 - torch.exp(d).div(torch.exp(d).sum(-1, keepdim=True)).amax(-1)
    assert torch.allclose(softmax_weight(d), direct, atol=1e-6)
    # distances where exp() overflows float32: still the exact value (float64 reference, shift-invariant)
    big = torch.tensor([[1000.0, 1001.0, 1002.0, 1003.0]])
    reference = 1 - torch.softmax(big.double() - 1000, -1).amax(-1)
    w = softmax_weight(big)
    assert torch.isfinite(w).all() and float(w) == pytest.approx(float(reference), abs=1e-6)


def test_image_scores() -> None:
    fused = torch.zeros(2, 3, 4, 4)
    fused[:, 0] = torch.rand(2, 4, 4)
    fused[0, :, 1, 2] = torch.tensor([5.0, 6.0, 7.0])
    fused[1, :, 3, 0] = torch.tensor([2.0, 2.0, 2.0])
    ctx = ScoreContext(fused)
    assert torch.allclose(MaxScore()(ctx), torch.tensor([5.0, 2.0]))
    expected0 = 5.0 * (1 - torch.softmax(torch.tensor([5.0, 6.0, 7.0]), 0).max())
    expected1 = 2.0 * (1 - 1 / 3)
    assert torch.allclose(SoftmaxWeightedScore()(ctx), torch.stack([expected0, torch.tensor(expected1)]), atol=1e-6)
