"""Misaligned parts: how far FAPM's per-region assumption breaks, and what holds it.

    python -m benchmarks.misalignment [--root DIR --category NAME] [--backbone efficientnet_lite0] [--pretrained false]
        [--max-train N] [--max-test N] [--conditions aligned,shift16,...] [--tag NAME] [--out DIR]

Takes an aligned category (default: the generated demo's ``bracket`` object; any MVTec-layout
category with ``--root/--category``), fits PatchCore (A) and FAPM (E) once on its normal
training images, then scores test sets whose images *and masks* are moved by a seeded random
similarity per image: shifts of 0–32 px in a random direction, rotations of 0–15° (random
sign), scales of ±10 % (random sign). Masks are moved with nearest sampling and zero padding,
so they stay exactly the moved defect pixels. The images are moved after the data module's
resize and crop (the network's input, 224² by default), edges replicated.

Methods, all from the package's own stages (builders, detector, data module):

* ``A PatchCore`` — one global memory (model=patchcore);
* ``E FAPM`` — per-region memories, radius 0 (model=fapm);
* ``E r1`` / ``E r2`` — the same memory searched in ``(2r+1)²`` windows (``model.neighbourhood``),
  borders ``clip``; ``E r1 shift`` / ``E r2 shift`` with ``model.neighbourhood_border=shift``;
* ``E +translation`` / ``E +similarity`` — test-time alignment (``model.align``), fallback radius 1;
* ``E +auto`` — what ``align: auto`` chose from the training images.

For each: image AUROC, pixel AUROC, AUPRO (FPR ≤ 0.3), and the head's ms per image (search,
fusion, map and score on the extracted features; for the alignment methods the whole pass
minus the backbone's time on the same images, so registration and warps are included).
Also: the border bias of the neighbourhood windows (mean nearest distance of the normal test
images in border regions over interior regions) and the fit-time alignment summary.

Writes ``benchmarks/results/misalignment_<tag>.json`` / ``.md`` and a plot ``.png`` (pixel
AUROC against displacement, drawn with Pillow).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fapm.builders import build_extractor, build_memory_detector
from fapm.conf import compose
from fapm.data import MVTecDataModule
from fapm.metrics import AnomalyMetrics
from fapm.metrics import names
from fapm.models.aligned import inside_frame
from fapm.models.alignment import decide, invert_theta, similarity_theta, warp
from fapm.settings import parse_run

ROOT = Path(__file__).resolve().parents[1]
#: name → (shift px, rotation degrees, relative scale change); signs/directions are random per image
CONDITIONS: dict[str, tuple[float, float, float]] = {
    "aligned": (0, 0, 0),
    "shift8": (8, 0, 0),
    "shift16": (16, 0, 0),
    "shift32": (32, 0, 0),
    "rot5": (0, 5, 0),
    "rot10": (0, 10, 0),
    "rot15": (0, 15, 0),
    "scale10": (0, 0, 0.10),
    "shift16+rot10": (16, 10, 0),
}
PLAIN = {"A PatchCore": ("pc", 0, "clip"), "E FAPM": ("fapm", 0, "clip"), "E r1": ("fapm", 1, "clip"),
         "E r1 shift": ("fapm", 1, "shift"), "E r2": ("fapm", 2, "clip"), "E r2 shift": ("fapm", 2, "shift")}
ALIGNED = {"E +translation": "translation", "E +similarity": "similarity", "E +auto": "auto"}


def compose_cfg(overrides: list[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose(["paths.output_dir=/tmp", *overrides]), resolve=True)  # type: ignore[return-value]


def moved(images: torch.Tensor, masks: torch.Tensor, condition: tuple[float, float, float], seed: int,
          first: int, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[B, 3, S, S]`` and masks ``[B, S, S]`` moved by seeded per-image similarities (about the
    centre), then centre-cropped to ``crop``."""
    shift, rot, scale = condition
    thetas = []
    for i in range(images.shape[0]):
        rng = np.random.default_rng([seed, first + i])
        phi = rng.uniform(0, 2 * math.pi)
        angle = float(rot * rng.choice([-1, 1]))
        s = float(1 + scale * rng.choice([-1, 1]))
        side = images.shape[-1]
        th = similarity_theta(torch.tensor([math.radians(angle)]), torch.tensor([s]), torch.zeros(1, 2))
        th[:, 0, 2], th[:, 1, 2] = shift * math.cos(phi) * 2 / side, shift * math.sin(phi) * 2 / side
        thetas.append(invert_theta(th)[0])  # sample the original where the moved part's pixel came from
    theta = torch.stack(thetas)
    out = warp(images, theta)
    out_masks = warp(masks.unsqueeze(1).float(), theta, mode="nearest", padding="zeros").squeeze(1)
    lo = (images.shape[-1] - crop) // 2
    return out[..., lo : lo + crop, lo : lo + crop].contiguous(), out_masks[..., lo : lo + crop, lo : lo + crop].contiguous()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def border_bias(det: Any, feats: dict[str, torch.Tensor], radius: int, border: str) -> float:
    """Mean fused nearest distance in border regions / in interior regions (normal images' layers ``feats``)."""
    det.scorer.neighbourhood_border = border
    size = (1, 1)  # the map is not used: only the patch scores
    fused = det.score_features(feats, size, radius).patch_scores  # [B, H, W]
    gh, gw = det.grid
    b, h, w = fused.shape
    regions = fused.view(b, gh, h // gh, gw, w // gw).mean(dim=(0, 2, 4))  # [gh, gw]
    edge = torch.zeros(gh, gw, dtype=torch.bool)
    edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True
    det.scorer.neighbourhood_border = "clip"
    return float(regions[edge].mean() / regions[~edge].mean())


def alignment_overhead_ms(aligner: Any, images: torch.Tensor, grid: tuple[int, int], repeats: int = 5) -> float:
    """Median ms per image of what alignment adds to a pass: registration, the image's warp, the
    in-frame mask and the map's warp back (the search itself is plain FAPM's)."""
    size = (int(images.shape[-2]), int(images.shape[-1]))
    maps = torch.rand(images.shape[0], *size)
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            est = aligner.estimate(images)
            warp(images, est.theta)
            inside_frame(est.theta, size, grid)
            warp(maps.unsqueeze(1), invert_theta(est.theta))
            times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)) / images.shape[0], 2)


