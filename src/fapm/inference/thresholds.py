"""Decision thresholds and score normalisation, decided at fit time and stored in the model file.

Two kinds of threshold per level (image score, anomaly-map pixel):

* ``quantile`` — from normal images only: the ``q``-quantile of the held-out normal images'
  image scores (image level) or of all their map pixels (pixel level). This is THE threshold:
  figures, ``metrics.json``, ``predict.py`` and the API all label with it (``auto``).
* ``f1`` — when the test set has labels (and masks): the F1-max thresholds of the test
  metrics (:mod:`fapm.metrics.names`). Fitted on the test set, so it is reported as a metric
  and used for labels only when asked for explicitly (``threshold=f1``).

A model fitted without held-out normal images (``data.normal_holdout=0``) has no quantile
threshold: it gives scores and maps but no labels, unless a threshold is passed.

Normalisation (anomalib's min–max style) maps the chosen threshold ``t`` to 0.5::

    normalised = clamp((x − t) / (max − min) + 0.5, 0, 1)

with ``min``/``max`` of the held-out normal values of that level. Without held-out
statistics the span is ``2·t``, i.e. ``normalised = clamp(x / 2t, 0, 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fapm.errors import FapmError
from fapm.data.sampling import drop_padding
from fapm.distributed import all_gather_rows
from fapm.metrics import names
from fapm.outputs import AnomalyOutput

LEVELS = ("image", "pixel")
CHOICES = ("auto", "quantile", "f1")


class ThresholdError(FapmError, ValueError):
    """A threshold that was asked for but is not in the model file, or a bad threshold setting."""

    hint = "see docs/predict.md for the threshold choices"


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class LevelThresholds:
    """Thresholds and normalisation statistics of one level (image scores or map pixels).

    Attributes:
        quantile: threshold = quantile of the held-out normal values (None = no hold-out).
        f1: F1-max threshold on the labelled test set (None = no labels / no test).
        min: smallest held-out normal value (normalisation).
        max: largest held-out normal value (normalisation).
    """

    quantile: float | None = None
    f1: float | None = None
    min: float | None = None
    max: float | None = None


@dataclass
class Thresholds:
    """Everything a model file knows about deciding "defective or not".

    Attributes:
        image: image-score thresholds and statistics.
        pixel: anomaly-map pixel thresholds and statistics.
        image_q: quantile level used for ``image.quantile`` (e.g. 0.995).
        pixel_q: quantile level used for ``pixel.quantile``.
        n_normal: held-out normal images the quantiles were computed from.
    """

    image: LevelThresholds = field(default_factory=LevelThresholds)
    pixel: LevelThresholds = field(default_factory=LevelThresholds)
    image_q: float | None = None
    pixel_q: float | None = None
    n_normal: int = 0

    # ------------------------------------------------------------------ choosing
    def level(self, level: str) -> LevelThresholds:
        if level not in LEVELS:
            raise ValueError(f"threshold level must be one of {LEVELS}, got {level!r}")
        return self.image if level == "image" else self.pixel

    def select(self, level: str, choice: str | float | int = "auto") -> float | None:
        """The threshold of ``level`` for a setting ``auto | quantile | f1 | <number>``.

        ``auto`` is the quantile threshold, or None when the model has none (no labels: the
        test set's F1 threshold is never taken silently).
        """
        value = parse_choice(choice, "threshold" if level == "image" else "pixel_threshold")
        if isinstance(value, float):
            return value
        stored = self.level(level)
        if value == "auto":
            return stored.quantile
        found = getattr(stored, value)
        if found is None:
            raise ThresholdError(
                f"the model file has no {level} threshold of kind {value!r} (has: {self.available(level) or 'none'}). "
                "Quantile thresholds need data.normal_holdout > 0 at training, F1 ones a labelled test set; "
                "or give a number."
            )
        return float(found)

    def available(self, level: str) -> list[str]:
        stored = self.level(level)
        return [k for k in ("quantile", "f1") if getattr(stored, k) is not None]

    def normalise(self, level: str, values: Tensor, threshold: float) -> Tensor:
        """``values`` (any shape) → ``[0, 1]`` with ``threshold`` ↦ 0.5 (this level's statistics)."""
        stored = self.level(level)
        return normalise(values, threshold, stored.min, stored.max)

    # ------------------------------------------------------------------ building
    def with_test_results(self, results: Mapping[str, Any]) -> Thresholds:
        """A copy with the F1-max thresholds of test ``results`` (keys of :mod:`fapm.metrics.names`)."""
        image = LevelThresholds(**asdict(self.image))
        pixel = LevelThresholds(**asdict(self.pixel))
        image.f1 = _finite_or_none(results.get(names.IMAGE_F1_THRESHOLD))
        pixel.f1 = _finite_or_none(results.get(names.PIXEL_F1_THRESHOLD))
        return Thresholds(image, pixel, self.image_q, self.pixel_q, self.n_normal)

    def as_metrics(self) -> dict[str, float]:
        """Flat ``threshold/<level>_<kind>`` entries for ``metrics.json`` (missing ones left out)."""
        out = {}
        for level in LEVELS:
            for kind in ("quantile", "f1"):
                value = getattr(self.level(level), kind)
                if value is not None:
                    out[f"threshold/{level}_{kind}"] = value
        return out

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict[str, Any]:
        """Plain floats/ints/None (storable with ``torch.save`` and read with ``weights_only``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Thresholds:
        """Inverse of :meth:`to_dict`; ``None``/``{}`` gives empty thresholds. Unknown keys are errors."""
        if not data:
            return cls()
        data = dict(data)
        unknown = set(data) - {"image", "pixel", "image_q", "pixel_q", "n_normal"}
        if unknown:
            raise ValueError(f"unknown threshold entries {sorted(unknown)}")
        levels = {}
        for level in LEVELS:
            entry = dict(data.get(level) or {})
            bad = set(entry) - {"quantile", "f1", "min", "max"}
            if bad:
                raise ValueError(f"unknown {level} threshold entries {sorted(bad)}")
            levels[level] = LevelThresholds(**{k: _finite_or_none(v) for k, v in entry.items()})
        return cls(
            levels["image"],
            levels["pixel"],
            _finite_or_none(data.get("image_q")),
            _finite_or_none(data.get("pixel_q")),
            int(data.get("n_normal") or 0),
        )


def parse_choice(choice: str | float | int, key: str = "threshold") -> str | float:
    """``auto | quantile | f1`` stay strings; numbers (or numeric strings) become finite floats.

    ``key`` names the setting in the error (``threshold``, ``pixel_threshold``). NaN and ±Inf
    are refused: a NaN threshold compares false with every score, i.e. "all good".
    """
    if isinstance(choice, bool):
        raise ThresholdError(f"{key} must be auto, quantile, f1 or a number, got {choice!r}")
    if isinstance(choice, (int, float)):
        value = float(choice)
    else:
        text = str(choice).strip().lower()
        if text in CHOICES:
            return text
        try:
            value = float(text)
        except ValueError:
            raise ThresholdError(f"{key} must be auto, quantile, f1 or a number, got {choice!r}") from None
    if not math.isfinite(value):
        raise ThresholdError(
            f"{key} must be auto, quantile, f1 or a number, got {choice!r} "
            "(a NaN or infinite threshold would label every image the same)"
        )
    return value


def normalise(values: Tensor, threshold: float, lo: float | None = None, hi: float | None = None) -> Tensor:
    """Min–max normalisation with ``threshold`` ↦ 0.5, clamped to ``[0, 1]``.

    ``(values − threshold) / (hi − lo) + 0.5``; when ``lo``/``hi`` are missing or equal the
    span is ``2·threshold`` (``1`` if the threshold is not positive).
    """
    span = (hi - lo) if lo is not None and hi is not None and hi > lo else 2.0 * threshold
    if not span > 0:
        span = 1.0
    return ((values - threshold) / span + 0.5).clamp(0.0, 1.0)


def quantile(values: Tensor | np.ndarray, q: float) -> float:
    """The ``q``-quantile of all ``values`` (float64, linear interpolation)."""
    if not 0.0 <= q <= 1.0:
        raise ThresholdError(f"a threshold quantile must be in [0, 1], got {q}")
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if array.size == 0:
        raise ThresholdError("no values to take a quantile of")
    return float(np.quantile(array.astype(np.float64, copy=False).reshape(-1), q))


def normal_thresholds(scores: Tensor, maps: Tensor, image_q: float = 0.995, pixel_q: float = 0.995) -> Thresholds:
    """Quantile thresholds and statistics from held-out normal images.

    Args:
        scores: ``[N]`` image scores of the held-out normal images.
        maps: ``[N, H, W]`` their anomaly maps.
        image_q: quantile of the image scores taken as the image threshold.
        pixel_q: quantile of all map pixels taken as the pixel threshold.
    """
    if scores.numel() == 0:
        return Thresholds()
    image = LevelThresholds(quantile(scores, image_q), None, float(scores.min()), float(scores.max()))
    pixel = LevelThresholds(quantile(maps, pixel_q), None, float(maps.min()), float(maps.max()))
    return Thresholds(image, pixel, float(image_q), float(pixel_q), int(scores.numel()))


@torch.inference_mode()
def score_batches(
    model: Callable[[Tensor], AnomalyOutput],
    batches: Iterable[Mapping[str, Any]],
    device: torch.device | str,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Score every ``batch["image"]`` → ``(scores [N], maps [N, H, W])`` on the CPU.

    ``progress``: show a progress bar over the batches.
    """
    scores, maps = [], []
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="hold-out thresholds", unit="batch", leave=False, dynamic_ncols=True)
    for batch in batches:
        batch = drop_padding(dict(batch))  # a shorter DDP shard's placeholders
        if batch is None:
            continue
        output = model(batch["image"].to(device))
        scores.append(output.image_scores.detach().float().cpu())
        maps.append(output.anomaly_maps.detach().float().cpu())
    if not scores:
        return torch.zeros(0), torch.zeros(0, 0, 0)
    return torch.cat(scores), torch.cat(maps)


def holdout_thresholds(module: Any, datamodule: Any, image_quantile: float = 0.995,
                       pixel_quantile: float = 0.995, progress: bool = False) -> Thresholds:
    """Quantile thresholds from a fitted ``module``'s scores of ``datamodule``'s held-out normals.

    Empty :class:`Thresholds` when the datamodule holds nothing out (``normal_holdout == 0``).
    """
    loader = datamodule.val_dataloader()
    if not loader:
        return Thresholds()
    was_training = module.training
    module.eval()
    try:
        device = next(module.parameters()).device
        scores, maps = score_batches(module, loader, device, progress)
    finally:
        module.train(was_training)
    if maps.numel() == 0:  # this rank's shard is empty: keep the map shape for the gather below
        side = datamodule.preprocess.output_size
        maps = maps.new_zeros(0, side, side)
    # under DDP every rank scored a shard of the held-out images: all ranks decide on all of them
    return normal_thresholds(all_gather_rows(scores), all_gather_rows(maps), image_quantile, pixel_quantile)
