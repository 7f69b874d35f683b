"""Are border regions biased by the neighbourhood search? (issue 14, point 6)

With ``model.neighbourhood: 1`` and ``neighbourhood_border: clip`` a region searches its own
memory and its neighbours' memories: 4 regions at a corner, 6 on an edge, 9 in the interior.
A region that searches fewer memories finds its nearest normal vector farther away, so its
scores may run higher on normal images (more false alarms at the border). ``shift`` moves the
window inward so every region searches 9 memories. This script measures, on one set of
extracted features, per region class (corner / edge / interior):

* ``normal mean``: mean patch score on the good test images, divided by the mean over all
  positions (1.00 = no bias; > 1 = the class scores higher on normal images);
* ``top-1% share / area``: the share of the highest 1 % of good-image patch scores that lies in
  the class, divided by the class's share of the area (1.00 = false alarms fall evenly);
* ``patch AUROC``: defect vs normal patches inside the class (all test images; a cell is
  defective when any mask pixel in it is), on the finest feature grid.

    python -m benchmarks.neighbourhood_border --data mtd --shared ../shared --max-train 200

Variants: E FAPM (each region its own memory), E + neighbourhood with ``clip`` and with
``shift``. Built through the package's settings and builders, like ``ablation_real.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

# benchmarks/ablation_real.py: the same data, features and builds
from benchmarks.ablation_real import add_data_args, build_on_features, dataset, load_features, settings_for

VARIANTS = {
    "E FAPM (own region)": ["model=fapm"],
    "E + neighbourhood, clip": ["model=fapm_nbhd", "model.neighbourhood_border=clip"],
    "E + neighbourhood, shift": ["model=fapm_nbhd", "model.neighbourhood_border=shift"],
}
CLASSES = ("corner", "edge", "interior")


def region_classes(grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``[H, W]`` class of each position's region: 0 corner, 1 edge, 2 interior."""
    gh, gw = grid
    h, w = size
    row = torch.arange(h) * gh // h
    col = torch.arange(w) * gw // w
    on_row = (row == 0) | (row == gh - 1)
    on_col = (col == 0) | (col == gw - 1)
    both = on_row[:, None] & on_col[None, :]
    either = on_row[:, None] | on_col[None, :]
    return torch.where(both, 0, torch.where(either, 1, 2))


@torch.inference_mode()
def measure(overrides: list[str], extractor, train_feats, test_feats, test_info) -> dict[str, Any]:
    settings = settings_for(overrides)
    det, _ = build_on_features(settings, extractor, train_feats)
    scores = []
    size = tuple(test_info["mask"].shape[-2:])
    for lo in range(0, len(test_info["label"]), 8):
        part = {k: v[lo : lo + 8] for k, v in test_feats.items()}
        scores.append(det.score_features(part, size).patch_scores)
    patch = torch.cat(scores)  # [M, H, W] nearest-neighbour distance per position (finest grid)
    size = tuple(patch.shape[-2:])
    classes = region_classes(tuple(settings.model.grid), size)
    defect = F.adaptive_max_pool2d(test_info["mask"].float().unsqueeze(1), size)[:, 0] > 0  # [M, H, W]
    good = test_info["label"] == 0
    normal = patch[good]
    # torch.quantile takes at most 2^24 values: the 99th percentile of a seeded sample of 10^6
    sample = normal.flatten()[torch.randperm(normal.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    top = normal >= torch.quantile(sample, 0.99)
    out: dict[str, Any] = {"grid": list(settings.model.grid), "feature_grid": list(size)}
    for c, name in enumerate(CLASSES):
        where = classes == c
        area = float(where.float().mean())
        sel = patch[:, where]
        out[name] = {
            "area": area,
            "normal_mean": float(normal[:, where].mean() / normal.mean()),
            "top1_share_over_area": float(top[:, where].float().sum() / top.float().sum()) / area,
            "patch_auroc": float(roc_auc_score(defect[:, where].flatten().numpy(), sel.flatten().numpy())),
        }
    out["patch_auroc_all"] = float(roc_auc_score(defect.flatten().numpy(), patch.flatten().numpy()))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(p)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
    torch.manual_seed(0)
    root, category, vgg_weights = dataset(args)
    bb = [f"backbone={args.backbone}"]
    if args.backbone == "vgg16_bn_craft" and vgg_weights is not None:
        bb.append(f"backbone.weights={vgg_weights}")
    extractor, train_feats, _, test_feats, test_info, _ = load_features(settings_for(bb), root, category, "[border]")
    report: dict[str, Any] = {"command": " ".join(sys.argv), "data": args.data, "category": category,
                              "backbone": args.backbone, "weights": str(extractor.weight_source),
                              "train_images": len(next(iter(train_feats.values()))),
                              "test_images": len(test_info["label"]), "variants": {}}
    for name, over in VARIANTS.items():
        print(f"[border] {name} …", file=sys.stderr, flush=True)
        report["variants"][name] = measure(bb + over, extractor, train_feats, test_feats, test_info)
    print(f"\n{args.data} / {category}, {args.backbone} ({report['weights']}), {report['train_images']} training "
          f"images, {report['test_images']} test images; ratios per region class (corner / edge / interior)\n")
    print("| variant | normal mean | top-1% share / area | patch AUROC | patch AUROC, all |")
    print("|---|---|---|---|---:|")
    for name, row in report["variants"].items():
        cols = [" / ".join(f"{row[c][key]:.2f}" if key != "patch_auroc" else f"{100 * row[c][key]:.1f}" for c in CLASSES)
                for key in ("normal_mean", "top1_share_over_area", "patch_auroc")]
        print(f"| {name} | {' | '.join(cols)} | {100 * row['patch_auroc_all']:.1f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
