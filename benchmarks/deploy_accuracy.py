"""Accuracy of the deployed FAPM on the real tiles: eager fp32 vs ONNX/OpenVINO fp32 vs INT8 backbones.

    python -m benchmarks.deploy_accuracy --backbone vgg16_bn_craft --out benchmarks/results/deploy_accuracy_vgg.json
    python -m benchmarks.deploy_accuracy --backbone efficientnet_lite0 --out benchmarks/results/deploy_accuracy_effnet.json

Data: ``../shared/data/mtd`` (MVTec layout, ``magnetic_tile``), a seeded subset of
``--max-train`` normal training images, the whole test set (resize 256, centre crop 224).
Weights: ``../shared/weights`` — CRAFT's VGG16-BN (``features.32``/``features.39``) or the
ImageNet EfficientNet-Lite0 (timm, ``blocks.2``/``blocks.4``). FAPM with the default
settings of ``conf/model/fapm.yaml`` (7×7 grid, adaptive coreset, k = 4, softmax score).

Rows: ``eager fp32`` (the torch detector), ``onnxruntime fp32`` and ``openvino fp32`` (the
exported graph of that same detector), and for every ``--int8`` runtime an INT8 model made
by :func:`fapm.deploy.build_int8` (NNCF, ``--calibration`` training images chosen by
``--seed``; the memories rebuilt from that runtime's INT8 features). Image / pixel AUROC in
points and their change from eager fp32. Accuracy does not depend on machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CATEGORY = "magnetic_tile"
BACKBONES = {
    # name: (library, model name, layers, weights file)
    "vgg16_bn_craft": ("torchvision", "vgg16_bn", ["features.32", "features.39"], "vgg16_bn_craft_features.pt"),
    "efficientnet_lite0": ("timm", "efficientnet_lite0", ["blocks.2", "blocks.4"], "tf_efficientnet_lite0_imagenet.pt"),
}


def load_split(root: Path, max_train: int, seed: int, max_test: int = 0, size: int = 256, crop: int = 224):
    """``(train RGB [N, 3, S, S], test RGB [T, 3, S, S], labels [T], masks [T, S, S])`` in [0, 1].

    ``max_test`` > 0 keeps a seeded random subset of the test images, the same share of
    every folder (good and each defect type)."""
    from fapm.data import load_rgb
    from fapm.data.transforms import Preprocess

    pre = Preprocess(image_size=size, crop_size=crop)
    mean, std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)

    def rgb(path: Path) -> torch.Tensor:
        return pre(load_rgb(path)) * std + mean

    cat = root / CATEGORY
    train = sorted((cat / "train" / "good").glob("*.png"))
    if max_train and max_train < len(train):
        keep = sorted(np.random.default_rng(seed).permutation(len(train))[:max_train].tolist())
        train = [train[i] for i in keep]
    tests, labels, masks = [], [], []
    folders = {f: sorted(p for p in f.glob("*.png") if not p.stem.endswith("_mask"))
               for f in sorted(p for p in (cat / "test").iterdir() if p.is_dir())}
    total = sum(len(v) for v in folders.values())
    if max_test and max_test < total:
        rng = np.random.default_rng(seed)
        folders = {f: [v[i] for i in sorted(rng.permutation(len(v))[: max(1, round(len(v) * max_test / total))])]
                   for f, v in folders.items()}
    for folder, paths in folders.items():
        for path in paths:
            tests.append(rgb(path))
            labels.append(int(folder.name != "good"))
            if folder.name == "good":
                masks.append(pre.empty_mask()[0])
            else:
                from PIL import Image

                mask_path = cat / "ground_truth" / folder.name / f"{path.stem}_mask.png"
                masks.append(pre.mask(np.asarray(Image.open(mask_path).convert("L")))[0])
    return (torch.stack([rgb(p) for p in train]), torch.stack(tests), torch.tensor(labels),
            torch.stack(masks).bool())


def make_detector(backbone: str, weights_dir: Path, seed: int):
    """FAPM as ``fapm train model=fapm backbone=<backbone>`` builds it (the package's settings and builders)."""
    from fapm.builders import build_memory_detector
    from fapm.conf import compose
    from fapm.pipeline.common import validated_settings

    overrides = ["model=fapm", f"backbone={backbone}", f"seed={seed}"]
    if backbone == "vgg16_bn_craft":  # its weights live in this project's shared folder
        overrides.append(f"backbone.weights={weights_dir / BACKBONES[backbone][3]}")
    settings = validated_settings(compose(overrides))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = build_memory_detector(settings.model, settings.backbone, settings.seed)
    return det.eval(), settings.backbone


def score_all(scorer, images: torch.Tensor, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor, float]:
    scores, maps = [], []
    start = time.perf_counter()
    for lo in range(0, len(images), batch):
        out = scorer.score_rgb(images[lo : lo + batch])
        scores.append(out.image_scores)
        maps.append(out.anomaly_maps)
    return torch.cat(scores), torch.cat(maps), time.perf_counter() - start


def metrics(scores: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    from fapm.metrics.functional import auroc

    return {"image_auroc": 100 * auroc(scores.numpy(), labels.numpy()),
            "pixel_auroc": 100 * auroc(maps.flatten().numpy(), masks.flatten().numpy())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", default=os.environ.get("FAPM_SHARED", str(REPO.parent / "shared")))
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="vgg16_bn_craft")
    parser.add_argument("--max-train", type=int, default=200)
    parser.add_argument("--max-test", type=int, default=0, help="seeded stratified test subset (0 = all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration", type=int, default=64, help="INT8 calibration images (from the training set)")
    parser.add_argument("--fp32", default="onnxruntime,openvino", help="runtimes of the fp32 export")
    parser.add_argument("--int8", default="openvino,onnxruntime", help="runtimes of INT8 models")
    parser.add_argument("--out", default=None, help="JSON output")
    args = parser.parse_args(argv)
    shared = Path(args.shared)
    data_root, weights_dir = shared / "data" / "mtd", shared / "weights"
    if not (data_root / CATEGORY).is_dir() or not weights_dir.is_dir():
        raise SystemExit(f"needs {data_root / CATEGORY} and {weights_dir} (--shared or FAPM_SHARED)")

    from fapm.deploy import DeployInfo, build_int8, export_onnx, make_scorer

    torch.manual_seed(args.seed)
    train, test, labels, masks = load_split(data_root, args.max_train, args.seed, args.max_test)
    det, backbone = make_detector(args.backbone, weights_dir, args.seed)
    info = DeployInfo(image_size=test.shape[-1], mean=tuple(backbone.mean), std=tuple(backbone.std),
                      facts={"backbone": args.backbone, "model": "fapm"})
    mean, std = torch.tensor(info.mean).view(1, 3, 1, 1), torch.tensor(info.std).view(1, 3, 1, 1)
    start = time.perf_counter()
    with torch.inference_mode():
        det.reset_fit(expected_images=len(train))
        for lo in range(0, len(train), 8):
            det.collect((train[lo : lo + 8] - mean) / std)
        det.build()
    report: dict = {"backbone": args.backbone, "train_images": len(train), "test_images": len(test),
                    "seed": args.seed, "calibration_images": args.calibration, "rows": {},
                    "fit_s": time.perf_counter() - start, "memory_vectors": det.memory_vectors()}
    # exported graphs are work files: under logs/ (ignored by git), never beside the JSON results
    work = REPO / "logs" / "deploy_accuracy" / (Path(args.out).stem if args.out else args.backbone)
    work.mkdir(parents=True, exist_ok=True)

    def row(name: str, scorer, extra: dict | None = None) -> None:
        scores, maps, seconds = score_all(scorer, test)
        report["rows"][name] = {**metrics(scores, maps, labels, masks), "score_s": seconds, **(extra or {})}
        base = report["rows"].get("eager fp32")
        if base:
            report["rows"][name]["d_image"] = report["rows"][name]["image_auroc"] - base["image_auroc"]
            report["rows"][name]["d_pixel"] = report["rows"][name]["pixel_auroc"] - base["pixel_auroc"]
        print(f"[deploy_accuracy] {name}: {report['rows'][name]}", file=sys.stderr, flush=True)

    row("eager fp32", make_scorer("torch", detector=det, info=info))
    fp32 = [r for r in args.fp32.split(",") if r]
    if fp32:
        path = export_onnx(det, work / "fapm_fp32.onnx", info, check_images=test[:4])
        for runtime in fp32:
            row(f"{runtime} fp32", make_scorer(runtime, path=path))
    for runtime in [r for r in args.int8.split(",") if r]:
        start = time.perf_counter()
        model = build_int8(det, train, info, work / f"fapm_int8_{runtime}.onnx", calibration_images=args.calibration,
                           seed=args.seed, runtime=runtime)
        row(f"{runtime} int8", make_scorer(runtime, path=model.path),
            {"build_s": time.perf_counter() - start, "memory_vectors": model.detector.memory_vectors()})
    lines = [f"MTD {CATEGORY}: {len(train)} training images (seed {args.seed}), {len(test)} test images, "
             f"backbone {args.backbone}, FAPM defaults; INT8 calibration {args.calibration} training images",
             "", "| runtime | image AUROC | pixel AUROC | Δ image | Δ pixel |", "|---|---:|---:|---:|---:|"]
    for name, r in report["rows"].items():
        lines.append(f"| {name} | {r['image_auroc']:.2f} | {r['pixel_auroc']:.2f} | {r.get('d_image', 0):+.2f} | "
                     f"{r.get('d_pixel', 0):+.2f} |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
