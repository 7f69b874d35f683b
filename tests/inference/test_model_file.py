"""The model file: self-describing, read with weights_only, clear errors on bad or mismatched files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from fapm.inference import FAPM
from fapm.inference.thresholds import ThresholdError
from fapm.model_file import (
    FORMAT_VERSION,
    ModelFileError,
    checksum,
    load_module,
    read_model_file,
)

ROOT = Path(__file__).resolve().parents[2]


def _rewrite(source: Path, target: Path, **changes) -> Path:
    """Copy a model file with some entries changed (checksum recomputed, so only the change matters)."""
    payload = torch.load(source, weights_only=True)
    payload.update(changes)
    payload["checksum"] = checksum(payload)
    torch.save(payload, target)
    return target


@pytest.fixture(scope="module")
def images(demo_images) -> torch.Tensor:
    from fapm.data import Preprocess, load_rgb

    pre = Preprocess(image_size=64, crop_size=64)
    return torch.stack([pre(load_rgb(p)) for p in demo_images[:3]])


def test_file_is_self_describing_and_plain(model_path: Path) -> None:
    payload = torch.load(model_path, weights_only=True)  # plain torch, nothing unpickled
    assert payload["format"] == "fapm-model" and payload["format_version"] == FORMAT_VERSION
    assert payload["facts"]["backbone"] == "resnet18"
    assert payload["facts"]["layers"] == ["layer2", "layer3"]
    assert payload["facts"]["grid"] == [2, 2]
    assert payload["facts"]["weights"].startswith("random")
    assert payload["preprocess"] == {"image_size": 64, "crop_size": 64, "mean": [0.485, 0.456, 0.406],
                                     "std": [0.229, 0.224, 0.225]}
    thresholds = payload["thresholds"]
    assert thresholds["n_normal"] == 2 and thresholds["image_q"] == 0.995
    assert thresholds["image"]["quantile"] is not None and thresholds["image"]["f1"] is not None
    assert thresholds["pixel"]["quantile"] is not None and thresholds["pixel"]["f1"] is not None
    assert payload["backbone_included"] is False
    assert not any(k.startswith("detector.extractor.") for k in payload["state_dict"])
    assert any(k.endswith("memory") for k in payload["state_dict"])
    assert payload["checksum"] == checksum(payload)


def test_training_metrics_report_the_stored_thresholds(trained) -> None:
    metrics, path = trained
    stored = read_model_file(path)["thresholds"]
    assert metrics["threshold/image_quantile"] == stored["image"]["quantile"]
    assert metrics["threshold/image_f1"] == stored["image"]["f1"] == metrics["image_f1_threshold"]


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_file(model_path: Path, tmp_path: Path, fraction: float) -> None:
    data = model_path.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelFileError, match="truncated.pt"):
        read_model_file(bad)


@pytest.mark.parametrize("where", [0.05, 0.3, 0.5, 0.7, 0.9])
def test_corrupt_bytes(model_path: Path, tmp_path: Path, where: float) -> None:
    data = bytearray(model_path.read_bytes())
    at = int(len(data) * where)
    data[at : at + 16] = bytes((b ^ 0x5A) for b in data[at : at + 16])
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupt"):
        read_model_file(bad)


def test_newer_format_version(model_path: Path, tmp_path: Path) -> None:
    newer = _rewrite(model_path, tmp_path / "newer.pt", format_version=FORMAT_VERSION + 1)
    with pytest.raises(ModelFileError, match="newer than this fapm.*upgrade"):
        read_model_file(newer)


def test_changed_content_fails_the_checksum(model_path: Path, tmp_path: Path) -> None:
    payload = torch.load(model_path, weights_only=True)
    key = next(k for k in payload["state_dict"] if k.endswith("memory"))
    payload["state_dict"][key] = payload["state_dict"][key] + 1e-3  # checksum left as it was
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(ModelFileError, match="checksum"):
        read_model_file(tmp_path / "edited.pt")


class _Anything:
    pass


def test_non_model_files(tmp_path: Path) -> None:
    (tmp_path / "notes.pt").write_text("not a model at all")
    torch.save({"a": torch.zeros(2)}, tmp_path / "other.pt")
    torch.save({"format": "fapm-model", "obj": _Anything()}, tmp_path / "pickled.pt")
    with pytest.raises(ModelFileError, match="notes.pt"):
        read_model_file(tmp_path / "notes.pt")
    with pytest.raises(ModelFileError, match="is not a fapm-model file"):
        read_model_file(tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="pickled Python objects.*never loaded"):
        read_model_file(tmp_path / "pickled.pt")
    with pytest.raises(ModelFileError, match="not found"):
        read_model_file(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    "override, message",
    [
        ({"backbone": {"name": "wide_resnet50_2"}}, "backbone.name=wide_resnet50_2.*built with backbone resnet18"),
        ({"backbone": {"layers": ["layer1", "layer2"]}}, r"backbone.layers=\['layer1', 'layer2'\]"),
        ({"model": {"grid": [7, 7]}}, r"model.grid=\[7, 7\].*grid \[2, 2\]"),
    ],
)
def test_config_asking_for_another_backbone_layers_or_grid(model_path: Path, override: dict, message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        load_module(model_path, override)


def test_stored_config_disagreeing_with_facts(model_path: Path, tmp_path: Path) -> None:
    payload = torch.load(model_path, weights_only=True)
    facts = {**payload["facts"], "grid": [4, 4]}
    bad = _rewrite(model_path, tmp_path / "facts.pt", facts=facts)
    with pytest.raises(ModelFileError, match="model.grid=\\[2, 2\\].*grid \\[4, 4\\]"):
        load_module(bad)


def test_nested_override_is_checked_on_the_built_model(model_path: Path) -> None:
    # The stored config is resolved: the flat key and the built module's key are checked.
    with pytest.raises(ModelFileError, match="builds a model with grid"):
        load_module(model_path, {"model": {"module": {"detector": {"grid": [4, 4]}}}})


def test_harmless_override_is_applied(model_path: Path) -> None:
    module, payload = load_module(model_path, {"model": {"module": {"detector": {"k": 1}}}})
    assert module.detector.k == 1 and payload["config"].model.module.detector.k == 1


def test_backbone_weights_file_must_match_its_hash(model_path: Path, tmp_path: Path) -> None:
    import torchvision

    weights = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    payload = read_model_file(model_path)
    config = payload["config"]
    config.backbone.weights = config.model.module.detector.extractor.weights = str(weights)
    facts = {**payload["facts"], "weights": f"file:{weights} sha256=0123456789ab"}
    bad = _rewrite(model_path, tmp_path / "hash.pt", config=OmegaConf.to_yaml(config), facts=facts)
    with pytest.raises(ModelFileError, match="rebuilt as file:.*sha256=(?!0123456789ab)"):
        load_module(bad)


def test_save_with_backbone_included(model_path: Path, tmp_path: Path, images: torch.Tensor) -> None:
    model = FAPM.load(model_path)
    full = model.save(tmp_path / "full.pt", include_backbone=True)
    payload = read_model_file(full)
    assert payload["backbone_included"] is True
    assert any(k.startswith("detector.extractor.body.") for k in payload["state_dict"])
    assert full.stat().st_size > 5 * model_path.stat().st_size
    # The stored weights are used, not the recorded source: the init seed no longer matters.
    config = payload["config"]
    config.backbone.seed = config.model.module.detector.extractor.seed = 12345
    moved = _rewrite(full, tmp_path / "full_seed.pt", config=OmegaConf.to_yaml(config))
    again = FAPM.load(moved)
    a, b = model.score(images), again.score(images)
    assert torch.equal(a.image_scores, b.image_scores) and torch.equal(a.anomaly_maps, b.anomaly_maps)


def test_fresh_process_scores_identically(model_path: Path, images: torch.Tensor, tmp_path: Path) -> None:
    torch.save(images, tmp_path / "images.pt")
    code = (
        "import sys, torch\n"
        "from fapm.inference import FAPM\n"
        "m = FAPM.load(sys.argv[1])\n"
        "out = m.score(torch.load(sys.argv[2]))\n"
        "torch.save((out.image_scores, out.anomaly_maps), sys.argv[3])\n"
    )
    result = tmp_path / "scores.pt"
    proc = subprocess.run([sys.executable, "-c", code, str(model_path), str(tmp_path / "images.pt"), str(result)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores, maps = torch.load(result, weights_only=True)
    here = FAPM.load(model_path).score(images)
    assert torch.equal(scores, here.image_scores) and torch.equal(maps, here.anomaly_maps)


def test_metrics_json_and_file_agree_on_facts(trained) -> None:
    metrics, path = trained
    written = json.loads((path.parent / "metrics.json").read_text())
    facts = read_model_file(path)["facts"]
    assert written["backbone"] == facts["backbone"] and written["grid"] == facts["grid"]


def test_random_backbone_must_rebuild_with_the_recorded_seed(model_path: Path, tmp_path: Path) -> None:
    payload = read_model_file(model_path)
    config = payload["config"]
    config.backbone.seed = config.model.module.detector.extractor.seed = 7
    reseeded = _rewrite(model_path, tmp_path / "seed.pt", config=OmegaConf.to_yaml(config))
    with pytest.raises(ModelFileError, match="built with backbone weights random.*seed 0.*rebuilt as.*seed 7"):
        load_module(reseeded)


def test_format_1_files_still_load(model_path: Path, tmp_path: Path, images: torch.Tensor) -> None:
    payload = torch.load(model_path, weights_only=True)
    old = {k: payload[k] for k in ("format", "fapm_version", "config", "state_dict", "meta")}
    old["format_version"] = 1  # before facts, thresholds, pre-processing and the checksum
    torch.save(old, tmp_path / "v1.pt")
    with pytest.raises(ThresholdError, match="no image threshold"):
        FAPM.load(tmp_path / "v1.pt")
    model = FAPM.load(tmp_path / "v1.pt", threshold=1.0, pixel_threshold=2.0)
    assert model.preprocess.to_dict() == payload["preprocess"]  # from the stored data config
    current = FAPM.load(model_path).score(images)
    assert torch.equal(model.score(images).image_scores, current.image_scores)
