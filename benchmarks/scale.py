"""Scale benchmark (issue 13): thousands of training images on one machine.

Stages (sub-commands), each calling the package's own stages (``build_memory_detector``,
``MemoryDetector.collect / add_features / build / nearest``, ``FaissKNN`` / ``TorchKNN``,
the MVTec data module and metrics):

* ``extract --sizes 500,1000,2000``: generated 224² images (seeded smooth textures, image
  ``i`` from seed ``i``, so a smaller set is a prefix of a larger one) through WRN-50-2
  (RANDOM init: timing only, no ImageNet weights offline) with ``detector.extract``; the
  pooled streams are written once to a raw float32 cache (extraction s/img is measured here).
* ``fit --sizes ... --options ...``: one child process per (size, option): the cached
  features are fed to ``detector.add_features`` in batches of 16 (read with ``readinto``,
  never memory-mapped, so RSS is the detector's), then ``detector.build()``; reports build
  s, peak RSS (the child's ``ru_maxrss``), memory vectors and search ms/img (``nearest`` on
  held-out generated images at batch 1). PatchCore options also time FAISS flat/IVF on
  the same memory and give IVF's recall@1 against the exact search.
* ``micro``: search micro-benchmark torch vs FAISS flat vs IVF over memory sizes
  1e3..1e6 x dims 512/1024/1536 (sizes capped by ``--max-floats``).
* ``real``: accuracy on the real tiles (``../shared/data/mtd``, all training images) with
  the trained VGG16-BN (``backbone=vgg16_bn_craft``): exact vs scalable builds, image and
  pixel AUROC, on one set of extracted features.

Every stage prints a Markdown table and writes JSON under ``benchmarks/results/``.
Timings on a shared 2-core CPU: compare ratios within one run.

    python benchmarks/scale.py extract --sizes 500,1000,2000
    python benchmarks/scale.py fit --sizes 500,1000,2000 --options fapm_exact,fapm_fp16,fapm_scalable,patchcore
    python benchmarks/scale.py micro
    python benchmarks/scale.py real
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = Path(os.environ.get("FAPM_SCALE_CACHE", "/tmp/fapm_scale_cache"))
SIZE = 224
TEST_IMAGES = 20  # generated held-out images for the search timing (batch 1)

#: option → config overrides (the configs are the product's; nothing is re-implemented here)
OPTIONS: dict[str, list[str]] = {
    "fapm_exact": ["model=fapm"],
    "fapm_fp16": ["model=fapm", "model.feature_dtype=float16"],
    "fapm_proj": ["model=fapm", "model.feature_dtype=float16", "model.projection_dim=128"],
    "fapm_scalable": ["model=fapm_scalable"],
    "patchcore": ["model=patchcore"],
    "patchcore_fp16": ["model=patchcore", "model.feature_dtype=float16"],
}


def log(*parts: Any) -> None:
    print("[scale]", *parts, file=sys.stderr, flush=True)


def compose_settings(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fapm.conf import CONFIG_DIR
    from fapm.pipeline.common import validated_settings

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp", *overrides])
    return validated_settings(cfg)


def detector_for(overrides: list[str], extractor=None):
    from fapm.builders import build_memory_detector

    settings = compose_settings(["backbone=wide_resnet50_2", "backbone.pretrained=false", *overrides])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
        return build_memory_detector(settings.model, settings.backbone, settings.seed, extractor=extractor)


def generated_images(start: int, stop: int) -> torch.Tensor:
    """Images ``start..stop-1`` ``[B, 3, 224, 224]``: a smooth seeded texture shared by all
    (the 'product') plus per-image smooth variation and noise, normalised like real inputs."""
    base_gen = torch.Generator().manual_seed(12345)
    base = torch.nn.functional.interpolate(torch.randn(1, 3, 14, 14, generator=base_gen), size=SIZE, mode="bicubic")
    out = []
    for i in range(start, stop):
        g = torch.Generator().manual_seed(i)
        low = torch.nn.functional.interpolate(torch.randn(1, 3, 28, 28, generator=g), size=SIZE, mode="bilinear")
        out.append(base + 0.3 * low + 0.1 * torch.randn(1, 3, SIZE, SIZE, generator=g))
    return torch.cat(out)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "loadavg": [round(x, 2) for x in load]}


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2))
    log("wrote", path)
    return path


# --------------------------------------------------------------------------- extract
def cache_meta() -> dict[str, Any]:
    path = CACHE / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {}


@torch.inference_mode()
def cmd_extract(args: argparse.Namespace) -> None:
    """Extract WRN-50-2 streams of ``max(sizes)`` training + TEST_IMAGES test images to the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    n = max(int(s) for s in args.sizes.split(","))
    det = detector_for(["model=fapm"])
    det.eval()
    meta = cache_meta()
    done = int(meta.get("train_images", 0))
    if done >= n:
        log(f"cache already holds {done} images")
        return
    timings = meta.get("timings", [])
    for split, count, offset in (("test", TEST_IMAGES, 10_000_000), ("train", n, 0)):
        have = int(meta.get(f"{split}_images", 0))
        files = None
        start = time.perf_counter()
        for lo in range(have, count, args.batch):
            hi = min(count, lo + args.batch)
            streams = det.extract(generated_images(offset + lo, offset + hi))
            if files is None:
                files = [open(CACHE / f"{split}_{i}.f32", "ab") for i in range(len(streams))]
                meta["shapes"] = [list(s.shape[1:]) for s in streams]
            for f, s in zip(files, streams):
                f.write(s.contiguous().numpy().tobytes())
            if hi % (args.batch * 8) == 0 or hi == count:
                for f in files:
                    f.flush()
                meta[f"{split}_images"] = hi
                (CACHE / "meta.json").write_text(json.dumps(meta))
                log(f"{split}: {hi}/{count} images, {(time.perf_counter() - start) / max(hi - have, 1):.3f} s/img")
        if files:
            for f in files:
                f.close()
            if split == "train":
                timings.append({"images": count - have, "seconds": time.perf_counter() - start})
        meta[f"{split}_images"] = count
    meta["timings"] = timings
    meta["machine"] = machine()
    (CACHE / "meta.json").write_text(json.dumps(meta))


def read_streams(split: str, start: int, stop: int, meta: dict[str, Any]) -> list[torch.Tensor]:
    """Cached streams of images ``start..stop-1``, read into fresh tensors (no memory map)."""
    out = []
    for i, shape in enumerate(meta["shapes"]):
        per = math.prod(shape)
        t = torch.empty(stop - start, *shape)
        with open(CACHE / f"{split}_{i}.f32", "rb") as f:
            f.seek(start * per * 4)
            f.readinto(t.numpy().data.cast("B"))
        out.append(t)
    return out


def extraction_s_per_image(meta: dict[str, Any]) -> float | None:
    t = meta.get("timings") or []
    images = sum(x["images"] for x in t)
    return sum(x["seconds"] for x in t) / images if images else None


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--sizes", default="500,1000,2000")
    e.add_argument("--batch", type=int, default=16)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    {"extract": cmd_extract}[args.cmd](args)


if __name__ == "__main__":
    main()
