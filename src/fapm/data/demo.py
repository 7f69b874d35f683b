"""Deterministic synthetic demo dataset in the MVTec AD layout (nothing is downloaded).

Two categories are rendered procedurally with numpy/scipy and written as 8-bit RGB PNGs:

* ``bracket`` (object): an L-shaped brushed-metal bracket with two holes and a slot, drawn
  on a dark background with a drop shadow at a slightly jittered position, rotation, scale
  and brightness. Defects: ``scratch``, ``spot``, ``cut`` (missing part), ``contamination``.
* ``weave`` (texture): a plain-weave fabric with random thread period, angle, phase,
  per-thread colour, fibre noise and slow distortion. Defects: ``hole``, ``stain``,
  ``thread`` (stray fibre), ``fold`` (crease).

Every image is drawn from a numpy ``Generator`` seeded by ``(seed, category, split, type,
index)``, so the output is byte-identical for the same arguments. A defective image is its
defect-free rendering with the defect applied; its mask is exactly the set of pixels that
changed by at least ``MASK_THRESHOLD`` grey levels (small gaps closed, holes filled), and
pixels outside the mask are identical to the defect-free rendering.

Writing is safe when several processes start at once (parallel sweep jobs): each category
is generated under a lock, into a temporary folder renamed into place (see :func:`generate_demo`).

CLI: ``python -m fapm.data.demo --root DIR [--seed N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image
from scipy import ndimage

from fapm.data.errors import DataError

log = logging.getLogger(__name__)

DEMO_VERSION = 1
#: Per-category marker written inside ``<root>/<category>/``.
MARKER_NAME = ".fapm_demo.json"
#: A pixel belongs to a defect mask when any channel changed by at least this many grey levels.
MASK_THRESHOLD = 10
_MIN_MASK_PIXELS = 15
#: Defects stay this far (fraction of the side) from the border, so a 224/256 centre crop keeps them.
_DEFECT_MARGIN = 0.08

Array = np.ndarray
Scene = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Shared drawing helpers (coordinates in pixels unless said otherwise)
# --------------------------------------------------------------------------------------------
def _stable_id(name: str) -> int:
    # Python's hash() of str is salted per process; crc32 is stable.
    return zlib.crc32(name.encode("utf-8"))


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float | tuple[float, float]) -> Array:
    """Unit-variance Gaussian-filtered white noise ``[size, size]`` (wraps around).

    Wide kernels are applied on a coarser grid and upsampled, which looks the same and is
    much faster than filtering at full resolution.
    """
    sigma_y, sigma_x = (sigma, sigma) if np.isscalar(sigma) else sigma
    fy, fx = max(1, int(sigma_y / 2)), max(1, int(sigma_x / 2))
    coarse = rng.standard_normal((-(-size // fy), -(-size // fx)))
    field = ndimage.gaussian_filter(coarse, (sigma_y / fy, sigma_x / fx), mode="wrap")
    if (fy, fx) != (1, 1):
        zoom = (size / field.shape[0], size / field.shape[1])
        field = ndimage.zoom(field, zoom, order=1, mode="grid-wrap", grid_mode=True)
    field = field[:size, :size]
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _pixel_grid(size: int) -> tuple[Array, Array]:
    """``(x, y)`` pixel-centre coordinates, each ``[size, size]`` (cached, read-only)."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    x, y = np.meshgrid(coords, coords)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _blob_alpha(
    x: Array,
    y: Array,
    centre: tuple[float, float],
    radius: float,
    rng: np.random.Generator,
    roughness: float,
    softness: float,
) -> Array:
    """Irregular blob coverage in [0, 1]: a circle whose radius wobbles with a few harmonics."""
    dx, dy = x - centre[0], y - centre[1]
    angle = np.arctan2(dy, dx)
    wobble = np.zeros_like(angle)
    for k in range(2, 6):
        wobble += rng.uniform(0, roughness / k) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    edge = radius * (1.0 + wobble)
    return np.clip((edge - np.hypot(dx, dy)) / softness + 0.5, 0.0, 1.0)


