"""Backbone extraction: pruning after the last layer, weight sources and their errors."""

import urllib.error

import pytest
import torch
import torchvision

from fapm.models.features import BackboneError, FeatureExtractor


def random_extractor(**kwargs) -> FeatureExtractor:
    with pytest.warns(UserWarning, match="RANDOM"):
        return FeatureExtractor(**kwargs)


def test_nothing_past_last_layer_and_pooling() -> None:
    fe = random_extractor(name="resnet18", pretrained="false")
    modules = {name for name, _ in fe.body.named_modules()}
    assert not any(m.startswith(("layer4", "fc", "avgpool")) for m in modules)
    assert fe.output_shapes(224) == {"layer2": (128, 28, 28), "layer3": (256, 14, 14)}
    # pooled = 3x3 average of the raw layer output
    x = torch.randn(1, 3, 64, 64)
    raw = fe.body(x)["layer2"]
    expected = torch.nn.functional.avg_pool2d(raw, 3, 1, 1)
    assert torch.allclose(fe(x)["layer2"], expected)


def test_random_init_is_seeded() -> None:
    a = random_extractor(name="resnet18", pretrained="false", seed=1)
    b = random_extractor(name="resnet18", pretrained="false", seed=1)
    c = random_extractor(name="resnet18", pretrained="false", seed=2)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(a(x)["layer3"], b(x)["layer3"])
    assert not torch.equal(a(x)["layer3"], c(x)["layer3"])
    assert a.weight_source.is_random


def test_module_path_layers_on_vgg() -> None:
    fe = random_extractor(name="vgg16_bn", layers=["features.32", "features.39"], pretrained="false")
    assert fe.output_shapes(224) == {"features.32": (512, 28, 28), "features.39": (512, 14, 14)}
    assert "features.40" not in dict(fe.body.named_modules())


def test_timm_backbone() -> None:
    fe = random_extractor(name="resnet18", library="timm", pretrained="false")
    assert fe.output_shapes(112)["layer3"] == (256, 7, 7)


def test_local_weights_with_prefix(tmp_path) -> None:
    torch.manual_seed(5)
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "ssl.pth"
    torch.save({"state_dict": {f"module.backbone.{k}": v for k, v in reference.state_dict().items()}}, path)
    fe = FeatureExtractor("resnet18", pretrained="false", weights=str(path), weights_prefix="module.backbone.")
    assert fe.weight_source.kind == "file"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        h = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected = reference.layer3(reference.layer2(reference.layer1(h)))
    assert torch.allclose(fe.body(x)["layer3"], expected, atol=1e-5)


def test_weight_file_errors(tmp_path) -> None:
    with pytest.raises(BackboneError, match="not found"):
        FeatureExtractor("resnet18", weights=str(tmp_path / "missing.pth"))
    partial = tmp_path / "partial.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, partial)
    with pytest.raises(BackboneError, match="lacks"):
        FeatureExtractor("resnet18", weights=str(partial))
    with pytest.raises(BackboneError, match="prefix"):
        FeatureExtractor("resnet18", weights=str(partial), weights_prefix="encoder.")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="cannot read"):
        FeatureExtractor("resnet18", weights=str(junk))


def test_bad_layer_and_model_names() -> None:
    with pytest.raises(BackboneError, match="not found"):
        FeatureExtractor("resnet18", layers=["layer9"], pretrained="false")
    with pytest.raises(BackboneError, match="no model named"):
        FeatureExtractor("resnet_does_not_exist", pretrained="false")
    with pytest.raises(BackboneError, match="auto, true or false"):
        FeatureExtractor("resnet18", pretrained="maybe")


def offline(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache

    def fail(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)
    monkeypatch.setattr("fapm.models.features._online", lambda host, timeout=3.0: False)


def test_pretrained_true_offline_is_a_clear_error(monkeypatch, tmp_path) -> None:
    offline(monkeypatch, tmp_path)
    with pytest.raises(BackboneError, match="Offline"):
        FeatureExtractor("resnet18", pretrained="true")


def test_pretrained_auto_offline_falls_back_loudly(monkeypatch, tmp_path) -> None:
    offline(monkeypatch, tmp_path)
    fe = random_extractor(name="resnet18", pretrained="auto")
    assert fe.weight_source.is_random
