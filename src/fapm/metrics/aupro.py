"""Pixel-level metrics from one exact threshold sweep: AUPRO (MVTec AD protocol), AUROC, F1-max.

MVTec AD's PRO (per-region overlap) curve: every connected component of every ground-truth
mask is one region; at a threshold ``t`` a region's overlap is the fraction of its pixels
with score >= t, and PRO(t) is the mean overlap over all regions of all images. It is
plotted against the false-positive rate over all normal pixels (mask == 0) of all test
images, integrated with the trapezoid rule from FPR 0 to ``max_fpr`` (0.3; the curve is
linearly interpolated at exactly ``max_fpr``) and divided by ``max_fpr``, so a perfect
detector scores 1.0. Regions use 8-connectivity, as MVTec's reference evaluation
(``scipy.ndimage.label`` with a full 3x3 structuring element).

Method (exact, no binning). The trick of MVTec's reference code: give every anomalous pixel
the weight ``1 / size(its region)``; sweeping pixels by decreasing score, the running sum of
weights divided by the number of regions *is* PRO, and the running count of normal pixels
divided by their total is the FPR. So a single sort of all pixels yields the whole curve,
plus pixel AUROC and F1-max from the same running counts. Each pixel is packed into one
``uint64`` (high 32 bits: an order-preserving integer image of its float32 score; low 32
bits: its global region id, 0 = normal) and the array is sorted in place; the sweep then
runs over it in chunks, so the only full-size temporary is that key array.

Memory: 8 bytes per pixel for the keys, ~25 bytes per pixel of the largest input batch
while packing, and ~125 bytes per pixel of a chunk (~130 MB) while sweeping: 500 maps of
224x224 (25 M pixels) need ~350 MB on top of the caller's maps. Scores are compared at
float32 precision (float64 inputs are rounded to float32 first).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

#: Default upper FPR limit of the AUPRO integral (MVTec AD protocol).
DEFAULT_MAX_FPR = 0.3
#: Pixels per sweep step; bounds the sweep's temporaries (~125 bytes per pixel of a chunk,
#: so ~130 MB at this size).
DEFAULT_CHUNK_SIZE = 1 << 20

MapsLike = Tensor | np.ndarray | Sequence[Tensor | np.ndarray]

_LOW32 = np.uint64(0xFFFFFFFF)
_SIGN32 = np.uint32(0x80000000)


@dataclass
class PixelSweepResult:
    """Everything one pixel sweep yields. Undefined values are NaN.

    Attributes:
        auroc: pixel AUROC over all pixels pooled (NaN if all pixels are of one class).
        aupro: normalised area under the PRO curve up to ``max_fpr`` (NaN if there is no
            anomalous region, no normal pixel, or ``max_fpr`` was None).
        f1_max: best pixel F1 over thresholds "anomalous iff score >= t" (NaN if no anomalous pixel).
        f1_threshold: the ``t`` of ``f1_max``, in score units (float32-rounded).
        fpr, pro: ``[K]`` PRO curve (starts at (0, 0), non-decreasing), only when asked for;
            cut at ``max_fpr`` (last point interpolated there) when ``max_fpr`` is set.
        num_regions: number of ground-truth connected components.
        num_normal_pixels, num_anomalous_pixels: pixel counts of mask == 0 / mask == 1.
    """

    auroc: float
    aupro: float
    f1_max: float
    f1_threshold: float
    fpr: np.ndarray | None
    pro: np.ndarray | None
    num_regions: int
    num_normal_pixels: int
    num_anomalous_pixels: int


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of binary masks, 8-connectivity within each image.

    Args:
        masks: ``[N, H, W]`` bool (or ``[H, W]``).

    Returns:
        ``(labels, n)``: int32 labels of the same shape, 0 = background and 1..n the regions,
        numbered across all images (a region never spans two images).
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim == 2:
        structure = np.ones((3, 3), dtype=bool)
    elif masks.ndim == 3:
        # Full 3x3 in the image plane, nothing across the batch axis.
        structure = np.zeros((3, 3, 3), dtype=bool)
        structure[1] = True
    else:
        raise ValueError(f"masks must be [H, W] or [N, H, W], got shape {masks.shape}")
    labels, n = ndimage.label(masks, structure=structure, output=np.int32)
    return labels, int(n)


def _as_batches(x: MapsLike, dtype: type, what: str) -> list[np.ndarray]:
    """Normalise an array or a sequence of arrays to a list of ``[B, H, W]`` numpy arrays."""
    items = [x] if isinstance(x, (Tensor, np.ndarray)) else list(x)
    out = []
    for item in items:
        if isinstance(item, Tensor):
            item = item.detach().to("cpu")
            item = item.float() if item.is_floating_point() and item.dtype != torch.float64 else item
            item = item.numpy()
        arr = np.asarray(item)
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        elif arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"{what} must be [H, W], [B, H, W] or [B, 1, H, W], got shape {arr.shape}")
        if dtype is bool:
            out.append(arr if arr.dtype == bool else arr > 0.5)
        else:
            out.append(arr.astype(dtype, copy=False))
    return out


def _float32_to_key(x: np.ndarray) -> np.ndarray:
    """Order-preserving map float32 -> uint32 (a < b iff key(a) < key(b); no NaN allowed)."""
    u = np.add(x, np.float32(0.0), dtype=np.float32).view(np.uint32)  # + 0.0 turns -0.0 into +0.0
    negative = u >= _SIGN32
    return np.where(negative, ~u, u | _SIGN32)


def _key_to_float32(key: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_float32_to_key`."""
    key = key.astype(np.uint32)
    return np.where(key >= _SIGN32, key ^ _SIGN32, ~key).astype(np.uint32).view(np.float32)


