"""Test-time alignment: registration accuracy, warp round trip, confident/unconfident routing,
the fit-time reference and ``align: auto``'s choice."""

import math

import pytest
import torch

from fapm.builders import build_memory_detector
from fapm.models.alignment import (
    Aligner,
    decide,
    estimate,
    grey_thumbnails,
    invert_theta,
    similarity_theta,
    warp,
)
from fapm.models.aligned import AlignmentFallbackWarning, inside_frame
from fapm.settings import BackboneSettings, MemorySettings

SIDE = 128


def scene(seed: int, side: int = SIDE, n: int = 12) -> torch.Tensor:
    """``[1, 3, side, side]``: a part made of sharp-edged random rectangles and discs on a dark ground."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    image = torch.zeros(3, side, side)
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=g) * 1.0 - 0.5).tolist()
        hy, hx = (torch.rand(2, generator=g) * 0.25 + 0.05).tolist()
        colour = torch.rand(3, 1, 1, generator=g)
        if torch.rand(1, generator=g) < 0.5:
            inside = ((yy - cy).abs() < hy) & ((xx - cx).abs() < hx)
        else:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 < hy**2
        image = torch.where(inside, colour.expand(3, side, side), image)
    return image.unsqueeze(0)


def moved(image: torch.Tensor, dy: float, dx: float, angle: float = 0.0, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` moved by a known similarity (pixels, degrees) and the ``theta`` that registers it back."""
    side = image.shape[-1]
    theta = similarity_theta(torch.tensor([math.radians(angle)]), torch.tensor([scale]), torch.zeros(1, 2))
    theta[:, 0, 2], theta[:, 1, 2] = dx * 2 / side, dy * 2 / side  # S p = sR p + t
    theta = theta.expand(image.shape[0], 2, 3).clone()
    return warp(image, invert_theta(theta)), theta


@pytest.mark.parametrize("dy,dx", [(0.0, 0.0), (7.0, -12.0), (-16.0, 16.0), (3.4, 9.6)])
def test_translation_recovered_within_one_pixel(dy, dx) -> None:
    image = scene(0)
    ref = grey_thumbnails(image, 128)[0]
    test, _ = moved(image, dy, dx)
    est = estimate(grey_thumbnails(test, 128), ref, similarity=False, input_size=(SIDE, SIDE))
    assert est.shift[0].tolist() == pytest.approx([dy, dx], abs=1.0)
    assert float(est.confidence) > 20


@pytest.mark.parametrize("angle,scale,dy,dx", [(10.0, 1.0, 0.0, 0.0), (-15.0, 1.0, 6.0, -4.0), (5.0, 1.08, 0.0, 8.0), (12.0, 0.92, -5.0, 0.0)])
def test_rotation_recovered_within_one_degree(angle, scale, dy, dx) -> None:
    image = scene(1)
    ref = grey_thumbnails(image, 128)[0]
    test, theta = moved(image, dy, dx, angle, scale)
    est = estimate(grey_thumbnails(test, 128), ref, similarity=True, input_size=(SIDE, SIDE))
    assert float(est.angle) == pytest.approx(angle, abs=1.0)
    assert float(est.scale) == pytest.approx(scale, abs=0.02)
    # the shift: where the reference's centre is found in the test image, in pixels
    assert float((est.theta[0, :, 2] - theta[0, :, 2]).abs().max() * SIDE / 2) < 1.0
    # and half-way to the corners, within 1.5 px (angle and scale errors grow with the radius)
    points = torch.tensor([[-0.5, -0.5, 1.0], [0.5, 0.5, 1.0], [0.5, -0.5, 1.0]]).t()
    assert float(((est.theta - theta) @ points).abs().max() * SIDE / 2) < 1.5


