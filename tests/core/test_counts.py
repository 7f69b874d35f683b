"""Reports tell the truth: counts taken after the work they count (issue 25, point 7)."""

import json
import logging
import warnings
from pathlib import Path

from fapm.model_file import read_model_file
from fapm.pipeline.train import train
from tests.conftest import compose_config, make_obvious_category, tiny_train_overrides


def test_alignment_fallbacks_are_counted_after_the_test_and_summarised_once(tmp_path: Path, caplog) -> None:
    """Failed before: metrics.json said align.fallback 0 (counted before the test) while the model file said
    135, and the per-batch warning was de-duplicated to a handful of lines."""
    root = make_obvious_category(tmp_path / "data", n_train=6, n_good=3, n_defect=3, size=64)
    overrides = [*tiny_train_overrides(root), "data.image_size=64", "data.crop_size=64", "model.grid=[2,2]",
                 "model.image_score=max", "data.normal_holdout=0.34", "logger=none", "data.eval_batch_size=2",
                 # no image registers this confidently: every scored image falls back
                 "model.align=translation", "model.align_min_confidence=1e9", "model.align_resolution=64"]
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        metrics = train(compose_config("train", overrides, out))
    written = json.loads((out / "metrics.json").read_text())
    stored = read_model_file(out / "model.safetensors").facts
    held_out, tested = 2, 6  # data.normal_holdout=0.34 of 6 training images; 3 good + 3 defective test images
    assert written["align"] == stored["align"]
    assert written["align"]["fallback"] == held_out + tested and written["align"]["aligned"] == 0
    for key in ("enlarged_regions", "k_effective", "memory_vectors"):
        assert written[key] == stored[key], key
    lines = [r.getMessage() for r in caplog.records if "did not register confidently" in r.getMessage()]
    assert lines == [
        f"model.align=translation: {held_out} of {held_out} held-out normal images did not register confidently "
        "(PSR < model.align_min_confidence=1e+09) and were scored with the neighbourhood search (radius 1) "
        "instead of being warped",
        f"model.align=translation: {tested} of {tested} test images did not register confidently (PSR < "
        "model.align_min_confidence=1e+09) and were scored with the neighbourhood search (radius 1) instead of "
        "being warped",
    ]
    assert not [w for w in shown if "registered to the reference" in str(w.message)]  # no per-batch lines
