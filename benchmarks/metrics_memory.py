"""Peak memory and time of ``AnomalyMetrics`` on a full-size synthetic test set.

Default: 500 maps of 224x224 (25 M pixels) in batches of 32, half of the images with a few
rectangular defects. Scores are uniform float32 noise plus a bump on the defects: almost
every pixel has a distinct score, the worst case for the exact sweep.

    python -m benchmarks.metrics_memory [--images 500] [--size 224] [--batch 32]

Linux only (reads VmRSS/VmHWM from /proc/self/status).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fapm.metrics import AnomalyMetrics


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    metrics = AnomalyMetrics()
    rss_start = _status_mb("VmRSS")
    t0 = time.perf_counter()
    for start in range(0, args.images, args.batch):
        b = min(args.batch, args.images - start)
        labels = (torch.arange(start, start + b) % 2).long()
        masks = torch.zeros(b, args.size, args.size)
        for i in torch.nonzero(labels).flatten().tolist():
            for _ in range(3):
                r, c, h, w = torch.randint(0, args.size // 2, (4,), generator=gen).tolist()
                masks[i, r : r + h // 2 + 1, c : c + w // 2 + 1] = 1
        maps = torch.rand(b, args.size, args.size, generator=gen) + 0.5 * masks
        metrics.update(maps.amax(dim=(1, 2)), labels, maps, masks, ["good" if y == 0 else "defect" for y in labels])
    t_update = time.perf_counter() - t0
    rss_stored = _status_mb("VmRSS")

    exact_peak = _reset_peak()
    t0 = time.perf_counter()
    result = metrics.compute()
    t_compute = time.perf_counter() - t0
    peak = _status_mb("VmHWM")

    pixels = args.images * args.size * args.size
    print(f"{args.images} maps of {args.size}x{args.size} = {pixels / 1e6:.1f} M pixels, batch {args.batch}")
    stored = metrics.storage_bytes()
    print(f"stored maps+masks: {stored / 2**20:.0f} MiB ({stored / pixels:.0f} B/pixel)")
    print(f"RSS: start {rss_start:.0f} MiB, after updates {rss_stored:.0f} MiB")
    print(
        f"peak RSS during compute: {peak:.0f} MiB "
        f"(+{peak - rss_stored:.0f} MiB over the stored state)"
        + ("" if exact_peak else " [VmHWM not resettable: process-wide peak]")
    )
    print(f"time: updates {t_update:.1f} s, compute {t_compute:.1f} s")
    for key, value in result.items():
        print(f"  {key}: {value:.6f}")


if __name__ == "__main__":
    main()
