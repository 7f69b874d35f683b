"""One threshold story: the figures, ``metrics.json``, ``predict.py`` and the API label an image
with the same stored threshold, chosen at fit time from held-out normal images only."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fapm.inference import FAPM
from fapm.pipeline.predict import predict
from fapm.pipeline.train import train
from tests.conftest import compose_config
from tests.inference.conftest import tiny_overrides


def test_figure_results_csv_and_api_use_the_same_threshold(demo_root: Path, tmp_path: Path, monkeypatch) -> None:
    from fapm.callbacks import visualizer

    drawn: list[tuple[float, float | None]] = []  # (score, image threshold) of every figure
    real = visualizer.sample_figure

    def spy(image, mask, amap, threshold, score, title, value_range=None, image_threshold=None):
        drawn.append((score, image_threshold))
        return real(image, mask, amap, threshold, score, title, value_range, image_threshold)

    monkeypatch.setattr(visualizer, "sample_figure", spy)
    overrides = [o for o in tiny_overrides(demo_root) if not o.startswith("callbacks=")]
    overrides += ["callbacks=default", "callbacks.visualizer.num_images=3", "callbacks.visualizer.memory=false",
                  "callbacks.progress_bar.refresh_rate=0"]
    out = tmp_path / "run"
    metrics = train(compose_config("train", overrides, out))
    written = json.loads((out / "metrics.json").read_text())

    model = FAPM.load(out / "model.safetensors")
    stored = model.image_threshold
    assert stored is not None and stored == written["threshold/image_quantile"] == metrics["threshold/image_quantile"]
    # the test set's F1 threshold is a metric, not the label threshold (they differ here)
    assert written["threshold/image_f1"] != stored
    assert drawn and all(threshold == stored for _, threshold in drawn)  # every figure's decision

    images = sorted((demo_root / "bracket" / "test").glob("*/*.png"))
    cfg = compose_config("predict", [f"ckpt_path={out / 'model.safetensors'}", f"input={demo_root / 'bracket' / 'test'}",
                                     f"output={tmp_path / 'pred'}", "overlays=false", "masks=false",
                                     "progress=false"], tmp_path / "p")
    predict(cfg)
    with open(tmp_path / "pred" / "results.csv", newline="") as handle:
        rows = {Path(r["path"]).name + r["path"].split("/")[-2]: r for r in csv.DictReader(handle)}
    for path in images:
        api = model.predict(path)
        row = rows[path.name + path.parent.name]
        assert float(row["score"]) == pytest.approx(api.score, rel=1e-4)  # batches of 8 vs 1: float rounding
        assert bool(int(row["label"])) == api.label == (api.score >= stored)
