"""The model file is data: safetensors + a validated JSON header; crafted files are refused, nothing runs."""

import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fapm.builders import build_memory_detector
from fapm.inference import FAPM
from fapm.model_file import (
    FORMAT_VERSION,
    KEY_ENV,
    ModelFileError,
    _read_raw,
    checksum,
    load_detector,
    read_model_file,
    save_model,
    signature,
)
from fapm.settings import BackboneSettings, MemorySettings

ROOT = Path(__file__).resolve().parents[2]
SIDE = 64
PREPROCESS = {"image_size": SIDE, "crop_size": SIDE, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _rewrite(source: Path, target: Path, header_edit=None, tensor_edit=None, key: bytes | None = None) -> Path:
    """Copy a model file with an edit; the checksum (and, with ``key``, the signature) is recomputed, so
    only the edit itself can make the copy fail - exactly what an attacker can do."""
    header, tensors = _read_raw(source)
    if header_edit is not None:
        header_edit(header)
    if tensor_edit is not None:
        tensor_edit(tensors)
    header["checksum"] = checksum(header, tensors)
    header["signature"] = signature(header, tensors, key) if key is not None else None
    save_file(tensors, str(target), metadata={"fapm": json.dumps(header)})
    return target


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    """``(detector, path)``: a resnet18 (random init) FAPM fitted in-process and saved."""
    model = MemorySettings(grid=(2, 2), image_score="max")
    backbone = BackboneSettings(name="resnet18", pretrained="false", seed=0)
    with pytest.warns(UserWarning, match="RANDOM"):
        detector = build_memory_detector(model, backbone, seed=0)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 3, SIDE, SIDE, generator=g)
    detector.collect(base + 0.3 * torch.randn(6, 3, SIDE, SIDE, generator=g))
    detector.build()
    path = tmp_path_factory.mktemp("file") / "model.safetensors"
    thresholds = {"image": {"quantile": 1.5, "f1": None, "min": 0.5, "max": 2.0}, "pixel": {}, "n_normal": 2}
    save_model(path, detector, model, backbone, PREPROCESS, thresholds=thresholds, facts=detector.facts())
    return detector.eval(), path


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))


def test_saved_model_scores_like_the_fitted_one(fitted, images: torch.Tensor) -> None:
    detector, path = fitted
    loaded, file = load_detector(path)
    assert file.model.grid == (2, 2) and file.backbone.name == "resnet18" and not file.backbone_included
    with torch.no_grad():
        a, b = detector(images), loaded(images)
    assert torch.equal(a.image_scores, b.image_scores) and torch.equal(a.anomaly_maps, b.anomaly_maps)
    for m1, m2 in zip(detector.memories, loaded.memories):
        assert torch.equal(m1.memory, m2.memory) and torch.equal(m1.lengths, m2.lengths)


def test_neighbourhood_settings_round_trip(fitted, tmp_path: Path, images: torch.Tensor) -> None:
    """Radius and border are stored with the model; the memory is stored once whatever the radius."""
    detector, path = fitted
    model = MemorySettings(grid=(2, 2), image_score="max", neighbourhood=2, neighbourhood_border="shift")
    backbone = BackboneSettings(name="resnet18", pretrained="false", seed=0)
    target = save_model(tmp_path / "nbhd.safetensors", detector, model, backbone, PREPROCESS, facts=detector.facts())
    loaded, file = load_detector(target)
    assert file.model.neighbourhood == 2 and file.model.neighbourhood_border == "shift"
    assert loaded.neighbourhood == 2 and loaded.scorer.neighbourhood_border == "shift"
    assert _read_raw(target)[1].keys() == _read_raw(path)[1].keys()
    detector.scorer.neighbourhood, detector.scorer.neighbourhood_border = 2, "shift"
    try:
        with torch.no_grad():
            assert torch.equal(detector(images).image_scores, loaded(images).image_scores)
    finally:
        detector.scorer.neighbourhood, detector.scorer.neighbourhood_border = 0, "clip"


