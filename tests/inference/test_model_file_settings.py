"""Every section of a model file goes through the schema (issue 25, points 1-3 and 9).

``preprocess`` and ``thresholds`` are validated like ``model``/``backbone``/``data``; size-like
values are bounded; folders, FIFOs and devices are refused by type; an empty signing key is an
error; a fuzzer mutates the settings sections and only ever gets a :class:`ModelFileError`.
"""

import json
import os
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fapm.builders import build_memory_detector
from fapm.inference import FAPM
from fapm.model_file import KEY_ENV, KEY_FILE_ENV, ModelFileError, _read_raw, checksum, read_model_file, save_model
from fapm.settings import BackboneSettings, MemorySettings

SIDE = 64
PREPROCESS = {"image_size": SIDE, "crop_size": SIDE, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = MemorySettings(grid=(2, 2), image_score="max")
    backbone = BackboneSettings(name="resnet18", pretrained="false", seed=0)
    with pytest.warns(UserWarning, match="RANDOM"):
        detector = build_memory_detector(model, backbone, seed=0)
    g = torch.Generator().manual_seed(0)
    detector.collect(torch.randn(4, 3, SIDE, SIDE, generator=g))
    detector.build()
    path = tmp_path_factory.mktemp("file") / "model.safetensors"
    thresholds = {"image": {"quantile": 1.5, "f1": None, "min": 0.5, "max": 2.0}, "pixel": {}, "n_normal": 2,
                  "image_q": 0.99, "pixel_q": 0.99}
    save_model(path, detector, model, backbone, PREPROCESS, thresholds=thresholds, facts=detector.facts())
    return path


def _rewrite(source: Path, target: Path, edit) -> Path:
    """A copy with ``edit`` applied to the header and the checksum recomputed (what anyone can do)."""
    header, tensors = _read_raw(source)
    edit(header)
    header["checksum"] = checksum(header, tensors)
    header["signature"] = None
    save_file(tensors, str(target), metadata={"fapm": json.dumps(header)})
    return target


def _set(section: str, key: str, value):
    return lambda h: h[section].__setitem__(key, value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("preprocess", "image_size", "big"), r"preprocess\.image_size: expected an integer"),
        (_set("preprocess", "image_size", 20000), r"preprocess\.image_size: must be in \[16, 4096\]"),
        (_set("preprocess", "crop_size", 0), r"preprocess\.crop_size: must be in \[16, 4096\]"),
        (_set("preprocess", "crop_size", 128), r"preprocess\.crop_size: must be <= image_size"),
        (_set("preprocess", "mean", [0.5, 0.5]), r"preprocess\.mean: needs 3 values"),
        (_set("preprocess", "std", [0.2, 0.0, 0.2]), r"preprocess\.std: every value must be > 0"),
        (_set("preprocess", "interpolation", "lanczos"), r"preprocess\.interpolation: unknown key"),
        (_set("preprocess", "mean", [0.5, 0.5, 0.5]), r"preprocess\.mean/std differ from the backbone's normalisation"),
        (lambda h: h.update(preprocess="224"), r"preprocess: expected a group of keys"),
        (lambda h: h["thresholds"]["image"].update(quantile="high"), r"thresholds\.image\.quantile: expected a number"),
        (lambda h: h["thresholds"]["image"].update(top=1), r"thresholds\.image\.top: unknown key"),
        (_set("thresholds", "image", [1.5]), r"thresholds\.image: expected a group of keys"),
        (_set("thresholds", "n_normal", -3), r"thresholds\.n_normal: must be >= 0"),
        (_set("thresholds", "image_q", 2), r"thresholds\.image_q: must be in \(0\.0, 1\.0\)"),
        (_set("thresholds", "bias", 1), r"thresholds\.bias: unknown key"),
        (_set("model", "neighbourhood", 10**9), r"model\.neighbourhood: must be in \[0, 64\]"),
        (_set("model", "blur_sigma", 1e5), r"model\.blur_sigma: must be in \[0\.0, 64\.0\]"),
        (_set("model", "k", 10**6), r"model\.k: must be in \[1, 1024\]"),
        (_set("model", "grid", [5000, 5000]), r"model\.grid: each side must be <= 64"),
        (_set("model", "memory_cap", 10**12), r"model\.memory_cap: must be in \[1, 10000000\]"),
        (_set("backbone", "seed", -5), r"backbone\.seed: must be in \[0, 4294967295\]"),
    ],
)
def test_every_section_is_validated_by_name(model_path: Path, tmp_path: Path, edit, message: str) -> None:
    """Failed before: preprocess/thresholds raised ValueError/TypeError at load (or scored at 20000 px)."""
    bad = _rewrite(model_path, tmp_path / "bad.safetensors", edit)
    with pytest.raises(ModelFileError, match=message):
        read_model_file(bad)
    with pytest.raises(ModelFileError, match=message):
        FAPM.load(bad)