def _curve_distance(x: Array, y: Array, p0: Array, p1: Array, p2: Array, reach: float, segments: int = 40) -> Array:
    """Distance of every pixel to the quadratic Bezier curve ``p0 -> p2`` (control ``p1``).

    Only pixels within ``reach`` of the curve's bounding box are computed; the rest get ``inf``.
    """
    t = np.linspace(0.0, 1.0, segments + 1)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    best = np.full(x.shape, np.inf)
    h, w = x.shape
    c0, r0 = (max(0, int(v - reach)) for v in pts.min(axis=0))
    c1, r1 = int(min(w, pts[:, 0].max() + reach + 1)), int(min(h, pts[:, 1].max() + reach + 1))
    if c1 <= c0 or r1 <= r0:
        return best
    xs, ys, box = x[r0:r1, c0:c1], y[r0:r1, c0:c1], best[r0:r1, c0:c1]
    for a, b in itertools.pairwise(pts):
        ab = b - a
        s = np.clip(((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1]) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
        np.minimum(box, np.hypot(xs - a[0] - s * ab[0], ys - a[1] - s * ab[1]), out=box)
    return best


def _random_curve(rng: np.random.Generator, start: Array, length: float, bend: float) -> tuple[Array, Array, Array]:
    """Endpoints and control point of a gently bent curve of about ``length`` pixels."""
    direction = rng.uniform(0, 2 * np.pi)
    unit = np.array([np.cos(direction), np.sin(direction)])
    end = start + length * unit
    control = (start + end) / 2 + rng.uniform(-bend, bend) * length * np.array([-unit[1], unit[0]])
    return start, control, end


def _line_alpha(distance: Array, width: float) -> Array:
    """Anti-aliased coverage of a line of ``width`` pixels given the distance to its centre."""
    return np.clip(width / 2 + 0.5 - distance, 0.0, 1.0)


def _mix(base: Array, target: Array | Sequence[float], alpha: Array) -> Array:
    """``base * (1 - alpha) + target * alpha`` for ``[H, W, 3]`` images and ``[H, W]`` alpha."""
    a = alpha[..., None]
    return base * (1 - a) + np.asarray(target, dtype=np.float64) * a


def _pick_point(rng: np.random.Generator, allowed: Array, margin: int) -> Array:
    """A random ``(x, y)`` pixel centre where ``allowed`` is True, at least ``margin`` from the border."""
    inner = np.zeros_like(allowed)
    inner[margin:-margin, margin:-margin] = allowed[margin:-margin, margin:-margin]
    ys, xs = np.nonzero(inner)
    i = rng.integers(len(xs))
    return np.array([xs[i] + 0.5, ys[i] + 0.5])


# --------------------------------------------------------------------------------------------
# bracket: an aligned object
# --------------------------------------------------------------------------------------------
def _rbox(u: Array, v: Array, centre: tuple[float, float], half: tuple[float, float], r: float) -> Array:
    """Signed distance to a rounded box (negative inside)."""
    qx = np.abs(u - centre[0]) - half[0] + r
    qy = np.abs(v - centre[1]) - half[1] + r
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - r


def _circle(u: Array, v: Array, centre: tuple[float, float], r: float) -> Array:
    return np.hypot(u - centre[0], v - centre[1]) - r


# The bracket is modelled in object units around _BRACKET_CENTRE and magnified to fill the frame.
_BRACKET_ZOOM = 1.2
_BRACKET_CENTRE = (0.05, -0.08)
# Outer-contour segments of the bracket in object units, where a piece can be cut away.
_BRACKET_EDGES = (
    ((-0.45, 0.32), (0.55, 0.32)),  # plate bottom
    ((0.67, 0.0), (0.67, 0.25)),  # plate right
    ((-0.15, -0.08), (0.55, -0.08)),  # plate top
    ((-0.5, -0.48), (-0.34, -0.48)),  # arm top
    ((-0.57, -0.4), (-0.57, 0.2)),  # arm left
)


def _bracket_scene(rng: np.random.Generator, size: int) -> Scene:
    return {
        "size": size,
        "shift": rng.uniform(-0.035, 0.035, 2),
        "angle": np.deg2rad(rng.uniform(-4.0, 4.0)),
        "scale": rng.uniform(0.97, 1.03),
        "brightness": rng.uniform(0.92, 1.08),
        "tint": 1.0 + rng.normal(0.0, 0.01, 3),
        "background": rng.uniform(0.15, 0.2),
        "brushed": _smooth_noise(rng, size, (0.6 * size / 256, 10 * size / 256)),
        "bg_low": _smooth_noise(rng, size, size / 8),
        "bg_fine": _smooth_noise(rng, size, 1.0),
    }


def _bracket_render(scene: Scene, cut: tuple[float, float, float, float] | None = None) -> tuple[Array, Scene]:
    """Noise-free bracket image ``[S, S, 3]`` in [0, 1] plus geometry (coverage, sdf)."""
    size = scene["size"]
    px = 2.0 / size  # one pixel in normalised units
    x, y = _pixel_grid(size)
    dx, dy = x * px - 1 - scene["shift"][0], y * px - 1 - scene["shift"][1]
    c, s, k = np.cos(scene["angle"]), np.sin(scene["angle"]), scene["scale"] * _BRACKET_ZOOM
    u = (c * dx + s * dy) / k + _BRACKET_CENTRE[0]
    v = (-s * dx + c * dy) / k + _BRACKET_CENTRE[1]

    body = np.minimum(_rbox(u, v, (0.05, 0.12), (0.62, 0.2), 0.07), _rbox(u, v, (-0.42, -0.18), (0.15, 0.3), 0.07))
    holes = np.minimum.reduce(
        [
            _circle(u, v, (0.45, 0.12), 0.08),
            _circle(u, v, (-0.42, -0.3), 0.07),
            _rbox(u, v, (0.0, 0.12), (0.14, 0.035), 0.035),
        ]
    )
    sdf = np.maximum(body, -holes)
    if cut is not None:  # (cx, cy, r, shape) in object units; shape < 0.5: disc, else square notch
        cx, cy, r, shape = cut
        notch = _circle(u, v, (cx, cy), r) if shape < 0.5 else _rbox(u, v, (cx, cy), (r, r), 0.01)
        sdf = np.maximum(sdf, -notch)
    sdf = sdf * k
    cover = np.clip(0.5 - sdf / px, 0.0, 1.0)

    offset = max(1, round(3 * size / 256))
    shadow = ndimage.gaussian_filter(np.roll(cover, (offset, offset), axis=(0, 1)), 4 * size / 256)
    bg = scene["background"] * (1 + 0.08 * scene["bg_low"] + 0.03 * scene["bg_fine"]) * (1 - 0.5 * shadow)
    background = bg[..., None] * np.array([0.96, 1.0, 1.05])

    # Brushed texture attached to the object (moves and rotates with it).
    rows, cols = (v + 1) / 2 * size, (u + 1) / 2 * size
    brushed = ndimage.map_coordinates(scene["brushed"], [rows, cols], order=1, mode="wrap")
    gy, gx = np.gradient(sdf)
    norm = np.hypot(gx, gy) + 1e-12
    lighting = (0.6 * gx + 0.8 * gy) / norm  # light from the top-left: bright where the edge faces it
    edge = np.exp(-np.maximum(-sdf, 0) / 0.02)
    metal = 0.6 * scene["brightness"] * (1 + 0.05 * brushed) + edge * (0.18 * lighting + 0.05)
    metal = metal[..., None] * np.array([0.97, 1.0, 1.03]) * scene["tint"]
    image = _mix(background, 0, cover) + metal * cover[..., None]
    return image, {"cover": cover, "sdf": sdf, "px": px}


def _inside_object(geo: Scene, depth_px: float) -> Array:
    return geo["sdf"] < -depth_px * geo["px"]


def _bracket_scratch(scene: Scene, clean: Array, geo: Scene, rng: np.random.Generator) -> tuple[Array, Array]:
    size, k = scene["size"], scene["size"] / 256
    x, y = _pixel_grid(size)
    curve = _random_curve(rng, _pick_point(rng, _inside_object(geo, 4), 8), rng.uniform(20, 70) * k, 0.3)
    width = rng.uniform(0.8, 2.2) * k
    alpha = _line_alpha(_curve_distance(x, y, *curve, reach=width + 2), width) * geo["cover"]
    bright = rng.random() < 0.5  # bare metal shows bright; otherwise a dark groove
    target = np.clip(clean + rng.uniform(0.15, 0.35), 0, 1) if bright else clean * rng.uniform(0.3, 0.6)
    return _mix(clean, target, alpha), alpha > 0


def _bracket_spot(scene: Scene, clean: Array, geo: Scene, rng: np.random.Generator) -> tuple[Array, Array]:
    size, k = scene["size"], scene["size"] / 256
    x, y = _pixel_grid(size)
    centre = _pick_point(rng, _inside_object(geo, 6), 10)
    blob = _blob_alpha(x, y, tuple(centre), rng.uniform(3, 9) * k, rng, 0.35, 1.0)
    alpha = blob * geo["cover"] * rng.uniform(0.6, 0.95)
    rust = np.array([0.22, 0.14, 0.09]) * rng.uniform(0.6, 1.3)
    return _mix(clean, rust, alpha), alpha > 0


def _bracket_cut(scene: Scene, clean: Array, geo: Scene, rng: np.random.Generator) -> tuple[Array, Array]:
    (ax, ay), (bx, by) = _BRACKET_EDGES[rng.integers(len(_BRACKET_EDGES))]
    t = rng.uniform(0.1, 0.9)
    cut = (ax + t * (bx - ax), ay + t * (by - ay), rng.uniform(0.045, 0.1), rng.random())
    image, _ = _bracket_render(scene, cut=cut)
    return image, np.ones(clean.shape[:2], dtype=bool)


_CONTAMINANT_COLOURS = ((0.85, 0.45, 0.1), (0.15, 0.35, 0.8), (0.2, 0.6, 0.25), (0.7, 0.15, 0.15), (0.9, 0.85, 0.3))


def _bracket_contamination(scene: Scene, clean: Array, geo: Scene, rng: np.random.Generator) -> tuple[Array, Array]:
    size, k = scene["size"], scene["size"] / 256
    x, y = _pixel_grid(size)
    centre = _pick_point(rng, _inside_object(geo, 0), 16)
    blob = _blob_alpha(x, y, tuple(centre), rng.uniform(4, 13) * k, rng, 0.4, 1.5)
    colour = np.array(_CONTAMINANT_COLOURS[rng.integers(len(_CONTAMINANT_COLOURS))]) * rng.uniform(0.7, 1.1)
    alpha = blob * rng.uniform(0.45, 0.85)
    return _mix(clean, colour, alpha), alpha > 0


# --------------------------------------------------------------------------------------------
# weave: a texture
# --------------------------------------------------------------------------------------------
def _weave_scene(rng: np.random.Generator, size: int) -> Scene:
    k = size / 256
    return {
        "size": size,
        "period": rng.uniform(9.0, 11.5) * k,
        "angle": np.deg2rad(rng.uniform(-2.0, 2.0)),
        "phase": rng.uniform(0, 2, 2),
        "brightness": rng.uniform(0.92, 1.06),
        "colour": np.array([0.74, 0.63, 0.47]) + rng.normal(0, 0.01, 3),
        "weft": rng.uniform(0.86, 0.93),
        "thread_var": rng.normal(0, 0.045, (2, 64)),
        "distort": np.stack([_smooth_noise(rng, size, 30 * k), _smooth_noise(rng, size, 30 * k)]) * 0.25,
        "fibre": np.stack([_smooth_noise(rng, size, (6 * k, 0.7 * k)), _smooth_noise(rng, size, (0.7 * k, 6 * k))]),
        "illumination": _smooth_noise(rng, size, 50 * k),
    }


def _weave_render(scene: Scene, displace: Array | None = None, shade: Array | None = None) -> tuple[Array, Scene]:
    """Noise-free plain weave ``[S, S, 3]``.

    ``displace`` ``[2, S, S]`` (in thread periods) and ``shade`` ``[S, S]`` deform it for folds.
    """
    x, y = _pixel_grid(scene["size"])
    c, s, p = np.cos(scene["angle"]), np.sin(scene["angle"]), scene["period"]
    a = (c * x + s * y) / p + scene["phase"][0] + scene["distort"][0]
    b = (-s * x + c * y) / p + scene["phase"][1] + scene["distort"][1]
    if displace is not None:
        a, b = a + displace[0], b + displace[1]
    i, j = np.floor(a).astype(np.int64), np.floor(b).astype(np.int64)
    fa, fb = a - i, b - j
    warp_on_top = (i + j) % 2 == 0  # plain weave: over one, under one
    warp_shade = 0.45 + 0.55 * np.sin(np.pi * fa) ** 0.6 * (0.75 + 0.25 * np.sin(np.pi * fb))
    weft_shade = 0.45 + 0.55 * np.sin(np.pi * fb) ** 0.6 * (0.75 + 0.25 * np.sin(np.pi * fa))
    var = scene["thread_var"]
    warp = (1 + var[0][i % 64]) * (1 + 0.05 * scene["fibre"][0]) * warp_shade
    weft = scene["weft"] * (1 + var[1][j % 64]) * (1 + 0.05 * scene["fibre"][1]) * weft_shade
    grey = np.where(warp_on_top, warp, weft) * scene["brightness"] * (1 + 0.04 * scene["illumination"])
    if shade is not None:
        grey = grey * shade
    return grey[..., None] * scene["colour"], {}


def _weave_hole(scene: Scene, clean: Array, geo: Scene, rng: np.random.Generator) -> tuple[Array, Array]:
    size, k = scene["size"], scene["size"] / 256
    x, y = _pixel_grid(size)
    centre = rng.uniform(20 * k, size - 20 * k, 2)
    alpha = _blob_alpha(x, y, tuple(centre), rng.uniform(4, 10) * k, rng, 0.45, 1.0) * rng.uniform(0.75, 1.0)
    dark = np.array([0.1, 0.09, 0.08]) * rng.uniform(0.6, 1.5)
    return _mix(clean, dark, alpha), alpha > 0


_STAIN_COLOURS = ((0.45, 0.3, 0.15), (0.55, 0.2, 0.22), (0.35, 0.35, 0.4))


def _weave_stain(scene: Scene, clean: Array, geo: Scene, rng: np.random.Generator) -> tuple[Array, Array]:
    size, k = scene["size"], scene["size"] / 256
    x, y = _pixel_grid(size)
    radius = rng.uniform(7, 20) * k
    centre = rng.uniform(radius + 4, size - radius - 4, 2)
    blob = _blob_alpha(x, y, tuple(centre), radius, rng, 0.3, 0.3 * radius)
    colour = np.array(_STAIN_COLOURS[rng.integers(len(_STAIN_COLOURS))])
    alpha = blob * rng.uniform(0.35, 0.65)
    return _mix(clean, clean * colour / 0.75, alpha), alpha > 0  # tinted darkening, texture shows through


_THREAD_COLOURS = ((0.3, 0.2, 0.12), (0.15, 0.18, 0.35), (0.95, 0.94, 0.9))


def _weave_thread(scene: Scene, clean: Array, geo: Scene, rng: np.random.Generator) -> tuple[Array, Array]:
    size, k = scene["size"], scene["size"] / 256
    x, y = _pixel_grid(size)
    start = rng.uniform(40 * k, size - 40 * k, 2)
    curve = _random_curve(rng, start, rng.uniform(30, 90) * k, 0.35)
    width = rng.uniform(1.2, 2.6) * k
    distance = _curve_distance(x, y, *curve, reach=width + 2)
    alpha = _line_alpha(distance, width)
    roundness = 0.8 + 0.2 * np.clip(1 - distance / (width / 2 + 0.5), 0, 1)
    colour = np.array(_THREAD_COLOURS[rng.integers(len(_THREAD_COLOURS))])
    return _mix(clean, roundness[..., None] * colour, alpha), alpha > 0


def _weave_fold(scene: Scene, clean: Array, geo: Scene, rng: np.random.Generator) -> tuple[Array, Array]:
    size, k = scene["size"], scene["size"] / 256
    x, y = _pixel_grid(size)
    centre = rng.uniform(40 * k, size - 40 * k, 2)
    angle = rng.uniform(0, np.pi)
    along, across = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    half_length, half_width = rng.uniform(25, 70) * k, rng.uniform(3, 7) * k
    t = (x - centre[0]) * along[0] + (y - centre[1]) * along[1]
    n = ((x - centre[0]) * across[0] + (y - centre[1]) * across[1]) / half_width
    taper = np.clip(1 - (np.abs(t) / half_length) ** 4, 0, 1)
    profile = np.clip(1 - n**2, 0, 1) * taper
    # The fabric is pushed across the crease; in thread coordinates that is a shift along `across`.
    push = rng.uniform(0.3, 0.6) * profile * np.sign(n) / scene["period"] * half_width
    c, s = np.cos(scene["angle"]), np.sin(scene["angle"])
    displace = np.stack([push * (c * across[0] + s * across[1]), push * (-s * across[0] + c * across[1])])
    shade = 1 + rng.uniform(0.25, 0.45) * n * profile - 0.3 * np.exp(-((n * half_width) ** 2)) * taper
    image, _ = _weave_render(scene, displace, shade)
    return image, profile > 0


# --------------------------------------------------------------------------------------------
# Category registry, per-sample rendering, dataset writing
# --------------------------------------------------------------------------------------------
DefectFn = Callable[[Scene, Array, Scene, np.random.Generator], tuple[Array, Array]]


@dataclass(frozen=True)
class _Category:
    scene: Callable[[np.random.Generator, int], Scene]
    render: Callable[[Scene], tuple[Array, Scene]]
    defects: dict[str, DefectFn]
    sensor_noise: float


_CATEGORIES: dict[str, _Category] = {
    "bracket": _Category(
        _bracket_scene,
        _bracket_render,
        {
            "scratch": _bracket_scratch,
            "spot": _bracket_spot,
            "cut": _bracket_cut,
            "contamination": _bracket_contamination,
        },
        sensor_noise=0.008,
    ),
    "weave": _Category(
        _weave_scene,
        _weave_render,
        {"hole": _weave_hole, "stain": _weave_stain, "thread": _weave_thread, "fold": _weave_fold},
        sensor_noise=0.01,
    ),
}

#: Demo categories (object first, then texture).
DEMO_CATEGORIES: tuple[str, ...] = tuple(_CATEGORIES)
#: Defect types of each demo category.
DEMO_DEFECT_TYPES: dict[str, tuple[str, ...]] = {name: tuple(cat.defects) for name, cat in _CATEGORIES.items()}


@dataclass
class DemoSample:
    """One rendered demo image.

    Attributes:
        image: ``[S, S, 3]`` uint8, the image as written.
        clean: ``[S, S, 3]`` uint8, the same scene without the defect (== ``image`` for good).
        mask: ``[S, S]`` bool, the defect mask (all False for good).
    """

    image: Array
    clean: Array
    mask: Array


def _to_uint8(image: Array) -> Array:
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _defect_mask(clean: Array, defect: Array, region: Array) -> Array:
    """Pixels inside ``region`` that changed noticeably, with small gaps closed and holes filled."""
    changed = (np.abs(defect.astype(np.int16) - clean.astype(np.int16)).max(axis=2) >= MASK_THRESHOLD) & region
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(changed, np.ones((3, 3), bool))) & region
    labels, count = ndimage.label(mask)
    if count > 1:  # drop isolated specks of a few pixels (e.g. where a faint stain edge crosses a highlight)
        sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
        mask = np.isin(labels, 1 + np.nonzero(sizes >= 4)[0])
    return mask


