"""A loaded model file served by ONNX Runtime or OpenVINO, and the exports of ``fapm export``.

``FAPM.load(path, runtime="onnxruntime" | "openvino")`` exports the whole scoring path to
ONNX once and keeps it in a cache (``$FAPM_CACHE``, default ``~/.cache/fapm``) under the
model file's checksum and thresholds, so later loads of the same file reuse it; the runtime
then scores the pre-processed images. ``fapm export`` writes the same graph (ONNX), an
OpenVINO IR of it, or an INT8 version whose backbone NNCF quantized and whose memories
were rebuilt from the INT8 features of the model's own training images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fapm import __version__
from fapm.deploy.info import DeployInfo
from fapm.errors import FapmError
from fapm.fileio import replace_atomically

if TYPE_CHECKING:
    from fapm.deploy.runtimes import Scorer
    from fapm.inference.loaded import LoadedModel

log = logging.getLogger(__name__)

#: Engines that run an exported graph (``torch`` runs the detector itself).
EXPORTED_ENGINES = ("onnxruntime", "openvino")


class DeployError(FapmError, RuntimeError):
    """A model that cannot be exported or served by the asked runtime."""

    hint = 'install the runtimes with pip install -e ".[deploy]"; runtime=torch needs none'


def cache_dir() -> Path:
    """Where exported graphs of loaded model files are kept (``$FAPM_CACHE`` or ``~/.cache/fapm``)."""
    return Path(os.environ.get("FAPM_CACHE") or Path.home() / ".cache" / "fapm").expanduser()


def _key(model: LoadedModel, info: DeployInfo) -> str:
    text = json.dumps(
        {"checksum": model.file.checksum, "info": info.to_json(), "fapm": __version__, "torch": str(torch.__version__)},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _check_exportable(model: LoadedModel) -> None:
    from fapm.models.detector import MemoryDetector

    if not isinstance(model.detector, MemoryDetector):
        raise DeployError(
            f"{model.file.path}: only memory-bank models (FAPM, PatchCore, ablations) export to ONNX; "
            "this is a LAMP model (use runtime=torch)"
        )


def cached_onnx(model: LoadedModel) -> tuple[Path, bool]:
    """The ONNX graph of ``model`` (exported once, then reused from :func:`cache_dir`) and whether
    it was verified with the signing key.

    The cached graph carries the model file's checksum and its own digest (signed with the key
    when one is set, :mod:`fapm.deploy.digest`); a cached graph that does not match them (edited,
    corrupt, from another file, unsigned while a key is set) is rebuilt, never used.
    """
    from fapm.deploy import digest
    from fapm.deploy.onnx_export import export_onnx

    _check_exportable(model)
    info = DeployInfo.from_model(model)
    target = cache_dir() / f"{_key(model, info)}.onnx"
    if target.is_file():
        try:
            return target, digest.verify(target, model.file.checksum)
        except digest.DigestError as err:
            log.warning("cached graph not used, rebuilding it: %s", err)
            target.unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting %s to ONNX once (cached in %s)", model.file.path, target.parent)
    detector = model.detector.cpu().eval()
    replace_atomically(target, lambda tmp: export_onnx(detector, tmp, info))
    digest.write(target, model.file.checksum)
    return target, digest.verify(target, model.file.checksum)


def scorer_for(model: LoadedModel, engine: str, precision: str = "f32", threads: int | None = None) -> Scorer:
    """A scorer of ``model`` in ``engine`` (``onnxruntime`` or ``openvino``), on the CPU."""
    from fapm.deploy.runtimes import make_scorer

    if engine not in EXPORTED_ENGINES:
        raise DeployError(f"runtime must be torch, onnxruntime or openvino, got {engine!r}")
    if model.device.type != "cpu":
        raise DeployError(f"runtime={engine} runs on the CPU; got device={model.device} (use runtime=torch on a GPU)")
    if engine == "onnxruntime" and precision != "f32":
        raise DeployError(f"runtime=onnxruntime runs f32 only, got precision={precision!r}")
    try:
        path, verified = cached_onnx(model)
        options: dict[str, Any] = {"threads": threads}
        if engine == "openvino":
            options["precision"] = precision
        scorer = make_scorer(engine, path=path, info=DeployInfo.from_model(model), **options)
        scorer.verified = verified
        return scorer
    except ImportError as err:
        raise DeployError(f"runtime={engine} needs {err.name or 'its package'}: {err}") from err


# ------------------------------------------------------------------------------------ export
def export_model(model: LoadedModel, out: Path, fmt: str, precision: str = "fp32", calibration_images: int = 64,
                 seed: int = 0) -> Path:
    """Write ``model``'s whole scoring path as ``fmt`` (``onnx`` or ``openvino``) to ``out``.

    ``precision="int8"`` quantizes the backbone with NNCF on the model's own normal training
    images (from its recorded data settings), rebuilds the memories from the INT8 features and
    decides new thresholds on its held-out normal images, scored by the INT8 graph.
    """
    from fapm.deploy.onnx_export import export_onnx

    import tempfile

    _check_exportable(model)
    if fmt == "openvino" and out.suffix != ".xml":
        raise DeployError(f"an OpenVINO IR is an .xml file (with its .bin beside it), got {out}")
    if fmt == "openvino":
        try:
            import openvino as ov
        except ImportError as err:
            raise DeployError(f"format=openvino needs openvino: {err}") from err
    out.parent.mkdir(parents=True, exist_ok=True)
    info = DeployInfo.from_model(model)
    # OpenVINO is converted from an intermediate ONNX file in a private folder: never a file
    # beside the output (an existing model.onnx next to model.xml stays untouched)
    with tempfile.TemporaryDirectory(prefix="fapm-export-") as scratch:
        onnx_path = out if fmt == "onnx" else Path(scratch) / "graph.onnx"
        if precision == "int8":
            _export_int8(model, onnx_path, info, calibration_images, seed)
        else:
            replace_atomically(onnx_path, lambda tmp: export_onnx(model.detector.cpu().eval(), tmp, info))
        if fmt == "openvino":
            ov.save_model(ov.convert_model(str(onnx_path)), str(out))
    return out


def _export_int8(model: LoadedModel, path: Path, info: DeployInfo, calibration_images: int, seed: int) -> None:
    from fapm.builders import build_datamodule
    from fapm.deploy.quantize import build_int8
    from fapm.deploy.runtimes import make_scorer
    from fapm.inference.thresholds import normal_thresholds

    if model.file.data is None:
        raise DeployError(f"{model.file.path} records no dataset: INT8 export needs its normal training images")
    datamodule = build_datamodule(model.file.data)
    datamodule.setup()
    mean = torch.tensor(model.preprocess.mean).view(3, 1, 1)
    std = torch.tensor(model.preprocess.std).view(3, 1, 1)

    def rgb(dataset: Any) -> list[torch.Tensor]:
        return [dataset[i]["image"] * std + mean for i in range(len(dataset))]

    train = rgb(datamodule.train_dataset())
    built = build_int8(model.detector.cpu().eval(), train, info, path, calibration_images=calibration_images, seed=seed)
    if datamodule.val_records:  # thresholds of the INT8 scores, from the same held-out normal images
        scorer = make_scorer("openvino", path=path, info=built.info)
        held = torch.stack(rgb(datamodule.val_dataset()))
        out = scorer.score_rgb(held)
        q = model.thresholds
        decided = normal_thresholds(out.image_scores, out.anomaly_maps, q.image_q or 0.995, q.pixel_q or 0.995)
        log.info("INT8 thresholds from %d held-out normal images: image %.4g", decided.n_normal,
                 decided.image.quantile)
        final = built.info.replace(image_threshold=decided.image.quantile, pixel_threshold=decided.pixel.quantile)
        _restamp(path, final)


def _restamp(path: Path, info: DeployInfo) -> None:
    """Set an exported graph's label threshold (its ``image_threshold`` constant) and metadata to ``info``'s."""
    import onnx
    from onnx import numpy_helper

    from fapm.deploy.info import metadata_props

    graph = onnx.load(str(path))
    threshold = float("inf") if info.image_threshold is None else float(info.image_threshold)
    found = [t for t in graph.graph.initializer if t.name.endswith("image_threshold")]
    if len(found) != 1:
        raise DeployError(f"{path}: expected one image_threshold constant in the graph, found {len(found)}")
    found[0].CopyFrom(numpy_helper.from_array(torch.tensor(threshold).numpy(), found[0].name))
    props = metadata_props(info)
    for entry in graph.metadata_props:
        if entry.key in props:
            entry.value = props[entry.key]
    replace_atomically(path, lambda tmp: onnx.save(graph, str(tmp)))