def line_plot(series: dict[str, list[tuple[float, float]]], path: Path, title: str, xlabel: str) -> None:
    """A small line chart with Pillow (pixel AUROC against displacement)."""
    from PIL import Image, ImageDraw

    width, height, left, right, top, bottom = 820, 460, 60, 200, 40, 50
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    xs = sorted({x for pts in series.values() for x, _ in pts})
    ys = [y for pts in series.values() for _, y in pts]
    lo, hi = math.floor(min(ys) * 20) / 20, math.ceil(max(ys) * 20) / 20
    hi = max(hi, lo + 0.05)
    px = lambda x: left + (x - xs[0]) / max(1e-9, xs[-1] - xs[0]) * (width - left - right)  # noqa: E731
    py = lambda y: height - bottom - (y - lo) / (hi - lo) * (height - top - bottom)  # noqa: E731
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for k in range(int(round((hi - lo) / 0.05)) + 1):
        y = lo + 0.05 * k
        draw.line([left, py(y), width - right, py(y)], fill=(225, 225, 225))
        draw.text((8, py(y) - 6), f"{y:.2f}", fill="black")
    for x in xs:
        draw.text((px(x) - 8, height - bottom + 6), f"{x:g}", fill="black")
    draw.text((left, 10), title, fill="black")
    draw.text(((width - right) // 2, height - 18), xlabel, fill="black")
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (23, 190, 207), (188, 189, 34)]
    for n, (name, pts) in enumerate(series.items()):
        colour = colours[n % len(colours)]
        pts = sorted(pts)
        draw.line([(px(x), py(y)) for x, y in pts], fill=colour, width=2)
        for x, y in pts:
            draw.ellipse([px(x) - 3, py(y) - 3, px(x) + 3, py(y) + 3], fill=colour)
        draw.line([width - right + 12, top + 10 + 18 * n, width - right + 36, top + 10 + 18 * n], fill=colour, width=3)
        draw.text((width - right + 42, top + 4 + 18 * n), name, fill="black")
    img.save(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="MVTec-layout root (default: the generated demo)")
    parser.add_argument("--category", default="bracket")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="backbone config name (default: the packaged ImageNet Lite0)")
    parser.add_argument("--pretrained", default="false")
    parser.add_argument("--max-train", type=int, default=None, help="seeded random subset of the training images")
    parser.add_argument("--max-test", type=int, default=None, help="seeded random subset of the test images")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--methods", default=",".join([*PLAIN, *ALIGNED]))
    parser.add_argument("--tag", default="demo")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--overhead-only", action="store_true",
                        help="only time what alignment adds per image (reference: mean training thumbnail)")
    args = parser.parse_args(argv)
    args.condition_list = [c for c in args.conditions.split(",") if c]
    args.method_list = [m for m in args.methods.split(",") if m]
    unknown = [c for c in args.condition_list if c not in CONDITIONS] + [
        m for m in args.method_list if m not in PLAIN and m not in ALIGNED]
    if unknown:
        parser.error(f"unknown conditions/methods {unknown}; conditions {list(CONDITIONS)}, methods {[*PLAIN, *ALIGNED]}")
    return args


