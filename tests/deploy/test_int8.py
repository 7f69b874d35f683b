"""INT8 backbone: deterministic calibration per seed; memories built from the INT8 features scoring sees."""

from __future__ import annotations

import pytest
import torch

from fapm.deploy.quantize import BackboneRunner, build_int8, calibration_indices, quantize_backbone
from fapm.models.adaptive import AdaptiveCoreset
from fapm.models.detector import MemoryDetector
from tests.deploy.deploy_helpers import extractor

pytest.importorskip("onnxscript", reason="the deploy extra (onnx, onnxscript) is not installed")
pytest.importorskip("nncf", reason="the deploy extra (nncf) is not installed")
pytest.importorskip("onnxruntime", reason="the deploy extra (onnxruntime) is not installed")


def test_calibration_indices_are_seeded() -> None:
    assert calibration_indices(50, 8, seed=3) == calibration_indices(50, 8, seed=3)
    assert calibration_indices(50, 8, seed=3) != calibration_indices(50, 8, seed=4)
    assert calibration_indices(5, 8, seed=0) == [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def float_backbone(demo, info):
    from fapm.deploy.onnx_export import export_backbone

    return export_backbone(MemoryDetector(extractor(), grid=(2, 2)).eval(), info)


def test_quantization_is_deterministic_per_seed(float_backbone, demo) -> None:
    train = demo["train"]

    def quantized(seed: int):
        return quantize_backbone(float_backbone, train[calibration_indices(len(train), 4, seed)])

    a, b, c = quantized(0), quantized(0), quantized(2)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != c.SerializeToString()  # other images, other ranges
    ops = [n.op_type for n in a.graph.node]
    assert ops.count("QuantizeLinear") > 5  # it did quantize
    out = BackboneRunner(a, "onnxruntime")(demo["test"][:2])
    assert [tuple(t.shape) for t in out] == [(2, 128, 8, 8), (2, 256, 4, 4)]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_memory_is_built_from_the_int8_features(demo, info, tmp_path, runtime) -> None:
    """With every training vector kept (ratio 1), a training image scores ~0 in the INT8
    runtime: its features are in the memory exactly as scoring computes them."""
    if runtime == "openvino":
        pytest.importorskip("openvino", reason="the deploy extra (openvino) is not installed")
    from fapm.deploy.runtimes import make_scorer

    det = MemoryDetector(extractor(), grid=(2, 2), coreset=AdaptiveCoreset(1.0, adaptive=False), k=1, blur_sigma=0).eval()
    train = demo["train"][:6]
    model = build_int8(det, train, info, tmp_path / "int8.onnx", calibration_images=4, seed=0, runtime=runtime)
    assert not det.fitted  # the input detector was copied, not changed
    assert model.info.backbone_precision == "int8" and model.info.calibration["seed"] == 0
    assert model.info.image_threshold is None  # float thresholds do not carry over
    scorer = make_scorer(runtime, path=model.path)
    on_train = scorer.score_rgb(train[:2])
    assert float(on_train.anomaly_maps.abs().max()) < 1e-3
    # …while the float backbone's features of the same image are not in that memory
    with torch.inference_mode():
        streams = model.detector.extract((train[:1] - torch.tensor(info.mean).view(1, 3, 1, 1))
                                         / torch.tensor(info.std).view(1, 3, 1, 1))
        results = model.detector.nearest(streams)
    assert float(results[0].distances.max()) > 1e-2
    assert float(scorer.score_rgb(demo["test"]).anomaly_maps.max()) > 1e-2  # test images are not in it
