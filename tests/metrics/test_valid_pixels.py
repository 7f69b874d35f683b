"""Pixel metrics leave out the pixels that do not show the image (letterbox padding)."""

from __future__ import annotations

import pytest
import torch

from fapm.metrics import AnomalyMetrics
from fapm.metrics.aupro import pixel_sweep


def _case() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 8, 8)
    masks[0, 2:5, 2:6] = 1
    masks[2, 5:8, 0:3] = 1
    maps = torch.rand(3, 8, 8, generator=g) + 0.8 * masks
    return maps, masks


def _letterboxed(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same images in 8x12 canvases: padding columns with high scores and no defect, and the valid pixels."""
    padded_maps = torch.full((3, 8, 12), 5.0)
    padded_maps[:, :, 2:10] = maps
    padded_masks = torch.zeros(3, 8, 12)
    padded_masks[:, :, 2:10] = masks
    valid = torch.zeros(3, 8, 12, dtype=torch.bool)
    valid[:, :, 2:10] = True
    return padded_maps, padded_masks, valid


def test_padding_is_left_out_of_pixel_auroc_and_aupro() -> None:
    maps, masks = _case()
    padded_maps, padded_masks, valid = _letterboxed(maps, masks)
    plain = pixel_sweep(maps, masks, max_fpr=0.3)
    masked = pixel_sweep(padded_maps, padded_masks, max_fpr=0.3, valid=valid)
    counted = pixel_sweep(padded_maps, padded_masks, max_fpr=0.3)
    assert masked.auroc == pytest.approx(plain.auroc, abs=1e-12)
    assert masked.aupro == pytest.approx(plain.aupro, abs=1e-12)
    assert counted.auroc < plain.auroc - 0.05  # counting the padding would change the result


def test_anomaly_metrics_pass_valid_pixels_through_updates() -> None:
    padded_maps, padded_masks, valid = _letterboxed(*_case())
    labels = torch.tensor([1, 0, 1])
    with_valid, reference = AnomalyMetrics(), AnomalyMetrics()
    with_valid.update(torch.tensor([1.0, 0.0, 2.0])[:2], labels[:2], padded_maps[:2], padded_masks[:2], valid=valid[:2])
    # a batch with every pixel valid, next to one with padding
    full = torch.ones(1, 8, 12, dtype=torch.bool)
    with_valid.update(torch.tensor([2.0]), labels[2:], padded_maps[2:], padded_masks[2:], valid=full)
    reference.update(torch.tensor([1.0, 0.0, 2.0]), labels, padded_maps, padded_masks)
    a = with_valid.compute()
    b = reference.compute()
    # the third image's padding is valid in both runs; the first two's only in the reference
    assert a["pixel_auroc"] != pytest.approx(b["pixel_auroc"], abs=1e-6)
    merged = AnomalyMetrics()
    merged.merge([with_valid.state()])
    assert merged.compute()["pixel_auroc"] == pytest.approx(a["pixel_auroc"], abs=1e-12)
