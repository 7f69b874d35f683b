"""Figures of a test result and of a memory bank (matplotlib, Agg, no pyplot state).

Figures are built on :class:`matplotlib.figure.Figure` directly, so nothing is registered
with pyplot: no global figure list to leak, no GUI backend, safe in worker threads.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

ArrayLike = Tensor | np.ndarray | Sequence[float]

#: Colour map of anomaly heatmaps.
HEATMAP_CMAP = "jet"


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def new_figure(width: float, height: float) -> Figure:
    """A figure with an Agg canvas attached (so it can be saved and rendered without pyplot)."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``figure`` as PNG (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    return path


def figure_png(figure: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (e.g. for ``IPython.display.Image(data=...)``)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=dpi, format="png")
    return buffer.getvalue()


def sample_figure(
    image: ArrayLike,
    mask: ArrayLike | None,
    anomaly_map: ArrayLike,
    threshold: float | None,
    score: float,
    title: str = "",
    value_range: tuple[float, float] | None = None,
    image_threshold: float | None = None,
) -> Figure:
    """Four panels: input, ground truth, heatmap overlay, predicted mask at ``threshold``.

    Args:
        image: ``[3, H, W]`` denormalised image in [0, 1].
        mask: ``[H, W]`` ground truth (> 0.5 = defect), or None when unknown.
        anomaly_map: ``[H, W]`` anomaly scores.
        threshold: map value from which a pixel is predicted anomalous (None: no mask panel content).
        score: the image's anomaly score (shown in the title).
        title: text before the score (e.g. defect type and file name).
        value_range: ``(vmin, vmax)`` of the heatmap colours; default the map's own range.
            Give the same range to all images of a test set to make them comparable.
        image_threshold: image-score threshold; when given, the title says the decision.
    """
    rgb = np.clip(np.transpose(_np(image), (1, 2, 0)), 0.0, 1.0)
    amap = _np(anomaly_map)
    if rgb.shape[:2] != amap.shape:
        raise ValueError(f"image {rgb.shape[:2]} and anomaly map {amap.shape} sizes differ")
    vmin, vmax = value_range if value_range is not None else (float(amap.min()), float(amap.max()))
    figure = new_figure(13.0, 3.6)
    axes = figure.subplots(1, 4)

    axes[0].imshow(rgb)
    axes[0].set_title("input")

    if mask is None:
        axes[1].imshow(np.zeros_like(rgb[..., 0]), cmap="gray", vmin=0, vmax=1)
        axes[1].text(0.5, 0.5, "no mask", color="white", ha="center", va="center", transform=axes[1].transAxes)
    else:
        axes[1].imshow(_np(mask) > 0.5, cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("ground truth")

    axes[2].imshow(rgb)
    shown = axes[2].imshow(amap, cmap=HEATMAP_CMAP, alpha=0.5, vmin=vmin, vmax=vmax)
    figure.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.02)
    axes[2].set_title("anomaly map")

    axes[3].imshow(rgb)
    if threshold is not None and math.isfinite(threshold):
        predicted = amap >= threshold
        overlay = np.zeros((*amap.shape, 4), dtype=np.float32)
        overlay[predicted] = (1.0, 0.0, 0.0, 0.45)
        axes[3].imshow(overlay)
        if mask is not None and (_np(mask) > 0.5).any():
            axes[3].contour(_np(mask) > 0.5, levels=[0.5], colors="lime", linewidths=1.0)
        axes[3].set_title(f"predicted (map ≥ {threshold:.3g})")
    else:
        axes[3].set_title("predicted (no threshold)")

    for ax in axes:
        ax.set_axis_off()
    decision = ""
    if image_threshold is not None and math.isfinite(image_threshold):
        decision = "  →  anomalous" if score >= image_threshold else "  →  normal"
    figure.suptitle(f"{title}  score {score:.4g}{decision}".strip())
    return figure


def _annotate(ax: object, values: np.ndarray, fmt: str, color_of: np.ndarray) -> None:
    gh, gw = values.shape
    size = 8 if max(gh, gw) <= 7 else 6
    for y in range(gh):
        for x in range(gw):
            v = values[y, x]
            text = "n/a" if not np.isfinite(v) else format(v, fmt)
            ax.text(x, y, text, ha="center", va="center", fontsize=size, color=color_of[y, x])  # type: ignore[attr-defined]


def _text_colours(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.full(values.shape, "black", dtype=object)
    mid = (finite.min() + finite.max()) / 2
    return np.where(np.nan_to_num(values, nan=mid) > mid, "black", "white").astype(object)


def memory_figure(
    sizes: Sequence[ArrayLike],
    d_max: Sequence[ArrayLike],
    grid: tuple[int, int],
    stream_names: Sequence[str] | None = None,
    d_th: float | None = None,
) -> Figure:
    """Per stream (row): memory size per region and ``d_imax`` per region on the patch grid.

    Args:
        sizes: per stream, ``[R]`` vectors kept in each region's memory (``R = gh·gw``).
        d_max: per stream, ``[R]`` the adaptive rule's ``d_imax`` (NaN where not computed).
        grid: ``(gh, gw)``.
        stream_names: row labels (default ``stream 0``, ``stream 1``…).
        d_th: the rule's threshold, shown in the ``d_imax`` titles.
    """
    if len(sizes) != len(d_max) or not sizes:
        raise ValueError(f"need one sizes and one d_max per stream, got {len(sizes)} and {len(d_max)}")
    gh, gw = int(grid[0]), int(grid[1])
    names = list(stream_names) if stream_names is not None else [f"stream {i}" for i in range(len(sizes))]
    rows = len(sizes)
    cell = 0.55 if max(gh, gw) > 1 else 2.0
    figure = new_figure(2 * (gw * cell + 1.6), rows * (gh * cell + 0.9))
    axes = np.asarray(figure.subplots(rows, 2, squeeze=False))
    for row, (name, size, dmax) in enumerate(zip(names, sizes, d_max)):
        size_map = _np(size).reshape(gh, gw)
        d_map = _np(dmax).reshape(gh, gw)
        for col, (values, label, fmt, cmap) in enumerate(
            ((size_map, "memory size", ".0f", "viridis"), (d_map, "d_imax", ".2f", "magma"))
        ):
            ax = axes[row, col]
            finite = values[np.isfinite(values)]
            shown = ax.imshow(
                np.nan_to_num(values, nan=float(finite.min()) if finite.size else 0.0),
                cmap=cmap,
                vmin=float(finite.min()) if finite.size else 0.0,
                vmax=float(finite.max()) if finite.size else 1.0,
            )
            figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
            _annotate(ax, values, fmt, _text_colours(values))
            extra = ""
            if col == 0:
                extra = f" (total {int(np.nansum(values))})"
            elif d_th is not None:
                extra = f" (D_th {d_th:g})"
            ax.set_title(f"{name}: {label}{extra}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    figure.suptitle(f"memory per region on the {gh}×{gw} grid")
    return figure
