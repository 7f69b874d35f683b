"""``predict.py runtime=onnxruntime|openvino`` scores the demo test folder like the torch runtime."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from fapm.inference import FAPM
from fapm.pipeline.predict import predict
from tests.conftest import compose_config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("openvino") is None,
    reason="needs the deploy extra (pip install -e '.[deploy]')",
)


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _predict(model_path: Path, images: Path, out: Path, runtime: str, tmp_path: Path, monkeypatch) -> list[dict]:
    monkeypatch.setenv("FAPM_CACHE", str(tmp_path / "cache"))
    cfg = compose_config("predict", [f"ckpt_path={model_path}", f"input={images}", f"output={out}",
                                     f"runtime={runtime}", "progress=false", "batch_size=3"], tmp_path / runtime)
    assert predict(cfg).exit_code == 0
    return _rows(out)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_predict_runtime_writes_the_torch_results(model_path: Path, demo_root: Path, tmp_path: Path, monkeypatch,
                                                  runtime: str) -> None:
    images = demo_root / "bracket" / "test"
    torch_rows = _predict(model_path, images, tmp_path / "torch", "torch", tmp_path, monkeypatch)
    rows = _predict(model_path, images, tmp_path / runtime, runtime, tmp_path, monkeypatch)
    assert [r["path"] for r in rows] == [r["path"] for r in torch_rows] and len(rows) == 7
    for a, b in zip(torch_rows, rows):
        assert b["status"] == a["status"] == "ok"
        assert float(b["score"]) == pytest.approx(float(a["score"]), rel=1e-4, abs=1e-5)
        assert b["label"] == a["label"]
        assert (tmp_path / runtime / b["overlay"]).is_file() and (tmp_path / runtime / b["mask"]).is_file()
    assert sorted((tmp_path / "cache").glob("*.onnx"))  # exported once, reused by later loads


def test_a_second_load_reuses_the_cached_graph(model_path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAPM_CACHE", str(tmp_path / "cache"))
    FAPM.load(model_path, runtime="onnxruntime")
    (cached,) = (tmp_path / "cache").glob("*.onnx")
    stamp = cached.stat().st_mtime_ns
    FAPM.load(model_path, runtime="openvino")
    assert cached.stat().st_mtime_ns == stamp and len(list((tmp_path / "cache").glob("*.onnx"))) == 1
    # another threshold is another graph (its labels output differs)
    FAPM.load(model_path, runtime="onnxruntime", threshold=0.5)
    assert len(list((tmp_path / "cache").glob("*.onnx"))) == 2