@dataclass
class TestSet:
    """The category's data: validated run settings, the training dataset and the chosen test images."""

    run: Any
    root: Path
    train_ds: Any
    train_idx: np.ndarray
    images: torch.Tensor  # [N, 3, S, S] resized, not cropped (moved first, then cropped)
    masks: torch.Tensor  # [N, S, S]
    labels: torch.Tensor  # [N]
    types: list[str]
    crop: int


def load_data(args: argparse.Namespace) -> TestSet:
    """The package's data module on ``--root`` (the demo is generated once) and the seeded subsets."""
    root = Path(args.root) if args.root else ROOT / "data" / "misalignment_demo"
    cfg = compose_cfg([*backbone_overrides(args), "model=fapm", f"data.root={root}", f"data.category={args.category}",
                       f"data.generate_demo={'false' if args.root else 'true'}", "data.normal_holdout=0.0"])
    run = parse_run(cfg)
    values = {k: v for k, v in run.data.to_dict().items() if k != "type"}
    data = MVTecDataModule(**values)
    data.prepare_data()
    data.setup("fit")
    # test images are moved in the resized frame, then centre-cropped as the data module would:
    # content from the crop's margin enters the view (edges are replicated only beyond it)
    uncropped = MVTecDataModule(**{**values, "crop_size": None})
    uncropped.setup("fit")
    train_ds, test_ds = data.train_dataset(), uncropped.test_dataset()
    rng = np.random.default_rng(args.seed)
    train_idx = np.arange(len(train_ds)) if args.max_train is None else np.sort(rng.permutation(len(train_ds))[: args.max_train])
    test_idx = np.arange(len(test_ds)) if args.max_test is None else np.sort(rng.permutation(len(test_ds))[: args.max_test])
    test = [test_ds[int(i)] for i in test_idx]
    return TestSet(
        run, root, train_ds, train_idx, torch.stack([t["image"] for t in test]),
        torch.stack([t["mask"][0] for t in test]).float(), torch.tensor([int(t["label"]) for t in test]),
        [t["defect_type"] for t in test], run.data.crop_size or run.data.image_size,
    )


def backbone_overrides(args: argparse.Namespace) -> list[str]:
    return [f"backbone={args.backbone}", f"backbone.pretrained={args.pretrained}"]


