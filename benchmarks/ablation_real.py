"""The paper's Table 2 (A..E, + E with neighbourhood search) and the adaptive-rule choices, on
one set of extracted features, plus the layer-wise vs concatenated distance relation.

    python benchmarks/ablation_real.py --data mtd --max-train 200          # real tiles, offline VGG16-BN
    python benchmarks/ablation_real.py --data demo --category bracket       # demo, random WRN-50-2

Every variant is composed from the real configs with ``experiment=ablation`` (same map and
image score for all), built on the SAME backbone and the SAME extracted features, and scored
with the project's metrics. ``--data mtd`` needs ``../shared`` (data/mtd and the VGG16-BN
weights); random-init features are at chance on those photographs, so that mode always uses
the trained VGG16-BN. Prints Markdown tables and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from fapm.conf import CONFIG_DIR
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from real_data import shared_paths, subset_root  # benchmarks/real_data.py

from fapm.data import MVTecDataModule
from fapm.metrics import AnomalyMetrics, names

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "A PatchCore": ["model=patchcore"],
    "B patch-wise": ["model=ablation_b"],
    "C layer-wise": ["model=ablation_c"],
    "D both": ["model=ablation_d"],
    "E FAPM": ["model=fapm"],
    "E + neighbourhood": ["model=fapm_nbhd"],
}
ADAPTIVE = {
    "E raw, D_th 0.5 (paper)": ["model=fapm"],
    "E per_channel, D_th 0.5": ["model=fapm", "model.distance_scale=per_channel"],
    "E relative, D_th 0.5": ["model=fapm", "model.distance_scale=relative"],
    "E quantile 0.5 (half enlarged)": ["model=fapm", "model.threshold_mode=quantile", "model.d_th=0.5"],
    "D (no rule), ratio 0.1": ["model=ablation_d"],
    "D (no rule), ratio 0.2": ["model=ablation_d", "model.coreset_ratio=0.2"],
}


def compose_cfg(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=/tmp", "experiment=ablation", *overrides])


@torch.inference_mode()
def extract(extractor: torch.nn.Module, loader: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Pooled layer features of a whole loader, plus labels/masks/types."""
    feats: dict[str, list[torch.Tensor]] = {}
    info: dict[str, list] = {"label": [], "mask": [], "defect_type": []}
    for batch in loader:
        for k, v in extractor(batch["image"]).items():
            feats.setdefault(k, []).append(v)
        info["label"].append(batch["label"])
        info["mask"].append(batch["mask"][:, 0].bool())
        info["defect_type"] += list(batch["defect_type"])
    return {k: torch.cat(v) for k, v in feats.items()}, {
        "label": torch.cat(info["label"]), "mask": torch.cat(info["mask"]), "defect_type": info["defect_type"]}


@torch.inference_mode()
def evaluate_variant(overrides: list[str], extractor, train_feats, test_feats, test_info, size) -> dict[str, Any]:
    cfg = compose_cfg(overrides)
    det = instantiate(cfg.model.module.detector, extractor=extractor)
    n = len(next(iter(train_feats.values())))
    for lo in range(0, n, 16):
        det.add_features(det.streams({k: v[lo : lo + 16] for k, v in train_feats.items()}))
    start = time.perf_counter()
    det.build()
    build_s = time.perf_counter() - start
    metrics = AnomalyMetrics()
    m = len(test_info["label"])
    search_s = 0.0
    for lo in range(0, m, 8):
        part = {k: v[lo : lo + 8] for k, v in test_feats.items()}
        t = time.perf_counter()
        results = det.nearest(det.streams(part))
        search_s += time.perf_counter() - t
        fused = det.fuse(results, len(part[next(iter(part))]))
        maps = det.to_map(fused, size)
        metrics.update(det.score(fused, results), test_info["label"][lo : lo + 8], maps,
                       test_info["mask"][lo : lo + 8], test_info["defect_type"][lo : lo + 8])
    res = metrics.compute()
    return {
        names.IMAGE_AUROC: res[names.IMAGE_AUROC], names.PIXEL_AUROC: res[names.PIXEL_AUROC],
        names.PIXEL_AUPRO: res[names.PIXEL_AUPRO], "memory_vectors": det.memory_vectors(),
        "build_s": build_s, "search_ms_per_image": 1000 * search_s / m,
        "enlarged": {s: int(mem.enlarged.sum()) for s, mem in zip(det.stream_names, det.memories)},
        "regions": {s: mem.num_regions for s, mem in zip(det.stream_names, det.memories)},
        "d_max_range": {s: [round(float(mem.d_max.min()), 4), round(float(mem.d_max.max()), 4)]
                        for s, mem in zip(det.stream_names, det.memories)},
    }


