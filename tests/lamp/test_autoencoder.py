"""Autoencoder structure, depth rule, patch-wise reconstruction, recalibration option, detector."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fapm.lamp.autoencoder import ConvAutoencoder, default_depth
from fapm.lamp.detector import LampDetector
from fapm.lamp.msar import MSSAR
from fapm.models.scoring import gaussian_blur


def test_depth_rule_and_block_structure() -> None:
    assert default_depth(256) == 6 and default_depth(224) == 6
    assert default_depth(28) == 4 and default_depth(64) == 4
    ae = ConvAutoencoder(input_size=256, base_channels=4, max_channels=16)
    assert len(ae.encoder) == 6 and len(ae.decoder) == 6
    enc = ae.encoder[0]
    assert [type(m) for m in (enc.conv, enc.norm, enc.act)] == [nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU]
    assert enc.conv.stride == (2, 2)
    dec = ae.decoder[0]
    assert [type(m) for m in (dec.up, dec.conv, dec.norm, dec.act)] == [nn.Upsample, nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU]
    small = ConvAutoencoder(input_size=28, base_channels=4)
    assert len(small.encoder) == 4 and len(small.decoder) == 4


@pytest.mark.parametrize("size", [64, 56, 28])
def test_reconstruction_shape_and_bottleneck(size: int) -> None:
    ae = ConvAutoencoder(input_size=size, base_channels=4, max_channels=8)
    x = torch.rand(2, 3, size, size)
    assert ae(x).shape == x.shape
    latent = ae.encode(x)
    assert latent.shape[-1] == -(-size // 16) * 16 // 16  # padded to a multiple of 2^depth, then halved 4 times


def test_no_skip_connections_output_depends_only_on_latent() -> None:
    torch.manual_seed(0)
    ae = ConvAutoencoder(input_size=32, base_channels=4, max_channels=8).eval()
    x = torch.rand(1, 3, 32, 32)
    latent = ae.encode(x)
    via_latent = ae.head(ae.decoder(latent))
    torch.testing.assert_close(ae(x), via_latent)


def test_patchwise_reconstruction_is_independent_per_patch() -> None:
    torch.manual_seed(0)
    ae = ConvAutoencoder(input_size=64, patches_per_side=2, base_channels=4, max_channels=8).eval()
    assert ae.patch_size == 32 and ae.depth == 4
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(ae.from_patches(ae.to_patches(x)), x)
    out = ae(x)
    y = x.clone()
    y[..., 32:, 32:] = torch.rand(1, 3, 32, 32)  # change only the bottom-right patch
    out2 = ae(y)
    torch.testing.assert_close(out[..., :32, :], out2[..., :32, :])
    torch.testing.assert_close(out[..., 32:, :32], out2[..., 32:, :32])
    assert not torch.allclose(out[..., 32:, 32:], out2[..., 32:, 32:])
    with pytest.raises(ValueError, match="patches_per_side"):
        ConvAutoencoder(input_size=64, patches_per_side=3)


@pytest.mark.parametrize(("option", "scales"), [("none", None), ("se", (1,)), ("msar", (1, 2, 4))])
def test_recalibration_option(option: str, scales: tuple[int, ...] | None) -> None:
    ae = ConvAutoencoder(input_size=64, base_channels=6, max_channels=12, recalibration=option)  # type: ignore[arg-type]
    blocks = [b.recalibrate for b in ae.encoder]
    if scales is None:
        assert all(isinstance(b, nn.Identity) for b in blocks)
    else:
        assert all(isinstance(b, MSSAR) and b.scales == scales for b in blocks)
    x = torch.rand(2, 3, 64, 64)
    assert ae(x).shape == x.shape


def test_recalibration_scale_not_dividing_a_block_map_is_rejected() -> None:
    # 32 px, depth 4 → encoder maps 16, 8, 4, 2: scale 4 cannot split the last one
    with pytest.raises(ValueError, match="do not divide the 2×2 map of encoder block 4"):
        ConvAutoencoder(input_size=32, recalibration="msar", msar_scales=(1, 2, 4))


def test_detector_scores_and_training_step_reduces_error() -> None:
    torch.manual_seed(0)
    ae = ConvAutoencoder(input_size=32, base_channels=8, max_channels=16, output_activation=nn.Sigmoid())
    det = LampDetector(ae, blur_sigma=2.0)
    # smooth images in [0, 1], then normalised as the data module does
    pixels = torch.nn.functional.interpolate(torch.rand(4, 3, 4, 4), size=32, mode="bilinear", align_corners=False)
    images = (pixels - det.pixel_mean) / det.pixel_std
    out = det.eval()(images)
    assert out.image_scores.shape == (4,) and out.anomaly_maps.shape == (4, 32, 32)
    target, recon = det.reconstruct(images)
    torch.testing.assert_close(target, pixels)
    error = ((recon - target) ** 2).mean(dim=1)
    torch.testing.assert_close(out.image_scores, error.mean(dim=(1, 2)))
    torch.testing.assert_close(out.anomaly_maps, gaussian_blur(error, 2.0))
    assert not torch.allclose(out.anomaly_maps, error)
    det.train()
    opt = torch.optim.Adam(det.parameters(), lr=1e-2)
    first = last = None
    for _ in range(30):
        t, r = det.reconstruct(images)
        loss = ((r - t) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    assert last < 0.5 * first
