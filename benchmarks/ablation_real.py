"""The paper's Table 2 (A..E, + E with neighbourhood search) on trained backbones, the image-score
and adaptive-rule choices, and the layer-wise vs concatenated distance relation, each on one set
of extracted features per backbone.

    # the real-data accuracy table (docs/accuracy.md): 2 backbones x 5 models, 200 images
    python -m benchmarks.ablation_real --data mtd --max-train 200 \
        --backbones efficientnet_lite0,vgg16_bn_craft --out benchmarks/results/accuracy_mtd_200.json
    # image score softmax / max / patchcore for FAPM and PatchCore, on the demo
    python -m benchmarks.ablation_real --data demo --category bracket --backbones efficientnet_lite0 \
        --variants "A PatchCore,E FAPM" --scores softmax,max,patchcore --skip-adaptive
    # normalisation / layer choice: extra backbone overrides ("name=override;override")
    python -m benchmarks.ablation_real --data mtd --backbones efficientnet_lite0 \
        --backbone-variant "tf_norm=backbone.mean=[0.5,0.5,0.5];backbone.std=[0.502,0.502,0.502]"

Every variant is composed from the real configs with ``experiment=ablation`` (same map and image
score for all unless ``--scores``), validated by the package's settings, built by its builders
on the SAME backbone and the SAME extracted features, and scored with the project's metrics
(image/pixel AUROC, AUPRO, F1-max, image AUROC per defect type). ``fit s`` = the training
images' feature extraction + the memory build; ``img/s`` = test images per second of
extraction + search + scoring (one process, batches of 16 / 8). ``--data mtd`` needs
``../shared`` (data/mtd, and weights/vgg16_bn_craft_features.pt for the CRAFT backbone).
Prints Markdown tables and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from typing import Any

import torch

from benchmarks.real_data import shared_paths, subset_root
from fapm.builders import build_extractor, build_memory_detector, build_search
from fapm.conf import compose
from fapm.data import MVTecDataModule
from fapm.metrics import AnomalyMetrics, names
from fapm.models.detector import layer_batches
from fapm.pipeline.common import validated_settings

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
    "E raw, D_th 0.5 (paper)": ["model=fapm", "model.distance_scale=raw", "model.threshold_mode=absolute"],
    "E relative, D_th 0.5": ["model=fapm", "model.distance_scale=relative", "model.threshold_mode=absolute"],
    "E quantile 0.5 (widest half)": ["model=fapm", "model.threshold_mode=quantile", "model.d_th=0.5"],
    "D (no rule), ratio 0.1": ["model=ablation_d"],
    "D (no rule), ratio 0.2": ["model=ablation_d", "model.coreset_ratio=0.2"],
}


def compose_cfg(overrides: list[str]):
    return compose(["paths.output_dir=/tmp", "experiment=ablation", *overrides])


def settings_for(overrides: list[str]):
    """The validated settings of ``experiment=ablation`` with ``overrides``."""
    return validated_settings(compose_cfg(overrides), groups=("model", "backbone", "data", "thresholds"))


def add_data_args(p: argparse.ArgumentParser) -> None:
    """The dataset options shared by the real-data benchmarks."""
    p.add_argument("--data", choices=["demo", "mtd"], default="mtd")
    p.add_argument("--category", default="bracket", help="demo category (--data demo)")
    p.add_argument("--shared", default=os.environ.get("FAPM_SHARED", str(REPO.parent / "shared")))
    p.add_argument("--max-train", type=int, default=200, help="training images (seeded subset); 0 = all")


def dataset(args: argparse.Namespace) -> tuple[Path, str, Path | None]:
    """``(root, category, CRAFT VGG weights file or None)`` for ``--data`` / ``--max-train``."""
    if args.data == "mtd":
        data_root, vgg_weights = shared_paths(Path(args.shared))
        root, _ = subset_root(data_root, REPO / "data" / f"mtd_subset_{args.max_train}", args.max_train or None, 0)
        return root, "magnetic_tile", vgg_weights
    from fapm.data.demo import generate_demo

    return generate_demo(REPO / "data" / "fapm_demo"), args.category, None


def load_features(base, root: Path, category: str, tag: str) -> tuple[Any, dict, dict, dict, dict, tuple[int, int]]:
    """Build the backbone of ``base`` settings and extract the training and test features once:
    ``(extractor, train_feats, train_info, test_feats, test_info, image size)``; ``tag`` starts the
    progress line."""
    dm = MVTecDataModule(root=str(root), category=category, train_batch_size=16, eval_batch_size=16,
                         mean=base.backbone.mean, std=base.backbone.std)
    dm.setup("fit")
    extractor = build_extractor(base.backbone)
    print(f"{tag} extracting features ({extractor.weight_source}, {extractor.method}) …", file=sys.stderr, flush=True)
    train_feats, train_info = extract(extractor, dm.train_dataloader())
    test_feats, test_info = extract(extractor, dm.test_dataloader())
    size = tuple(dm.test_dataset()[0]["image"].shape[-2:])
    return extractor, train_feats, train_info, test_feats, test_info, size


def build_on_features(settings, extractor, train_feats: dict[str, torch.Tensor]) -> tuple[Any, float]:
    """The memory detector of ``settings`` built from already extracted training features (its
    public fit stage), and the build's seconds (collection included)."""
    det = build_memory_detector(settings.model, settings.backbone, settings.seed, extractor=extractor)
    start = time.perf_counter()
    det.fit_features(layer_batches(train_feats, 16), expected_images=len(next(iter(train_feats.values()))))
    return det, time.perf_counter() - start


