"""LAMP loss (Eq. 1–2) and the per-element base losses."""

from __future__ import annotations

import math

import pytest
import torch

from fapm.lamp.loss import ReconstructionLoss, SSIMDissimilarity, lamp_normalise, lamp_terms


def _direct_lamp(base: torch.Tensor, eps: float, per_sample: bool) -> torch.Tensor:
    """Eq. 1–2 written out with Python loops over samples; mean over the batch."""
    total = 0.0
    batch_max = base.max().item()
    for b in range(base.shape[0]):
        peak = base[b].max().item() if per_sample else batch_max
        s = 0.0
        for v in base[b].flatten().tolist():
            s += -math.log(1.0 - v / peak * (1.0 - eps))
        total += s
    return torch.tensor(total / base.shape[0], dtype=torch.float64)


@pytest.mark.parametrize("max_over", ["sample", "batch"])
def test_lamp_equals_direct_eq_1_2(max_over: str) -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 2, 5, 4, generator=g, dtype=torch.float64)
    recon = torch.rand(3, 2, 5, 4, generator=g, dtype=torch.float64)
    recon[1] *= 0.1  # samples with very different error scales: per-sample ≠ per-batch
    eps = 0.05
    loss = ReconstructionLoss("l2", lamp=True, epsilon=eps, max_over=max_over)(recon, target)
    expected = _direct_lamp((recon - target) ** 2, eps, per_sample=max_over == "sample")
    torch.testing.assert_close(loss, expected)


def test_per_sample_and_per_batch_differ() -> None:
    base = torch.tensor([[[[1.0, 0.5]]], [[[0.1, 0.05]]]])
    a = lamp_terms(base, 0.1, "sample").sum()
    b = lamp_terms(base, 0.1, "batch").sum()
    assert not torch.isclose(a, b)


def test_lamp_finite_at_max_and_value_minus_log_eps() -> None:
    eps = 1e-3
    base = torch.full((2, 3, 4, 4), 0.7)  # every element equals the max
    terms = lamp_terms(base, eps)
    assert torch.isfinite(terms).all()
    torch.testing.assert_close(terms, torch.full_like(terms, -math.log(eps)))


def test_lamp_finite_for_all_zero_loss_and_gradients() -> None:
    recon = torch.zeros(2, 3, 4, 4, requires_grad=True)
    target = torch.zeros(2, 3, 4, 4)
    for detach in (False, True):
        loss = ReconstructionLoss("l2", lamp=True, epsilon=1e-3, detach_max=detach)(recon, target)
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, recon)
        assert torch.isfinite(grad).all()


def test_amplified_term_dominates_normalised_loss() -> None:
    base = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) ** 3
    normalised = lamp_normalise(base, 0.01)
    assert normalised.max() <= 1 - 0.01 + 1e-7
    assert (lamp_terms(base, 0.01) >= normalised).all()
    # strictly larger wherever the normalised loss is non-zero
    nz = normalised > 0
    assert (lamp_terms(base, 0.01)[nz] > normalised[nz]).all()


def test_non_lamp_losses_and_reduction() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(2, 3, 6, 6, generator=g), torch.rand(2, 3, 6, 6, generator=g)
    torch.testing.assert_close(ReconstructionLoss("l2", lamp=False)(x, y), ((x - y) ** 2).sum((1, 2, 3)).mean())
    torch.testing.assert_close(ReconstructionLoss("l1", lamp=False, reduction="mean")(x, y), (x - y).abs().mean())


def test_detach_max_changes_gradient_not_value() -> None:
    g = torch.Generator().manual_seed(3)
    target = torch.rand(2, 1, 4, 4, generator=g)
    recon = torch.rand(2, 1, 4, 4, generator=g, requires_grad=True)
    values, grads = [], []
    for detach in (False, True):
        loss = ReconstructionLoss("l2", epsilon=0.1, detach_max=detach)(recon, target)
        values.append(loss.detach())
        grads.append(torch.autograd.grad(loss, recon)[0])
    torch.testing.assert_close(values[0], values[1])
    assert not torch.allclose(grads[0], grads[1])


def test_ssim_map_identical_images_is_zero_and_differentiable() -> None:
    ssim = SSIMDissimilarity(window_size=7, sigma=1.5)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    d = ssim(x, x)
    assert d.shape == x.shape
    torch.testing.assert_close(d, torch.zeros_like(d), atol=1e-5, rtol=0)
    y = (x + 0.2 * torch.randn_like(x)).requires_grad_(True)
    out = ssim(y, x)
    assert out.mean() > 0.05
    out.mean().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()


def test_ssim_matches_global_formula_for_constant_patches() -> None:
    # For spatially constant images the local statistics are exact: SSIM reduces to its luminance term.
    a, b = 0.3, 0.6
    x = torch.full((1, 1, 12, 12), a, dtype=torch.float64)
    y = torch.full((1, 1, 12, 12), b, dtype=torch.float64)
    c1 = (0.01) ** 2
    expected = 1 - (2 * a * b + c1) / (a * a + b * b + c1)
    torch.testing.assert_close(SSIMDissimilarity()(x, y), torch.full_like(x, expected))


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        ReconstructionLoss(epsilon=0.0)
    with pytest.raises(ValueError, match="base loss"):
        ReconstructionLoss(base="huber")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_over"):
        ReconstructionLoss(max_over="pixel")  # type: ignore[arg-type]


def test_max_in_graph_scale_invariance_and_gradient_sign() -> None:
    # Documented consequences of differentiating Eq. 2 as written (docs/lamp.md).
    base = torch.tensor([[0.1, 0.5, 1.0, 0.3]], dtype=torch.float64)
    torch.testing.assert_close(lamp_terms(base, 1e-3).sum(), lamp_terms(0.37 * base, 1e-3).sum())
    through = base.clone().requires_grad_(True)
    lamp_terms(through, 1e-3).sum().backward()
    assert through.grad[0, 2] < 0 and (through.grad[0, [0, 1, 3]] > 0).all()
    detached = base.clone().requires_grad_(True)
    lamp_terms(detached, 1e-3, detach_max=True).sum().backward()
    assert (detached.grad > 0).all() and detached.grad[0, 2] > 100  # ≈ (1 − ε) / (ε · max)