def render_sample(category: str, seed: int, split: str, defect_type: str, index: int, size: int = 256) -> DemoSample:
    """Render one demo image deterministically.

    Args:
        category: one of ``DEMO_CATEGORIES``.
        seed: dataset seed.
        split: ``"train"`` or ``"test"`` (different random streams).
        defect_type: ``"good"`` or one of ``DEMO_DEFECT_TYPES[category]``.
        index: image number within ``(split, defect_type)``.
        size: output side length in pixels.
    """
    if category not in _CATEGORIES:
        raise ValueError(f"Unknown demo category {category!r}; choose from {list(DEMO_CATEGORIES)}")
    cat = _CATEGORIES[category]
    if defect_type != "good" and defect_type not in cat.defects:
        raise ValueError(f"Unknown defect type {defect_type!r} for {category}; choose from {list(cat.defects)}")
    key = [seed, _stable_id(category), _stable_id(split), _stable_id(defect_type), index]
    scene_rng, defect_rng = np.random.default_rng([*key, 0]), np.random.default_rng([*key, 1])
    scene = cat.scene(scene_rng, size)
    noise = scene_rng.normal(0.0, cat.sensor_noise, (size, size, 3)).astype(np.float32)
    clean_float, geometry = cat.render(scene)
    clean = _to_uint8(clean_float + noise)
    if defect_type == "good":
        return DemoSample(clean, clean, np.zeros((size, size), dtype=bool))
    margin = round(_DEFECT_MARGIN * size)
    border = np.ones((size, size), dtype=bool)
    border[margin:-margin, margin:-margin] = False
    # Redraw defects that are too faint to be visible or reach into the border (lost by cropping).
    for _ in range(50):
        defect_float, region = cat.defects[defect_type](scene, clean_float, geometry, defect_rng)
        defect = _to_uint8(defect_float + noise)
        mask = _defect_mask(clean, defect, region)
        if mask.sum() >= _MIN_MASK_PIXELS * (size / 256) ** 2 and not (mask & border).any():
            return DemoSample(np.where(mask[..., None], defect, clean), clean, mask)
    raise RuntimeError(f"could not draw a visible {defect_type!r} defect for {category} #{index}")  # pragma: no cover


