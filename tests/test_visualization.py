"""Figure functions and the ImageVisualizer callback (tiny end-to-end run)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fapm.callbacks.visualizer import ImageVisualizer
from fapm.visualization.figures import figure_png, memory_figure, sample_figure, save_figure
from tests.conftest import compose_config, make_obvious_category, tiny_train_overrides


def _images(fig) -> list:  # type: ignore[no-untyped-def]
    return [ax for ax in fig.axes if ax.get_images()]


def test_sample_figure_panels_and_threshold(tmp_path: Path) -> None:
    h = w = 32
    image = torch.rand(3, h, w)
    mask = torch.zeros(h, w)
    mask[8:16, 8:16] = 1
    amap = torch.zeros(h, w)
    amap[8:16, 8:16] = 5.0
    fig = sample_figure(image, mask, amap, threshold=2.5, score=3.25, title="crack / 001", image_threshold=3.0)
    panels = _images(fig)
    assert len(panels) == 4  # input, ground truth, overlay, predicted (colorbar axes hold no image)
    assert [ax.get_title() for ax in panels][:3] == ["input", "ground truth", "anomaly map"]
    assert "2.5" in panels[3].get_title()
    assert "crack / 001" in fig.get_suptitle() and "3.25" in fig.get_suptitle()
    assert "anomalous" in fig.get_suptitle()
    # The predicted-mask overlay marks exactly the pixels at or above the threshold.
    overlay = panels[3].get_images()[-1].get_array()
    assert np.array_equal(np.asarray(overlay)[..., 3] > 0, amap.numpy() >= 2.5)
    path = save_figure(fig, tmp_path / "sub" / "s.png")
    assert Image.open(path).size[0] > 100
    assert figure_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"

    no_mask = sample_figure(image, None, amap, threshold=None, score=0.1, image_threshold=3.0)
    assert "normal" in no_mask.get_suptitle()
    with pytest.raises(ValueError, match="sizes differ"):
        sample_figure(image, None, torch.zeros(h, w + 1), 1.0, 0.0)


def test_memory_figure_layout_and_values() -> None:
    sizes = [torch.arange(49) + 10, torch.full((49,), 4)]
    d_max = [torch.linspace(0, 1, 49), torch.full((49,), float("nan"))]
    fig = memory_figure(sizes, d_max, (7, 7), ["layer2", "layer3"], d_th=0.5)
    panels = _images(fig)
    assert len(panels) == 4  # 2 streams x (size, d_imax)
    assert len(fig.axes) == 8  # with one colorbar each
    titles = [ax.get_title() for ax in panels]
    assert titles[0] == f"layer2: memory size (total {int(sizes[0].sum())})"
    assert titles[1] == "layer2: d_imax (D_th 0.5)"
    texts = [t.get_text() for t in panels[0].texts]
    assert len(texts) == 49 and texts[0] == "10" and texts[-1] == "58"
    assert {t.get_text() for t in panels[3].texts} == {"n/a"}
    assert np.asarray(panels[0].get_images()[0].get_array()).shape == (7, 7)
    single = memory_figure([[100]], [[0.3]], (1, 1))
    assert len(_images(single)) == 2
    with pytest.raises(ValueError):
        memory_figure([[1]], [], (1, 1))


def test_visualizer_chooses_a_mix_deterministically() -> None:
    vis = ImageVisualizer(num_images=5)
    vis.on_test_epoch_start(None, None)  # type: ignore[arg-type]
    types = ["crack"] * 7 + ["good"] * 3 + ["hole"] * 1
    for i, t in enumerate(types):
        batch = {
            "image": torch.full((1, 3, 4, 4), float(i)),
            "mask": torch.zeros(1, 1, 4, 4),
            "has_mask": torch.tensor([t != "good"]),
            "defect_type": [t],
            "path": [f"/x/{t}/{i:03d}.png"],
        }
        vis.on_test_batch_end(None, None, None, batch, i)  # type: ignore[arg-type]
    assert len(vis._kept["crack"]) == 5  # at most num_images kept per type
    chosen = vis.chosen()
    assert [c.defect_type for c in chosen] == ["good", "crack", "hole", "good", "crack"]
    assert [int(c.image[0, 0, 0]) for c in chosen] == [7, 0, 10, 8, 1]
    assert chosen[0].mask is None and chosen[1].mask is not None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One tiny fit + test with the default callbacks (visualizer) and CSV + TensorBoard loggers."""
    from fapm.pipeline.train import train

    base = tmp_path_factory.mktemp("vis")
    root = make_obvious_category(base / "data", n_train=6, n_good=3, n_defect=3)
    out = base / "run"
    overrides = [o for o in tiny_train_overrides(root) if not o.startswith(("callbacks=", "logger="))]
    overrides += ["callbacks=default", "callbacks.visualizer.num_images=4", "logger=many", "save_model=false"]
    metrics = train(compose_config("train", overrides, out))
    return out, metrics


def test_visualizer_saves_figures_in_run(tiny_run: tuple[Path, dict]) -> None:
    out, metrics = tiny_run
    figures = sorted((out / "figures").glob("*.png"))
    names_ = [p.name for p in figures]
    assert names_ == [
        "memory.png",
        "sample_00_good_000.png",
        "sample_01_blob_000.png",
        "sample_02_good_001.png",
        "sample_03_blob_001.png",
    ]
    assert all(Image.open(p).size[0] > 200 for p in figures)
    assert metrics["status"] == "ok" and math.isfinite(metrics["pixel_f1_threshold"])


def test_figures_logged_to_tensorboard(tiny_run: tuple[Path, dict]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = tiny_run
    tags: dict[str, list[str]] = {"images": [], "tensors": []}
    for events in (out / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0, "tensors": 0})
        acc.Reload()
        for kind in tags:
            tags[kind] += acc.Tags()[kind]
    assert len([t for t in tags["images"] if t.startswith("test/figures/")]) == 5
    assert "results/text_summary" in tags["tensors"]  # the metrics table, as Markdown text


def test_visualizer_memory_figure_only_for_memory_models(tmp_path: Path) -> None:
    vis = ImageVisualizer(num_images=0)
    assert vis._draw_memory(SimpleNamespace(), tmp_path) is None  # e.g. LAMP: no detector.memories
    with pytest.raises(ValueError):
        ImageVisualizer(num_images=-1)
