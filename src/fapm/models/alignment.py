"""Optional test-time alignment of each image to a reference built from the normal images.

FAPM compares a test region only with the same region of the training images: it assumes
the parts sit where they sat at training. When they are shifted (or rotated, or scaled),
each test image is registered to a *reference* — the mean of the training images as small
grey thumbnails — and warped onto it before the per-region search; the anomaly map is
warped back, so it stays in the input image's coordinates.

Estimation (all on ``s × s`` grey thumbnails, default 128², with a Hann window):

* ``translation``: phase correlation. The normalised cross-power spectrum of image and
  reference is a pure phase ramp for a shifted copy; its inverse FFT peaks at the shift,
  refined to sub-pixel by a parabola through the peak's neighbours.
* ``similarity``: Fourier–Mellin. The magnitude spectrum does not move with a shift, rotates
  with the image and shrinks as it grows; resampled on log-polar axes, rotation and scale
  become a shift, found by phase correlation. The image is then rotated/scaled back and the
  translation found as above. Angles are within ±90° (the magnitude spectrum is symmetric).

Confidence: the peak-to-sidelobe ratio (PSR) of the last phase correlation, ``(peak −
mean) / std`` of the correlation surface outside an 11×11 window around the peak. A shifted
copy of the reference gives a PSR in the tens to hundreds; an image with no relation to it
(or no structure, like a plain texture) gives a few. Images below ``min_confidence`` are not
warped: the detector scores them with the neighbourhood search instead, says which and
warns (:func:`fapm.models.aligned.score_aligned`).

Transforms are affine ``theta [B, 2, 3]`` in the normalised coordinates of
:func:`torch.nn.functional.affine_grid` (``align_corners=False``): ``aligned(u) =
image(theta · [u; 1])``, i.e. ``theta`` maps reference coordinates to input coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AlignMode = Literal["none", "translation", "similarity", "auto"]
ALIGN_MODES: tuple[str, ...] = ("none", "translation", "similarity", "auto")
#: What ``auto`` (or a fixed mode) resolves to, stored in model files as a code.
CHOICES: tuple[str, ...] = ("plain", "neighbourhood", "translation", "similarity")
#: PSR below which an image is not warped (``model.align_min_confidence``'s default).
DEFAULT_MIN_CONFIDENCE = 10.0


# ----------------------------------------------------------------------------- primitives
def grey_thumbnails(images: Tensor, size: int) -> Tensor:
    """``images [B, 3, H, W]`` (any normalisation) → grey ``[B, size, size]``, area-downsampled."""
    grey = images.float().mean(1, keepdim=True)
    return F.interpolate(grey, size=(size, size), mode="area").squeeze(1)


def hann2d(size: int, device: torch.device | None = None) -> Tensor:
    """``[size, size]`` separable Hann window (limits the FFT's wrap-around edges)."""
    w = torch.hann_window(size, periodic=False, device=device)
    return w.unsqueeze(1) * w.unsqueeze(0)


def _prepare(thumbs: Tensor) -> Tensor:
    """Zero-mean, windowed thumbnails ``[B, s, s]``."""
    centred = thumbs - thumbs.mean(dim=(-2, -1), keepdim=True)
    return centred * hann2d(thumbs.shape[-1], thumbs.device)


def _parabola(left: Tensor, mid: Tensor, right: Tensor) -> Tensor:
    """Sub-sample offset of a peak from three samples (0 where the curve is flat)."""
    denom = left - 2 * mid + right
    offset = 0.5 * (left - right) / torch.where(denom.abs() < 1e-12, torch.ones_like(denom), denom)
    return torch.where(denom.abs() < 1e-12, torch.zeros_like(offset), offset).clamp(-0.5, 0.5)


def phase_correlation(image: Tensor, reference: Tensor, exclude: int = 5) -> tuple[Tensor, Tensor]:
    """Shift of ``image`` against ``reference`` by phase correlation.

    Args:
        image: ``[B, h, w]``; reference: ``[h, w]`` or ``[B, h, w]`` (both already prepared:
            zero-mean, windowed).
        exclude: half-size of the window around the peak left out of the sidelobe statistics.

    Returns:
        ``(shift [B, 2], psr [B])``: ``shift = (dy, dx)`` in samples such that
        ``image(x) ≈ reference(x − shift)``, wrapped to ``[−h/2, h/2)``; the peak-to-sidelobe ratio.
    """
    b, h, w = image.shape
    cross = torch.fft.fft2(image) * torch.fft.fft2(reference).conj()
    cross = cross / cross.abs().clamp_min(1e-12)
    surface = torch.fft.ifft2(cross).real  # [B, h, w]
    flat = surface.flatten(1)
    peak, pos = flat.max(dim=1)
    py, px = pos // w, pos % w
    rows = torch.arange(b, device=image.device)
    dy = _parabola(surface[rows, (py - 1) % h, px], peak, surface[rows, (py + 1) % h, px])
    dx = _parabola(surface[rows, py, (px - 1) % w], peak, surface[rows, py, (px + 1) % w])
    sy = (py.float() + dy + h / 2) % h - h / 2
    sx = (px.float() + dx + w / 2) % w - w / 2
    # sidelobe: everything outside a (2·exclude+1)² window around the (wrapped) peak
    yy = torch.arange(h, device=image.device).view(1, h, 1)
    xx = torch.arange(w, device=image.device).view(1, 1, w)
    near_y = ((yy - py.view(b, 1, 1) + h // 2) % h - h // 2).abs() <= exclude
    near_x = ((xx - px.view(b, 1, 1) + w // 2) % w - w // 2).abs() <= exclude
    side = ~(near_y & near_x)
    count = side.flatten(1).sum(1).clamp_min(1)
    mean = (surface * side).flatten(1).sum(1) / count
    var = (((surface - mean.view(b, 1, 1)) ** 2) * side).flatten(1).sum(1) / count
    psr = (peak - mean) / var.sqrt().clamp_min(1e-12)
    return torch.stack([sy, sx], dim=1), psr


def _highpass(size: int, device: torch.device | None) -> Tensor:
    """Reddy & Chatterji's high-pass emphasis ``(1 − X)(2 − X)``, ``X = cos(πξ)cos(πη)``, centred."""
    f = torch.linspace(-0.5, 0.5, size, device=device)
    x = torch.cos(math.pi * f).unsqueeze(1) * torch.cos(math.pi * f).unsqueeze(0)
    return (1 - x) * (2 - x)


def log_polar_spectrum(prepared: Tensor, angles: int, radii: int) -> tuple[Tensor, float]:
    """Log-polar resampling of the centred, high-passed magnitude spectrum.

    Args:
        prepared: ``[B, s, s]`` zero-mean windowed thumbnails.
        angles: samples over ``[0, π)``; radii: samples over ``[1, s/2)`` on a log scale.

    Returns:
        ``([B, angles, radii], log step of the radius axis)``.
    """
    b, s, _ = prepared.shape
    spectrum = torch.fft.fftshift(torch.fft.fft2(prepared).abs(), dim=(-2, -1))
    spectrum = torch.log1p(spectrum) * _highpass(s, prepared.device)
    max_radius = s / 2 - 1
    step = math.log(max_radius) / radii
    theta = torch.arange(angles, device=prepared.device) * (math.pi / angles)
    rho = torch.exp(torch.arange(radii, device=prepared.device) * step)
    # pixel (x, y) about the spectrum's centre s/2, then normalised (align_corners=False)
    x = s / 2 + rho.view(1, -1) * torch.cos(theta).view(-1, 1)
    y = s / 2 + rho.view(1, -1) * torch.sin(theta).view(-1, 1)
    grid = torch.stack([(2 * x + 1) / s - 1, (2 * y + 1) / s - 1], dim=-1)  # [angles, radii, 2]
    out = F.grid_sample(spectrum.unsqueeze(1), grid.unsqueeze(0).expand(b, -1, -1, -1), align_corners=False)
    return out.squeeze(1), step


def similarity_theta(angle: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``theta [B, 2, 3]`` of ``u ↦ s·R(angle)·(u + shift)`` (normalised coordinates; ``shift [B, 2]`` as (x, y))."""
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    lin = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [B, 2, 2]
    t = torch.matmul(lin, shift.unsqueeze(-1))  # [B, 2, 1]
    return torch.cat([lin, t], dim=-1)


def invert_theta(theta: Tensor) -> Tensor:
    """Inverse of affine ``theta [B, 2, 3]``."""
    lin_inv = torch.linalg.inv(theta[:, :, :2])
    return torch.cat([lin_inv, -torch.matmul(lin_inv, theta[:, :, 2:])], dim=-1)


def warp(x: Tensor, theta: Tensor, mode: str = "bilinear", padding: str = "border") -> Tensor:
    """``x [B, C, H, W]`` sampled at ``theta · [u; 1]`` (outside: edges replicated, or ``zeros``)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=False)


# ------------------------------------------------------------------------------ estimates
@dataclass
class Estimate:
    """Per-image registration to the reference.

    Attributes:
        theta: ``[B, 2, 3]`` reference → input coordinates (for :func:`warp` of the image).
        shift: ``[B, 2]`` (dy, dx) in input pixels (translation in the reference frame).
        angle: ``[B]`` degrees; scale: ``[B]``; confidence: ``[B]`` PSR.
    """

    theta: Tensor
    shift: Tensor
    angle: Tensor
    scale: Tensor
    confidence: Tensor


def estimate(
    thumbs: Tensor,
    reference: Tensor,
    similarity: bool,
    input_size: tuple[int, int],
    angles: int = 360,
    max_scale: float = 1.5,
    reference_cache: dict[str, Tensor] | None = None,
) -> Estimate:
    """Register ``thumbs [B, s, s]`` (raw grey thumbnails) to ``reference [s, s]`` (raw grey).

    Args:
        similarity: also estimate rotation and scale (Fourier–Mellin), else translation only,
            rounded to whole input pixels (the warp is then an exact copy of the input).
        input_size: ``(H, W)`` of the images the thumbnails came from (for pixel shifts).
        angles: angular samples of the log-polar spectrum over 180°.
        max_scale: scale estimates beyond ``[1/max_scale, max_scale]`` are clamped.
        reference_cache: a dict kept by the caller: the reference's prepared thumbnail and
            log-polar spectrum are computed once into it (the reference must not change).
    """
    b, s, _ = thumbs.shape
    cache = reference_cache if reference_cache is not None else {}
    if "prepared" not in cache:
        cache["prepared"] = _prepare(reference.unsqueeze(0))[0]
    prepared, ref = _prepare(thumbs), cache["prepared"]
    angle = torch.zeros(b, device=thumbs.device)
    scale = torch.ones(b, device=thumbs.device)
    if similarity:
        radii = s
        lp, step = log_polar_spectrum(prepared, angles, radii)
        if "log_polar" not in cache:
            cache["log_polar"] = log_polar_spectrum(ref.unsqueeze(0), angles, radii)[0]
        lp_ref = cache["log_polar"]
        lp_win = torch.hann_window(radii, periodic=False, device=thumbs.device).view(1, 1, -1)
        lp_shift, _ = phase_correlation(lp * lp_win, (lp_ref * lp_win)[0])  # (angle, log-radius) samples
        da, dr = lp_shift[:, 0], lp_shift[:, 1]
        angle = da * (math.pi / angles)
        scale = torch.exp(-dr * step).clamp(1 / max_scale, max_scale)
        # undo rotation and scale about the centre, then find the remaining shift
        undone = warp(thumbs.unsqueeze(1), similarity_theta(angle, scale, torch.zeros(b, 2, device=thumbs.device)))
        prepared = _prepare(undone.squeeze(1))
    shift, psr = phase_correlation(prepared, ref)  # thumbnail pixels, (dy, dx)
    h, w = input_size
    shift_px = torch.stack([shift[:, 0] * h / s, shift[:, 1] * w / s], dim=1)
    if not similarity:
        # A translation by whole input pixels makes the warp an exact copy: bilinear resampling at
        # fractional offsets blurs thin defects (two scratches of 39 and 72 px on the demo lost
        # their lead over the normal images), and half a pixel is far below a feature cell.
        shift_px = shift_px.round()
    shift_norm = torch.stack([shift_px[:, 1] * 2 / w, shift_px[:, 0] * 2 / h], dim=1)  # (x, y) normalised
    theta = similarity_theta(angle, scale, shift_norm)
    return Estimate(theta, shift_px, torch.rad2deg(angle), scale, psr)


# ------------------------------------------------------------------------- fit-time probe
class AlignmentProbe:
    """Collects grey thumbnails of the training images; builds the reference and measures
    how aligned the training images are (the fit-time summary, and ``align: auto``'s choice).

    Args:
        resolution: thumbnail side ``s``.
        sample: thumbnails kept for the spread measurement (the reference averages all).
        fixed: keep ``resolution`` whatever the input size (an :class:`Aligner`'s reference
            has its size); otherwise it is lowered to the inputs' smaller side. Thumbnails are
            never upsampled: blocky upsampled noise correlates with anything (PSR ≈ 10
            instead of ≈ 5 for unrelated images).
    """

    def __init__(self, resolution: int = 128, sample: int = 256, fixed: bool = False) -> None:
        self.max_resolution = int(resolution)
        self.resolution = int(resolution)
        self.sample = int(sample)
        self.fixed = fixed
        self.reset()

    def reset(self) -> None:
        self.total: Tensor | None = None
        self.count = 0
        self.kept: list[Tensor] = []
        self.input_size: tuple[int, int] | None = None

    @torch.no_grad()
    def add(self, images: Tensor) -> None:
        """Keep the thumbnails of normal ``images [B, 3, H, W]``."""
        if self.count == 0 and not self.fixed:
            self.resolution = min(self.max_resolution, int(images.shape[-2]), int(images.shape[-1]))
        thumbs = grey_thumbnails(images, self.resolution).cpu()
        self.total = thumbs.sum(0) if self.total is None else self.total + thumbs.sum(0)
        self.count += thumbs.shape[0]
        room = self.sample - sum(t.shape[0] for t in self.kept)
        if room > 0:
            self.kept.append(thumbs[:room])
        self.input_size = (int(images.shape[-2]), int(images.shape[-1]))

    @property
    def empty(self) -> bool:
        return self.count == 0

    def reference(self) -> Tensor:
        """``[s, s]`` the mean training thumbnail."""
        assert self.total is not None
        return self.total / self.count

    def measure(self, reference: Tensor, min_confidence: float, similarity: bool = True) -> dict[str, Any]:
        """How well the kept training thumbnails register to ``reference``: spreads in input pixels/degrees."""
        thumbs = torch.cat(self.kept)
        est = estimate(thumbs, reference, similarity, self.input_size or (self.resolution, self.resolution))
        radius = est.shift.norm(dim=1)
        q = lambda x, p: float(torch.quantile(x.double(), p))  # noqa: E731
        return {
            "images": int(thumbs.shape[0]),
            "shift_px_median": round(q(radius, 0.5), 2),
            "shift_px_p90": round(q(radius, 0.9), 2),
            "rotation_deg_p90": round(q(est.angle.abs(), 0.9), 2),
            "scale_p90": round(q((est.scale.log().abs()).exp(), 0.9), 4),
            "confidence_median": round(q(est.confidence, 0.5), 2),
            "confident_share": round(float((est.confidence >= min_confidence).float().mean()), 3),
        }


# --------------------------------------------------------------------- detector component
class Aligner(nn.Module):
    """The stored reference and the resolved choice of a detector with ``model.align`` on.

    Buffers (they travel in model files): ``reference [s, s]`` grey thumbnail mean of the
    training images; ``choice`` (index into :data:`CHOICES`) and ``radius`` (the
    neighbourhood of the ``neighbourhood`` choice and of the fallback) decided at fit time.

    Args:
        mode: ``translation``, ``similarity`` or ``auto`` (see :func:`decide`).
        resolution: thumbnail side.
        min_confidence: PSR below which an image is not warped (falls back).
        fallback_radius: neighbourhood radius used for images that are not warped.
    """

    reference: Tensor
    choice: Tensor
    radius: Tensor

    def __init__(self, mode: str, resolution: int = 128, min_confidence: float = DEFAULT_MIN_CONFIDENCE, fallback_radius: int = 1) -> None:
        super().__init__()
        if mode not in ALIGN_MODES or mode == "none":
            raise ValueError(f"model.align must be one of {ALIGN_MODES[1:]} for an Aligner, got {mode!r}")
        self.mode = mode
        self.resolution = int(resolution)
        self.min_confidence = float(min_confidence)
        self.fallback_radius = int(fallback_radius)
        self.register_buffer("reference", torch.zeros(self.resolution, self.resolution))
        initial = CHOICES.index(mode) if mode in CHOICES else 0
        self.register_buffer("choice", torch.tensor(initial, dtype=torch.long))
        self.register_buffer("radius", torch.tensor(self.fallback_radius, dtype=torch.long))

    def check_input_size(self, size: tuple[int, int]) -> None:
        """Refuse inputs smaller than the thumbnails (they would be upsampled; see :class:`AlignmentProbe`)."""
        if min(size) < self.resolution:
            raise ValueError(
                f"model.align_resolution={self.resolution} is larger than the input images "
                f"({size[0]}x{size[1]}): set it to at most {min(size)}"
            )

    @property
    def resolved(self) -> str:
        return CHOICES[int(self.choice)]

    def estimate(self, images: Tensor) -> Estimate:
        """Register normalised ``images [B, 3, H, W]`` to the reference."""
        h, w = images.shape[-2:]
        if self.resolved == "similarity" and h != w:
            raise ValueError(f"model.align=similarity needs square inputs, got {h}x{w}")
        thumbs = grey_thumbnails(images, self.resolution)
        key = (self.reference.data_ptr(), self.reference._version, str(thumbs.device))
        if getattr(self, "_cache_key", None) != key:  # the reference changed (fit, load, move)
            self._cache: dict[str, Tensor] = {}
            self._cache_key = key
        return estimate(thumbs, self.reference.to(thumbs.device), self.resolved == "similarity", (h, w),
                        reference_cache=self._cache)


def decide(summary: dict[str, Any], mode: str, min_confidence: float, region_px: float) -> tuple[str, int, str]:
    """``align: auto``'s rule (a fixed mode is kept): ``(choice, radius, reason)``.

    * Training images that register confidently to their mean (≥ 90 % above
      ``min_confidence``) have a common layout: test images are aligned to it, ``similarity``
      when the training images themselves rotate or scale (p90 > 1° or > 2 %), else
      ``translation``. Alignment costs nothing measurable when test parts are aligned and
      recovers them when they move (``benchmarks/misalignment.py``).
    * Otherwise (textures, tiles, crops without a layout) alignment has nothing to hold on
      to: the neighbourhood search, radius 1, or 2 when the training images' own spread
      (p90) exceeds one region.
    """
    if mode in ("translation", "similarity"):
        return mode, 1, f"model.align={mode}"
    alignable = summary.get("confident_share", 0.0) >= 0.9
    if alignable:
        moves = summary.get("rotation_deg_p90", 0.0) > 1.0 or summary.get("scale_p90", 1.0) > 1.02
        choice = "similarity" if moves else "translation"
        return choice, 1, (
            f"{summary['confident_share']:.0%} of the training images register to their mean "
            f"(PSR >= {min_confidence:g}); rotation p90 {summary['rotation_deg_p90']} deg, scale p90 {summary['scale_p90']}"
        )
    radius = 2 if summary.get("shift_px_p90", 0.0) > region_px else 1
    return "neighbourhood", radius, (
        f"only {summary.get('confident_share', 0.0):.0%} of the training images register to their mean: "
        f"no common layout, neighbourhood radius {radius}"
    )
