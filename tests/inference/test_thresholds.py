"""Threshold maths: quantiles of held-out normals, F1 thresholds from test metrics, normalisation."""

import math

import numpy as np
import pytest
import torch

from fapm.inference.thresholds import (
    LevelThresholds,
    ThresholdError,
    Thresholds,
    normal_thresholds,
    normalise,
    parse_choice,
    quantile,
)
from fapm.metrics import names


def test_quantile_is_numpy_linear_quantile() -> None:
    values = torch.tensor([3.0, 1.0, 2.0, 10.0])
    assert quantile(values, 0.5) == pytest.approx(2.5)
    assert quantile(values, 1.0) == 10.0
    assert quantile(values, 0.995) == pytest.approx(float(np.quantile([1, 2, 3, 10], 0.995)))
    with pytest.raises(ThresholdError):
        quantile(values, 1.5)
    with pytest.raises(ThresholdError):
        quantile(torch.zeros(0), 0.5)


def test_normal_thresholds_from_scores_and_maps() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    maps = torch.arange(4 * 2 * 2, dtype=torch.float32).view(4, 2, 2)  # 0..15
    t = normal_thresholds(scores, maps, image_q=0.5, pixel_q=1.0)
    assert t.image.quantile == pytest.approx(2.5)
    assert (t.image.min, t.image.max) == (1.0, 4.0)
    assert t.pixel.quantile == 15.0 and (t.pixel.min, t.pixel.max) == (0.0, 15.0)
    assert t.n_normal == 4 and t.image_q == 0.5 and t.pixel_q == 1.0
    assert t.image.f1 is None
    assert normal_thresholds(torch.zeros(0), torch.zeros(0, 2, 2)) == Thresholds()


def test_normalise_maps_threshold_to_half_and_clamps() -> None:
    x = torch.tensor([0.0, 1.0, 2.0, 3.0, 100.0])
    out = normalise(x, threshold=2.0, lo=1.0, hi=3.0)  # span 2
    assert out.tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    mid = normalise(torch.tensor([2.5]), 2.0, 1.0, 3.0)
    assert mid.item() == pytest.approx(0.75)
    # Without statistics: span 2t, i.e. x / 2t.
    assert normalise(torch.tensor([0.0, 2.0, 3.0, 5.0]), 2.0).tolist() == pytest.approx([0.0, 0.5, 0.75, 1.0])
    # Monotone in x whatever the threshold.
    xs = torch.linspace(-5, 5, 101)
    assert bool((normalise(xs, 0.3, -1.0, 2.0).diff() >= 0).all())


def test_select_auto_quantile_f1_and_numbers() -> None:
    t = Thresholds(image=LevelThresholds(quantile=3.0, f1=2.0, min=1.0, max=3.5), pixel=LevelThresholds(f1=5.0))
    assert t.select("image") == 3.0  # auto prefers the normal-data quantile
    assert t.select("image", "f1") == 2.0
    assert t.select("image", 1.25) == 1.25 and t.select("image", "1.5") == 1.5
    # auto never falls back to the test set's F1 threshold: no normal-data threshold, no labels
    assert t.select("pixel") is None and Thresholds().select("image") is None
    assert t.select("pixel", "f1") == 5.0  # only when asked for explicitly
    with pytest.raises(ThresholdError, match="no pixel threshold of kind 'quantile'"):
        t.select("pixel", "quantile")
    with pytest.raises(ThresholdError, match="no image threshold"):
        Thresholds().select("image", "f1")
    with pytest.raises(ThresholdError, match="auto, quantile, f1 or a number"):
        parse_choice("median")
    assert t.normalise("image", torch.tensor(3.0), t.select("image")).item() == pytest.approx(0.5)


def test_with_test_results_reads_the_metric_names() -> None:
    base = Thresholds(image=LevelThresholds(quantile=3.0, min=1.0, max=4.0), n_normal=5, image_q=0.99)
    out = base.with_test_results({names.IMAGE_F1_THRESHOLD: 2.5, names.PIXEL_F1_THRESHOLD: math.nan})
    assert out.image.f1 == 2.5 and out.image.quantile == 3.0 and out.n_normal == 5
    assert out.pixel.f1 is None  # NaN (no pixel labels) is "no threshold"
    assert base.image.f1 is None  # the original is unchanged
    assert out.as_metrics() == {"threshold/image_quantile": 3.0, "threshold/image_f1": 2.5}


def test_dict_round_trip_and_unknown_keys() -> None:
    t = Thresholds(LevelThresholds(1.0, 2.0, 0.5, 1.5), LevelThresholds(3.0, None, 0.0, 4.0), 0.995, 0.99, 7)
    assert Thresholds.from_dict(t.to_dict()) == t
    assert Thresholds.from_dict(None) == Thresholds() == Thresholds.from_dict({})
    with pytest.raises(ValueError, match="unknown threshold entries"):
        Thresholds.from_dict({**t.to_dict(), "extra": 1})
    with pytest.raises(ValueError, match="unknown image threshold entries"):
        Thresholds.from_dict({"image": {"median": 1.0}})