@torch.inference_mode()
def layerwise_relation(train_feats, test_feats, test_info, grid=(7, 7), max_test: int = 60) -> dict[str, Any]:
    """Per test position: S = Σ_j (nearest distance in layer j's region memory) — FAPM's fused
    score — against D = nearest distance of the concatenated vector (layer3 repeated 2×2) in
    the region's concatenated memory. Full memories (no coreset) isolate the effect of searching
    per layer."""
    from fapm.models.patch_memory import split_regions

    (n2, l2), (n3, l3) = list(train_feats.items())[:2]
    up = lambda x: x.repeat_interleave(2, -2).repeat_interleave(2, -1)  # noqa: E731
    # float64: cdist's expanded form in float32 has rounding comparable to small distances
    mem2, mem3 = split_regions(l2, grid).double(), split_regions(up(l3), grid).double()
    idx = torch.linspace(0, len(test_info["label"]) - 1, min(max_test, len(test_info["label"]))).long()
    q2 = split_regions(test_feats[n2][idx], grid).double()
    q3 = split_regions(up(test_feats[n3][idx]), grid).double()
    a2 = torch.cdist(q2, mem2).amin(-1)
    a3 = torch.cdist(q3, mem3).amin(-1)
    d = torch.cdist(torch.cat([q2, q3], -1), torch.cat([mem2, mem3], -1)).amin(-1)
    s = (a2 + a3).flatten()
    d = d.flatten()
    lower = (a2**2 + a3**2).sqrt().flatten()
    ratio = s / d.clamp_min(1e-12)

    def rank(x):
        return x.argsort().argsort().double()

    spearman = torch.corrcoef(torch.stack([rank(s), rank(d)]))[0, 1]
    return {
        "positions": int(s.numel()), "test_images": int(len(idx)),
        "pearson": float(torch.corrcoef(torch.stack([s, d]))[0, 1]), "spearman": float(spearman),
        "ratio_S_over_D": {"min": float(ratio.min()), "median": float(ratio.median()), "max": float(ratio.max())},
        "lower_bound_holds": bool((lower <= d * (1 + 1e-9)).all()),
        "upper_bound_holds": bool((s <= 2**0.5 * d * (1 + 1e-9)).all()),
    }


