"""ONNX export of the whole scoring path: equal to eager in ONNX Runtime and OpenVINO, any batch size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.deploy.deploy_helpers import fit, normalised
from fapm.deploy.info import DeployInfo

pytest.importorskip("onnx", reason="the deploy extra (onnx) is not installed")
pytest.importorskip("onnxscript", reason="the deploy extra (onnxscript, used by torch.onnx.export) is not installed")
ort = pytest.importorskip("onnxruntime", reason="the deploy extra (onnxruntime) is not installed")

from fapm.deploy import OnnxRuntimeScorer, export_onnx  # noqa: E402

ATOL = 1e-4


@pytest.fixture(scope="module")
def exported(demo, info, tmp_path_factory) -> dict[str, tuple]:
    """FAPM and PatchCore fitted on the demo's training images and exported."""
    out = {}
    for variant in ("fapm", "patchcore"):
        det = fit(variant, demo["train"], info)
        out[variant] = (det, export_onnx(det, tmp_path_factory.mktemp(variant) / f"{variant}.onnx", info))
    return out


def eager(det, images: torch.Tensor, info: DeployInfo):
    with torch.inference_mode():
        return det(normalised(images, info))


@pytest.mark.parametrize("variant", ["fapm", "patchcore"])
def test_onnxruntime_equals_eager_on_demo_data(exported, demo, info, variant) -> None:
    det, path = exported[variant]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = demo["test"]
    want = eager(det, images, info)
    for batch in (images, images[:1], images[2:5]):  # dynamic batch axis
        scores, maps, labels = session.run(None, {"images": batch.numpy()})
        ref = eager(det, batch, info)
        np.testing.assert_allclose(scores, ref.image_scores.numpy(), rtol=0, atol=ATOL)
        np.testing.assert_allclose(maps, ref.anomaly_maps.numpy(), rtol=0, atol=ATOL)
        np.testing.assert_array_equal(labels, ref.image_scores.numpy() >= info.image_threshold)
    # the demo's defects score higher than its good images: the comparison is not between zeros
    assert float(want.image_scores.std()) > 1e-3 and float(want.anomaly_maps.std()) > 1e-3


def test_scorer_wrapper_reads_metadata_and_matches(exported, demo, info) -> None:
    det, path = exported["fapm"]
    scorer = OnnxRuntimeScorer(path)
    assert scorer.info == info
    out = scorer.score(normalised(demo["test"], info))  # normalised input, as the detector takes
    ref = eager(det, demo["test"], info)
    torch.testing.assert_close(out.image_scores, ref.image_scores, rtol=0, atol=ATOL)
    torch.testing.assert_close(out.anomaly_maps, ref.anomaly_maps, rtol=0, atol=ATOL)
    assert out.labels.tolist() == (ref.image_scores >= info.image_threshold).tolist()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["ablation_b", "ablation_c"])
def test_ablations_export(demo, info, tmp_path, variant) -> None:
    """B (concatenated streams on a grid) and C (separate layers, one region); D is FAPM's graph."""
    det = fit(variant, demo["train"], info)
    path = export_onnx(det, tmp_path / "m.onnx", info)  # checks against eager at batches 1 and 3
    out = OnnxRuntimeScorer(path).score_rgb(demo["test"])
    torch.testing.assert_close(out.image_scores, eager(det, demo["test"], info).image_scores, rtol=0, atol=ATOL)


@pytest.mark.parametrize("variant", ["fapm_nbhd", "fapm_nbhd_shift", "fapm_uneven"])
def test_neighbourhood_exports(demo, info, tmp_path, variant) -> None:
    """Radius-1 windows (clip with the support-set score, and shift; on an uneven 3x3 grid too) equal
    eager in ONNX Runtime."""
    det = fit(variant, demo["train"], info)
    path = export_onnx(det, tmp_path / "m.onnx", info)  # checks against eager at batches 1 and 3
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (demo["test"], demo["test"][:2]):
        scores, maps, _ = session.run(None, {"images": batch.numpy()})
        ref = eager(det, batch, info)
        np.testing.assert_allclose(scores, ref.image_scores.numpy(), rtol=0, atol=ATOL)
        np.testing.assert_allclose(maps, ref.anomaly_maps.numpy(), rtol=0, atol=ATOL)
    # the graph holds the memory once, not a (2r+1)² union
    sizes = sum(t.numel() for t in det.memories[0].memory.unsqueeze(0))
    import onnx

    model = onnx.load(str(path))
    largest = max(int(np.prod(init.dims)) for init in model.graph.initializer)
    assert largest <= max(sizes, max(p.numel() for p in det.extractor.parameters()))