def test_alignment_reference_round_trips(tmp_path: Path, images: torch.Tensor) -> None:
    """``model.align``: the fit-time reference and the resolved choice are tensors of the file."""
    model = MemorySettings(grid=(2, 2), image_score="max", align="auto", align_resolution=64)
    backbone = BackboneSettings(name="resnet18", pretrained="false", seed=0)
    with pytest.warns(UserWarning, match="RANDOM"):
        detector = build_memory_detector(model, backbone, seed=0)
    g = torch.Generator().manual_seed(0)
    detector.collect(torch.randn(1, 3, SIDE, SIDE, generator=g) + 0.1 * torch.randn(6, 3, SIDE, SIDE, generator=g))
    detector.build()
    path = save_model(tmp_path / "aligned.safetensors", detector, model, backbone, PREPROCESS, facts=detector.facts())
    tensors = _read_raw(path)[1]
    assert torch.equal(tensors["aligner.reference"], detector.aligner.reference)
    loaded, file = load_detector(path)
    assert file.model.align == "auto" and file.facts["alignment"]["recommendation"] == detector.aligner.resolved
    assert loaded.aligner.resolved == detector.aligner.resolved == "translation"
    assert torch.equal(loaded.aligner.reference, detector.aligner.reference)
    with torch.no_grad():
        assert torch.equal(detector.eval()(images).anomaly_maps, loaded(images).anomaly_maps)


def test_file_is_a_plain_safetensors_file(fitted) -> None:
    _, path = fitted
    header, tensors = _read_raw(path)
    assert header["format"] == "fapm-model" and header["format_version"] == FORMAT_VERSION
    assert header["facts"]["weights"].startswith("random")
    assert not any(name.startswith("extractor.") for name in tensors)  # backbone rebuilt from its source
    assert set(tensors) == {f"memories.{i}.{t}" for i in (0, 1) for t in ("memory", "lengths", "d_max", "enlarged")}
    assert header["checksum"] == checksum(header, tensors)
    assert path.read_bytes()[:2] != b"PK"  # not a zip/pickle container


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 0.7, 0.999])
def test_truncated_file(fitted, tmp_path: Path, fraction: float) -> None:
    data = fitted[1].read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelFileError, match="cut.safetensors"):
        read_model_file(bad)


@pytest.mark.parametrize("where", [0.002, 0.01, 0.5, 0.9])
def test_corrupt_bytes(fitted, tmp_path: Path, where: float) -> None:
    data = bytearray(fitted[1].read_bytes())
    i = int(len(data) * where)
    data[i] ^= 0x5A
    bad = tmp_path / "flip.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError):
        read_model_file(bad)


def test_changed_tensor_fails_the_checksum(fitted, tmp_path: Path) -> None:
    header, tensors = _read_raw(fitted[1])
    tensors["memories.0.memory"] = tensors["memories.0.memory"] + 1
    bad = tmp_path / "changed.safetensors"
    save_file(tensors, str(bad), metadata={"fapm": json.dumps(header)})  # checksum NOT recomputed
    with pytest.raises(ModelFileError, match="checksum does not match"):
        read_model_file(bad)


def test_other_format_versions(fitted, tmp_path: Path) -> None:
    newer = _rewrite(fitted[1], tmp_path / "v9.safetensors", lambda h: h.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match="upgrade fapm"):
        read_model_file(newer)
    older = _rewrite(fitted[1], tmp_path / "v2.safetensors", lambda h: h.update(format_version=2))
    with pytest.raises(ModelFileError, match="re-train"):
        read_model_file(older)


def test_non_model_files(tmp_path: Path) -> None:
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "text.safetensors").write_text("hello")
    (tmp_path / "random.bin").write_bytes(os.urandom(4096))
    torch.save({"state_dict": {}}, tmp_path / "lightning.ckpt")  # a zip/pickle container
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))  # no fapm header
    for name, message in (
        ("missing.safetensors", "not found"),
        ("empty.safetensors", "corrupt"),
        ("text.safetensors", "corrupt"),
        ("random.bin", "corrupt"),
        ("lightning.ckpt", "unpickling can run code"),
        ("plain.safetensors", "without a fapm-model header"),
    ):
        with pytest.raises(ModelFileError, match=message):
            read_model_file(tmp_path / name)


# ----------------------------------------------------------------------- crafted files: no code runs
def _evil_pickle(tmp_path: Path, marker: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (Path.write_text, (marker, "pwned"))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Evil()))
    return path


INJECTIONS = {
    "model_search": lambda h, m, p: h["model"]["search"].update(_target_="pathlib.Path.write_text", self=str(m), data="x"),
    "model_top": lambda h, m, p: h["model"].update(_target_="builtins.open", file=str(m), mode="w"),
    "backbone": lambda h, m, p: h["backbone"].update(_target_="pathlib.Path.touch", self=str(m)),
    "data": lambda h, m, p: h.update(data={"_target_": "pathlib.Path.touch", "self": str(m)}),
    "nested_torch_load": lambda h, m, p: h["model"].update(
        k={"_target_": "torch.load", "f": str(p), "weights_only": False}
    ),
    "preprocess": lambda h, m, p: h["preprocess"].update(_target_="os.system", command=f"touch {m}"),
}


