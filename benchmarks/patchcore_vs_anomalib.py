"""Is our ``model=patchcore`` a faithful PatchCore? Compare it with anomalib 2.7's PatchCore.

Both models see the SAME input tensors (our pre-processing: resize 256, centre-crop 224,
ImageNet mean/std), run the SAME backbone weights (one seeded, random-init torchvision
``wide_resnet50_2`` state dict, loaded into our torchvision backbone and into anomalib's timm
backbone, every parameter and BN buffer checked), keep 10 % of the patches by k-center, and are
scored by the SAME metrics code (:class:`fapm.metrics.AnomalyMetrics`). Random features are
used because ImageNet weights cannot be downloaded here; on the synthetic-defect demo data they
still carry signal. What stays different is each implementation's own algorithm (see
``docs/patchcore_faithfulness.md``): the coreset's random projection (ours: dense Gaussian, 128
dims; anomalib: sparse, Johnson-Lindenstrauss size) and start point, and the resize of the patch
map (ours: bilinear by default, ``model.map_upsample=nearest`` = anomalib's nearest).

Besides the AUROC table the script localises any difference: backbone tensors equal, input
tensors of anomalib's own pre-processing vs ours, feature maps (embeddings) equal, memory-bank
sizes, patch-score-map correlation, image-score rank correlation, and a cross-check that runs
anomalib's scoring code on OUR memory bank (which must reproduce our scores and maps exactly,
so that any remaining gap is the coreset draw). ``--seeds`` repeats both coresets with other
seeds to show how much the random draw alone moves the AUROCs.

It needs anomalib, which is not a project dependency. Install it in a separate environment
(it pins its own versions), e.g.::

    python3 -m venv /work/anomalib-venv
    /work/anomalib-venv/bin/pip install torch==2.14.1 torchvision==0.29.1  # the project's builds
    /work/anomalib-venv/bin/pip install -e '.[compare]' 'hydra-core>=1.3.2,<1.4' 'omegaconf>=2.3,<2.4' \
        'faiss-cpu>=1.8,<1.16'

(see ``docs/patchcore_faithfulness.md`` for the results and the list of differences).

Usage (from the repository root; writes the demo data into ``data/fapm_demo`` when missing,
and the weights file and JSON into ``outputs/``)::

    /work/anomalib-venv/bin/python -m benchmarks.patchcore_vs_anomalib \
        --out outputs/patchcore_vs_anomalib.json [--data-root DIR] [--categories bracket weave] \
        [--seeds 0 1 2] [--threads 2] [--anomalib-preprocessing]
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # anomalib's k-center progress bar (read when tqdm is imported)

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fapm.conf import compose
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fapm.data.demo import DEMO_CATEGORIES, generate_demo
from fapm.data.mvtec import MVTecDataset
from fapm.data.transforms import Preprocess
from fapm.metrics import IMAGE_AUROC, PIXEL_AUPRO, PIXEL_AUROC, AnomalyMetrics
from fapm.models.scoring import anomaly_map

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["layer2", "layer3"]
RATIO = 0.1
NUM_NEIGHBORS = 9


# ----------------------------------------------------------------------------- inputs
def save_weights(path: Path, seed: int = 0) -> str:
    """Write one seeded random-init torchvision ``wide_resnet50_2`` state dict; return its sha256."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.wide_resnet50_2(weights=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Split:
    images: Tensor  # [N, 3, 224, 224] normalised
    masks: Tensor  # [N, 224, 224] bool
    labels: Tensor  # [N] int64
    defect_types: list[str]
    paths: list[str]


def load_split(root: Path, category: str, split: str, preprocess: Preprocess) -> Split:
    """All images of a split, pre-processed once and shared by both models."""
    ds = MVTecDataset(root, category, split, preprocess=preprocess)
    items = [ds[i] for i in range(len(ds))]
    return Split(
        images=torch.stack([it["image"] for it in items]),
        masks=torch.stack([it["mask"][0] > 0.5 for it in items]),
        labels=torch.stack([it["label"] for it in items]),
        defect_types=[it["defect_type"] for it in items],
        paths=[it["path"] for it in items],
    )


def batches(x: Tensor, size: int):
    for lo in range(0, x.shape[0], size):
        yield x[lo : lo + size]