def test_folders_fifos_and_devices_are_refused_by_type(tmp_path: Path) -> None:
    """Failed before: each said 'model file not found'."""
    folder = tmp_path / "m.safetensors"
    folder.mkdir()
    with pytest.raises(ModelFileError, match="is a folder, not a model file"):
        read_model_file(folder)
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError, match=r"is a FIFO \(named pipe\), not a model file"):
        read_model_file(fifo)  # never opened: that would block
    device = tmp_path / "zero.safetensors"
    device.symlink_to("/dev/zero")
    with pytest.raises(ModelFileError, match="is a device, not a model file"):
        read_model_file(device)
    dangling = tmp_path / "gone.safetensors"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ModelFileError, match="broken symbolic link"):
        read_model_file(dangling)
    with pytest.raises(ModelFileError, match="model file not found"):
        read_model_file(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("variable", [KEY_ENV, KEY_FILE_ENV])
def test_an_empty_signing_key_is_an_error(model_path: Path, tmp_path: Path, monkeypatch, variable: str) -> None:
    """Failed before: FAPM_MODEL_KEY='' loaded a tampered file with verified=False and no warning."""
    tampered = _rewrite(model_path, tmp_path / "t.safetensors", _set("thresholds", "n_normal", 7))
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    monkeypatch.setenv(variable, "")
    with pytest.raises(ModelFileError, match=f"{variable} is set but empty"):
        read_model_file(tampered)
    with pytest.raises(ModelFileError, match=f"{variable} is set but empty"):
        FAPM.load(model_path).save(tmp_path / "copy.safetensors")
    monkeypatch.setenv(variable, "   ")
    with pytest.raises(ModelFileError, match="set but empty"):
        read_model_file(model_path)


# ------------------------------------------------------------------------------------ fuzz
_HOSTILE = [
    None, True, False, 0, -1, 1, 3, 2**31, 2**63, -(2**63), 1e9, -1e9, 1e308, 0.5, -0.0, 1.0001, "", "abc", "1e9",
    "../../etc/passwd", [], [1], [1, 2], [1, 2, 3], ["a", "b", "c"], [[1]], {}, {"a": 1}, {"_target_": "os.system"},
    {"quantile": "x"}, {"quantile": 1e308},
]


def _mutation(rng: random.Random, header: dict) -> str:
    """Apply one random mutation to a settings section of ``header``; return what it did."""
    section = rng.choice(["model", "backbone", "data", "preprocess", "thresholds", "model.search"])
    if section == "data" and not isinstance(header.get("data"), dict):
        header["data"] = {"type": "mvtec", "root": "demo", "image_size": SIDE, "crop_size": SIDE}
    if not isinstance(header.get("model"), dict) or not isinstance(header.get(section.split(".")[0]), dict):
        return f"{section} already replaced"
    if section == "model.search":
        target = header["model"].setdefault("search", {})
    else:
        target = header[section]
    if not isinstance(target, dict):
        return f"{section} already replaced"
    action = rng.random()
    keys = list(target) or ["x"]
    if action < 0.1:  # replace the whole section
        value = rng.choice(_HOSTILE)
        if section == "model.search":
            header["model"]["search"] = value
        else:
            header[section] = value
        return f"{section}={value!r}"
    if action < 0.2 and target:  # delete a key
        key = rng.choice(keys)
        del target[key]
        return f"del {section}.{key}"
    key = rng.choice(keys) if action < 0.9 else rng.choice(["foo", "_target_", "image", "grid", "k"])
    value = rng.choice(_HOSTILE)
    target[key] = value
    return f"{section}.{key}={value!r}"


def test_settings_fuzz_gives_only_model_file_errors_and_no_side_effect(model_path: Path, tmp_path: Path) -> None:
    """300 random mutations of the settings sections (checksum recomputed): a clean load or one
    ModelFileError naming the file; nothing else, no file created. Failed before: 42 of 700 mutations of
    ``preprocess``/``thresholds`` raised ValueError or TypeError."""
    rng = random.Random(25)
    base_header, tensors = _read_raw(model_path)
    work = tmp_path / "fuzz"
    work.mkdir()
    target = work / "m.safetensors"
    outcomes = {"refused": 0, "loaded": 0}
    for trial in range(300):
        header = json.loads(json.dumps(base_header))
        what = [_mutation(rng, header) for _ in range(rng.randint(1, 3))]
        header["checksum"] = checksum(header, tensors)
        header["signature"] = None
        save_file(tensors, str(target), metadata={"fapm": json.dumps(header)})
        try:
            file = read_model_file(target)
        except ModelFileError as err:
            assert str(target) in str(err), (what, err)
            outcomes["refused"] += 1
            continue
        except Exception as err:  # noqa: BLE001 - the assertion says which mutation escaped
            pytest.fail(f"mutation {what} raised {type(err).__name__}: {err}")
        # what read_model_file accepts must also build the scoring objects (preprocess, thresholds)
        from fapm.data.transforms import Preprocess
        from fapm.inference.thresholds import Thresholds

        try:
            Preprocess.from_dict(file.preprocess)
            Thresholds.from_dict(file.thresholds)
        except Exception as err:  # noqa: BLE001
            pytest.fail(f"mutation {what} passed the schema but then raised {type(err).__name__}: {err}")
        outcomes["loaded"] += 1
    assert outcomes["refused"] >= 200, outcomes
    assert sorted(os.listdir(work)) == ["m.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["fuzz"]