def test_translation_warps_by_whole_pixels_so_thin_lines_stay_sharp() -> None:
    base = scene(3)
    image, _ = moved(base, 3.4, -5.3)  # a fractional shift
    image[..., 60:100, 64] = 2.0  # a one-pixel-wide scratch
    est = estimate(grey_thumbnails(image, 64), grey_thumbnails(base, 64)[0], False, (SIDE, SIDE))
    shift_px = est.theta[0, :, 2] * SIDE / 2  # (x, y) in input pixels
    assert torch.equal(shift_px, shift_px.round())
    assert float((shift_px - torch.tensor([-5.3, 3.4])).abs().max()) <= 1.0
    dx, dy = (int(v) for v in shift_px.round().tolist())
    out = warp(image, est.theta)
    # an exact copy of the input moved by whole pixels: the scratch keeps its value and width
    inner = out[..., 20:108, 20:108]
    copied = image[..., 20 + dy : 108 + dy, 20 + dx : 108 + dx]
    assert torch.allclose(inner, copied, atol=1e-5)


def test_warp_then_unwarp_is_the_identity_away_from_borders() -> None:
    g = torch.Generator().manual_seed(2)
    # an anomaly-map-like field: coarse values, resized and blurred with sigma 4 (as the detector's maps)
    from fapm.models.scoring import anomaly_map

    smooth = anomaly_map(torch.rand(2, 12, 12, generator=g), (96, 96), sigma=4.0).unsqueeze(1)
    theta = torch.stack([
        similarity_theta(torch.tensor([math.radians(8.0)]), torch.tensor([1.05]), torch.tensor([[0.1, -0.05]]))[0],
        similarity_theta(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([[0.2, 0.0]]))[0],
    ])
    back = warp(warp(smooth, theta), invert_theta(theta))
    inner = (slice(None), slice(None), slice(24, 72), slice(24, 72))
    scale = float(smooth.std())
    assert float((back[inner] - smooth[inner]).abs().max()) < 0.05 * scale  # two bilinear resamplings
    assert float((warp(smooth, theta)[inner] - smooth[inner]).abs().max()) > 0.2 * scale  # it did move


def fitted(align: str, images: torch.Tensor, **extra) -> torch.nn.Module:
    extra.setdefault("grid", (2, 2))
    model = MemorySettings(image_score="max", align=align, align_resolution=64, **extra)
    backbone = BackboneSettings(name="resnet18", pretrained="false", seed=0)
    with pytest.warns(UserWarning, match="RANDOM"):
        det = build_memory_detector(model, backbone, seed=0)
    with torch.no_grad():
        det.collect(images)
        det.build()
    return det.eval()


@pytest.fixture(scope="module")
def parts() -> torch.Tensor:
    """Eight renderings of one part, jittered by under a pixel (an aligned production line)."""
    base = scene(3, side=64)
    return torch.cat([moved(base, *(torch.rand(2, generator=torch.Generator().manual_seed(i)) - 0.5).tolist())[0]
                      for i in range(8)])


def test_unconfident_estimate_falls_back_and_is_counted(parts) -> None:
    det = fitted("translation", parts)
    assert det.aligner.resolved == "translation"
    # the training images were registered to one frame; the reference is their aligned mean
    assert det.last_build.alignment["training_images_aligned"] == 8
    raw_mean = grey_thumbnails(parts, 64).mean(0)
    assert not torch.equal(det.aligner.reference, raw_mean)
    assert float((det.aligner.reference - raw_mean).abs().mean()) < 0.05 * float(raw_mean.abs().mean())
    noise = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(9)) * 4 - 2
    shifted, _ = moved(parts[:1], 6.0, -5.0)
    with torch.no_grad():
        with pytest.warns(AlignmentFallbackWarning, match="neighbourhood search"):
            out = det(torch.cat([noise, shifted]))
        fallback = det.score_images(noise, radius=1)
        aligned = det.score_images(shifted, theta=det.aligner.estimate(shifted).theta)
    assert out.aligned.tolist() == [False, False, True]  # which images were warped, returned with the scores
    assert torch.allclose(out.image_scores[:2], fallback.image_scores)
    assert torch.allclose(out.anomaly_maps[:2], fallback.anomaly_maps)
    assert torch.allclose(out.image_scores[2:], aligned.image_scores)
    assert det.facts()["align"] == {"mode": "translation", "choice": "translation"}  # the detector keeps no counts