@pytest.mark.parametrize("where", sorted(INJECTIONS))
def test_code_injection_is_refused_everywhere(fitted, tmp_path: Path, where: str) -> None:
    marker = tmp_path / "side_effect"
    evil = _evil_pickle(tmp_path, marker)
    crafted = _rewrite(fitted[1], tmp_path / "crafted.safetensors", lambda h: INJECTIONS[where](h, marker, evil))
    with pytest.raises(ModelFileError, match="asks to call code|invalid settings"):
        FAPM.load(crafted)
    assert not marker.exists()


def test_crafted_file_is_refused_by_predict_and_eval(fitted, tmp_path: Path) -> None:
    marker = tmp_path / "side_effect"
    evil = _evil_pickle(tmp_path, marker)
    crafted = _rewrite(fitted[1], tmp_path / "crafted.safetensors", lambda h: INJECTIONS["nested_torch_load"](h, marker, evil))
    image = tmp_path / "in.png"
    from PIL import Image

    Image.new("RGB", (SIDE, SIDE), (120, 120, 120)).save(image)
    for script, args in (
        ("predict.py", [f"ckpt_path={crafted}", f"input={image}", f"output={tmp_path / 'out'}"]),
        ("eval.py", [f"ckpt_path={crafted}", f"hydra.run.dir={tmp_path / 'eval'}"]),
    ):
        proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0, script
        assert "asks to call code" in proc.stdout + proc.stderr, (script, proc.stderr[-2000:])
    assert not marker.exists()
    assert not (tmp_path / "out" / "results.csv").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h["model"].update(foo=1), r"model\.foo: unknown key"),
        (lambda h: h["model"].update(k="four"), r"model\.k: expected an integer"),
        (lambda h: h["model"].update(family="pickle"), r"model\.family: must be one of"),
        (lambda h: h["model"].update(neighbourhood=-1), r"model\.neighbourhood: must be in \[0, 64\]"),
        (lambda h: h["model"].update(neighbourhood_border="wrap"), r"model\.neighbourhood_border: must be one of"),
        (lambda h: h["model"].update(align="affine"), r"model\.align: must be one of"),
        (lambda h: h["backbone"].update(pool_size=0), r"backbone\.pool_size: must be in \[1, 31\]"),
        (lambda h: h.update(extra={"a": 1}), r"unknown header entries \['extra'\]"),
        (lambda h: h.update(thresholds=[1, 2]), r"thresholds: expected a group of keys"),
    ],
)
def test_invalid_settings_are_refused_by_name(fitted, tmp_path: Path, edit, message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        read_model_file(_rewrite(fitted[1], tmp_path / "bad.safetensors", edit))


def _set(name, value):
    return lambda t: t.__setitem__(name, value(t[name]))


@pytest.mark.parametrize(
    ("header_edit", "tensor_edit", "message"),
    [
        (None, _set("memories.0.memory", lambda m: m.index_fill(2, torch.tensor([0]), float("nan"))), "NaN"),
        (None, _set("memories.1.memory", lambda m: m[..., :100].contiguous()), "has 100 channels but the backbone"),
        (lambda h: h["backbone"].update(name="resnet34"), None, "ask for backbone resnet34 but .* built with resnet18"),
        (lambda h: h["backbone"].update(layers=["layer1", "layer3"]), None, r"ask for layers \['layer1'"),
        (lambda h: h["model"].update(grid=[4, 4]), None, r"ask for grid \[4, 4\]"),
        (lambda h: (h["model"].update(grid=[4, 4]), h["facts"].update(grid=[4, 4])), None, "expected .16 regions"),
        (None, _set("memories.0.lengths", lambda x: x * 0), r"lengths .* must be in \[1"),
        (None, _set("memories.0.lengths", lambda x: x + 10_000), r"lengths .* must be in \[1"),
        (None, lambda t: t.pop("memories.1.d_max"), "missing"),
        (None, lambda t: t.update({"memories.2.memory": torch.zeros(4, 2, 3)}), "unexpected"),
        (lambda h: h["model"].update(fusion="concat"), None, "unexpected"),
        (None, _set("memories.0.lengths", lambda x: x.float()), "torch.float32, expected torch.int64"),
    ],
)
def test_file_claims_are_checked_against_its_contents(fitted, tmp_path, header_edit, tensor_edit, message) -> None:
    bad = _rewrite(fitted[1], tmp_path / "claims.safetensors", header_edit, tensor_edit)
    with pytest.raises(ModelFileError, match=message):
        load_detector(bad)


# ------------------------------------------------------------------------------------ signing
def test_signed_files(fitted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, images: torch.Tensor) -> None:
    detector, path = fitted
    monkeypatch.setenv(KEY_ENV, "s3cret")
    with pytest.raises(ModelFileError, match="not signed"):
        read_model_file(path)  # an unsigned file while a key is set
    signed = FAPM(*load_detector_unsigned(path)).save(tmp_path / "signed.safetensors")
    file = read_model_file(signed)
    assert file.signed and file.verified
    assert torch.equal(FAPM.load(signed).score(images).image_scores, detector(images).image_scores)
    # tampering with a recomputed checksum (what anyone can do) fails the signature
    tampered = _rewrite(signed, tmp_path / "t.safetensors", lambda h: h["model"].update(k=1))
    header, stored = _read_raw(signed)
    with pytest.raises(ModelFileError, match="not signed"):
        read_model_file(tampered)
    resigned = _rewrite(signed, tmp_path / "t2.safetensors", lambda h: h["model"].update(k=1), key=b"guess")
    with pytest.raises(ModelFileError, match="signature does not match"):
        read_model_file(resigned)
    monkeypatch.setenv(KEY_ENV, "another")
    with pytest.raises(ModelFileError, match="signature does not match"):
        read_model_file(signed)
    monkeypatch.delenv(KEY_ENV)
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    monkeypatch.setenv("FAPM_MODEL_KEY_FILE", str(key_file))
    assert read_model_file(signed).verified
    assert header["signature"] == signature(header, stored, b"s3cret")


def load_detector_unsigned(path: Path):
    """Load ``path`` ignoring the configured key (to re-save it signed)."""
    key = os.environ.pop(KEY_ENV)
    try:
        return load_detector(path)
    finally:
        os.environ[KEY_ENV] = key


# ----------------------------------------------------------------------------- backbone source
def test_backbone_weights_file_must_match_its_hash(fitted, tmp_path: Path) -> None:
    import torchvision

    weights = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)

    def edit(h):
        h["backbone"]["weights"] = str(weights)
        h["facts"]["weights"] = f"file:{weights} sha256=0123456789ab"

    with pytest.raises(ModelFileError, match="rebuilt as file:.*sha256=(?!0123456789ab)"):
        load_detector(_rewrite(fitted[1], tmp_path / "hash.safetensors", edit))