def _settings(seed: int, n_train: int, n_test_good: int, n_test_defect_per_type: int, size: int) -> dict[str, int]:
    return {
        "version": DEMO_VERSION,
        "seed": seed,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_defect_per_type": n_test_defect_per_type,
        "size": size,
    }


def _save_png(array: Array, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Level 1: the noisy images barely compress anyway, and it is ~4x faster than the default.
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _expected_files(category: str, settings: dict[str, int]) -> list[Path]:
    """Every file :func:`_write_category` writes, relative to the category folder."""
    files = [Path("train", "good", f"{i:03d}.png") for i in range(settings["n_train"])]
    files += [Path("test", "good", f"{i:03d}.png") for i in range(settings["n_test_good"])]
    for defect in DEMO_DEFECT_TYPES[category]:
        for i in range(settings["n_test_defect_per_type"]):
            files += [Path("test", defect, f"{i:03d}.png"), Path("ground_truth", defect, f"{i:03d}_mask.png")]
    return files


def _write_category(folder: Path, category: str, settings: dict[str, int]) -> None:
    seed, size = settings["seed"], settings["size"]
    jobs = [("train", "good", settings["n_train"]), ("test", "good", settings["n_test_good"])]
    jobs += [("test", defect, settings["n_test_defect_per_type"]) for defect in DEMO_DEFECT_TYPES[category]]
    for split, defect_type, count in jobs:
        for i in range(count):
            sample = render_sample(category, seed, split, defect_type, i, size)
            _save_png(sample.image, folder / split / defect_type / f"{i:03d}.png")
            if defect_type != "good":
                mask = sample.mask.astype(np.uint8) * 255
                _save_png(mask, folder / "ground_truth" / defect_type / f"{i:03d}_mask.png")
    # Written last: a folder with a marker is complete.
    (folder / MARKER_NAME).write_text(json.dumps({"category": category, **settings}, indent=2, sort_keys=True))


def read_demo_marker(folder: str | Path) -> dict[str, Any] | None:
    """The marker of a generated demo category folder (its generation arguments), or None."""
    try:
        marker = json.loads((Path(folder) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def marker_arguments(marker: dict[str, Any]) -> dict[str, int]:
    """The :func:`generate_demo` keyword arguments that wrote a category with this marker."""
    keys = ("seed", "n_train", "n_test_good", "n_test_defect_per_type", "size")
    return {k: int(marker[k]) for k in keys if k in marker}


def is_complete_demo(folder: str | Path) -> bool:
    """Whether ``folder`` is a generated demo category with every file its marker promises.

    Reads only (no lock): a category is renamed into place whole, so a complete one stays so.
    """
    marker = read_demo_marker(folder)
    if marker is None or marker.get("category") not in _CATEGORIES:
        return False
    try:
        settings = _settings(**marker_arguments(marker))
    except TypeError:  # a marker without some argument: not one this version wrote
        return False
    return not _missing_files(Path(folder), marker["category"], settings)


def lock_path(root: str | Path, category: str) -> Path:
    """The lock file guarding the generation of ``<root>/<category>`` (it stays on disk, empty)."""
    return Path(root) / f".{category}.lock"


@contextlib.contextmanager
def _category_lock(root: Path, category: str) -> Iterator[None]:
    """Hold the category's lock; another process generating it makes this one wait.

    ``filelock`` (a torch dependency) takes an OS lock (``flock``; Windows: ``msvcrt``) on
    the lock file, which the OS releases when its holder dies: a crashed generation never
    leaves a stale lock behind. Where the file system refuses locks, generation goes on
    without one: the atomic rename still keeps the category whole.
    """
    lock = FileLock(str(lock_path(root, category)))
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("another process is generating %s; waiting for it", root / category)
            lock.acquire()
    except OSError as error:
        log.warning("cannot lock %s (%s); going on without a lock", lock_path(root, category), error)
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _temp_folder(root: Path, category: str, kind: str) -> Path:
    """A new private folder ``<root>/.<category>.<kind>-<host>-<pid>-<random>``.

    Host and process id in the name tell :func:`_remove_leftovers` whose folder it is.
    """
    owner = f"{socket.gethostname()}-{os.getpid()}-"
    folder = Path(tempfile.mkdtemp(prefix=f".{category}.{kind}-{owner}", dir=root))
    folder.chmod(0o755)  # mkdtemp makes it private; the dataset is not
    return folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive but someone else's, or no way to ask: keep its folder
        return True
    return True


def _remove_leftovers(root: Path, category: str) -> None:
    """Delete the temporary folders of generations whose process died (on this host)."""
    host = socket.gethostname()
    for kind in ("tmp", "old"):
        prefix = f".{category}.{kind}-"
        for leftover in root.glob(prefix + "*"):
            _remove_if_orphaned(leftover, leftover.name[len(prefix) :], host)


def _remove_if_orphaned(leftover: Path, owner: str, host: str) -> None:
    """``owner`` is ``<host>-<pid>-<random>`` (:func:`_temp_folder`)."""
    leftover_host, _, rest = owner.rpartition("-")[0].rpartition("-")
    if leftover_host != host or not rest.isdigit() or _pid_alive(int(rest)):
        return  # another host's, or a generation still running
    log.warning("removing %s, left by an interrupted demo generation", leftover)
    shutil.rmtree(leftover, ignore_errors=True)


def _missing_files(target: Path, category: str, settings: dict[str, int]) -> list[Path]:
    return [f for f in _expected_files(category, settings) if not (target / f).is_file()]


def _generate_category(root: Path, category: str, settings: dict[str, int], force: bool) -> None:
    """Write ``<root>/<category>`` unless it is already there, complete and as asked (lock held)."""
    target = root / category
    _remove_leftovers(root, category)
    marker = read_demo_marker(target)
    if target.exists():
        if marker is None:
            raise DataError(f"{target} exists but is not a generated demo category; refusing to overwrite it")
        if not force and marker == {"category": category, **settings}:
            missing = _missing_files(target, category, settings)
            if not missing:
                return
            log.warning("%s misses %d file(s) (e.g. %s); generating it again", target, len(missing), missing[0])
    staging = _temp_folder(root, category, "tmp")
    try:
        _write_category(staging, category, settings)
        if target.exists():
            stale = _temp_folder(root, category, "old")
            target.rename(stale / category)
            staging.rename(target)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            try:
                staging.rename(target)
            except OSError:
                # Only without a working lock (some network file systems): another process
                # renamed its copy first. Same arguments, same bytes: use that one.
                if read_demo_marker(target) != {"category": category, **settings}:
                    raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def generate_demo(
    root: str | Path,
    categories: Sequence[str] | None = None,
    seed: int = 0,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_defect_per_type: int = 8,
    size: int = 256,
    force: bool = False,
) -> Path:
    """Write the demo dataset as ``<root>/<category>/...`` (MVTec layout) and return ``root``.

    Idempotent: a category whose marker (``<root>/<category>/.fapm_demo.json``) matches the
    arguments and whose files are all there is left untouched (unless ``force``); one with
    missing files is generated again. An existing category folder without a marker is
    never overwritten (``DataError``).

    Safe when several processes call it at once, e.g. the jobs of a parallel sweep: each
    category is generated under a lock (``<root>/.<category>.lock``), so one process writes
    it while the others wait, then find it complete and use it. It is written to a temporary
    folder renamed into place, so a generation that crashes never leaves a partial category:
    the next call generates it again and removes the dead process's temporary folder.
    """
    names = list(DEMO_CATEGORIES if categories is None else categories)
    unknown = [c for c in names if c not in _CATEGORIES]
    if unknown:
        raise ValueError(f"Unknown demo categories {unknown}; choose from {list(DEMO_CATEGORIES)}")
    if min(n_train, n_test_good, n_test_defect_per_type) < 1 or size < 64:
        raise ValueError("demo counts must be >= 1 and size >= 64")
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    settings = _settings(seed, n_train, n_test_good, n_test_defect_per_type, size)
    for category in names:
        with _category_lock(root, category):
            _generate_category(root, category, settings, force)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: ``python -m fapm.data.demo --root DIR [--seed N]``."""
    parser = argparse.ArgumentParser(prog="python -m fapm.data.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="output folder (one sub-folder per category)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--categories", nargs="+", choices=DEMO_CATEGORIES, default=None)
    parser.add_argument("--n-train", type=int, default=60)
    parser.add_argument("--n-test-good", type=int, default=20)
    parser.add_argument("--n-test-defect-per-type", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--force", action="store_true", help="regenerate even if the marker matches")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    root = generate_demo(
        args.root, args.categories, args.seed, args.n_train, args.n_test_good,
        args.n_test_defect_per_type, args.size, args.force,
    )  # fmt: skip
    for category in args.categories or DEMO_CATEGORIES:
        types = ", ".join(DEMO_DEFECT_TYPES[category])
        print(f"{root / category}: defect types {types}")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
