"""Exact image-level metrics on small score vectors: AUROC and F1-max.

Both are exact (no binning) and return NaN instead of raising when the metric is undefined.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc

ArrayLike = Tensor | np.ndarray | list[float] | list[int]


def _as_numpy(x: ArrayLike, dtype: type) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu")
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        x = x.numpy()
    return np.asarray(x, dtype=dtype).reshape(-1)


def _check_binary(scores: np.ndarray, labels: np.ndarray) -> None:
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in length: {scores.shape[0]} vs {labels.shape[0]}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (anomalous)")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Exact area under the ROC curve (ties count one half), via torchmetrics ``binary_auroc``.

    Args:
        scores: ``[N]`` anomaly scores, higher = more anomalous; any real range.
        labels: ``[N]`` 0 normal / 1 anomalous.

    Returns:
        AUROC in [0, 1], or NaN if ``labels`` has a single class (or is empty). Exact up to
        float32 rounding (~1e-7): torchmetrics divides the counts in float32.
    """
    s = _as_numpy(scores, np.float64)
    y = _as_numpy(labels, np.float64)
    _check_binary(s, y)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return math.nan
    # torchmetrics treats predictions outside [0, 1] as logits and applies a sigmoid, which
    # saturates (every float32 score above ~17 becomes 1.0 and they all tie). Dense ranks
    # scaled to [0, 1] keep the order and the ties exactly, so the AUROC is unchanged.
    _, ranks = np.unique(s, return_inverse=True)
    preds = torch.from_numpy(ranks.reshape(-1).astype(np.float64) / max(int(ranks.max()), 1))
    return float(binary_auroc(preds, torch.from_numpy(y.astype(np.int64)), thresholds=None))


def f1_max(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Best F1 over all thresholds ``t`` of the rule "anomalous iff score >= t".

    Every distinct score is a candidate threshold (exact, no binning). On ties in F1 the
    highest threshold wins.

    Args:
        scores: ``[N]`` anomaly scores, higher = more anomalous.
        labels: ``[N]`` 0 normal / 1 anomalous.

    Returns:
        ``(f1, threshold)``, the threshold in score units; ``(nan, nan)`` when there is no
        anomalous sample (F1 is 0 at every threshold, so no threshold is meaningful).
    """
    s = _as_numpy(scores, np.float64)
    y = _as_numpy(labels, np.float64)
    _check_binary(s, y)
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan, math.nan
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    tp = np.cumsum(y[order])
    n_pred = np.arange(1, s.size + 1)
    # Last index of each run of equal scores: the point where threshold = that score.
    ends = np.append(s_sorted[1:] != s_sorted[:-1], True)
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (#predicted positive + #positive)
    f1 = 2.0 * tp[ends] / (n_pred[ends] + n_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(s_sorted[ends][best])