def overhead_only(args: argparse.Namespace, data: TestSet) -> None:
    """Print what alignment adds per image, with the mean training thumbnail as reference."""
    from fapm.models.alignment import Aligner, grey_thumbnails

    train = torch.stack([data.train_ds[int(i)]["image"] for i in data.train_idx[:32]])
    images = moved(data.images[: args.batch], data.masks[: args.batch], CONDITIONS["shift16+rot10"], args.seed, 0,
                   data.crop)[0]
    out = {}
    for mode in ("translation", "similarity"):
        aligner = Aligner(mode, data.run.model.align_resolution)
        aligner.reference.copy_(grey_thumbnails(train, aligner.resolution).mean(0))
        out[mode] = alignment_overhead_ms(aligner, images, tuple(data.run.model.grid))
    print(json.dumps({"alignment_overhead_ms_per_image": out, "batch": args.batch, "load_avg": os.getloadavg()}))


@dataclass
class Fitted:
    """A (PatchCore) and E (FAPM) fitted once on one backbone, and one FAPM per alignment option."""

    extractor: Any
    fapm: Any
    pc: Any
    aligned: dict[str, Any]
    summary: dict[str, Any]  # the fit-time alignment summary of the training images
    auto: tuple[str, int, str]  # what align: auto chose: (choice, radius, reason)


def fit_detectors(args: argparse.Namespace, data: TestSet) -> Fitted:
    """Fit every detector through the package's stages (``collect``/``build`` for the images, with the
    alignment probe; :meth:`fit_features` for PatchCore on the same extracted features)."""
    run = data.run
    extractor = build_extractor(run.backbone).eval()
    pc_run = parse_run(compose_cfg([*backbone_overrides(args), "model=patchcore", f"data.root={data.root}"]))
    fapm = build_memory_detector(run.model, run.backbone, seed=args.seed, extractor=extractor).eval()
    pc = build_memory_detector(pc_run.model, run.backbone, seed=args.seed, extractor=extractor).eval()
    # one FAPM per alignment option: each builds its memory from training images aligned its way
    methods = args.method_list
    modes = sorted({ALIGNED[m] for m in methods if m in ALIGNED} - {"auto"} | ({"translation", "similarity"}
                                                                               if "E +auto" in methods else set()))
    aligned_dets = {mode: build_memory_detector(run.model.replace(align=mode), run.backbone, seed=args.seed,
                                                extractor=extractor).eval() for mode in modes}
    fit_s = 0.0
    pc_features: list[dict[str, torch.Tensor]] = []
    with torch.inference_mode():
        for det in (fapm, *aligned_dets.values()):
            det.reset_fit()
        for lo in range(0, len(data.train_idx), args.batch):
            batch = torch.stack([data.train_ds[int(i)]["image"] for i in data.train_idx[lo : lo + args.batch]])
            feats, s = timed(lambda: extractor(batch))
            fit_s += s
            pc_features.append(feats)
            fapm.collect(batch)  # the package's fit stage (features + the alignment probe)
            for det in aligned_dets.values():
                det.collect(batch)
        (report_e, build_e), (_, build_a) = timed(fapm.build), timed(lambda: pc.fit_features(pc_features))
        for det in aligned_dets.values():
            det.build()
    summary = dict(report_e.alignment)
    region_px = min(data.crop / fapm.grid[0], data.crop / fapm.grid[1])
    auto = decide(summary, "auto", run.model.align_min_confidence, region_px)
    print(f"fit: {len(data.train_idx)} images, extraction {fit_s:.1f}s, build E {build_e:.1f}s A {build_a:.1f}s")
    print(f"training-image alignment: {summary}")
    print(f"align: auto -> {auto[0]} (radius {auto[1]}): {auto[2]}")
    for mode, det in aligned_dets.items():
        print(f"  {mode}: training images aligned/kept {det.training_alignment.counts}")
    return Fitted(extractor, fapm, pc, aligned_dets, summary, auto)