@pytest.mark.parametrize("grid", [(2, 2), (3, 3)], ids=["even", "uneven"])
def test_alignment_undoes_a_shift_and_keeps_the_map_in_input_coordinates(parts, grid) -> None:
    """Also on a grid that divides neither of ResNet-18's 8x8 and 4x4 maps at 64 px (uneven regions)."""
    plain, aligned = fitted("none", parts, grid=grid), fitted("translation", parts, grid=grid)
    shifted, _ = moved(parts[:2], 8.0, 8.0)
    with torch.no_grad():
        p, a = plain(shifted), aligned(shifted)
        normal = plain(parts[:2])
    assert float(a.image_scores.max()) < 0.6 * float(p.image_scores.min())  # the shift is no anomaly any more
    assert float(a.image_scores.max()) < 2 * float(normal.image_scores.max()) + 1e-3
    assert a.anomaly_maps.shape == shifted.shape[:1] + shifted.shape[-2:]


def test_the_map_keeps_the_border_cells_that_the_image_score_leaves_out(parts) -> None:
    """Cells whose features see beyond the frame after the warp are left out of the image score
    only: a defect in that band still shows in the map (zeroing them there hid edge defects)."""
    det = fitted("translation", parts)
    shifted, _ = moved(parts[:1], 8.0, 8.0)  # registered back by (-8, -8): the right/bottom cells see past the frame
    defect = shifted.clone()
    defect[..., 24:32, 56:62] = 3.0  # inside the input, in the band the frame mask drops
    with torch.no_grad():
        est = det.aligner.estimate(torch.cat([shifted, defect]))
        out = det.score_images(torch.cat([shifted, defect]), theta=est.theta)
        fused_inside = inside_frame(est.theta[:1], (64, 64), (8, 8))
    assert float(fused_inside[0, 0, 2:4, 6].max()) == 0.0  # the defect's cells are left out of the image score
    normal_map, defect_map = out.anomaly_maps
    band = (slice(24, 32), slice(56, 62))
    assert float(defect_map[band].mean()) > 1.5 * float(normal_map[band].mean())
    assert float(normal_map.min()) > 0.2 * float(normal_map.median())  # no zeroed band along the edges


def test_auto_chooses_by_the_training_images(parts) -> None:
    det = fitted("auto", parts)
    summary = det.last_build.alignment
    assert summary["confident_share"] == 1.0 and summary["shift_px_p90"] < 1.0
    assert det.aligner.resolved in ("translation", "similarity") and summary["choice"] == det.aligner.resolved
    textures = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(5))  # no common layout
    det = fitted("auto", textures)
    assert det.aligner.resolved == "neighbourhood" and int(det.aligner.radius) >= 1
    assert det.last_build.as_dict()["alignment/confident_share"] < 0.9


def test_thumbnails_larger_than_the_input_are_refused(parts) -> None:
    model = MemorySettings(grid=(2, 2), align="translation", align_resolution=128)
    with pytest.warns(UserWarning, match="RANDOM"):
        det = build_memory_detector(model, BackboneSettings(name="resnet18", pretrained="false", seed=0))
    with pytest.raises(ValueError, match="model.align_resolution=128 is larger than the input images .64x64."):
        det.collect(parts)


def test_decide_rule() -> None:
    aligned = {"confident_share": 0.95, "rotation_deg_p90": 0.3, "scale_p90": 1.01, "shift_px_p90": 2.0}
    assert decide(aligned, "auto", 10.0, 32.0)[0] == "translation"
    assert decide({**aligned, "rotation_deg_p90": 4.0}, "auto", 10.0, 32.0)[0] == "similarity"
    loose = {"confident_share": 0.2, "rotation_deg_p90": 0.0, "scale_p90": 1.0, "shift_px_p90": 40.0}
    assert decide(loose, "auto", 10.0, 32.0)[:2] == ("neighbourhood", 2)
    assert decide(loose, "similarity", 10.0, 32.0)[0] == "similarity"
    with pytest.raises(ValueError, match="model.align"):
        Aligner("none")
