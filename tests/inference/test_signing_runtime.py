"""Signing holds through the runtime cache and exports (issue 25, point 3)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from fapm.deploy import digest
from fapm.inference import FAPM
from fapm.model_file import KEY_ENV

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="needs the deploy extra (pip install -e '.[deploy]')",
)


def _scale_memories(path: Path, factor: float) -> None:
    """Edit a cached graph the way an attacker would: every large float constant times ``factor``."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path))
    for tensor in graph.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32 and array.size > 100:
            tensor.CopyFrom(numpy_helper.from_array(array * factor, tensor.name))
    onnx.save(graph, str(path))


def test_an_edited_cache_is_rebuilt_and_verified_means_everything(
    model_path: Path, demo_images: list[Path], tmp_path: Path, monkeypatch
) -> None:
    """Failed before: an edited cached .onnx moved a score (28.6 -> 98.8) and the model still said verified."""
    monkeypatch.setenv("FAPM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(KEY_ENV, raising=False)
    plain = FAPM.load(model_path)
    monkeypatch.setenv(KEY_ENV, "secret")
    signed = plain.save(tmp_path / "signed.safetensors")  # signed with the key
    want = FAPM.load(signed).predict(demo_images[-1]).score

    first = FAPM.load(signed, runtime="onnxruntime")
    assert first.verified and first.file.verified
    assert first.predict(demo_images[-1]).score == pytest.approx(want, rel=1e-4)
    from fapm.inference.predict import predict_files

    assert predict_files(first, demo_images[-1], tmp_path / "out", progress=False).verified  # in summary.json
    (cached,) = (tmp_path / "cache").glob("*.onnx")
    assert digest.sidecar(cached).is_file()

    _scale_memories(cached, 3.0)  # the sidecar now lies about the bytes
    second = FAPM.load(signed, runtime="onnxruntime")
    assert second.verified
    assert second.predict(demo_images[-1]).score == pytest.approx(want, rel=1e-4)  # rebuilt, not the edit

    # without a key nothing is verified, whatever runs
    monkeypatch.delenv(KEY_ENV)
    assert not FAPM.load(signed, runtime="onnxruntime").verified
    assert not FAPM.load(signed).verified


def test_exported_graph_carries_a_digest_checked_before_use(model_path: Path, tmp_path: Path, monkeypatch) -> None:
    from fapm.deploy.runtimes import OnnxRuntimeScorer

    monkeypatch.delenv(KEY_ENV, raising=False)
    model = FAPM.load(model_path)
    monkeypatch.setenv(KEY_ENV, "secret")
    signed = FAPM.load(model.save(tmp_path / "signed.safetensors"))
    out = signed.export(tmp_path / "m.onnx", format="onnx")
    assert digest.sidecar(out).is_file()
    assert OnnxRuntimeScorer(out).verified
    images = torch.rand(1, 3, signed.preprocess.output_size, signed.preprocess.output_size)
    good = OnnxRuntimeScorer(out).score_rgb(images).image_scores
    _scale_memories(out, 3.0)
    with pytest.raises(digest.DigestError, match="has changed since it was exported"):
        OnnxRuntimeScorer(out)
    digest.sidecar(out).unlink()
    with pytest.raises(digest.DigestError, match="has no digest"):
        OnnxRuntimeScorer(out)
    monkeypatch.delenv(KEY_ENV)
    scorer = OnnxRuntimeScorer(out)  # no key, no digest: usable, but not verified
    assert not scorer.verified and not torch.allclose(scorer.score_rgb(images).image_scores, good)


def test_a_digest_recomputed_without_the_key_is_refused(tmp_path: Path, monkeypatch) -> None:
    """Anyone can recompute a sha256: with a key set, only a digest signed with it counts."""
    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"graph bytes")
    monkeypatch.delenv(KEY_ENV, raising=False)
    digest.write(graph, "abc")
    assert digest.verify(graph, "abc") is False  # intact, but nothing to verify it with
    monkeypatch.setenv(KEY_ENV, "secret")
    with pytest.raises(digest.DigestError, match="not signed with the signing key"):
        digest.verify(graph, "abc")
    digest.write(graph, "abc")
    assert digest.verify(graph, "abc") is True
    with pytest.raises(digest.DigestError, match="exported from another model file"):
        digest.verify(graph, "another")
    monkeypatch.setenv(KEY_ENV, "other key")
    with pytest.raises(digest.DigestError, match="not signed with the signing key"):
        digest.verify(graph, "abc")
    monkeypatch.setenv(KEY_ENV, "secret")
    graph.write_bytes(b"edited bytes")
    with pytest.raises(digest.DigestError, match="has changed since it was exported"):
        digest.verify(graph, "abc")