def test_random_backbone_must_rebuild_with_the_recorded_seed(fitted, tmp_path: Path) -> None:
    reseeded = _rewrite(fitted[1], tmp_path / "seed.safetensors", lambda h: h["backbone"].update(seed=7))
    with pytest.raises(ModelFileError, match="built with backbone weights random.*seed 0.*rebuilt as.*seed 7"):
        load_detector(reseeded)


def test_save_with_backbone_included(fitted, tmp_path: Path, images: torch.Tensor) -> None:
    detector, path = fitted
    full = FAPM.load(path).save(tmp_path / "full.safetensors", include_backbone=True)
    file = read_model_file(full)
    assert file.backbone_included and any(k.startswith("extractor.body.") for k in file.tensors)
    assert full.stat().st_size > 5 * path.stat().st_size
    # the stored weights are used, not the recorded source: the init seed no longer matters
    moved = _rewrite(full, tmp_path / "full_seed.safetensors", lambda h: h["backbone"].update(seed=12345))
    again = FAPM.load(moved)
    with torch.no_grad():
        assert torch.equal(again.score(images).image_scores, detector(images).image_scores)


def test_fresh_process_loads_without_hydra_or_lightning(fitted, images: torch.Tensor, tmp_path: Path) -> None:
    detector, path = fitted
    torch.save(images, tmp_path / "images.pt")
    code = (
        "import json, sys, torch\n"
        "from fapm.inference import FAPM\n"
        "m = FAPM.load(sys.argv[1])\n"
        "out = m.score(torch.load(sys.argv[2]))\n"
        "torch.save((out.image_scores, out.anomaly_maps), sys.argv[3])\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules} & {'hydra', 'omegaconf', 'lightning', "
        "'pytorch_lightning'})))\n"
    )
    result = tmp_path / "scores.pt"
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "images.pt"), str(result)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    scores, maps = torch.load(result, weights_only=True)
    with torch.no_grad():
        here = detector(images)
    assert torch.equal(scores, here.image_scores) and torch.equal(maps, here.anomaly_maps)


