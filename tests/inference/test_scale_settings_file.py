"""The scale settings (feature storage, memory cap, FAISS search) round-trip through a model file."""

import pytest
import torch

from fapm.builders import build_memory_detector
from fapm.model_file import load_detector, save_model
from fapm.models.knn import AutoKNN
from fapm.settings import BackboneSettings, MemorySettings, SearchSettings

SIDE = 64
PREPROCESS = {"image_size": SIDE, "crop_size": SIDE, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def test_scale_settings_round_trip(tmp_path) -> None:
    pytest.importorskip("faiss")
    search = SearchSettings(backend="auto", factory="IVF{nlist},Flat", nprobe=4, auto_min_vectors=50)
    model = MemorySettings(
        grid=(2, 2), feature_dtype="float16", feature_storage="host", memory_cap=7, projection_dim=16, search=search
    )
    backbone = BackboneSettings(name="resnet18", pretrained="false", seed=0)
    with pytest.warns(UserWarning, match="RANDOM"):
        detector = build_memory_detector(model, backbone, seed=0)
    g = torch.Generator().manual_seed(0)
    detector.collect(torch.randn(4, 3, SIDE, SIDE, generator=g))
    detector.build()
    assert max(max(m.sizes()) for m in detector.memories) <= 14  # cap 7, enlarged 2x
    path = tmp_path / "model.safetensors"
    save_model(path, detector, model, backbone, PREPROCESS, thresholds=None, facts=detector.facts())
    loaded, file = load_detector(path)
    assert file.model == model and file.model.search == search
    images = torch.randn(2, 3, SIDE, SIDE, generator=g)
    with torch.no_grad():
        a, b = detector.eval()(images), loaded(images)
    assert torch.equal(a.image_scores, b.image_scores)
    assert all(isinstance(s, AutoKNN) for s in loaded.search.searches)
