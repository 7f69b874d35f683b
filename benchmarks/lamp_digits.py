"""LAMP Table 1 protocol on scikit-learn's bundled 8×8 digits: L2 vs L2-LAMP by batch size.

Protocol (LAMP §3.1/§3.3, MNIST replaced by the offline 8×8 digits): each digit in turn is
the normal class; an autoencoder is trained on that digit's training images only and
scores every test image (normal = that digit, anomalous = the other nine) by its L2
reconstruction error; the table reports the AUROC averaged over the ten digits.

Model: the project's :class:`~fapm.lamp.autoencoder.ConvAutoencoder` in its four-block
form (the paper's choice for low-resolution inputs): the 8×8 image is zero-padded to
16×16, four ``conv(stride 2) → BN → LeakyReLU`` blocks reach a 1×1 bottleneck, four
``upsample → conv → BN → LeakyReLU`` blocks come back, a 1×1 conv + sigmoid gives the image.
Every configuration uses the same seed for the split, the initial weights and the batch
order, so L2 and L2-LAMP runs differ only in the loss.

Usage::

    python -m benchmarks.lamp_digits --out digits.json [--epochs 100] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from multiprocessing import get_context

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from fapm.lamp.autoencoder import ConvAutoencoder
from fapm.lamp.loss import ReconstructionLoss
from fapm.metrics.functional import auroc


@dataclass(frozen=True)
class Variant:
    """One loss configuration of the table."""

    name: str
    lamp: bool
    max_over: str = "sample"
    detach_max: bool = False


VARIANTS = {
    "L2": Variant("L2", lamp=False),
    "L2-LAMP": Variant("L2-LAMP", lamp=True),
    "L2-LAMP (batch max)": Variant("L2-LAMP (batch max)", lamp=True, max_over="batch"),
    "L2-LAMP (detached max)": Variant("L2-LAMP (detached max)", lamp=True, detach_max=True),
}


@dataclass(frozen=True)
class Job:
    variant: Variant
    batch_size: int
    digit: int
    seed: int
    epochs: int
    lr: float
    epsilon: float
    channels: tuple[int, ...]
    test_size: float


def load_split(seed: int, test_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as ``[N, 1, 8, 8]`` floats in ``[0, 1]``, stratified train/test split."""
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(images, data.target, test_size=test_size, stratify=data.target, random_state=seed)


def build_model(channels: tuple[int, ...]) -> ConvAutoencoder:
    """Four-block autoencoder for 8×8 grey images (zero padding to 16×16)."""
    return ConvAutoencoder(
        in_channels=1,
        input_size=8,
        depth=len(channels),
        channels=channels,
        pad_mode="constant",
        output_activation=nn.Sigmoid(),
    )


def run_job(job: Job) -> dict[str, float | int | str]:
    """Train on one normal digit, return the test AUROC."""
    torch.set_num_threads(1)
    x_train, x_test, y_train, y_test = load_split(job.seed, job.test_size)
    normal = torch.from_numpy(x_train[y_train == job.digit])
    test = torch.from_numpy(x_test)
    labels = (y_test != job.digit).astype(np.int64)

    torch.manual_seed(job.seed)
    model = build_model(job.channels)
    loss_fn = ReconstructionLoss(
        "l2", lamp=job.variant.lamp, epsilon=job.epsilon, max_over=job.variant.max_over, detach_max=job.variant.detach_max
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=job.lr)
    order = torch.Generator().manual_seed(job.seed)
    n = normal.shape[0]
    batch = min(job.batch_size, n)  # a batch larger than the class is the full class
    start = time.perf_counter()
    model.train()
    for _ in range(job.epochs):
        perm = torch.randperm(n, generator=order)
        # a ragged last batch of one image would break BatchNorm at the 1×1 bottleneck: drop it
        stop = n - 1 if n % batch == 1 else n
        for i in range(0, stop, batch):
            x = normal[perm[i : i + batch]]
            loss = loss_fn(model(x), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.inference_mode():
        scores = (model(test) - test).square().mean(dim=(1, 2, 3))
    return {
        "variant": job.variant.name,
        "batch_size": job.batch_size,
        "digit": job.digit,
        "seed": job.seed,
        "auroc": auroc(scores, labels),
        "train_images": n,
        "final_loss": float(loss.detach()),
        "seconds": time.perf_counter() - start,
    }


def summarise(results: list[dict], variants: list[str], batch_sizes: list[int]) -> dict[str, dict[int, dict[str, float]]]:
    """Mean AUROC over the ten digits, then mean/std over seeds, per variant and batch size."""
    table: dict[str, dict[int, dict[str, float]]] = {}
    for v in variants:
        table[v] = {}
        for bs in batch_sizes:
            rows = [r for r in results if r["variant"] == v and r["batch_size"] == bs]
            per_seed = [
                statistics.fmean(r["auroc"] for r in rows if r["seed"] == s) for s in sorted({r["seed"] for r in rows})
            ]
            table[v][bs] = {
                "mean_auroc": statistics.fmean(per_seed),
                "std_over_seeds": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
                "per_seed": per_seed,
            }
    return table


def markdown(table: dict[str, dict[int, dict[str, float]]], batch_sizes: list[int], n_seeds: int) -> str:
    head = "| Loss | " + " | ".join(f"BS {bs}" for bs in batch_sizes) + " |"
    lines = [head, "|---|" + "---:|" * len(batch_sizes)]
    for v, row in table.items():
        cells = []
        for bs in batch_sizes:
            cell = f"{row[bs]['mean_auroc']:.3f}"
            if n_seeds > 1:
                cell += f" ± {row[bs]['std_over_seeds']:.3f}"
            cells.append(cell)
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file for the per-run results and the table")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--variants", nargs="+", default=["L2", "L2-LAMP"], choices=sorted(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epsilon", type=float, default=1e-3)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 32, 16])
    parser.add_argument("--test-size", type=float, default=0.3)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()

    jobs = [
        Job(VARIANTS[v], bs, d, s, args.epochs, args.lr, args.epsilon, tuple(args.channels), args.test_size)
        for s in args.seeds
        for v in args.variants
        for bs in args.batch_sizes
        for d in range(10)
    ]
    start = time.perf_counter()
    if args.workers > 1:
        with get_context("spawn").Pool(args.workers) as pool:
            results = pool.map(run_job, jobs, chunksize=1)
    else:
        results = [run_job(j) for j in jobs]
    wall = time.perf_counter() - start

    table = summarise(results, args.variants, args.batch_sizes)
    text = markdown(table, args.batch_sizes, len(args.seeds))
    print(text)
    print(f"\n{len(jobs)} trainings in {wall:.0f} s on {args.workers} worker(s) ({platform.processor() or platform.machine()})")
    config = {k: v for k, v in vars(args).items() if k != "out"}
    with open(args.out, "w") as f:
        json.dump(
            {
                "config": config,
                "table": {v: {str(bs): c for bs, c in row.items()} for v, row in table.items()},
                "markdown": text,
                "wall_seconds": wall,
                "torch": torch.__version__,
                "runs": results,
                "variants": {k: asdict(VARIANTS[k]) for k in args.variants},
            },
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()