def table(rows: dict[str, dict[str, Any]], title: str) -> str:
    lines = [f"**{title}**", "", "| variant | image AUROC | pixel AUROC | AUPRO | memory vectors | enlarged regions "
             "| d_imax range | build s | search ms/img |", "|---|---:|---:|---:|---:|---|---|---:|---:|"]
    for name, r in rows.items():
        enl = ", ".join(f"{k} {v}/{r['regions'][k]}" for k, v in r["enlarged"].items())
        dmax = ", ".join(f"{k} {a:.3g}–{b:.3g}" for k, (a, b) in r["d_max_range"].items() if a == a)
        lines.append(f"| {name} | {100 * r[names.IMAGE_AUROC]:.1f} | {100 * r[names.PIXEL_AUROC]:.1f} | "
                     f"{100 * r[names.PIXEL_AUPRO]:.1f} | {r['memory_vectors']:,} | {enl} | {dmax or 'n/a'} | "
                     f"{r['build_s']:.1f} | {r['search_ms_per_image']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=["demo", "mtd"], default="mtd")
    p.add_argument("--category", default="bracket", help="demo category (--data demo)")
    p.add_argument("--shared", default=os.environ.get("FAPM_SHARED", str(REPO.parent / "shared")))
    p.add_argument("--max-train", type=int, default=200)
    p.add_argument("--backbone", default=None, help="backbone config (default: vgg16_bn_craft for mtd, "
                                                     "wide_resnet50_2 for demo)")
    p.add_argument("--skip-adaptive", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
    torch.manual_seed(0)

    backbone = args.backbone or ("vgg16_bn_craft" if args.data == "mtd" else "wide_resnet50_2")
    bb_over = [f"backbone={backbone}"]
    if args.data == "mtd":
        data_root, weights = shared_paths(Path(args.shared))
        root, n_train = subset_root(data_root, REPO / "data" / f"mtd_subset_{args.max_train}", args.max_train, 0)
        bb_over.append(f"backbone.weights={weights}")
        category = "magnetic_tile"
    else:
        from fapm.data.demo import generate_demo

        root = generate_demo(REPO / "data" / "fapm_demo")
        category, n_train = args.category, None
        bb_over.append("backbone.pretrained=false")
    dm = MVTecDataModule(root=str(root), category=category, train_batch_size=16, eval_batch_size=16)
    dm.setup("fit")
    base = compose_cfg(bb_over)
    extractor = instantiate(base.backbone)
    print(f"[ablation] extracting features ({backbone}, {extractor.weight_source}) …", file=sys.stderr, flush=True)
    train_feats, _ = extract(extractor, dm.train_dataloader())
    test_feats, test_info = extract(extractor, dm.test_dataloader())
    size = tuple(dm.test_dataset()[0]["image"].shape[-2:])
    report: dict[str, Any] = {"data": args.data, "category": category, "backbone": backbone,
                              "weights": str(extractor.weight_source), "train_images": len(train_feats[next(iter(train_feats))]),
                              "test_images": len(test_info["label"]), "variants": {}, "adaptive": {}}
    for name, over in VARIANTS.items():
        print(f"[ablation] {name} …", file=sys.stderr, flush=True)
        report["variants"][name] = evaluate_variant(bb_over + over, extractor, train_feats, test_feats, test_info, size)
    if not args.skip_adaptive:
        for name, over in ADAPTIVE.items():
            print(f"[ablation] {name} …", file=sys.stderr, flush=True)
            report["adaptive"][name] = evaluate_variant(bb_over + over, extractor, train_feats, test_feats, test_info, size)
    print("[ablation] layer-wise vs concatenated distances …", file=sys.stderr, flush=True)
    report["layerwise_vs_concat"] = layerwise_relation(train_feats, test_feats, test_info)

    head = (f"{args.data} / {category}, backbone {backbone} ({report['weights']}), {report['train_images']} training "
            f"images, {report['test_images']} test images; every variant: k = 4, softmax image score, same features")
    print(head + "\n\n" + table(report["variants"], "Ablations (paper Table 2 shape)"))
    if report["adaptive"]:
        print("\n" + table(report["adaptive"], "Adaptive-rule choices"))
    rel = report["layerwise_vs_concat"]
    print(f"\nLayer-wise sum S vs concatenated nearest distance D over {rel['positions']:,} test positions "
          f"({rel['test_images']} images, full memories, 7x7 regions): Pearson {rel['pearson']:.3f}, Spearman "
          f"{rel['spearman']:.3f}, S/D min {rel['ratio_S_over_D']['min']:.3f} median "
          f"{rel['ratio_S_over_D']['median']:.3f} max {rel['ratio_S_over_D']['max']:.3f}; "
          f"sqrt(sum a_j^2) <= D: {rel['lower_bound_holds']}, S <= sqrt(2) D: {rel['upper_bound_holds']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