@torch.inference_mode()
def extract(extractor: torch.nn.Module, loader: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Pooled layer features of a whole loader, plus labels/masks/types and the backbone's seconds."""
    feats: dict[str, list[torch.Tensor]] = {}
    info: dict[str, list] = {"label": [], "mask": [], "defect_type": []}
    seconds = 0.0
    for batch in loader:
        start = time.perf_counter()
        out = extractor(batch["image"])
        seconds += time.perf_counter() - start
        for k, v in out.items():
            feats.setdefault(k, []).append(v)
        info["label"].append(batch["label"])
        info["mask"].append(batch["mask"][:, 0].bool())
        info["defect_type"] += list(batch["defect_type"])
    return {k: torch.cat(v) for k, v in feats.items()}, {
        "label": torch.cat(info["label"]), "mask": torch.cat(info["mask"]), "defect_type": info["defect_type"],
        "seconds": seconds}


@torch.inference_mode()
def evaluate_variant(overrides: list[str], extractor, train_feats, test_feats, test_info, size,
                     train_seconds: float = 0.0, scores: list[str | None] = (None,),
                     searches: list[str | None] = (None,)) -> dict[tuple[str | None, str | None], dict[str, Any]]:
    """Build one variant on the extracted features and score the test set with each image score
    in ``scores`` and each k-NN index in ``searches`` (``conf/model/search/`` names; ``None`` =
    the variant's own); one memory serves them all, one set of maps per search. Keys of the
    result: ``(score, search)``. A search other than the first also reports ``top1_equal``: the
    share of test positions whose nearest distance equals the first search's (recall@1 when the
    first is exact)."""
    settings = settings_for(overrides)
    det, build_s = build_on_features(settings, extractor, train_feats)
    out: dict[tuple[str | None, str | None], dict[str, Any]] = {}
    reference: list[torch.Tensor] | None = None
    for search in searches:
        if search is not None:
            chosen = settings_for([*overrides, f"model/search={search}"])
            det.use_search(build_search(chosen.model.search))
        t = time.perf_counter()
        rows, nearest = score_test_set(det, settings, test_feats, test_info, size, scores)
        fit_search_s = time.perf_counter() - t
        for score, row in rows.items():
            row.update(build_s=build_s, fit_s=train_seconds + build_s, search=search or settings.model.search.backend)
            if reference is not None:
                same = sum(int(torch.isclose(a, b, rtol=1e-5, atol=1e-6).sum()) for a, b in zip(nearest, reference))
                row["top1_equal"] = same / sum(r.numel() for r in reference)
            row["search_pass_s"] = fit_search_s
            out[(score, search)] = row
        if reference is None:
            reference = nearest
    return out


@torch.inference_mode()
def score_test_set(det, settings, test_feats, test_info, size, scores) -> tuple[dict[str | None, dict[str, Any]], list[torch.Tensor]]:
    """Score the test set with ``det`` for each image score in ``scores``; also returns the
    nearest fused distance of every test position (``[B, H, W]`` per batch). ``head ms/img``:
    search, fusion, map and image score on the extracted features."""
    from fapm.models.scoring import make_image_score

    kinds = [settings.model.image_score if s is None else s for s in scores]
    strategies = [make_image_score(kind, settings.model.num_neighbors) for kind in kinds]
    metrics = [AnomalyMetrics() for _ in kinds]
    m = len(test_info["label"])
    nearest: list[torch.Tensor] = []
    head_s = 0.0
    for lo in range(0, m, 8):
        part = {k: v[lo : lo + 8] for k, v in test_feats.items()}
        labels, types = test_info["label"][lo : lo + 8], test_info["defect_type"][lo : lo + 8]
        for i, (strategy, metric) in enumerate(zip(strategies, metrics)):
            det.scorer.image_score = strategy
            t = time.perf_counter()
            out = det.score_features(part, size)  # the public scoring stage: search, fusion, map, score
            if i == 0:
                head_s += time.perf_counter() - t
                nearest.append(out.patch_scores.clone())
                # the maps do not depend on the image score: pixel metrics once
                metric.update(out.image_scores, labels, out.anomaly_maps, test_info["mask"][lo : lo + 8], types)
            else:
                metric.update(out.image_scores, labels, defect_types=types)
    out: dict[str | None, dict[str, Any]] = {}
    pixel = None
    for score, kind, metric in zip(scores, kinds, metrics):
        res = metric.compute()
        pixel = pixel or {k: res.get(k, float("nan")) for k in (names.PIXEL_AUROC, names.PIXEL_AUPRO, names.PIXEL_F1_MAX)}
        per_type = {names.split_per_defect(k)[1]: v for k, v in res.items()
                    if names.split_per_defect(k)[0] == names.IMAGE_AUROC and names.split_per_defect(k)[1]}
        out[score] = {
            names.IMAGE_AUROC: res[names.IMAGE_AUROC], names.IMAGE_F1_MAX: res[names.IMAGE_F1_MAX], **pixel,
            "image_auroc_per_type": per_type, "memory_vectors": det.memory_vectors(), "image_score": kind,
            "head_ms_per_image": 1000 * head_s / m,
            "img_per_s": m / (test_info["seconds"] + head_s),
            "enlarged": {s: int(mem.enlarged.sum()) for s, mem in zip(det.stream_names, det.memories)},
            "regions": {s: mem.num_regions for s, mem in zip(det.stream_names, det.memories)},
            "d_max_range": {s: [round(float(mem.d_max.min()), 4), round(float(mem.d_max.max()), 4)]
                            for s, mem in zip(det.stream_names, det.memories)},
        }
    return out, nearest


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


def fmt(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f}"


def table(rows: dict[str, dict[str, Any]], title: str) -> str:
    types = sorted({t for r in rows.values() for t in r.get("image_auroc_per_type", {})})
    lines = [f"**{title}**", "", "| variant | image AUROC | pixel AUROC | AUPRO | image F1-max | pixel F1-max | "
             + "".join(f"{t} | " for t in types) + "memory vectors | enlarged regions | fit s | img/s | head ms/img | top-1 equal |",
             "|---|" + "---:|" * (5 + len(types)) + "---:|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        enl = ", ".join(f"{k} {v}/{r['regions'][k]}" for k, v in r["enlarged"].items())
        per = "".join(f"{fmt(r['image_auroc_per_type'].get(t, float('nan')))} | " for t in types)
        lines.append(f"| {name} | {fmt(r[names.IMAGE_AUROC])} | {fmt(r[names.PIXEL_AUROC])} | "
                     f"{fmt(r[names.PIXEL_AUPRO])} | {fmt(r[names.IMAGE_F1_MAX])} | {fmt(r[names.PIXEL_F1_MAX])} | "
                     f"{per}{r['memory_vectors']:,} | {enl} | {r['fit_s']:.1f} | {r['img_per_s']:.1f} | "
                     f"{r['head_ms_per_image']:.1f} | {fmt(r['top1_equal']) if 'top1_equal' in r else ''} |")
    lines.append("")
    lines.append("Per-type columns: image AUROC of that defect type against the good test images.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(p)
    p.add_argument("--backbones", default=None, help="comma-separated backbone configs (default: "
                   "efficientnet_lite0,vgg16_bn_craft for mtd, efficientnet_lite0 for demo)")
    p.add_argument("--backbone-variant", action="append", default=[],
                   help="'label=override;override' extra backbone overrides, each run as one more backbone")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    p.add_argument("--scores", default=None, help="comma-separated image scores to run every variant with "
                   "(softmax,max,patchcore); default: the experiment's")
    p.add_argument("--searches", default=None, help="comma-separated k-NN indexes (conf/model/search/: torch,"
                   "ivf_flat,...) to score every variant with, on the same memory; default: the variant's own")
    p.add_argument("--skip-adaptive", action="store_true")
    p.add_argument("--skip-relation", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
    torch.manual_seed(0)

    backbones = (args.backbones or ("efficientnet_lite0,vgg16_bn_craft" if args.data == "mtd" else "efficientnet_lite0")).split(",")
    runs: list[tuple[str, list[str]]] = [(b, [f"backbone={b}"]) for b in backbones]
    for spec in args.backbone_variant:
        label, _, over = spec.partition("=")
        runs.append((label, [f"backbone={backbones[0]}", *[o for o in over.split(";") if o]]))
    root, category, vgg_weights = dataset(args)
    variants = {k: VARIANTS[k] for k in args.variants.split(",")}
    scores = args.scores.split(",") if args.scores else [None]
    searches = args.searches.split(",") if args.searches else [None]
    report: dict[str, Any] = {"data": args.data, "category": category, "max_train": args.max_train, "backbones": {},
                              "command": " ".join(sys.argv), "threads": torch.get_num_threads()}
    for label, bb_over in runs:
        if args.data == "mtd" and bb_over[0] == "backbone=vgg16_bn_craft":
            bb_over = [*bb_over, f"backbone.weights={vgg_weights}"]
        base = settings_for(bb_over)
        extractor, train_feats, train_info, test_feats, test_info, size = load_features(
            base, root, category, f"[ablation] {label}:")
        entry: dict[str, Any] = {"overrides": bb_over, "weights": str(extractor.weight_source),
                                 "layers": list(extractor.layers), "mean": list(base.backbone.mean),
                                 "train_images": len(train_feats[next(iter(train_feats))]),
                                 "test_images": len(test_info["label"]), "variants": {}, "adaptive": {}}
        report["backbones"][label] = entry
        for name, over in variants.items():
            print(f"[ablation] {label}: {name} …", file=sys.stderr, flush=True)
            rows = evaluate_variant(bb_over + over, extractor, train_feats, test_feats, test_info, size,
                                    train_info["seconds"], scores, searches)
            for (score, search), row in rows.items():
                label_ = ", ".join([name, *([score] if score else []), *([f"search {search}"] if search else [])])
                entry["variants"][label_] = row
            if args.out:  # keep what is measured if a later variant is interrupted
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(report, indent=2))
        if not args.skip_adaptive:
            for name, over in ADAPTIVE.items():
                print(f"[ablation] {label}: {name} …", file=sys.stderr, flush=True)
                entry["adaptive"][name] = evaluate_variant(bb_over + over, extractor, train_feats, test_feats,
                                                           test_info, size, train_info["seconds"])[(None, None)]
        if not args.skip_relation:
            entry["layerwise_vs_concat"] = layerwise_relation(train_feats, test_feats, test_info)
        head = (f"{args.data} / {category}, backbone {label} ({entry['weights']}, layers {entry['layers']}), "
                f"{entry['train_images']} training images, {entry['test_images']} test images, same features "
                f"for every row; {torch.get_num_threads()} threads")
        print("\n" + head + "\n\n" + table(entry["variants"], "Models"))
        if entry["adaptive"]:
            print("\n" + table(entry["adaptive"], "Adaptive-rule choices"))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
