"""The Python API: FAPM.load(path).predict(path | PIL | array | tensor | list | batch)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fapm.data import Preprocess, load_rgb
from fapm.inference import FAPM, PredictionResult
from fapm.inference.images import InputError
from fapm.inference.thresholds import ThresholdError


@pytest.fixture(scope="module")
def model(model_path: Path) -> FAPM:
    return FAPM.load(model_path, device="cpu")


def test_single_path(model: FAPM, demo_images: list[Path]) -> None:
    result = model.predict(demo_images[0])
    assert isinstance(result, PredictionResult)
    assert result.path == str(demo_images[0])
    assert result.anomaly_map.shape == result.mask.shape == result.normalised_map.shape == (64, 64)
    assert result.anomaly_map.dtype == np.float32 and result.mask.dtype == bool
    assert 0.0 <= result.normalised_score <= 1.0
    assert result.label == (result.score >= model.image_threshold)
    assert (result.label) == (result.normalised_score >= 0.5)
    np.testing.assert_array_equal(result.mask, result.anomaly_map >= model.pixel_threshold)
    assert 0.0 <= result.normalised_map.min() and result.normalised_map.max() <= 1.0


def test_every_input_kind_gives_the_same_result(model: FAPM, demo_images: list[Path]) -> None:
    path = demo_images[-1]
    pil = load_rgb(path)
    array = np.asarray(pil)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255.0
    by_path = model.predict(path)
    for item in (pil, array, tensor, torch.from_numpy(array).permute(2, 0, 1)):
        other = model.predict(item)
        assert other.score == pytest.approx(by_path.score, abs=1e-6)
        np.testing.assert_allclose(other.anomaly_map, by_path.anomaly_map, atol=1e-5)
        assert other.path is None


def test_batches_and_lists_give_lists_in_order(model: FAPM, demo_images: list[Path]) -> None:
    singles = [model.predict(p) for p in demo_images[:3]]
    listed = model.predict(demo_images[:3], batch_size=2)
    assert isinstance(listed, list) and len(listed) == 3
    assert [r.path for r in listed] == [str(p) for p in demo_images[:3]]
    for a, b in zip(singles, listed):
        assert a.score == pytest.approx(b.score, abs=1e-5)
    batch = torch.stack([torch.from_numpy(np.asarray(load_rgb(p))).permute(2, 0, 1) for p in demo_images[:3]])
    from_batch = model.predict(batch)
    assert len(from_batch) == 3
    assert [r.score for r in from_batch] == pytest.approx([r.score for r in singles], abs=1e-5)


def test_maps_come_back_at_the_original_size(model: FAPM, demo_images: list[Path]) -> None:
    image = load_rgb(demo_images[-1]).resize((90, 50))
    result = model.predict(image)
    assert result.size == (90, 50)
    assert result.anomaly_map.shape == result.mask.shape == (50, 90)
    grey16 = (np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    assert model.predict(grey16).size == (90, 50)
    rgba = np.dstack([np.asarray(image), np.full((50, 90), 255, np.uint8)])
    assert model.predict(rgba).score == pytest.approx(model.predict(image).score, abs=1e-6)


def test_to_original_undoes_crop_and_resize() -> None:
    pre = Preprocess(image_size=8, crop_size=4)
    maps = torch.ones(1, 4, 4)
    full = pre.to_original(maps, (8, 8))
    assert full.shape == (1, 8, 8)
    assert torch.equal(full[0, 2:6, 2:6], torch.ones(4, 4))  # the crop, back in place
    assert float(full[0, 0].abs().sum()) == 0.0 and float(full[0, :, 0].abs().sum()) == 0.0  # not inspected
    assert pre.to_original(maps, (16, 12)).shape == (1, 12, 16)


def test_to_original_undoes_the_letterbox() -> None:
    """A 20x10 (w x h) image letterboxed to 8x8 lies in rows 2..5; its map comes back from there alone."""
    pre = Preprocess(image_size=8, crop_size=None, resize="letterbox")
    maps = torch.zeros(1, 8, 8)
    maps[0, 2:6] = torch.arange(8.0)  # the image's rows carry a left-to-right ramp, the padding zeros
    back = pre.to_original(maps, (16, 8))
    assert back.shape == (1, 8, 16)
    assert float(back[0, :, 0].max()) < 0.5 and float(back[0, :, -1].min()) > 6.5  # the ramp, stretched back
    assert bool((back[0, 0] == back[0, -1]).all())  # no padding row read into the image


def test_threshold_choices(model_path: Path, model: FAPM, demo_images: list[Path]) -> None:
    result = model.predict(demo_images[0])
    at_score = FAPM.load(model_path, threshold=result.score)
    same = at_score.predict(demo_images[0])
    assert same.label is True and same.normalised_score == pytest.approx(0.5)
    f1 = FAPM.load(model_path, threshold="f1", pixel_threshold="f1")
    assert f1.image_threshold == model.thresholds.image.f1
    assert f1.pixel_threshold == model.thresholds.pixel.f1
    assert model.image_threshold == model.thresholds.image.quantile  # auto = quantile when stored
    with pytest.raises(ThresholdError):
        FAPM.load(model_path, threshold="median")


def test_bad_inputs_raise_clear_errors(model: FAPM, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="too small"):
        model.predict(np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(InputError, match="shape"):
        model.predict(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(InputError, match="cannot predict on a dict"):
        model.predict({"image": 1})
    (tmp_path / "x.png").write_text("no image")
    with pytest.raises(InputError, match="x.png"):
        model.predict(tmp_path / "x.png")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu(model_path: Path, model: FAPM, demo_images: list[Path]) -> None:
    gpu = FAPM.load(model_path, device="cuda")
    a, b = model.predict(demo_images[:3]), gpu.predict(demo_images[:3])
    # cuDNN convolutions run in TF32 by default (10-bit mantissa): ~1e-3 relative differences
    assert [r.score for r in a] == pytest.approx([r.score for r in b], rel=5e-3)
    graphed = FAPM.load(model_path, device="cuda", cuda_graph=True)
    for batch in (demo_images[:3], demo_images[1:4], demo_images[:1]):
        eager, replayed = gpu.predict(batch), graphed.predict(batch)
        assert [r.score for r in replayed] == pytest.approx([r.score for r in eager], rel=1e-5)
        assert np.allclose(replayed[0].anomaly_map, eager[0].anomaly_map, rtol=1e-5, atol=1e-5)


def test_cuda_graph_needs_a_cuda_device(model_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a CUDA device"):
        FAPM.load(model_path, device="cpu", cuda_graph=True)


def test_predict_summary_says_what_a_crop_leaves_out(model: FAPM, demo_images: list[Path], tmp_path: Path) -> None:
    """A model whose pre-processing crops says so in predict's summary (and the log), with the share hidden."""
    from fapm.inference.predict import predict_files

    model.preprocess = Preprocess(image_size=80, crop_size=64, mean=model.preprocess.mean, std=model.preprocess.std)
    try:
        summary = predict_files(model, demo_images[0], tmp_path / "out", progress=False)
    finally:
        model.preprocess = Preprocess.from_dict(model.file.preprocess)
    assert summary.not_inspected == pytest.approx(1 - (64 / 80) ** 2)