def score_method(m: str, fitted: Fitted, images: torch.Tensor, feats: dict[str, torch.Tensor],
                 extract_s: float) -> tuple[Any, float]:
    """One method's output on a batch of moved ``images`` (``feats``: their extracted layers) and its
    head seconds (for the alignment methods: the whole pass minus the backbone's ``extract_s``)."""
    size = (int(images.shape[-2]), int(images.shape[-1]))
    if m in PLAIN:
        which, radius, border = PLAIN[m]
        det = fitted.fapm if which == "fapm" else fitted.pc
        det.scorer.neighbourhood_border = border
        out, s = timed(lambda: det.score_features(feats, size, radius))
        det.scorer.neighbourhood_border = "clip"
        return out, s
    mode = ALIGNED[m]
    choice = fitted.auto[0] if mode == "auto" else mode
    if choice == "neighbourhood":  # auto on a category without a layout
        out, s = timed(lambda: fitted.fapm.score_images(images, fitted.auto[1]))
        return out, max(0.0, s - extract_s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fallbacks are counted from the output
        out, s = timed(lambda: fitted.aligned[choice](images))
    # the pass re-extracts the (warped) images: the backbone's time on this batch is not the head's
    return out, max(0.0, s - extract_s)


def score_condition(args: argparse.Namespace, data: TestSet, fitted: Fitted, cname: str) -> dict[str, dict[str, float]]:
    """Every method's metrics (and alignment counts) on the test set moved by condition ``cname``."""
    cond = CONDITIONS[cname]
    methods = args.method_list
    per: dict[str, AnomalyMetrics] = {m: AnomalyMetrics() for m in methods}
    head_s = {m: 0.0 for m in methods}
    extract_s = 0.0
    counts = {m: [0, 0] for m in ALIGNED}
    n = len(data.labels)
    with torch.inference_mode():
        for lo in range(0, n, args.batch):
            hi = min(n, lo + args.batch)
            images, masks = moved(data.images[lo:hi], data.masks[lo:hi], cond, args.seed, lo, data.crop)
            labels, types = data.labels[lo:hi], data.types[lo:hi]
            feats, extract_batch = timed(lambda: fitted.extractor(images))
            extract_s += extract_batch
            for m in methods:
                out, s = score_method(m, fitted, images, feats, extract_batch)
                head_s[m] += s
                if m in counts:
                    warped = 0 if out.aligned is None else int(out.aligned.sum())
                    counts[m][0] += warped
                    counts[m][1] += images.shape[0] - warped
                per[m].update(out.image_scores, labels, out.anomaly_maps, masks.bool(), types)
    rows = {}
    for m in methods:
        res = per[m].compute()
        row = {
            "image_auroc": round(100 * res[names.IMAGE_AUROC], 2),
            "pixel_auroc": round(100 * res[names.PIXEL_AUROC], 2),
            "aupro": round(100 * res[names.PIXEL_AUPRO], 2),
            "head_ms_per_image": round(1000 * head_s[m] / n, 2),
        }
        if m in counts:
            row["aligned"], row["fallback"] = counts[m]
        rows[m] = row
    print(f"[{cname}] backbone {1000 * extract_s / n:.1f} ms/img")
    for m in methods:
        print(f"  {m:16s} {rows[m]}")
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    data = load_data(args)
    if args.overhead_only:
        overhead_only(args, data)
        return
    fitted = fit_detectors(args, data)
    results = {cname: score_condition(args, data, fitted, cname) for cname in args.condition_list}
    bias: dict[str, float] = {}
    if "aligned" in args.condition_list:
        normal = data.labels == 0
        images = moved(data.images[normal][:16], data.masks[normal][:16], CONDITIONS["aligned"], args.seed, 0,
                       data.crop)[0]
        with torch.inference_mode():
            feats = fitted.extractor(images)
            for radius, border in ((0, "clip"), (1, "clip"), (1, "shift"), (2, "clip"), (2, "shift")):
                bias[f"r{radius} {border}"] = round(border_bias(fitted.fapm, feats, radius, border), 4)
    shifted = moved(data.images[: args.batch], data.masks[: args.batch], CONDITIONS["shift16+rot10"], args.seed, 0,
                    data.crop)[0]
    overhead = {mode: alignment_overhead_ms(det.aligner, shifted, fitted.fapm.grid)
                for mode, det in fitted.aligned.items()}
    write_report(args, data, fitted, results, bias, overhead)


def write_report(args: argparse.Namespace, data: TestSet, fitted: Fitted, results: dict[str, Any],
                 bias: dict[str, float], overhead: dict[str, float]) -> None:
    """``misalignment_<tag>.json`` / ``.md`` / ``.png`` under ``--out``."""
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = data.run
    report = {
        "command": "python -m benchmarks.misalignment " + " ".join(os.sys.argv[1:]),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "platform": platform.platform(), "load_avg": os.getloadavg()},
        "data": {"root": str(data.root), "category": args.category, "train_images": int(len(data.train_idx)),
                 "test_images": len(data.labels), "defective": int(data.labels.sum()), "side": [data.crop, data.crop]},
        "backbone": {"name": run.backbone.name, "layers": list(run.backbone.layers),
                     "weights": str(fitted.extractor.weight_source)},
        "conditions": {c: dict(zip(("shift_px", "rotation_deg", "scale"), CONDITIONS[c])) for c in args.condition_list},
        "training_alignment": fitted.summary,
        "auto": {"choice": fitted.auto[0], "radius": fitted.auto[1], "reason": fitted.auto[2]},
        "border_bias": bias, "alignment_overhead_ms_per_image": overhead, "results": results,
    }
    stem = out_dir / f"misalignment_{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(markdown(report))
    plot(report, stem.with_suffix(".png"))
    print(stem.with_suffix(".md").read_text())