def _pack_keys(
    maps: list[np.ndarray], masks: list[np.ndarray], valid: list[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Sorted ``uint64`` keys (score key << 32 | global region id) and the per-region weights.

    ``valid``: per batch, the pixels that count (e.g. not letterbox padding); None = all.
    Defect pixels outside them are left out of their regions too.

    Returns:
        ``(keys [P] sorted ascending, weight [R + 1] float64 with weight[0] = 0 and
        weight[r] = 1 / size(r), R = number of regions)``.
    """
    if valid is not None and len(valid) != len(maps):
        raise ValueError(f"{len(maps)} anomaly-map batches but {len(valid)} valid-pixel batches")
    total = sum(m.size for m in maps) if valid is None else sum(int(np.count_nonzero(v)) for v in valid)
    keys = np.empty(total, dtype=np.uint64)
    inv_sizes = [np.zeros(1)]
    pos = 0
    n_regions = 0
    for i, (amap, mask) in enumerate(zip(maps, masks, strict=True)):
        if amap.shape != mask.shape:
            raise ValueError(f"anomaly map shape {amap.shape} != mask shape {mask.shape}")
        if np.isnan(amap).any():
            raise ValueError("anomaly maps contain NaN")
        keep = None if valid is None else valid[i].reshape(-1)
        if keep is not None and keep.size != amap.size:
            raise ValueError(f"valid-pixel shape {valid[i].shape} != anomaly map shape {amap.shape}")
        if keep is not None:
            mask = mask & valid[i]
        regions, n = label_regions(mask)
        flat_keys = _float32_to_key(amap).reshape(-1)
        region_ids = regions.reshape(-1).astype(np.uint64)
        if keep is not None:
            flat_keys, region_ids = flat_keys[keep], region_ids[keep]
        seg = keys[pos : pos + flat_keys.size]
        seg[:] = flat_keys
        seg <<= np.uint64(32)
        np.add(region_ids, np.uint64(n_regions), out=region_ids, where=region_ids > 0)
        seg |= region_ids
        if n:
            inv_sizes.append(1.0 / np.bincount(regions.reshape(-1), minlength=n + 1)[1:])
        n_regions += n
        pos += flat_keys.size
    keys.sort()
    return keys, np.concatenate(inv_sizes), n_regions


def _sweep(keys: np.ndarray, chunk_size: int) -> Iterator[tuple[np.ndarray, ...]]:
    """Walk sorted keys from the highest score down, one chunk at a time.

    Yields ``(score_key, tp, n_pred, region, ends)`` per chunk. ``region [c]`` (uint64) and
    ``ends [c]`` (bool) cover every pixel of the chunk in decreasing score order; ``ends``
    marks the last pixel of each distinct score ``t``. ``score_key [k]``, ``tp [k]`` and
    ``n_pred [k]`` (int64) are given at those k points only: the key of ``t`` and the number
    of anomalous / all pixels with score >= t.
    """
    n = keys.size
    tp_carry = 0
    for end in range(n, 0, -chunk_size):
        start = max(end - chunk_size, 0)
        chunk = keys[start:end][::-1]
        score_key = chunk >> np.uint64(32)
        region = chunk & _LOW32
        tp = np.cumsum(region != 0, dtype=np.int64)
        tp += tp_carry
        tp_carry = int(tp[-1])
        n_pred = np.arange(n - end + 1, n - start + 1, dtype=np.int64)
        ends = np.empty(chunk.size, dtype=bool)
        np.not_equal(score_key[:-1], score_key[1:], out=ends[:-1])
        # The chunk's last pixel closes its threshold unless the next chunk continues the tie.
        ends[-1] = start == 0 or (keys[start - 1] >> np.uint64(32)) != score_key[-1]
        yield score_key[ends], tp[ends], n_pred[ends], region, ends


def _trapezoid_until(
    x: np.ndarray, y: np.ndarray, x_max: float
) -> tuple[float, bool, np.ndarray, np.ndarray]:
    """Trapezoid area of the polyline ``x, y`` (x non-decreasing) on ``[x[0], x_max]``.

    Returns ``(area, reached, x_kept, y_kept)``: ``reached`` is True when the polyline passes
    ``x_max``, in which case the kept points end with the interpolated point at ``x_max``.
    """
    k = int(np.searchsorted(x, x_max, side="right"))
    xs, ys = x[:k], y[:k]
    area = float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1])) / 2.0)
    if k == x.size:
        return area, False, xs, ys
    x0, y0 = xs[-1], ys[-1]
    if x0 < x_max:
        y_at = y0 + (y[k] - y0) * (x_max - x0) / (x[k] - x0)
        area += (x_max - x0) * (y_at + y0) / 2.0
        xs, ys = np.append(xs, x_max), np.append(ys, y_at)
    return area, True, xs, ys


def pixel_sweep(
    anomaly_maps: MapsLike,
    masks: MapsLike,
    max_fpr: float | None = DEFAULT_MAX_FPR,
    return_curve: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    valid: MapsLike | None = None,
) -> PixelSweepResult:
    """Pixel AUROC, AUPRO and F1-max (exact) from a single sort of all pixels.

    Args:
        anomaly_maps: ``[N, H, W]`` (or ``[N, 1, H, W]``) scores, or a sequence of such
            batches (sizes may differ between batches). No NaN.
        masks: ground truth of the same shape(s); a pixel is anomalous iff mask > 0.5.
        max_fpr: AUPRO integration limit in (0, 1]; None skips AUPRO (NaN) and keeps the full curve.
        return_curve: also return the PRO curve (``fpr``, ``pro``; up to ``max_fpr`` if set).
        chunk_size: pixels per sweep step (memory/speed knob; the result does not depend on it).
        valid: the pixels that count, same shape(s) as the maps (e.g. not letterbox padding);
            None = every pixel.
    """
    if max_fpr is not None and not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    maps_np = _as_batches(anomaly_maps, np.float32, "anomaly_maps")
    masks_np = _as_batches(masks, bool, "masks")
    if len(maps_np) != len(masks_np):
        raise ValueError(f"{len(maps_np)} anomaly-map batches but {len(masks_np)} mask batches")
    valid_np = None if valid is None else _as_batches(valid, bool, "valid")
    keys, weights, n_regions = _pack_keys(maps_np, masks_np, valid_np)
    if valid_np is None:
        n_pos = sum(int(np.count_nonzero(m)) for m in masks_np)
    else:
        n_pos = sum(int(np.count_nonzero(m & v)) for m, v in zip(masks_np, valid_np))
    n_neg = keys.size - n_pos

    want_pro = n_regions > 0 and n_neg > 0 and (max_fpr is not None or return_curve)
    auc2 = 0  # twice the ROC area in units of (normal pixels x anomalous pixels)
    fp_prev, tp_prev = 0, 0
    best_f1, best_key = -1.0, None
    area, pro_done = 0.0, not want_pro
    curve_x, curve_y = [np.zeros(1)], [np.zeros(1)]
    limit = math.inf if max_fpr is None else max_fpr

    w_carry = 0.0  # running sum of region weights = PRO x number of regions
    for score_key, tp, n_pred, region, ends in _sweep(keys, chunk_size):
        wsum = None
        if not pro_done:
            running = np.cumsum(weights[region])
            running += w_carry
            w_carry = float(running[-1])
            wsum = running[ends]
        if score_key.size == 0:
            continue
        fp = n_pred - tp
        auc2 += int(np.dot(np.diff(fp, prepend=fp_prev), tp + np.append(tp_prev, tp[:-1])))
        fp_prev, tp_prev = int(fp[-1]), int(tp[-1])
        if n_pos:
            f1 = 2.0 * tp / (n_pred + n_pos)  # 2TP / (2TP + FP + FN)
            i = int(np.argmax(f1))  # first maximum = highest threshold
            if f1[i] > best_f1:
                best_f1, best_key = float(f1[i]), score_key[i]
        if wsum is not None:
            # Prepend the previous chunk's last point so segments across chunks are counted.
            x = np.concatenate((curve_x[-1][-1:], fp / n_neg))
            y = np.concatenate((curve_y[-1][-1:], np.minimum(wsum / n_regions, 1.0)))
            piece, pro_done, xs, ys = _trapezoid_until(x, y, limit)
            area += piece
            if return_curve:
                curve_x.append(xs[1:])
                curve_y.append(ys[1:])
            else:
                curve_x[-1], curve_y[-1] = xs[-1:], ys[-1:]

    defined = n_pos > 0 and n_neg > 0
    return PixelSweepResult(
        auroc=auc2 / (2.0 * n_pos * n_neg) if defined else math.nan,
        aupro=float(area / max_fpr) if want_pro and max_fpr is not None else math.nan,
        f1_max=best_f1 if n_pos else math.nan,
        f1_threshold=float(_key_to_float32(np.asarray([best_key]))[0]) if n_pos else math.nan,
        fpr=np.concatenate(curve_x) if return_curve and want_pro else None,
        pro=np.concatenate(curve_y) if return_curve and want_pro else None,
        num_regions=n_regions,
        num_normal_pixels=n_neg,
        num_anomalous_pixels=n_pos,
    )


def pro_curve(
    anomaly_maps: MapsLike, masks: MapsLike, max_fpr: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The PRO curve for plotting: ``(fpr [K], pro [K])`` float64, from (0, 0) upwards.

    One point per distinct score (exact), so K can be as large as the number of pixels;
    ``max_fpr`` cuts it there (with an interpolated end point). Empty arrays if PRO is
    undefined (no anomalous region or no normal pixel).
    """
    res = pixel_sweep(anomaly_maps, masks, max_fpr=max_fpr, return_curve=True)
    if res.fpr is None or res.pro is None:
        return np.zeros(0), np.zeros(0)
    return res.fpr, res.pro


def aupro(anomaly_maps: MapsLike, masks: MapsLike, max_fpr: float = DEFAULT_MAX_FPR) -> float:
    """Normalised area under the PRO curve up to ``max_fpr`` (1.0 = perfect); NaN if undefined.

    Args:
        anomaly_maps: ``[N, H, W]`` scores (or a sequence of batches).
        masks: ``[N, H, W]`` ground truth, anomalous iff > 0.5.
        max_fpr: integration limit (MVTec AD: 0.3).
    """
    return pixel_sweep(anomaly_maps, masks, max_fpr=max_fpr).aupro
