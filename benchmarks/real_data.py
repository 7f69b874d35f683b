"""FAPM on real photographs: the MTD magnetic tiles with the offline trained VGG16-BN.

    python -m benchmarks.real_data [--max-train 200] [--model fapm] [--out DIR] [override ...]

Uses ``../shared/data/mtd`` (MVTec layout, category ``magnetic_tile``: 728 normal training
images, 594 test images with pixel masks) and ``../shared/weights/vgg16_bn_craft_features.pt``
(``backbone=vgg16_bn_craft``: ``features.32``/``features.39`` in place of layer2/layer3), the
only trained CNN available offline (random-init backbones are at chance on these photographs).
``--max-train N`` builds the memory from a seeded random subset of N training images (the
subset is a folder of symbolic links, so the data module is the ordinary MVTec one); the whole
test set is always scored. Extra arguments are Hydra overrides of ``conf/train.yaml``.

Prints the Table-1-style row (image / pixel AUROC, AUPRO, F1-max, FPS, latency) and the image
AUROC per defect type, and writes them with the run (metrics.json, figures/) under ``--out``.
``../shared`` is never needed by the test suite; without it this script stops with a message.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


import numpy as np

REPO = Path(__file__).resolve().parents[1]
CATEGORY = "magnetic_tile"
WEIGHTS_FILE = "vgg16_bn_craft_features.pt"


def shared_paths(shared: Path) -> tuple[Path, Path]:
    """``(dataset root, weights file)`` inside ``shared``; ``SystemExit`` naming what is missing."""
    data_root = shared / "data" / "mtd"
    weights = shared / "weights" / WEIGHTS_FILE
    missing = [str(p) for p in (data_root / CATEGORY / "train" / "good", weights) if not p.exists()]
    if missing:
        raise SystemExit(
            "benchmarks/real_data.py needs the shared real data and weights, not found:\n  "
            + "\n  ".join(missing)
            + f"\nPoint --shared (or FAPM_SHARED) at the folder holding data/mtd and weights/{WEIGHTS_FILE}."
        )
    return data_root, weights


def subset_root(data_root: Path, target: Path, max_train: int | None, seed: int) -> tuple[Path, int]:
    """An MVTec-layout root under ``target`` whose ``train/good`` holds ``max_train`` seeded
    random training images (symbolic links); ``test`` and ``ground_truth`` link to the originals."""
    source = data_root / CATEGORY
    images = sorted(p for p in (source / "train" / "good").iterdir() if p.is_file())
    if max_train is None or max_train >= len(images):
        return data_root, len(images)
    if max_train < 1:
        raise SystemExit(f"--max-train must be >= 1, got {max_train}")
    keep = sorted(np.random.default_rng(seed).permutation(len(images))[:max_train].tolist())
    category = target / CATEGORY
    train = category / "train" / "good"
    train.mkdir(parents=True, exist_ok=True)
    for i in keep:
        link = train / images[i].name
        if not link.exists():
            link.symlink_to(images[i].resolve())
    for name in ("test", "ground_truth"):
        link = category / name
        if not link.exists():
            link.symlink_to((source / name).resolve(), target_is_directory=True)
    return target, len(keep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", default=os.environ.get("FAPM_SHARED", str(REPO.parent / "shared")))
    parser.add_argument("--max-train", type=int, default=200, help="training images (seeded subset); 0 = all")
    parser.add_argument("--model", default="fapm", help="conf/model/<name>.yaml (fapm, patchcore, ablation_b...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output folder (default logs/benchmarks/real_data/<time>)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.distance_scale=relative")
    args = parser.parse_args(argv)

    data_root, weights = shared_paths(Path(args.shared).expanduser().resolve())
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(args.out) if args.out else REPO / "logs" / "benchmarks" / "real_data" / stamp
    out.mkdir(parents=True, exist_ok=True)
    root, n_train = subset_root(data_root, out / "data", args.max_train or None, args.seed)

    os.environ.setdefault("FAPM_ROOT", str(REPO))
    from fapm.conf import compose
    from fapm.pipeline.train import train
    from fapm.reporting.runs import read_run_metrics
    from fapm.reporting.table import defect_table, run_table, to_markdown

    overrides = [
        "data=mtd",
        f"data.root={root}",
        f"data.category={CATEGORY}",
        "backbone=vgg16_bn_craft",
        f"backbone.weights={weights}",
        f"model={args.model}",
        f"seed={args.seed}",
        f"paths.root_dir={REPO}",
        f"paths.log_dir={out}",
        f"paths.output_dir={out / 'run'}",
        "logger=csv",
        *args.overrides,
    ]
    cfg = compose(overrides)
    start = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - start

    run = read_run_metrics(out / "run", metrics)
    tables = [run_table(run)] + [t for t in [defect_table([run])] if t is not None]
    text = "\n".join(to_markdown(t) for t in tables)
    header = (
        f"MTD {CATEGORY}, {n_train} training images, {metrics.get('test_images', 'all')} test images; "
        f"model {args.model}, backbone vgg16_bn_craft ({WEIGHTS_FILE}); wall {wall:.0f} s; "
        f"{os.cpu_count()} CPU(s), torch threads {__import__('torch').get_num_threads()}\n"
    )
    print("\n" + header + "\n" + text)
    (out / "report.md").write_text(header + "\n" + text)
    print(f"run folder: {out / 'run'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