def markdown(report: dict[str, Any]) -> str:
    results = report["results"]
    conditions = list(results)
    methods = list(next(iter(results.values())))
    lines = [f"`{report['command']}`", "",
             f"data {report['data']}; backbone {report['backbone']['name']} {report['backbone']['layers']} "
             f"({report['backbone']['weights']}); machine {report['machine']['cpu_count']} CPUs, load "
             f"{[round(v, 1) for v in report['machine']['load_avg']]} (timings on a shared, loaded machine)", ""]
    for metric, title in (("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"), ("image_auroc", "image AUROC"),
                          ("head_ms_per_image", "head ms / image")):
        lines += [f"**{title}**", "", "| method | " + " | ".join(conditions) + " |",
                  "|---|" + "---:|" * len(conditions)]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(f"{results[c][m][metric]:.2f}" for c in conditions) + " |")
        lines.append("")
    aligned_rows = [m for m in methods if "aligned" in results[conditions[0]][m]]
    if aligned_rows:
        lines += ["**aligned / fell back (images)**", "", "| method | " + " | ".join(conditions) + " |",
                  "|---|" + "---:|" * len(conditions)]
        for m in aligned_rows:
            lines.append(f"| {m} | " + " | ".join(f"{results[c][m]['aligned']}/{results[c][m]['fallback']}"
                                                   for c in conditions) + " |")
        lines.append("")
    lines += [f"training-image alignment: {report['training_alignment']}", "",
              f"align: auto → {report['auto']}", "",
              f"alignment overhead (registration + warps, ms/img): {report.get('alignment_overhead_ms_per_image')}", "",
              f"border bias (border / interior mean normal distance): "
              f"{report['border_bias']}", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    results = report["results"]
    shifts = [c for c in results if c == "aligned" or c.startswith("shift") and "+" not in c]
    rots = [c for c in results if c == "aligned" or c.startswith("rot")]
    methods = list(next(iter(results.values())))
    series = {}
    if len(shifts) > 1:
        for m in methods:
            series[m] = [(report["conditions"][c]["shift_px"], results[c][m]["pixel_auroc"] / 100) for c in shifts]
        line_plot(series, path, f"pixel AUROC vs shift ({report['data']['category']}, {report['backbone']['name']})",
                  "shift (px)")
    if len(rots) > 1:
        series = {m: [(report["conditions"][c]["rotation_deg"], results[c][m]["pixel_auroc"] / 100) for c in rots]
                  for m in methods}
        line_plot(series, path.with_name(path.stem + "_rotation.png"),
                  f"pixel AUROC vs rotation ({report['data']['category']}, {report['backbone']['name']})",
                  "rotation (deg)")


if __name__ == "__main__":
    main()
