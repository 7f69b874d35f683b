"""``fapm export key=value ...``: never overwrites its input or a file it did not create (issue 25, point 6)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from fapm import cli


def _export(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["export", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    ([], "model= is required"),
    (["m.safetensors"], "arguments are key=value, got 'm.safetensors'"),
    (["model=m.safetensors", "--format", "onnx"], "arguments are key=value, got '--format'"),
    (["model=m.safetensors", "fmt=onnx"], "unknown key 'fmt'"),
    (["model=m.safetensors", "format=tflite"], "format must be torchscript, onnx, openvino; got 'tflite'"),
    (["model=m.safetensors", "precision=int4"], "precision must be fp32 or int8; got 'int4'"),
    (["model=m.safetensors", "precision=int8"], "precision=int8 needs format=onnx or format=openvino"),
    (["model=m.safetensors", "overwrite=maybe"], "overwrite must be true or false; got 'maybe'"),
    (["model=m.safetensors", "format=openvino", "out=m.onnx"], "format=openvino writes a .xml file, but out=m.onnx"),
    (["model=m.safetensors", "format=onnx", "out=m.pt"], "format=onnx writes a .onnx file"),
    (["model=m.safetensors", "out=m.safetensors"], "format=torchscript writes a .pt file"),
])
def test_bad_arguments_are_one_line_before_any_work(capsys, args, message) -> None:
    """Failed before: --out into the model overwrote it; a non-.xml OpenVINO name left a stray .onnx."""
    code, err = _export(capsys, *args)
    assert code == 2 and message in err.splitlines()[0] and "Traceback" not in err


def test_help_lists_the_keys(capsys) -> None:
    assert cli.main(["export", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fapm export model=<model.safetensors> [key=value ...]")
    for key in cli.EXPORT_KEYS:
        assert f"\n  {key} " in out, key


def test_export_never_clobbers(model_path: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Failed before: `--out v.safetensors` replaced the model with a TorchScript file (exit 0)."""
    written = []

    def fake(model, out: Path, precision: str) -> Path:  # the command's checks, without tracing a graph
        written.append(out)
        out.write_bytes(b"graph %d" % len(written))
        return out

    monkeypatch.setitem(cli.EXPORTERS, "torchscript", fake)
    model = tmp_path / "v.safetensors"
    model.write_bytes(model_path.read_bytes())
    before = model.read_bytes()
    for args in ([f"out={model}"], [f"out={model}", "overwrite=true"]):
        code, err = _export(capsys, f"model={model}", *args, "format=torchscript")
        assert code == 2 and model.read_bytes() == before
    link = tmp_path / "link.pt"
    link.symlink_to(model)
    code, err = _export(capsys, f"model={model}", f"out={link}", "overwrite=true")
    assert code == 2 and "would overwrite the model file" in err and model.read_bytes() == before

    out = tmp_path / "new" / "deeper" / "m.pt"  # a missing folder is created
    code, err = _export(capsys, f"model={model}", f"out={out}")
    assert code == 0, err
    assert out.read_bytes() == b"graph 1"
    code, err = _export(capsys, f"model={model}", f"out={out}")
    assert code == 2 and "already exist(s); nothing was written" in err and "overwrite=true" in err
    assert out.read_bytes() == b"graph 1" and len(written) == 1
    assert _export(capsys, f"model={model}", f"out={out}", "overwrite=true")[0] == 0
    assert out.read_bytes() == b"graph 2" and model.read_bytes() == before


def test_export_writes_a_digest_beside_the_graph(model_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.pt"
    code, err = _export(capsys, f"model={model_path}", f"out={out}")
    assert code == 0, err
    assert out.is_file() and (tmp_path / "m.pt.fapm-digest.json").is_file()
    code, err = _export(capsys, f"model={model_path}", f"out={out}")  # the digest counts as an output too
    assert code == 2 and "already exist(s)" in err


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs the deploy extra")
def test_openvino_export_leaves_an_onnx_beside_it_alone(model_path: Path, tmp_path: Path, capsys) -> None:
    """Failed before: `--format openvino --out m.xml` deleted an existing m.onnx beside it."""
    mine = tmp_path / "m.onnx"
    mine.write_bytes(b"the user's own file")
    code, err = _export(capsys, f"model={model_path}", "format=openvino", f"out={tmp_path / 'm.xml'}")
    assert code == 0, err
    assert mine.read_bytes() == b"the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.onnx", "m.xml", "m.xml.fapm-digest.json"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(model_path: Path, tmp_path: Path, capsys) -> None:
    code, err = _export(capsys, f"model={model_path}", "device=cuda", f"out={tmp_path / 'm.pt'}")
    assert code == 2 and "CUDA is not available on this machine" in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_predict_checks_the_model_files_image_size_against_the_machine(model_path: Path, demo_images: list[Path],
                                                                       tmp_path: Path, monkeypatch, capsys) -> None:
    """The memory estimate applies to a model file's values too (issue 25, point 2), before any image is read."""
    import fapm.settings

    monkeypatch.setattr(fapm.settings, "available_memory", lambda: 1024**2)  # 1 MiB free
    code = cli.main(["predict", f"ckpt_path={model_path}", f"input={demo_images[0]}", f"output={tmp_path / 'out'}",
                     "batch_size=4", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "preprocess.image_size: 64 px with batch_size=4 needs about" in err, err
    assert not (tmp_path / "out" / "results.csv").exists()