def test_raw_graph_refuses_another_size(exported) -> None:
    _, path = exported["fapm"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="invalid dimensions"):
        session.run(None, {"images": np.zeros((1, 3, 96, 96), np.float32)})


def test_runs_in_a_fresh_interpreter_without_fapm(exported, demo, info, tmp_path: Path) -> None:
    det, path = exported["fapm"]
    np.save(tmp_path / "images.npy", demo["test"].numpy())
    code = (
        "import json, sys, numpy as np, onnxruntime as ort\n"
        "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "meta = json.loads(s.get_modelmeta().custom_metadata_map['fapm'])\n"
        "scores, maps, labels = s.run(None, {'images': np.load(sys.argv[2])})\n"
        "np.save(sys.argv[3], scores)\n"
        "print(json.dumps({'fapm': any(m.split('.')[0] == 'fapm' for m in sys.modules),\n"
        "                  'torch': 'torch' in sys.modules, 'size': meta['image_size'], 'maps': list(maps.shape)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "images.npy"), str(tmp_path / "s.npy")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"fapm": False, "torch": False, "size": info.image_size, "maps": [len(demo["test"]), 64, 64]}
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), eager(det, demo["test"], info).image_scores.numpy(),
                               rtol=0, atol=ATOL)


def test_export_refuses_unfitted_detector(info, tmp_path) -> None:
    from fapm.models.detector import NotFittedError
    from tests.deploy.deploy_helpers import VARIANTS

    with pytest.raises(NotFittedError, match="fitted"):
        export_onnx(VARIANTS["fapm"](), tmp_path / "x.onnx", info)


@pytest.mark.slow
@pytest.mark.parametrize("fx", [True, False], ids=["timm_fx", "timm_stages"])
def test_timm_efficientnet_exports(demo, info, tmp_path, monkeypatch, fx) -> None:
    """A timm backbone with TF "same" padding and folded BNs exports to ONNX and TorchScript, equal to eager,
    whether timm's FX extraction or its feature stages (FX failing) read the layers."""
    import warnings

    from fapm.models.adaptive import AdaptiveCoreset
    from fapm.models.detector import MemoryDetector
    from fapm.models.features import FeatureExtractor

    if not fx:
        def refuse(*args, **kwargs):
            raise RuntimeError("no fx")

        monkeypatch.setattr("timm.models.create_feature_extractor", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = FeatureExtractor("tf_efficientnet_lite0", ["blocks.2", "blocks.4"], library="timm", pretrained="false")
    assert backbone.method == ("fx" if fx else "timm_features")
    det = MemoryDetector(backbone, grid=(2, 2), coreset=AdaptiveCoreset(0.3)).eval()
    with torch.inference_mode():
        det.collect(normalised(demo["train"], info))
        det.build()
    path = export_onnx(det, tmp_path / "m.onnx", info)  # checks against eager at batches 1 and 3
    out = OnnxRuntimeScorer(path).score_rgb(demo["test"])
    want = eager(det, demo["test"], info)
    torch.testing.assert_close(out.image_scores, want.image_scores, rtol=0, atol=ATOL)
    assert float(want.image_scores.std()) > 1e-3
    from fapm.deploy.graph import BackboneGraph

    graph = BackboneGraph(det, info.mean, info.std).eval()
    traced = torch.jit.trace(graph, demo["test"][:2], check_trace=False)
    for got, ref in zip(traced(demo["test"]), graph(demo["test"])):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
