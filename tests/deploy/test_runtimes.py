"""The three runtimes behind one interface: same outputs, same refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fapm.deploy.info import DeployInfo, DeployInfoError
from fapm.deploy.runtimes import InputSizeError, TorchScorer, make_scorer
from tests.deploy.deploy_helpers import fit, normalised

ATOL = 1e-4


@pytest.fixture(scope="module")
def fapm(demo, info):
    return fit("fapm", demo["train"], info)


@pytest.fixture(scope="module")
def onnx_file(fapm, info, tmp_path_factory):
    pytest.importorskip("onnxscript", reason="the deploy extra (onnx, onnxscript) is not installed")
    pytest.importorskip("onnxruntime", reason="the deploy extra (onnxruntime) is not installed")
    from fapm.deploy import export_onnx

    return export_onnx(fapm, tmp_path_factory.mktemp("rt") / "fapm.onnx", info)


def test_torch_scorer_takes_normalised_or_rgb(fapm, demo, info) -> None:
    scorer = TorchScorer(fapm, info)
    a = scorer.score(normalised(demo["test"], info))
    b = scorer.score_rgb(demo["test"])
    torch.testing.assert_close(a.image_scores, b.image_scores, rtol=0, atol=1e-5)
    assert a.labels.tolist() == (a.image_scores >= info.image_threshold).tolist()
    assert a.anomaly_maps.shape == (len(demo["test"]), 64, 64)


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_every_runtime_refuses_another_size(runtime, fapm, info, request) -> None:
    if runtime == "openvino":
        pytest.importorskip("openvino", reason="the deploy extra (openvino) is not installed")
    path = request.getfixturevalue("onnx_file") if runtime != "torch" else None
    scorer = make_scorer(runtime, detector=fapm, path=path, info=info)
    for bad in (torch.rand(1, 3, 96, 96), torch.rand(3, 64, 64), torch.rand(1, 1, 64, 64)):
        with pytest.raises(InputSizeError, match=r"exported for images \[B, 3, 64, 64\]"):
            scorer.score_rgb(bad)


def test_openvino_equals_eager_on_demo_data(onnx_file, fapm, demo, info) -> None:
    pytest.importorskip("openvino", reason="the deploy extra (openvino) is not installed")
    from fapm.deploy import OpenVINOScorer

    scorer = OpenVINOScorer(onnx_file)  # metadata read from the ONNX file through OpenVINO
    assert scorer.info == info
    with torch.inference_mode():
        want = fapm(normalised(demo["test"], info))
    for batch in (slice(None), slice(0, 1), slice(1, 4)):
        out = scorer.score_rgb(demo["test"][batch])
        torch.testing.assert_close(out.image_scores, want.image_scores[batch], rtol=0, atol=ATOL)
        torch.testing.assert_close(out.anomaly_maps, want.anomaly_maps[batch], rtol=0, atol=ATOL)


def test_openvino_bf16_refused_without_cpu_support(onnx_file) -> None:
    pytest.importorskip("openvino", reason="the deploy extra (openvino) is not installed")
    from fapm.deploy.runtimes import OpenVINOScorer, cpu_supports_bf16

    if cpu_supports_bf16():
        pytest.skip("this CPU has bf16: nothing to refuse")
    with pytest.raises(RuntimeError, match="no bf16 support"):
        OpenVINOScorer(onnx_file, precision="bf16")


def test_info_overrides_thresholds(onnx_file, demo, info) -> None:
    pytest.importorskip("onnxruntime", reason="the deploy extra (onnxruntime) is not installed")
    from fapm.deploy import OnnxRuntimeScorer

    scores = OnnxRuntimeScorer(onnx_file).score_rgb(demo["test"]).image_scores
    middle = float(scores.median())
    out = OnnxRuntimeScorer(onnx_file, info=info.replace(image_threshold=middle)).score_rgb(demo["test"])
    assert out.labels.tolist() == (scores >= middle).tolist() and 0 < int(out.labels.sum()) < len(scores)


def test_metadata_round_trip_and_errors() -> None:
    info = DeployInfo(image_size=224, image_threshold=float("inf"), facts={"a": 1})
    assert info.image_threshold is None  # non-finite thresholds are "none"
    assert DeployInfo.from_json(info.to_json()) == info
    with pytest.raises(DeployInfoError, match="not a fapm-onnx file"):
        DeployInfo.from_json('{"format": "other"}')
    with pytest.raises(DeployInfoError, match="newer"):
        DeployInfo.from_json(info.to_json().replace('"format_version": 1', '"format_version": 99'))


def test_unknown_runtime() -> None:
    with pytest.raises(ValueError, match="runtime must be one of"):
        make_scorer("tensorrt", path="x.onnx")


def test_openvino_equals_eager_on_an_uneven_grid(demo, info, tmp_path) -> None:
    """Uneven regions (a 3x3 grid on 8x8 and 4x4 maps: gathers instead of reshapes) in OpenVINO too."""
    pytest.importorskip("openvino", reason="the deploy extra (openvino) is not installed")
    pytest.importorskip("onnxscript", reason="the deploy extra (onnx, onnxscript) is not installed")
    from fapm.deploy import OpenVINOScorer, export_onnx

    det = fit("fapm_uneven", demo["train"], info)
    scorer = OpenVINOScorer(export_onnx(det, tmp_path / "uneven.onnx", info))
    with torch.inference_mode():
        want = det(normalised(demo["test"], info))
    out = scorer.score_rgb(demo["test"])
    torch.testing.assert_close(out.image_scores, want.image_scores, rtol=0, atol=ATOL)
    torch.testing.assert_close(out.anomaly_maps, want.anomaly_maps, rtol=0, atol=ATOL)
    assert float(want.anomaly_maps.std()) > 1e-3


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_a_nan_pixel_is_never_good_in_any_runtime(runtime, fapm, demo, info, request) -> None:
    """Failed before: a NaN pixel gave score=nan, label=False (good) in ONNX Runtime; OpenVINO ignored it."""
    if runtime == "openvino":
        pytest.importorskip("openvino", reason="the deploy extra (openvino) is not installed")
    from fapm.deploy.runtimes import NonFiniteInputError

    path = request.getfixturevalue("onnx_file") if runtime != "torch" else None
    scorer = make_scorer(runtime, detector=fapm, path=path, info=info)
    images = demo["test"][:2].clone()
    images[1, 0, 5, 5] = float("nan")
    with pytest.raises(NonFiniteInputError, match=r"image\(s\) \[1\] of the batch hold NaN or infinite pixels"):
        scorer.score_rgb(images)
    images[1, 0, 5, 5] = float("inf")
    with pytest.raises(NonFiniteInputError):
        scorer.score(normalised(images, info))
    if runtime == "torch":
        return
    # the exported graph itself (what a user without fapm runs): NaN score, label True
    raw = images.numpy()
    if runtime == "onnxruntime":
        scores, _, labels = scorer.session.run(None, {"images": raw})
    else:
        result = scorer._request.infer({"images": raw})
        scores, labels = (np.array(result[scorer.compiled.output(n)]) for n in ("image_scores", "labels"))
    assert np.isfinite(scores[0]) and np.isnan(scores[1]) and bool(labels[1])


def test_labels_fail_closed() -> None:
    from fapm.deploy.runtimes import labels_for

    scores = torch.tensor([1.0, float("nan"), 3.0])
    assert labels_for(scores, 2.0).tolist() == [False, True, True]
    assert labels_for(scores, None).tolist() == [False, True, False]
