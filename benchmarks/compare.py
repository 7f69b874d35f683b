"""Compare every metric of two benchmark JSON files to a tolerance (timings, commands and machine facts excluded).

    python -m benchmarks.compare before.json after.json [--tol 1e-6]

Exits with status 1 when a value differs or is present in one file only. Used to check that a
refactor leaves every metric of ``benchmarks.ablation_real`` and ``benchmarks.misalignment`` unchanged.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from typing import Any

#: key parts that are timings or facts of the machine (they differ from run to run)
TIMING = ("ms_per_image", "img_per_s", "seconds", "load_avg", "alignment_overhead")
SKIP = ("command", "machine", "threads", "root")


def flat(x: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(path, leaf)`` of every leaf of nested dicts and lists."""
    if isinstance(x, dict):
        for k, v in x.items():
            yield from flat(v, f"{prefix}/{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from flat(v, f"{prefix}[{i}]")
    else:
        yield prefix, x


def skipped(key: str) -> bool:
    parts = key.split("/")
    return parts[-1].endswith("_s") or any(t in p for p in parts for t in TIMING) or any(
        p.split("[")[0] in SKIP for p in parts)


def compare(a: dict[str, Any], b: dict[str, Any], tol: float) -> tuple[int, list[str]]:
    """``(values compared, differences)`` of two flattened results."""
    compared, diffs = 0, []
    for key in sorted(set(a) | set(b)):
        if skipped(key):
            continue
        if key not in a or key not in b:
            diffs.append(f"only in one file: {key}")
            continue
        x, y = a[key], b[key]
        numbers = isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool)
        same = (abs(x - y) <= tol or (math.isnan(x) and math.isnan(y))) if numbers else x == y
        compared += 1
        if not same:
            diffs.append(f"{key}: {x!r} != {y!r}")
    return compared, diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--tol", type=float, default=1e-6)
    args = parser.parse_args(argv)
    before, after = (dict(flat(json.loads(open(p).read()))) for p in (args.before, args.after))
    compared, diffs = compare(before, after, args.tol)
    for line in diffs:
        print(line)
    print(f"{compared} values compared, {len(diffs)} differences (tolerance {args.tol:g})")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