# ----------------------------------------------------------------------------- our PatchCore
def build_ours(weights: Path, seed: int, extra: list[str] | None = None) -> tuple[Any, Any]:
    """``MemoryDetector`` exactly as ``python train.py model=patchcore`` builds it."""
    from fapm.builders import build_memory_detector
    from fapm.pipeline.common import validated_settings

    overrides = ["model=patchcore", f"backbone.weights={weights}", "backbone.pretrained=false", f"seed={seed}"]
    cfg = compose([*overrides, *(extra or [])])
    settings = validated_settings(cfg)
    detector = build_memory_detector(settings.model, settings.backbone, settings.seed)
    detector.eval()
    return detector, cfg


@dataclass
class Scored:
    """Outputs of one model on the test split."""

    scores: Tensor  # [N]
    patch: Tensor  # [N, 28, 28] nearest-memory distance per patch
    maps: dict[str, Tensor]  # name -> [N, 224, 224]
    bank_size: int
    fit_seconds: float


def ours_score(detector, test_layers: list[dict[str, Tensor]], size: tuple[int, int]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Our public scoring stage (``MemoryDetector.score_features``, what ``forward`` runs after the
    backbone) on cached test layers, with both patch-map resizes."""
    scores, patches, bil, near = [], [], [], []
    for layers in test_layers:
        out = detector.score_features(layers, size)
        scores.append(out.image_scores)
        patches.append(out.patch_scores)
        bil.append(out.anomaly_maps)  # the configured resize (bilinear)
        near.append(anomaly_map(out.patch_scores, size, detector.scorer.blur_sigma, "nearest"))
    return torch.cat(scores), torch.cat(patches), {"bilinear": torch.cat(bil), "nearest": torch.cat(near)}


def run_ours(detector, train: Split, test: Split, batch: int, seed: int) -> tuple[Scored, list[dict], list[dict]]:
    """Fit and score ours; also returns the cached training and test layers."""
    size = tuple(test.images.shape[-2:])
    assert detector.scorer.map_upsample == "bilinear", "patchcore.yaml's map_upsample changed; update the report labels"
    start = time.perf_counter()
    with torch.no_grad():
        train_layers = [detector.extractor(x) for x in batches(train.images, batch)]
        detector.builder.seed = seed
        detector.fit_features(train_layers)
    fit = time.perf_counter() - start
    with torch.no_grad():
        test_layers = [detector.extractor(x) for x in batches(test.images, batch)]
        scores, patch, maps = ours_score(detector, test_layers, size)
    return Scored(scores, patch, maps, detector.memory_vectors(), fit), train_layers, test_layers


def ours_refit(detector, train_layers: list[dict], test_layers: list[dict], seed: int, size) -> Scored:
    """Rebuild our memory from cached training layers with another coreset seed."""
    start = time.perf_counter()
    detector.builder.seed = seed
    with torch.no_grad():
        detector.fit_features(train_layers)
        fit = time.perf_counter() - start
        scores, patch, maps = ours_score(detector, test_layers, size)
    return Scored(scores, patch, maps, detector.memory_vectors(), fit)


def ours_bank(detector) -> Tensor:
    memory = detector.memories[0]
    return memory.memory[0, : int(memory.lengths[0])].clone()


# ----------------------------------------------------------------------------- anomalib's PatchCore
def build_anomalib(weights: Path, ours_body_state: dict[str, Tensor]):
    """anomalib's ``PatchcoreModel`` (the torch model under ``Patchcore``) with our weights.

    Every tensor of its timm ``features_only`` backbone (which stops after ``layer3``) is
    loaded from the torchvision state dict (the key names coincide), strictly, and checked
    equal to our backbone's.
    """
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(layers=LAYERS, backbone="wide_resnet50_2", pre_trained=False, num_neighbors=NUM_NEIGHBORS)
    body = model.feature_extractor.feature_extractor  # timm FeatureListNet
    source = torch.load(weights, map_location="cpu", weights_only=True)
    own = body.state_dict()
    missing = [k for k in own if k not in source]
    assert not missing, f"anomalib backbone tensors missing from the torchvision file: {missing[:5]}"
    unused = sorted({k.split(".")[0] for k in source if k not in own})
    assert unused == ["fc", "layer4"], f"unexpected unused torchvision tensors: {unused}"
    body.load_state_dict({k: source[k] for k in own}, strict=True)
    loaded = body.state_dict()
    check = {
        "tensors": len(loaded),
        "parameters": sum(1 for _ in body.parameters()),
        "bn_buffers": sum(1 for k in loaded if k.endswith(("running_mean", "running_var"))),
        "equal_to_file": all(torch.equal(loaded[k], source[k]) for k in loaded),
        "same_keys_as_ours": sorted(loaded) == sorted(ours_body_state),
        "equal_to_ours": all(torch.equal(loaded[k], ours_body_state[k]) for k in loaded if k in ours_body_state),
    }
    assert check["equal_to_file"] and check["same_keys_as_ours"] and check["equal_to_ours"], check
    model.eval()
    return model, check


def anomalib_fit(
    model, train_emb_flat: Tensor | None, train_images: Tensor | None, batch: int, seed: int
) -> tuple[float, Tensor]:
    """anomalib's training: ``forward`` in train mode stores embeddings, then
    ``subsample_embedding`` (k-center on a sparse random projection). Seeded: the start point
    and the projection's non-zeros come from torch's RNG, their positions from numpy's.
    Returns the seconds taken and the flat training embeddings (for refits with other seeds)."""
    start = time.perf_counter()
    model.embedding_store.clear()
    if train_images is not None:
        model.train()
        with torch.no_grad():
            for x in batches(train_images, batch):
                model(x)
    else:
        model.embedding_store.append(train_emb_flat)
    store = torch.vstack(model.embedding_store)
    torch.manual_seed(seed)
    np.random.seed(seed)
    model.subsample_embedding(RATIO)
    model.eval()
    return time.perf_counter() - start, store


def anomalib_score_from_embedding(model, emb: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """The tail of ``PatchcoreModel.forward`` (after ``generate_embedding``), verbatim, on a
    cached embedding ``[B, C, h, w]``; returns ``(scores, patch scores [B, h, w], maps)``."""
    batch_size, _, width, height = emb.shape
    flat = model.reshape_embedding(emb)
    patch_scores, locations = model.nearest_neighbors(embedding=flat, n_neighbors=1)
    patch_scores = patch_scores.reshape((batch_size, -1))
    locations = locations.reshape((batch_size, -1))
    pred_score = model.compute_anomaly_score(patch_scores, locations, flat)
    patch_scores = patch_scores.reshape((batch_size, 1, width, height))
    amap = model.anomaly_map_generator(patch_scores, size)
    return pred_score, patch_scores[:, 0], amap[:, 0]


def anomalib_test(model, images: Tensor, batch: int) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """``PatchcoreModel.forward`` in eval mode; the embeddings are captured on the way."""
    captured: list[Tensor] = []
    original = model.generate_embedding

    def capture(features):
        emb = original(features)
        captured.append(emb.detach().clone())
        return emb

    model.generate_embedding = capture
    scores, maps, patches = [], [], []
    try:
        with torch.no_grad():
            for x in batches(images, batch):
                out = model(x)
                scores.append(out.pred_score.reshape(-1))
                maps.append(out.anomaly_map[:, 0])
                emb = captured[-1]
                d, _ = model.nearest_neighbors(model.reshape_embedding(emb), n_neighbors=1)
                patches.append(d.reshape(emb.shape[0], emb.shape[-2], emb.shape[-1]))
    finally:
        del model.generate_embedding
    return torch.cat(scores), torch.cat(patches), torch.cat(maps), captured


def anomalib_rescore(model, test_emb: list[Tensor], size) -> tuple[Tensor, Tensor, Tensor]:
    out = [anomalib_score_from_embedding(model, e, size) for e in test_emb]
    return tuple(torch.cat([o[i] for o in out]) for i in range(3))  # type: ignore[return-value]


def anomalib_preprocess(test: Split) -> tuple[Tensor, dict[str, float]]:
    """anomalib's own pipeline up to the model input: ``read_image`` (float RGB) and
    ``Patchcore.configure_pre_processor((256, 256), (224, 224))`` (torchvision v2 ``Resize``
    with antialias, ``CenterCrop``, ``Normalize``); compared with our tensors."""
    from anomalib.data.utils import read_image
    from anomalib.models import Patchcore

    transform = Patchcore.configure_pre_processor(image_size=(256, 256), center_crop_size=(224, 224)).transform
    theirs = torch.stack([transform(read_image(p, as_tensor=True).unsqueeze(0))[0] for p in test.paths])
    diff = (theirs - test.images).abs()
    scale = float(test.images.std())
    return theirs, {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "mean_abs_diff_over_input_std": float(diff.mean()) / scale,
    }


# ----------------------------------------------------------------------------- metrics & diagnostics
def metrics(scores: Tensor, maps: Tensor, test: Split) -> dict[str, float]:
    m = AnomalyMetrics()
    m.update(scores, test.labels, maps, test.masks, defect_types=test.defect_types)
    out = m.compute()
    return {IMAGE_AUROC: out[IMAGE_AUROC], PIXEL_AUROC: out[PIXEL_AUROC], PIXEL_AUPRO: out[PIXEL_AUPRO]}


def pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))


def spearman(a: Tensor, b: Tensor) -> float:
    def ranks(x: Tensor) -> Tensor:
        r = torch.empty_like(x, dtype=torch.float64)
        r[x.argsort()] = torch.arange(x.numel(), dtype=torch.float64)
        return r

    return pearson(ranks(a.flatten()), ranks(b.flatten()))


def rel_diff(a: Tensor, b: Tensor) -> dict[str, float]:
    d = (a.double() - b.double()).abs()
    return {"max_abs": float(d.max()), "max_rel": float(d.max() / b.double().abs().max().clamp_min(1e-300))}


def result_row(name: str, scores: Tensor, maps: Tensor, test: Split, extra: dict[str, Any]) -> dict[str, Any]:
    return {"variant": name, **metrics(scores, maps, test), **extra}


# ----------------------------------------------------------------------------- one category
def run_category(root: Path, category: str, weights: Path, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    preprocess = Preprocess(256, 224)
    train, test = load_split(root, category, "train", preprocess), load_split(root, category, "test", preprocess)
    size = tuple(test.images.shape[-2:])
    print(f"[{category}] {len(train.labels)} train, {len(test.labels)} test images", flush=True)

    detector, _ = build_ours(weights, args.seeds[0])
    ours, train_layers, test_layers = run_ours(detector, train, test, args.batch, args.seeds[0])
    with torch.no_grad():  # the PatchCore embeddings [B, 1536, 28, 28] (the one concatenated stream)
        train_emb = [detector.streams(layers)[0] for layers in train_layers]
        test_emb = [detector.streams(layers)[0] for layers in test_layers]
    our_bank = ours_bank(detector)
    print(f"[{category}] ours fitted in {ours.fit_seconds:.1f}s, bank {ours.bank_size}", flush=True)

    # Our extractor folds each frozen BN into its conv by default (backbone.fold_batchnorm);
    # the tensor-by-tensor weight check uses an unfolded twin built from the same config.
    unfolded, _ = build_ours(weights, args.seeds[0], ["backbone.fold_batchnorm=false"])
    model, weight_check = build_anomalib(weights, unfolded.extractor.body.state_dict())
    fit_a, a_train_flat = anomalib_fit(model, None, train.images, args.batch, args.seeds[0])
    a_scores, a_patch, a_maps, a_test_emb = anomalib_test(model, test.images, args.batch)
    a_bank = model.memory_bank.clone()
    print(f"[{category}] anomalib fitted in {fit_a:.1f}s, bank {a_bank.shape[0]}", flush=True)

    # -- localisation of differences
    our_test = torch.cat(test_emb)
    their_test = torch.cat(a_test_emb)
    with torch.no_grad():
        unfolded_test = torch.cat([unfolded.extract(x)[0] for x in batches(test.images, args.batch)])
    del unfolded
    diag: dict[str, Any] = {
        "backbone_weights": weight_check,
        "embedding_shape": list(our_test.shape[1:]),
        "fold_batchnorm": bool(getattr(detector.extractor, "fold_batchnorm", False)),
        "test_embedding_diff": rel_diff(our_test, their_test),
        "test_embedding_diff_unfolded_bn": rel_diff(unfolded_test, their_test),
        "train_embedding_diff": rel_diff(torch.cat([model.reshape_embedding(e) for e in train_emb]), a_train_flat),
        "memory_bank": {"ours": ours.bank_size, "anomalib": int(a_bank.shape[0]), "candidates": int(
            sum(e.shape[0] for e in train_emb) * our_test.shape[-1] * our_test.shape[-2])},
        "anomalib_projection_dims": int(math.floor(4 * math.log(len(train.labels) * 28 * 28) / (0.9**2 / 2 - 0.9**3 / 3))),
        "patch_scores_pearson": pearson(ours.patch, a_patch),
        "patch_scores_mean": {"ours": float(ours.patch.mean()), "anomalib": float(a_patch.mean())},
        "image_scores_spearman": spearman(ours.scores, a_scores),
        "maps_pearson_ours_nearest_vs_anomalib": pearson(ours.maps["nearest"], a_maps),
        "maps_pearson_ours_bilinear_vs_anomalib": pearson(ours.maps["bilinear"], a_maps),
    }
    # anomalib's scoring code on OUR memory bank and OUR test embeddings: must equal our
    # outputs (nearest map) up to float rounding; then the only remaining difference is the coreset.
    model_bank = model.memory_bank
    model.memory_bank = our_bank
    x_scores, x_patch, x_maps = anomalib_rescore(model, test_emb, size)
    model.memory_bank = model_bank
    diag["anomalib_code_on_our_bank"] = {
        "image_scores": rel_diff(x_scores, ours.scores),
        "patch_scores": rel_diff(x_patch, ours.patch),
        "maps_vs_ours_nearest": rel_diff(x_maps, ours.maps["nearest"]),
        "maps_vs_ours_bilinear": rel_diff(x_maps, ours.maps["bilinear"]),
    }

    rows = [
        result_row("ours (model=patchcore, bilinear map)", ours.scores, ours.maps["bilinear"], test,
                   {"seed": args.seeds[0], "bank": ours.bank_size, "fit_s": ours.fit_seconds}),
        result_row("ours + map_upsample=nearest", ours.scores, ours.maps["nearest"], test,
                   {"seed": args.seeds[0], "bank": ours.bank_size, "fit_s": ours.fit_seconds}),
        result_row("anomalib 2.7 PatchcoreModel", a_scores, a_maps, test,
                   {"seed": args.seeds[0], "bank": int(a_bank.shape[0]), "fit_s": fit_a}),
    ]

    # -- the coreset draw: other seeds for both, from cached features (no new extraction)
    for seed in args.seeds[1:]:
        o = ours_refit(detector, train_layers, test_layers, seed, size)
        rows.append(result_row("ours (model=patchcore, bilinear map)", o.scores, o.maps["bilinear"], test,
                               {"seed": seed, "bank": o.bank_size, "fit_s": o.fit_seconds}))
        rows.append(result_row("ours + map_upsample=nearest", o.scores, o.maps["nearest"], test,
                               {"seed": seed, "bank": o.bank_size, "fit_s": o.fit_seconds}))
        fit_s, _ = anomalib_fit(model, a_train_flat, None, args.batch, seed)
        s, _, mp = anomalib_rescore(model, a_test_emb, size)
        rows.append(result_row("anomalib 2.7 PatchcoreModel", s, mp, test,
                               {"seed": seed, "bank": int(model.memory_bank.shape[0]), "fit_s": fit_s}))
        print(f"[{category}] seed {seed} done", flush=True)

    if args.anomalib_preprocessing:
        their_inputs, pre_diff = anomalib_preprocess(test)
        diag["anomalib_preprocessing_input_diff"] = pre_diff
        # anomalib's own pre-processing of the TEST images, scored against the seed-0 bank of
        # anomalib fitted above (training images from our pre-processing)
        anomalib_fit(model, a_train_flat, None, args.batch, args.seeds[0])
        s, _, mp, _ = anomalib_test(model, their_inputs, args.batch)
        rows.append(result_row("anomalib, own test pre-processing", s, mp, test,
                               {"seed": args.seeds[0], "bank": int(model.memory_bank.shape[0])}))

    diag["seconds"] = time.perf_counter() - t0
    return {"category": category, "n_train": len(train.labels), "n_test": len(test.labels), "rows": rows,
            "diagnostics": diag}


# ----------------------------------------------------------------------------- report
def fmt(v: float) -> str:
    return "n/a" if v != v else f"{100 * v:.2f}"


def markdown(results: list[dict[str, Any]], seeds: list[int]) -> str:
    ref_name = "anomalib 2.7 PatchcoreModel"
    lines = [
        "| category | variant | coreset seed | memory | image AUROC | pixel AUROC | pixel AUPRO | Δ image | Δ pixel |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        refs = {r["seed"]: r for r in res["rows"] if r["variant"] == ref_name}
        for r in res["rows"]:
            ref = refs.get(r["seed"])
            di = "" if ref is None or r is ref else f"{100 * (r[IMAGE_AUROC] - ref[IMAGE_AUROC]):+.2f}"
            dp = "" if ref is None or r is ref else f"{100 * (r[PIXEL_AUROC] - ref[PIXEL_AUROC]):+.2f}"
            lines.append(f"| {res['category']} | {r['variant']} | {r['seed']} | {r['bank']} | {fmt(r[IMAGE_AUROC])} | "
                         f"{fmt(r[PIXEL_AUROC])} | {fmt(r[PIXEL_AUPRO])} | {di} | {dp} |")
    # mean over categories and seeds per variant
    lines += ["", "| variant | mean image AUROC | mean pixel AUROC | Δ image vs anomalib | Δ pixel vs anomalib |",
              "|---|---|---|---|---|"]
    variants = list(dict.fromkeys(r["variant"] for res in results for r in res["rows"]))
    means = {}
    for v in variants:
        rs = [r for res in results for r in res["rows"] if r["variant"] == v]
        means[v] = (float(np.mean([r[IMAGE_AUROC] for r in rs])), float(np.mean([r[PIXEL_AUROC] for r in rs])))
    for v in variants:
        i, p = means[v]
        di = f"{100 * (i - means[ref_name][0]):+.2f}" if v != ref_name else ""
        dp = f"{100 * (p - means[ref_name][1]):+.2f}" if v != ref_name else ""
        lines.append(f"| {v} | {fmt(i)} | {fmt(p)} | {di} | {dp} |")
    lines += ["", "| category | test-embedding max rel. diff | bank ours / anomalib | patch-score Pearson | "
              "image-score Spearman | anomalib code on our bank: max score diff / max map diff (nearest) |",
              "|---|---|---|---|---|---|"]
    for res in results:
        d = res["diagnostics"]
        x = d["anomalib_code_on_our_bank"]
        lines.append(f"| {res['category']} | {d['test_embedding_diff']['max_rel']:.1e} | "
                     f"{d['memory_bank']['ours']} / {d['memory_bank']['anomalib']} | {d['patch_scores_pearson']:.4f} | "
                     f"{d['image_scores_spearman']:.4f} | {x['image_scores']['max_abs']:.1e} / "
                     f"{x['maps_vs_ours_nearest']['max_abs']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=None,
                        help="MVTec-layout root (default: data/fapm_demo, or data/fapm_demo_<sizes> for a reduced "
                        "demo); demo categories are (re)generated there unless they match the --n-* sizes")
    parser.add_argument("--categories", nargs="+", default=list(DEMO_CATEGORIES))
    parser.add_argument("--weights", type=Path, default=REPO / "outputs" / "wrn50_2_random_seed0.pth")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "patchcore_vs_anomalib.json")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="coreset seeds (first = main comparison)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--anomalib-preprocessing", action="store_true",
                        help="also score the test images through anomalib's own read_image + PreProcessor")
    # reduced demo (only when the demo is generated here)
    parser.add_argument("--n-train", type=int, default=60)
    parser.add_argument("--n-test-good", type=int, default=20)
    parser.add_argument("--n-test-defect-per-type", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import anomalib  # noqa: F401 - fail early with a clear message
    import timm

    if args.data_root is None:
        sizes = (args.n_train, args.n_test_good, args.n_test_defect_per_type)
        suffix = "" if sizes == (60, 20, 8) else "_" + "_".join(map(str, sizes))
        args.data_root = REPO / "data" / f"fapm_demo{suffix}"
    start = time.perf_counter()
    sha = save_weights(args.weights, seed=0)
    demo = [c for c in args.categories if c in DEMO_CATEGORIES]
    if demo:
        generate_demo(args.data_root, categories=demo, n_train=args.n_train, n_test_good=args.n_test_good,
                      n_test_defect_per_type=args.n_test_defect_per_type)
    results = [run_category(args.data_root, c, args.weights, args) for c in args.categories]
    table = markdown(results, args.seeds)
    report = {
        "command": "python -m benchmarks.patchcore_vs_anomalib " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": args.threads,
                    "cpu_count": os.cpu_count()},
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "anomalib": anomalib.__version__},
        "weights": {"file": str(args.weights), "sha256": sha,
                    "what": "torch.manual_seed(0); torchvision.models.wide_resnet50_2(weights=None).state_dict()"},
        "data_root": str(args.data_root),
        "seconds": time.perf_counter() - start,
        "results": results,
        "table_markdown": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table)
    print(f"\n{report['seconds']:.0f}s total; JSON: {args.out}")


if __name__ == "__main__":
    main()
