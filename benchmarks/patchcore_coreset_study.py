"""Which coreset explains the remaining gap between our PatchCore and anomalib's?

Companion of ``benchmarks/patchcore_vs_anomalib.py`` (same weights, data and input tensors).
The two implementations compute identical features and identical scores for a given memory
bank (checked there); they differ only in how the 10 % coreset is drawn. Here the SAME
training features are reduced by several samplers and every bank is scored by the same
code (anomalib's ``PatchcoreModel`` scoring tail, which reproduces ours), so the only variable
is the sampler:

* ``ours-128``: our ``GreedyKCenter`` on a dense Gaussian projection to 128 dims (``model=patchcore``);
* ``ours-265``: the same on 265 dims (what anomalib's Johnson-Lindenstrauss rule gives here);
* ``ours-exact``: our greedy k-center on the full 1536-d features (no projection);
* ``anomalib``: anomalib's ``KCenterGreedy`` (sparse random projection, eps 0.9).

For each bank it reports the coverage of the training patches in the full feature space
(largest and mean distance of a training patch to its nearest bank item: what greedy
k-center minimises) and the AUROCs. Needs anomalib (see the companion script)::

    /work/anomalib-venv/bin/python -m benchmarks.patchcore_coreset_study --out outputs/coreset_study.json
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.patchcore_vs_anomalib import (
    LAYERS,
    NUM_NEIGHBORS,
    RATIO,
    REPO,
    anomalib_score_from_embedding,
    batches,
    build_ours,
    load_split,
    metrics,
    pearson,
    save_weights,
)

from fapm.data.demo import DEMO_CATEGORIES, generate_demo
from fapm.data.transforms import Preprocess
from fapm.metrics import IMAGE_AUROC, PIXEL_AUROC
from fapm.models.coreset import GreedyKCenter, num_centres
from fapm.models.scoring import anomaly_map


def coverage(x: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> tuple[float, float]:
    """(max, mean) over rows of ``x`` of the Euclidean distance to the nearest row of ``bank``."""
    bank_sq = (bank * bank).sum(1)
    mins = []
    for lo in range(0, x.shape[0], chunk):
        part = x[lo : lo + chunk]
        sq = torch.addmm(bank_sq.unsqueeze(0), part, bank.T, alpha=-2).add_((part * part).sum(1, keepdim=True))
        mins.append(sq.amin(1).clamp_min(0).sqrt())
    d = torch.cat(mins)
    return float(d.max()), float(d.mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=REPO / "data" / "fapm_demo")
    parser.add_argument("--categories", nargs="+", default=list(DEMO_CATEGORIES))
    parser.add_argument("--weights", type=Path, default=REPO / "outputs" / "wrn50_2_random_seed0.pth")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "coreset_study.json")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--samplers", nargs="+", default=["ours-128", "ours-265", "ours-exact", "anomalib"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from anomalib.models.components import KCenterGreedy
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    if not args.weights.is_file():
        save_weights(args.weights, seed=0)
    missing = [c for c in args.categories if c in DEMO_CATEGORIES and not (args.data_root / c).exists()]
    if missing:
        generate_demo(args.data_root, categories=missing)
    scorer = PatchcoreModel(layers=LAYERS, backbone="wide_resnet50_2", pre_trained=False, num_neighbors=NUM_NEIGHBORS)
    scorer.eval()
    out: dict = {"command": " ".join(sys.argv), "results": []}
    pre = Preprocess(256, 224)
    for category in args.categories:
        train, test = load_split(args.data_root, category, "train", pre), load_split(args.data_root, category, "test", pre)
        detector, _ = build_ours(args.weights, 0)
        with torch.no_grad():
            train_emb = torch.cat([detector.extract(b)[0] for b in batches(train.images, 8)])
            test_emb = [detector.extract(b)[0] for b in batches(test.images, 8)]
        x = scorer.reshape_embedding(train_emb)
        del train_emb
        k = num_centres(x.shape[0], RATIO)
        size = tuple(test.images.shape[-2:])
        patch_maps: dict[str, torch.Tensor] = {}
        for sampler in args.samplers:
            for seed in args.seeds:
                start = time.perf_counter()
                if sampler == "anomalib":
                    torch.manual_seed(seed)
                    np.random.seed(seed)
                    bank = KCenterGreedy(embedding=x, sampling_ratio=RATIO).sample_coreset()
                else:
                    dims = {"ours-128": 128, "ours-265": 265, "ours-exact": None}[sampler]
                    gen = torch.Generator().manual_seed(seed)
                    idx = GreedyKCenter(projection_dim=dims).select(x.unsqueeze(0), k, gen).selected[0]
                    bank = x[idx]
                seconds = time.perf_counter() - start
                cov_max, cov_mean = coverage(x, bank)
                scorer.memory_bank = bank
                parts = [anomalib_score_from_embedding(scorer, e, size) for e in test_emb]
                scores = torch.cat([p[0] for p in parts])
                patch = torch.cat([p[1] for p in parts])
                nearest = torch.cat([p[2] for p in parts])
                bilinear = anomaly_map(patch, size, 4.0, "bilinear")
                patch_maps[f"{sampler}/{seed}"] = patch
                m_near, m_bil = metrics(scores, nearest, test), metrics(scores, bilinear, test)
                row = {
                    "category": category, "sampler": sampler, "seed": seed, "bank": int(bank.shape[0]),
                    "seconds": seconds, "coverage_max": cov_max, "coverage_mean": cov_mean,
                    "test_patch_score_mean": float(patch.mean()),
                    "image_auroc": m_near[IMAGE_AUROC], "pixel_auroc_nearest": m_near[PIXEL_AUROC],
                    "pixel_auroc_bilinear": m_bil[PIXEL_AUROC],
                }
                out["results"].append(row)
                print(json.dumps(row), flush=True)
        keys = list(patch_maps)
        out.setdefault("patch_map_pearson", {})[category] = {
            f"{a} vs {b}": pearson(patch_maps[a], patch_maps[b]) for i, a in enumerate(keys) for b in keys[i + 1 :]
        }
    # summary: mean +- std per (category, sampler)
    lines = ["| category | sampler | seeds | coverage max | coverage mean | image AUROC | pixel AUROC (nearest) | "
             "pixel AUROC (bilinear) |", "|---|---|---|---|---|---|---|---|"]
    for category in args.categories:
        for sampler in args.samplers:
            rs = [r for r in out["results"] if r["category"] == category and r["sampler"] == sampler]

            def ms(key: str, scale: float = 100.0, rs=rs) -> str:
                v = np.array([r[key] for r in rs]) * scale
                return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f}"

            lines.append(f"| {category} | {sampler} | {len(rs)} | {ms('coverage_max', 1)} | {ms('coverage_mean', 1)} | "
                         f"{ms('image_auroc')} | {ms('pixel_auroc_nearest')} | {ms('pixel_auroc_bilinear')} |")
    out["table_markdown"] = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(out["table_markdown"])


if __name__ == "__main__":
    main()
