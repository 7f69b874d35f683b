"""TorchScript export of the whole scoring path: equal to eager, loadable without fapm."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fapm.data import load_rgb
from fapm.inference import FAPM
from fapm.inference.export import ExportError, export_torchscript, load_exported
from fapm.models.scoring import PatchCoreWeightedScore


@pytest.fixture(scope="module")
def exported(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[FAPM, Path]:
    model = FAPM.load(model_path)
    return model, model.export(tmp_path_factory.mktemp("export") / "model.torchscript.pt")


def _demo_batch(model: FAPM, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(RGB in [0, 1] for the graph, normalised for the eager model)`` of the demo images."""
    normalised = torch.stack([model.preprocess(load_rgb(p)) for p in paths])
    mean = torch.tensor(model.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocess.std).view(1, 3, 1, 1)
    return normalised * std + mean, normalised


def test_exported_scores_equal_eager_on_demo_data(exported, demo_images: list[Path], tmp_path: Path) -> None:
    model, path = exported
    rgb, normalised = _demo_batch(model, demo_images)
    eager = model.score(normalised)
    torch.save(rgb, tmp_path / "rgb.pt")
    # A fresh interpreter that never imports fapm loads and runs the file.
    code = (
        "import json, sys, torch\n"
        "extra = {'fapm.json': ''}\n"
        "graph = torch.jit.load(sys.argv[1], _extra_files=extra)\n"
        "images = torch.load(sys.argv[2])\n"
        "whole = graph(images)\n"
        "one = graph(images[:1])\n"
        "torch.save((whole, one), sys.argv[3])\n"
        "print(json.dumps({'fapm_imported': any(m.startswith('fapm') for m in sys.modules), "
        "'meta': json.loads(extra['fapm.json'])}))\n"
    )
    out = tmp_path / "out.pt"
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "rgb.pt"), str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["fapm_imported"] is False
    (scores, maps), (one_score, one_map) = torch.load(out, weights_only=True)
    assert scores.shape == (len(demo_images),) and maps.shape == (len(demo_images), 64, 64)
    torch.testing.assert_close(scores, eager.image_scores, rtol=0, atol=1e-4)
    torch.testing.assert_close(maps, eager.anomaly_maps, rtol=0, atol=1e-4)
    torch.testing.assert_close(one_score, eager.image_scores[:1], rtol=0, atol=1e-4)
    meta = report["meta"]
    assert meta["image_threshold"] == model.image_threshold
    assert meta["preprocess"] == model.preprocess.to_dict()
    assert meta["input"]["shape"] == ["B", 3, 64, 64]


def test_load_exported_helper(exported) -> None:
    model, path = exported
    graph, meta = load_exported(path)
    assert meta["format"] == "fapm-torchscript" and meta["facts"]["backbone"] == "resnet18"
    scores, maps = graph(torch.rand(2, 3, 64, 64))
    assert scores.shape == (2,) and maps.shape == (2, 64, 64)


def test_patchcore_support_set_exports(model_path: Path, tmp_path: Path) -> None:
    """PatchCore's support-set score is vectorised (no per-image Python ints), so it traces."""
    model = FAPM.load(model_path)
    model.detector.scorer.image_score = PatchCoreWeightedScore(num_neighbors=3)
    graph, _ = load_exported(export_torchscript(model, tmp_path / "pc.pt"))
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    mean = torch.tensor(model.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocess.std).view(1, 3, 1, 1)
    eager = model.score((images - mean) / std)
    scores, _ = graph(images)
    torch.testing.assert_close(scores, eager.image_scores, rtol=0, atol=1e-4)


class _HostScore:
    """An image score decided in Python per image: tracing freezes the branch it took."""

    def __call__(self, context):
        top = context.fused[:, 0].flatten(1).amax(dim=1)
        return torch.stack([t * 2 if float(t) > float(top.mean()) else t for t in top])


def test_untraceable_scoring_is_refused(model_path: Path, tmp_path: Path) -> None:
    model = FAPM.load(model_path)
    model.detector.scorer.image_score = _HostScore()
    with pytest.raises(ExportError, match="Python control flow that tracing freezes"):
        export_torchscript(model, tmp_path / "host.pt", check_batches=(1, 3, 4))
    assert not (tmp_path / "host.pt").exists()


@pytest.mark.parametrize("border", ["clip", "shift"])
def test_neighbourhood_window_exports(model_path: Path, tmp_path: Path, border: str) -> None:
    """A radius-1 window searched in place traces (with PatchCore's window support set) and equals eager."""
    model = FAPM.load(model_path)
    model.detector.scorer.neighbourhood = 1
    model.detector.scorer.neighbourhood_border = border
    model.detector.scorer.image_score = PatchCoreWeightedScore(num_neighbors=3)
    graph, _ = load_exported(export_torchscript(model, tmp_path / "nbhd.pt"))
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    mean = torch.tensor(model.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocess.std).view(1, 3, 1, 1)
    eager = model.score((images - mean) / std)
    scores, maps = graph(images)
    torch.testing.assert_close(scores, eager.image_scores, rtol=0, atol=1e-4)
    torch.testing.assert_close(maps, eager.anomaly_maps, rtol=0, atol=1e-4)