# ------------------------------------------------------------------------------------ writing
def test_disk_full_reports_enospc_and_leaves_nothing(fitted, tmp_path: Path, monkeypatch) -> None:
    import errno

    import safetensors.torch

    detector, path = fitted
    file = read_model_file(path)

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    target = tmp_path / "out" / "model.safetensors"
    with pytest.raises(ModelFileError, match=r"No space left on device \(ENOSPC\)"):
        save_model(target, detector, file.model, file.backbone, PREPROCESS)
    assert list(target.parent.iterdir()) == []  # no model file, no temporary file


# ----------------------------------------------------------------------------------- fuzzing
def test_fuzzed_files_give_one_clear_error_and_no_side_effect(fitted, tmp_path: Path) -> None:
    """Random mutations of a valid file: a ModelFileError (or a clean load), never another exception."""
    data = fitted[1].read_bytes()
    header_len = int.from_bytes(data[:8], "little") + 8
    rng = random.Random(0)
    work = tmp_path / "fuzz"
    work.mkdir()
    before = set(os.listdir(tmp_path))
    outcomes = {"refused": 0, "loaded": 0}
    for trial in range(150):
        mutated = bytearray(data)
        kind = trial % 5
        if kind == 0:  # flip bytes in the header
            for _ in range(rng.randint(1, 8)):
                mutated[rng.randrange(0, header_len)] ^= rng.randrange(1, 256)
        elif kind == 1:  # flip bytes anywhere
            for _ in range(rng.randint(1, 8)):
                mutated[rng.randrange(0, len(mutated))] ^= rng.randrange(1, 256)
        elif kind == 2:  # truncate
            mutated = mutated[: rng.randrange(0, len(mutated))]
        elif kind == 3:  # insert junk
            at = rng.randrange(0, len(mutated))
            mutated[at:at] = os.urandom(rng.randint(1, 64))
        else:  # a wrong header length
            mutated[:8] = rng.randrange(0, 2**63).to_bytes(8, "little")
        target = work / f"m{trial}.safetensors"
        target.write_bytes(bytes(mutated))
        try:
            load_detector(target)
            outcomes["loaded"] += 1
        except ModelFileError:
            outcomes["refused"] += 1
    assert outcomes["refused"] >= 140  # a mutation that loads must have hit nothing that matters
    assert set(os.listdir(tmp_path)) == before and sorted(os.listdir(work)) == sorted(
        f"m{i}.safetensors" for i in range(150)
    )


def test_packaged_weights_round_trip(tmp_path: Path, monkeypatch) -> None:
    """backbone.weights=imagenet:<package>: recorded as such and rebuilt from the package on load (not
    from a download, not random: a changed package changes the scores)."""
    import timm

    from fapm.models import offline_weights

    torch.manual_seed(4)
    state = timm.create_model("tf_efficientnet_lite0").state_dict()
    package = tmp_path / "package.pth"
    torch.save({f"_t{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(state.items())}, package)
    monkeypatch.setitem(offline_weights.OFFLINE_SOURCES, "fake-package", lambda: package)
    model = MemorySettings(grid=(2, 2))
    backbone = BackboneSettings(name="tf_efficientnet_lite0", library="timm", layers=("blocks.2", "blocks.4"),
                                pretrained="false", weights="imagenet:fake-package")
    detector = build_memory_detector(model, backbone, seed=0)
    g = torch.Generator().manual_seed(0)
    detector.collect(torch.randn(4, 3, SIDE, SIDE, generator=g))
    detector.build()
    assert detector.facts()["weights"] == "imagenet:fake-package"
    path = tmp_path / "model.safetensors"
    save_model(path, detector, model, backbone, PREPROCESS, facts=detector.facts())
    loaded, file = load_detector(path)
    assert not file.backbone_included and file.facts["weights"] == "imagenet:fake-package"
    images = torch.randn(2, 3, SIDE, SIDE, generator=g)
    with torch.no_grad():
        assert torch.equal(loaded(images).image_scores, detector.eval()(images).image_scores)
    # the weights really come from the package at load time
    torch.save({f"_t{i}.{k.rsplit('.', 1)[-1]}": v * 1.5 for i, (k, v) in enumerate(state.items())}, package)
    other, _ = load_detector(path)
    with torch.no_grad():
        assert not torch.equal(other(images).image_scores, detector(images).image_scores)
