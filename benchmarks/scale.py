"""Scale benchmark (issues 13 and 22): thousands of training images on one machine.

Issue 22's stages:

* ``fit --sizes 500,1000,2000,5000 --options fapm,fapm_scalable,patchcore_scalable``: the real
  tiles' ``train/good`` expanded to N images (``fapm.data.expand``: seeded crops of 80–100 % of
  the area, flips, 90° rotations; ``real`` = the 728 originals), each fit a child process running
  the product's own ``fapm train data=mtd data.root=<expanded> backbone=<--backbone> model=…``
  (``fapm.pipeline.train.train``) and testing on the tiles' own test set; reports the child's peak
  RSS, extraction s (fit s − build s), build s, memory vectors, search ms/img at batch 1 and 8 (the
  saved model's ``nearest`` on test images) and image / pixel AUROC and AUPRO.
* ``fit-shapes --backbone wide_resnet50_2 --sizes 1000,2000``: the fit's memory, build and search
  on seeded random features of the backbone's stream shapes (no extraction), for a backbone too
  slow to extract thousands of images here.

Issue 13's stages (sub-commands), each calling the package's own stages (``build_memory_detector``,
``MemoryDetector.collect / add_features / build / nearest``, ``FaissKNN`` / ``TorchKNN``,
the MVTec data module and metrics):

* ``extract --sizes 500,1000,2000``: generated 224² images (seeded smooth textures, image
  ``i`` from seed ``i``, so a smaller set is a prefix of a larger one) through WRN-50-2
  (RANDOM init: timing only, no ImageNet weights offline) with ``detector.extract``; the
  pooled streams are written once to a raw float32 cache (extraction s/img is measured here).
* ``fit-cached --sizes ... --options ...``: one child process per (size, option): the cached
  features are fed to ``detector.add_features`` in batches of 16 (read with ``readinto``,
  never memory-mapped, so RSS is the detector's), then ``detector.build()``; reports build
  s, peak RSS (the child's ``ru_maxrss``), memory vectors and search ms/img (``nearest`` on
  held-out generated images at batch 1). PatchCore options also time FAISS flat/IVF on
  the same memory and give IVF's recall@1 against the exact search.
* ``micro``: search micro-benchmark torch vs FAISS flat vs IVF over memory sizes
  1e3..1e6 x dims 512/1024/1536 (sizes capped by ``--max-floats``).
* ``real``: accuracy on the real tiles (``../shared/data/mtd``, all training images) with
  the trained VGG16-BN (``backbone=vgg16_bn_craft``): exact vs scalable builds, image and
  pixel AUROC, on one set of extracted features.

Every stage prints a Markdown table and writes JSON under ``benchmarks/results/``.
Timings on a shared 2-core CPU: compare ratios within one run.

    python -m benchmarks.scale extract --sizes 500,1000,2000
    python -m benchmarks.scale fit --sizes 500,1000,2000,5000 --options fapm,fapm_scalable,patchcore_scalable
    python -m benchmarks.scale fit-shapes --backbone wide_resnet50_2 --sizes 1000,2000
    python -m benchmarks.scale fit-cached --sizes 500,1000,2000 --options fapm_exact,fapm_fp16,fapm_scalable,patchcore
    python -m benchmarks.scale micro
    python -m benchmarks.scale real
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from fapm.models.detector import layer_batches

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = Path(os.environ.get("FAPM_SCALE_CACHE", "/tmp/fapm_scale_cache"))
SIZE = 224
TEST_IMAGES = 20  # generated held-out images for the search timing (batch 1)

#: option → config overrides (the configs are the product's; nothing is re-implemented here)
OPTIONS: dict[str, list[str]] = {
    "fapm_exact": ["model=fapm"],
    "fapm_fp16": ["model=fapm", "model.feature_dtype=float16"],
    "fapm_proj": ["model=fapm", "model.feature_dtype=float16", "model.projection_dim=128"],
    "fapm_exact_again": ["model=fapm"],  # the exact build re-timed beside another option (load varies)
    "fapm_scalable": ["model=fapm_scalable"],
    "patchcore": ["model=patchcore"],
    "patchcore_fp16": ["model=patchcore", "model.feature_dtype=float16"],
}


def log(*parts: Any) -> None:
    print("[scale]", *parts, file=sys.stderr, flush=True)


def compose_settings(overrides: list[str]):
    from fapm.conf import compose
    from fapm.pipeline.common import validated_settings

    return validated_settings(compose(["paths.output_dir=/tmp", *overrides]))


def detector_for(overrides: list[str], extractor=None):
    from fapm.builders import build_memory_detector

    settings = compose_settings(["backbone=wide_resnet50_2", "backbone.pretrained=false", *overrides])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
        return build_memory_detector(settings.model, settings.backbone, settings.seed, extractor=extractor)


def generated_images(start: int, stop: int) -> torch.Tensor:
    """Images ``start..stop-1`` ``[B, 3, 224, 224]``: a smooth seeded texture shared by all
    (the 'product') plus per-image smooth variation and noise, normalised like real inputs."""
    base_gen = torch.Generator().manual_seed(12345)
    base = torch.nn.functional.interpolate(torch.randn(1, 3, 14, 14, generator=base_gen), size=SIZE, mode="bicubic")
    out = []
    for i in range(start, stop):
        g = torch.Generator().manual_seed(i)
        low = torch.nn.functional.interpolate(torch.randn(1, 3, 28, 28, generator=g), size=SIZE, mode="bilinear")
        out.append(base + 0.3 * low + 0.1 * torch.randn(1, 3, SIZE, SIZE, generator=g))
    return torch.cat(out)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "loadavg": [round(x, 2) for x in load]}


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2))
    log("wrote", path)
    return path


# --------------------------------------------------------------------------- extract
def cache_meta() -> dict[str, Any]:
    path = CACHE / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {}


@torch.inference_mode()
def cmd_extract(args: argparse.Namespace) -> None:
    """Extract WRN-50-2 streams of ``max(sizes)`` training + TEST_IMAGES test images to the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    n = max(int(s) for s in args.sizes.split(","))
    det = detector_for(["model=fapm"])
    det.eval()
    meta = cache_meta()
    done = int(meta.get("train_images", 0))
    if done >= n:
        log(f"cache already holds {done} images")
        return
    timings = meta.get("timings", [])
    for split, count, offset in (("test", TEST_IMAGES, 10_000_000), ("train", n, 0)):
        have = int(meta.get(f"{split}_images", 0))
        files = None
        start = time.perf_counter()
        for lo in range(have, count, args.batch):
            hi = min(count, lo + args.batch)
            streams = det.extract(generated_images(offset + lo, offset + hi))
            if files is None:
                files = [open(CACHE / f"{split}_{i}.f32", "ab") for i in range(len(streams))]
                meta["shapes"] = [list(s.shape[1:]) for s in streams]
            for f, s in zip(files, streams):
                f.write(s.contiguous().numpy().tobytes())
            if hi % (args.batch * 8) == 0 or hi == count:
                for f in files:
                    f.flush()
                meta[f"{split}_images"] = hi
                (CACHE / "meta.json").write_text(json.dumps(meta))
                log(f"{split}: {hi}/{count} images, {(time.perf_counter() - start) / max(hi - have, 1):.3f} s/img")
        if files:
            for f in files:
                f.close()
            if split == "train":
                timings.append({"images": count - have, "seconds": time.perf_counter() - start})
        meta[f"{split}_images"] = count
    meta["timings"] = timings
    meta["machine"] = machine()
    (CACHE / "meta.json").write_text(json.dumps(meta))


def read_streams(split: str, start: int, stop: int, meta: dict[str, Any]) -> list[torch.Tensor]:
    """Cached streams of images ``start..stop-1``, read into fresh tensors (no memory map)."""
    out = []
    for i, shape in enumerate(meta["shapes"]):
        per = math.prod(shape)
        t = torch.empty(stop - start, *shape)
        with open(CACHE / f"{split}_{i}.f32", "rb") as f:
            f.seek(start * per * 4)
            f.readinto(t.numpy().data.cast("B"))
        out.append(t)
    return out


def extraction_s_per_image(meta: dict[str, Any]) -> float | None:
    t = meta.get("timings") or []
    images = sum(x["images"] for x in t)
    return sum(x["seconds"] for x in t) / images if images else None


# ------------------------------------------------------------------------------- fit
def time_search(search, queries: torch.Tensor, k: int, repeats: int = 1) -> float:
    """Median seconds of ``search.search(queries, k)``."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        search.search(queries, k)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


@torch.inference_mode()
def cmd_fit_one(args: argparse.Namespace) -> None:
    """Child process: fit one option on ``args.n`` cached images; print one JSON line."""
    from fapm.models.knn import FaissKNN, TorchKNN
    from fapm.models.patch_memory import split_regions

    torch.set_num_threads(args.threads)
    meta = cache_meta()
    if int(meta.get("train_images", 0)) < args.n:
        raise SystemExit(f"the cache holds {meta.get('train_images', 0)} images; run extract --sizes {args.n} first")
    det = detector_for(OPTIONS[args.option])
    det.eval()
    rss_start = peak_rss_mb()
    # the cache holds one stream per layer, read 16 images at a time (never all at once)
    batches = (dict(zip(det.extractor.layers, read_streams("train", lo, min(args.n, lo + 16), meta)))
               for lo in range(0, args.n, 16))
    report = det.fit_features(batches, expected_images=args.n)
    build_s = sum(report.seconds)  # the memory build alone (reading the cache excluded)
    out: dict[str, Any] = {
        "option": args.option, "overrides": OPTIONS[args.option], "images": args.n, "build_s": build_s,
        "build_s_per_image": build_s / args.n, "peak_rss_mb": peak_rss_mb(), "rss_before_fit_mb": rss_start,
        "memory_vectors": det.memory_vectors(), "memory_mb": det.memory_bytes() / 2**20,
        "candidates": report.candidates, "enlarged": report.enlarged,
    }
    test = read_streams("test", 0, TEST_IMAGES, meta)
    per_image = []
    for i in range(TEST_IMAGES):
        streams = det.streams(dict(zip(det.extractor.layers, [s[i : i + 1] for s in test])))
        t = time.perf_counter()
        det.nearest(streams)
        per_image.append(time.perf_counter() - t)
    per_image = per_image[2:]  # warm-up
    out["search_ms_per_image"] = 1000 * sorted(per_image)[len(per_image) // 2]
    if len(det.memories) == 1:  # PatchCore: the same memory searched by torch, FAISS flat and IVF
        memory = det.memories[0]
        vectors, norms = memory.searchable(0)
        queries = torch.cat([split_regions(det.streams(dict(zip(det.extractor.layers, [s[i : i + 1] for s in test])))[0],
                                           det.grid) for i in range(4)], 1)  # 4 images' queries
        found = {}
        for name, search in (("torch", TorchKNN()), ("faiss_flat", FaissKNN("Flat")),
                             ("faiss_ivf", FaissKNN("IVF{nlist},Flat", nprobe=args.nprobe))):
            t = time.perf_counter()
            search.fit(vectors, norms)
            out[f"{name}_fit_s"] = time.perf_counter() - t
            search.search(queries[:, :64], 1)  # warm-up
            out[f"{name}_ms_per_image"] = 1000 * time_search(search, queries, 1, 3) / 4
            found[name] = search.search(queries, 1)[1]
        out["ivf_recall_at_1"] = float((found["faiss_ivf"] == found["torch"]).float().mean())
        out["ivf_speedup"] = out["torch_ms_per_image"] / out["faiss_ivf_ms_per_image"]
    out["peak_rss_mb_after_search"] = peak_rss_mb()
    print("RESULT " + json.dumps(out), flush=True)


def cmd_fit_cached(args: argparse.Namespace) -> None:
    """One child process per (size, option), so each peak RSS is that fit's own."""
    meta = cache_meta()
    rows = []
    path = RESULTS / args.out
    if path.exists() and args.resume:
        rows = json.loads(path.read_text()).get("rows", [])
    done = {(r["images"], r["option"]) for r in rows}
    for n in [int(x) for x in args.sizes.split(",")]:
        for option in args.options.split(","):
            if (n, option) in done:
                continue
            log(f"fit {option} on {n} images …")
            cmd = [sys.executable, "-m", "benchmarks.scale", "fit-cached-one", "--n", str(n), "--option", option,
                   "--threads", str(args.threads), "--nprobe", str(args.nprobe)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                log(f"failed ({proc.returncode}):", proc.stderr[-2000:])
                continue
            row = json.loads(lines[-1][7:])
            row["extraction_s_per_image"] = extraction_s_per_image(meta)
            rows.append(row)
            log(json.dumps(row))
            save(args.out, {"machine": machine(), "extraction": meta.get("timings"), "rows": rows,
                            "backbone": "wide_resnet50_2, RANDOM init (timing only)", "image_size": SIZE})
    print(fit_table(rows))


def fit_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| option | images | extraction s/img | build s | build s/img | peak RSS MB | memory vectors "
             "| search ms/img | FAISS flat ms/img | IVF ms/img | IVF recall@1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["option"], r["images"])):
        ext = r.get("extraction_s_per_image")
        lines.append(
            f"| {r['option']} | {r['images']:,} | {ext:.3f} | {r['build_s']:.1f} | {r['build_s_per_image']:.4f} | "
            f"{r['peak_rss_mb']:,.0f} | {r['memory_vectors']:,} | {r['search_ms_per_image']:.1f} | "
            + (f"{r['faiss_flat_ms_per_image']:.1f} | {r['faiss_ivf_ms_per_image']:.1f} | {r['ivf_recall_at_1']:.3f} |"
               if "faiss_ivf_ms_per_image" in r else "– | – | – |")
        )
    return "\n".join(lines)


# ------------------------------------------------------------------- fit (real tiles)
#: option → model overrides of the real-data fit (the product's configs, as a user would type them)
REAL_FIT_OPTIONS: dict[str, list[str]] = {
    "fapm": ["model=fapm"],
    "fapm_scalable": ["model=fapm_scalable"],
    "fapm_uncapped": ["model=fapm", "model.memory_cap=null"],
    "patchcore": ["model=patchcore"],
    "patchcore_scalable": ["model=patchcore_scalable"],
    "patchcore_scalable_x2": ["model=patchcore_scalable", "model.coreset.oversample=2.0"],
    "fapm_scalable_fp16_host": ["model=fapm_scalable", "model.feature_storage=host"],
}
SEARCH_IMAGES = 24  # test images whose search is timed at batch 1 and 8 (after 8 warm-up images)


def add_fit_args(f: argparse.ArgumentParser) -> None:
    f.add_argument("--sizes", default="500,1000,2000,5000",
                   help="training images; 'real' = the source's own train/good, others made by fapm.data.expand")
    f.add_argument("--options", default="fapm,fapm_scalable,patchcore_scalable")
    f.add_argument("--backbone", default="efficientnet_lite0")
    f.add_argument("--source", default=os.environ.get("FAPM_MTD_ROOT", str(ROOT.parent.parent / "shared" / "data" / "mtd")),
                   help="the real tiles (MVTec layout, category magnetic_tile)")
    f.add_argument("--data-dir", default="/tmp/fapm_scale_data", help="where the expanded training sets are written")
    f.add_argument("--runs-dir", default="/tmp/fapm_scale_runs")
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--out", default=None, help="JSON under benchmarks/results (default scale_fit_<backbone>.json)")
    f.add_argument("--resume", action="store_true", help="keep the rows already in --out")
    f.add_argument("--timeout", type=float, default=None, help="seconds per run")


def dataset_root(size: str, args: argparse.Namespace) -> Path:
    """The data root of ``size`` training images (expanded once, then reused)."""
    from fapm.data.expand import expand_training_set

    if size == "real":
        return Path(args.source)
    root = Path(args.data_dir) / f"mtd_{size}"
    if not (root / "magnetic_tile" / "expand_manifest.json").exists():
        log(f"expanding the tiles' train/good to {size} images in {root}")
        expand_training_set(args.source, "magnetic_tile", root, int(size), seed=0)
    return root


def cmd_fit(args: argparse.Namespace) -> None:
    """One child process per (size, option) running the product's fit (``fapm train``'s
    ``fapm.pipeline.train.train``); its peak RSS is read from ``wait4``."""
    name = args.out or f"scale_fit_{args.backbone}.json"
    path = RESULTS / name
    rows = json.loads(path.read_text()).get("rows", []) if path.exists() and args.resume else []
    done = {(str(r["size"]), r["option"]) for r in rows}
    for size in args.sizes.split(","):
        root = dataset_root(size, args)
        for option in args.options.split(","):
            if (size, option) in done:
                continue
            run_dir = Path(args.runs_dir) / f"{args.backbone}_{option}_{size}"
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            cmd = [sys.executable, __file__, "fit-run", "--n", "0" if size == "real" else size, "--option", option,
                   "--root", str(root), "--run-dir", str(run_dir), "--backbone", args.backbone,
                   "--threads", str(args.threads)]
            log(f"fit {option} on {size} images: {' '.join(cmd)}")
            run_dir.mkdir(parents=True)
            with open(run_dir.with_suffix(".log"), "w") as logf:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, text=True)
                out, _ = proc.communicate(timeout=args.timeout)  # the child reports its own peak RSS (ru_maxrss)
            lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                log(f"failed ({proc.returncode}); see {run_dir.with_suffix('.log')}")
                continue
            row = json.loads(lines[-1][7:])
            row["size"] = size
            rows.append(row)
            log(json.dumps(row))
            save(name, {"machine": machine(), "backbone": args.backbone, "source": "tiles' train/good, expanded",
                        "rows": rows, "table": fit_real_table(rows, args)})
    print(markdown(fit_real_table(rows, args)))


@torch.inference_mode()
def cmd_fit_run(args: argparse.Namespace) -> None:
    """Child: ``fapm train data=mtd data.root=<root> backbone=<b> model=…`` in this process, then the
    search of the saved model timed at batch 1 and 8; prints one RESULT line."""
    import csv

    from fapm.data.mvtec import mvtec_train_records
    from fapm.pipeline.train import train

    overrides = ["data=mtd", f"data.root={args.root}", f"backbone={args.backbone}", *REAL_FIT_OPTIONS[args.option],
                 f"runtime.threads={args.threads}", "data.num_workers=0", "logger=csv", "callbacks=none"]
    cfg = compose_train(overrides, args.run_dir)
    images = len(mvtec_train_records(args.root, "magnetic_tile"))
    metrics = train(cfg)
    run = Path(args.run_dir)
    build = {}
    for csv_path in run.rglob("metrics.csv"):
        with open(csv_path) as f:
            for rec in csv.DictReader(f):
                for key, value in rec.items():
                    if key.endswith("/build_seconds") and value:
                        build[key.split("/")[1]] = float(value)
    build_s = sum(build.values())
    row: dict[str, Any] = {
        "option": args.option, "overrides": REAL_FIT_OPTIONS[args.option], "images": images,
        "fit_s": metrics["fit_seconds"], "build_s": build_s, "build_s_by_stream": build,
        "extraction_s": metrics["fit_seconds"] - build_s, "build_s_per_image": build_s / images,
        "memory_vectors": metrics.get("memory_vectors"), "memory_sizes": {k: [min(v), max(v)] for k, v in
                                                                           metrics.get("memory_sizes", {}).items()},
        "image_auroc": metrics.get("image_auroc"), "pixel_auroc": metrics.get("pixel_auroc"),
        "pixel_aupro": metrics.get("pixel_aupro"), "latency_ms_batch1_end_to_end": metrics.get("latency_ms"),
        "peak_rss_mb_fit_and_test": peak_rss_mb(),
    }
    row.update(time_saved_search(run / "model.safetensors", args))
    row["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(row), flush=True)


def compose_train(overrides: list[str], run_dir: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fapm.conf import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={run_dir}", *overrides], return_hydra_config=False)


def time_saved_search(model_path: Path, args: argparse.Namespace) -> dict[str, float]:
    """Median search ms per image (``detector.nearest``: k-NN of every region, features given) of
    the saved model on test images, at batch 1 and 8."""
    from fapm.data import MVTecDataModule
    from fapm.model_file import load_detector

    detector, file = load_detector(model_path)
    detector.eval()
    mean, std = file.preprocess["mean"], file.preprocess["std"]
    dm = MVTecDataModule(root=args.root, category="magnetic_tile", train_batch_size=8, eval_batch_size=8,
                         mean=mean, std=std, num_workers=0)
    dm.setup("test")
    batches = []
    for batch in dm.test_dataloader():
        batches.append(batch["image"])
        if sum(b.shape[0] for b in batches) >= SEARCH_IMAGES + 8:
            break
    images = torch.cat(batches)[: SEARCH_IMAGES + 8]
    streams = [detector.extract(images[i : i + 8]) for i in range(0, len(images), 8)]
    detector.nearest(streams[0])  # builds the indexes, warms up
    out = {}
    for batch in (1, 8):
        per_image = []
        for part in streams[1:]:
            for lo in range(0, 8, batch):
                t = time.perf_counter()
                detector.nearest([s[lo : lo + batch] for s in part])
                per_image.append((time.perf_counter() - t) / batch)
        out[f"search_ms_batch{batch}"] = 1000 * sorted(per_image)[len(per_image) // 2]
    return out


def fit_real_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    columns = ["option", "images", "peak RSS MB", "extraction s", "build s", "build s/img", "memory vectors",
               "search ms/img (batch 1)", "search ms/img (batch 8)", "image AUROC", "pixel AUROC", "AUPRO"]
    order = {o: i for i, o in enumerate(REAL_FIT_OPTIONS)}
    body = []
    for r in sorted(rows, key=lambda r: (order.get(r["option"], 99), r["images"])):
        pct = lambda v: None if v is None else round(100 * v, 1)
        body.append([r["option"], r["images"], round(r["peak_rss_mb"]), round(r["extraction_s"]), round(r["build_s"], 1),
                     round(r["build_s_per_image"], 4), r["memory_vectors"], round(r["search_ms_batch1"], 1),
                     round(r["search_ms_batch8"], 1), pct(r["image_auroc"]), pct(r["pixel_auroc"]),
                     pct(r["pixel_aupro"])])
    command = (f"python -m benchmarks.scale fit --backbone {args.backbone} --sizes {args.sizes} "
               f"--options {args.options} --threads {args.threads}")
    return {"title": f"Fit on thousands of real-tile images ({args.backbone})", "command": command,
            "date": time.strftime("%Y-%m-%d"), "machine": "2-core x86-64 CPU, no GPU, shared with other sessions",
            "weights": "ImageNet EfficientNet-Lite0 (packaged)" if "lite0" in args.backbone else
            f"{args.backbone}", "columns": columns, "rows": body}


def markdown(table: dict[str, Any]) -> str:
    cols = table["columns"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table["rows"]:
        lines.append("| " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in row) + " |")
    return "\n".join(lines)


def cmd_fit_table(args: argparse.Namespace) -> None:
    """Join the rows of several ``fit`` result files (runs done in parallel queues) into one table."""
    rows, machines = [], []
    for name in args.inputs.split(","):
        data = json.loads((RESULTS / name).read_text())
        rows += data["rows"]
        machines.append(data.get("machine"))
    table = fit_real_table(rows, args)
    save(args.out, {"machine": machines, "backbone": args.backbone, "parts": args.inputs.split(","),
                    "rows": rows, "table": table})
    print(markdown(table))


# ------------------------------------------------------------ coreset (exact vs composable)
@torch.inference_mode()
def cmd_coreset(args: argparse.Namespace) -> None:
    """PatchCore's coreset on the real tiles' features, exact greedy vs composable, in one process
    (same load for both): selection seconds and covering radius in feature space, for the first
    ``--sizes`` training images (Lite0 ImageNet, PatchCore's concatenated streams)."""
    from fapm.data import MVTecDataModule
    from fapm.models.coreset import ComposableKCenter, GreedyKCenter, exact_assignment, num_centres

    torch.set_num_threads(args.threads)
    sizes = [int(x) for x in args.sizes.split(",")]
    settings = compose_settings([f"backbone={args.backbone}", "data=mtd", f"data.root={args.source}",
                                 "model=patchcore"])
    det = detector_for_backbone([f"backbone={args.backbone}", "model=patchcore"])
    det.eval()
    dm = MVTecDataModule(root=args.source, category="magnetic_tile", train_batch_size=8, eval_batch_size=8,
                         mean=settings.data.mean, std=settings.data.std, num_workers=0)
    dm.setup("fit")
    det.reset_fit()
    seen = 0
    for batch in dm.train_dataloader():
        det.collect(batch["image"])
        seen += batch["image"].shape[0]
        if seen >= max(sizes):
            break
    feats = det.features.take(0)  # [1, images x positions, C]
    per_image = feats.shape[1] // seen
    rows = []
    for n_img in sizes:
        x = feats[:, : n_img * per_image].contiguous()
        k = num_centres(x.shape[1], 0.1)
        row: dict[str, Any] = {"images": n_img, "candidates": x.shape[1], "k": k}
        for name, sampler in (("exact", GreedyKCenter(128)), ("composable", ComposableKCenter(16384, projection_dim=128))):
            t = time.perf_counter()
            state = sampler.select(x, k, torch.Generator().manual_seed(0), statistics=False)
            row[f"{name}_s"] = time.perf_counter() - t
            row[f"{name}_radius"] = float(exact_assignment(x, state.selected)[0].amax().sqrt())
        row["speedup"] = row["exact_s"] / row["composable_s"]
        rows.append(row)
        log(json.dumps(row))
        save(args.out, {"machine": machine(), "backbone": args.backbone, "rows": rows, "table": coreset_table(rows, args)})


def coreset_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    columns = ["images", "candidates", "centres", "exact greedy s", "composable s", "speed-up", "exact radius",
               "composable radius"]
    body = [[r["images"], r["candidates"], r["k"], round(r["exact_s"], 1), round(r["composable_s"], 1),
             round(r["speedup"], 1), round(r["exact_radius"], 2), round(r["composable_radius"], 2)] for r in rows]
    return {"title": "PatchCore's coreset on real tile features: exact vs composable, one process",
            "date": time.strftime("%Y-%m-%d"), "command": f"python -m benchmarks.scale coreset --sizes {args.sizes}",
            "machine": "2-core x86-64 CPU, no GPU, shared with other sessions",
            "weights": "ImageNet EfficientNet-Lite0 (packaged)", "columns": columns, "rows": body}


# ------------------------------------------------------------- fit-shapes (WRN-50-2 memory)
@torch.inference_mode()
def cmd_fit_shapes(args: argparse.Namespace) -> None:
    """Child-per-size fit of seeded random features of a backbone's stream shapes (no extraction):
    the fit's peak RSS, build s and search ms, for backbones too slow to extract thousands of
    images on this CPU (WRN-50-2: ~0.84 s/img). ``--n`` given: run one size in this process."""
    if args.n:
        torch.set_num_threads(args.threads)
        overrides = [f"backbone={args.backbone}", "backbone.pretrained=false", *REAL_FIT_OPTIONS[args.option]]
        det = detector_for_backbone(overrides)
        det.eval()
        shapes = [s.shape[1:] for s in det.extract(torch.zeros(1, 3, SIZE, SIZE))]
        rss_start = peak_rss_mb()
        det.reset_fit(expected_images=args.n)
        g = torch.Generator().manual_seed(0)
        for lo in range(0, args.n, 16):
            b = min(args.n, lo + 16) - lo
            det.add_features([torch.randn(b, *shape, generator=g) for shape in shapes])
        t = time.perf_counter()
        report = det.build()
        build_s = time.perf_counter() - t
        row: dict[str, Any] = {"option": args.option, "backbone": args.backbone, "images": args.n,
                               "build_s": build_s, "build_s_per_image": build_s / args.n,
                               "peak_rss_mb": peak_rss_mb(), "rss_before_features_mb": rss_start,
                               "memory_vectors": det.memory_vectors(), "candidates": report.candidates,
                               "stream_shapes": [list(s) for s in shapes]}
        queries = [torch.randn(8, *shape, generator=g) for shape in shapes]
        det.nearest([q[:1] for q in queries])
        for batch in (1, 8):
            t = time.perf_counter()
            for lo in range(0, 8, batch):
                det.nearest([q[lo : lo + batch] for q in queries])
            row[f"search_ms_batch{batch}"] = 1000 * (time.perf_counter() - t) / 8
        row["peak_rss_mb"] = peak_rss_mb()
        print("RESULT " + json.dumps(row), flush=True)
        return
    name = args.out or f"scale_shapes_{args.backbone}.json"
    path = RESULTS / name
    rows = json.loads(path.read_text()).get("rows", []) if path.exists() and args.resume else []
    for n in [int(x) for x in args.sizes.split(",")]:
        cmd = [sys.executable, __file__, "fit-shapes", "--n", str(n), "--option", args.option,
               "--backbone", args.backbone, "--threads", str(args.threads)]
        log("fit-shapes:", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            log(f"failed ({proc.returncode}):", proc.stderr[-2000:])
            continue
        rows.append(json.loads(lines[-1][7:]))
        log(json.dumps(rows[-1]))
        save(name, {"machine": machine(), "backbone": f"{args.backbone}, RANDOM init; seeded random features of its "
                    "stream shapes (no extraction)", "rows": rows, "table": shapes_table(rows, args)})


def shapes_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    columns = ["backbone", "option", "images", "peak RSS MB", "RSS before features MB", "build s", "build s/img",
               "memory vectors", "search ms/img (batch 1)", "search ms/img (batch 8)"]
    body = [[r["backbone"], r["option"], r["images"], round(r["peak_rss_mb"]), round(r["rss_before_features_mb"]),
             round(r["build_s"]), round(r["build_s_per_image"], 3), r["memory_vectors"], round(r["search_ms_batch1"]),
             round(r["search_ms_batch8"])] for r in rows]
    return {"title": f"Fit on random features of {args.backbone}'s stream shapes", "date": time.strftime("%Y-%m-%d"),
            "command": f"python -m benchmarks.scale fit-shapes --backbone {args.backbone} --option {args.option} "
                       f"--sizes {args.sizes}", "machine": "2-core x86-64 CPU, no GPU, shared with other sessions",
            "weights": "RANDOM init (features are seeded Gaussians of the backbone's shapes)",
            "columns": columns, "rows": body}


def detector_for_backbone(overrides: list[str]):
    from fapm.builders import build_memory_detector

    settings = compose_settings(overrides)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
        return build_memory_detector(settings.model, settings.backbone, settings.seed)


# ----------------------------------------------------------------------------- micro
@torch.inference_mode()
def cmd_micro(args: argparse.Namespace) -> None:
    """torch vs FAISS flat vs IVF on one memory (R = 1) of WRN-50-2 vectors from the cache:
    512 = layer2, 1024 = layer3, 1536 = their PatchCore concatenation; 784 queries (one
    image's positions) from held-out images."""
    from fapm.models.knn import FaissKNN, TorchKNN
    from fapm.models.streams import ConcatLayers

    torch.set_num_threads(args.threads)
    meta = cache_meta()
    concat = ConcatLayers("bilinear")
    layers = ["layer2", "layer3"]

    def vectors(split: str, dims: int, count: int, start: int = 0) -> torch.Tensor:
        out, got, lo = [], 0, start
        limit = int(meta[f"{split}_images"])
        while got < count and lo < limit:
            hi = min(limit, lo + 32)
            s = read_streams(split, lo, hi, meta)
            x = {512: s[0], 1024: s[1], 1536: concat(dict(zip(layers, s)))[0] if dims == 1536 else None}[dims]
            flat = x.permute(0, 2, 3, 1).reshape(-1, dims)
            out.append(flat[: count - got].clone())
            got += out[-1].shape[0]
            lo = hi
            del s, x
        return torch.cat(out)

    path = RESULTS / args.out
    rows = json.loads(path.read_text())["rows"] if path.exists() and args.resume else []
    done = {(r["dims"], r["memory"]) for r in rows}
    for dims in [int(d) for d in args.dims.split(",")]:
        queries = vectors("test", dims, 784).unsqueeze(0)
        for size in [int(float(m)) for m in args.sizes.split(",")]:
            if (dims, size) in done:
                continue
            if size * dims > args.max_floats:
                log(f"skip {size} x {dims} (over --max-floats {args.max_floats:.0e})")
                continue
            memory = vectors("train", dims, size).unsqueeze(0)
            if memory.shape[1] < size:
                log(f"skip {size} x {dims}: the cache holds only {memory.shape[1]} vectors")
                continue
            norms = (memory * memory).sum(-1)
            row: dict[str, Any] = {"dims": dims, "memory": size, "queries": 784}
            found = {}
            makers = {"torch": TorchKNN, "faiss_flat": lambda: FaissKNN("Flat"),
                      "faiss_ivf": lambda: FaissKNN("IVF{nlist},Flat", nprobe=args.nprobe)}
            for name, make in makers.items():
                search = make()  # one index alive at a time (RAM)
                t = time.perf_counter()
                search.fit(memory, norms)
                row[f"{name}_fit_s"] = time.perf_counter() - t
                search.search(queries[:, :16], 1)
                row[f"{name}_ms"] = 1000 * time_search(search, queries, 1, 3 if size <= 10_000 else 1)
                found[name] = search.search(queries, 1)[1]
            row["ivf_recall_at_1"] = float((found["faiss_ivf"] == found["torch"]).float().mean())
            ivf = search
            for nprobe in [int(x) for x in args.nprobe_sweep.split(",") if x]:
                ivf.set_nprobe(nprobe)
                ms = 1000 * time_search(ivf, queries, 1, 1)
                recall = float((ivf.search(queries, 1)[1] == found["torch"]).float().mean())
                row.setdefault("nprobe_sweep", []).append({"nprobe": nprobe, "ms": ms, "recall_at_1": recall})
            row["flat_equal"] = bool(torch.equal(found["faiss_flat"], found["torch"]))
            rows.append(row)
            log(json.dumps(row))
            del memory, norms
            save(args.out, {"machine": machine(), "nprobe": args.nprobe, "rows": rows})
    lines = ["| dims | memory | torch ms | FAISS flat ms | IVF ms | IVF fit s | IVF recall@1 | torch / IVF |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['dims']} | {r['memory']:,} | {r['torch_ms']:.1f} | {r['faiss_flat_ms']:.1f} | "
                     f"{r['faiss_ivf_ms']:.1f} | {r['faiss_ivf_fit_s']:.1f} | {r['ivf_recall_at_1']:.3f} | "
                     f"{r['torch_ms'] / r['faiss_ivf_ms']:.1f}x |")
    print("\n".join(lines))


# ------------------------------------------------------------------------------ real
REAL_OPTIONS: dict[str, list[str]] = {
    "fapm_exact": ["model=fapm"],
    "fapm_fp16": ["model=fapm", "model.feature_dtype=float16"],
    "fapm_scalable": ["model=fapm_scalable"],
    "fapm_scalable_cap400": ["model=fapm_scalable", "model.memory_cap=400"],
}


@torch.inference_mode()
def cmd_real(args: argparse.Namespace) -> None:
    """Accuracy on the real tiles, all training images, trained VGG16-BN: exact vs scalable."""
    from fapm.builders import build_extractor, build_memory_detector
    from fapm.data import MVTecDataModule
    from fapm.metrics import AnomalyMetrics, names

    torch.set_num_threads(args.threads)
    shared = Path(args.shared)
    root, weights = shared / "data" / "mtd", shared / "weights" / "vgg16_bn_craft_features.pt"
    if not (root / "magnetic_tile").exists() or not weights.exists():
        raise SystemExit(f"needs {root}/magnetic_tile and {weights} (--shared)")
    bb = ["backbone=vgg16_bn_craft", f"backbone.weights={weights}", "data=mtd", f"data.root={root}"]
    base = compose_settings(bb + ["model=fapm"])
    extractor = build_extractor(base.backbone).eval()
    cache = CACHE / "real_features.pt"
    if cache.exists():
        feats = torch.load(cache)
    else:
        dm = MVTecDataModule(root=str(root), category="magnetic_tile", train_batch_size=16, eval_batch_size=16,
                             mean=base.backbone.mean, std=base.backbone.std)
        dm.setup("fit")
        feats = {}
        for split, loader in (("train", dm.train_dataloader()), ("test", dm.test_dataloader())):
            parts: dict[str, list] = {}
            info: dict[str, list] = {"label": [], "mask": [], "defect_type": []}
            t = time.perf_counter()
            for batch in loader:
                for k, v in extractor(batch["image"]).items():
                    parts.setdefault(k, []).append(v)
                if split == "test":
                    info["label"].append(batch["label"])
                    info["mask"].append(batch["mask"][:, 0].bool())
                    info["defect_type"] += list(batch["defect_type"])
            feats[split] = {k: torch.cat(v) for k, v in parts.items()}
            feats[f"{split}_s"] = time.perf_counter() - t
            if split == "test":
                feats["info"] = {"label": torch.cat(info["label"]), "mask": torch.cat(info["mask"]),
                                 "defect_type": info["defect_type"]}
            log(f"real {split}: {len(next(iter(feats[split].values())))} images in {feats[f'{split}_s']:.0f} s")
        torch.save(feats, cache)
    train, test, info = feats["train"], feats["test"], feats["info"]
    n, m = len(next(iter(train.values()))), len(info["label"])
    size = tuple(info["mask"].shape[-2:])
    path = RESULTS / args.out
    rows = json.loads(path.read_text())["rows"] if path.exists() and args.resume else {}
    for option in args.options.split(","):
        if option in rows:
            continue
        log(f"real: {option} …")
        settings = compose_settings(bb + REAL_OPTIONS[option])
        det = build_memory_detector(settings.model, settings.backbone, settings.seed, extractor=extractor)
        build_s = sum(det.fit_features(layer_batches(train, 16), expected_images=n).seconds)
        metrics = AnomalyMetrics()
        head_s = 0.0
        for lo in range(0, m, 8):
            part = {k: v[lo : lo + 8] for k, v in test.items()}
            t = time.perf_counter()
            out = det.score_features(part, size)
            head_s += time.perf_counter() - t
            metrics.update(out.image_scores, info["label"][lo : lo + 8], out.anomaly_maps,
                           info["mask"][lo : lo + 8], info["defect_type"][lo : lo + 8])
        res = metrics.compute()
        rows[option] = {
            "overrides": REAL_OPTIONS[option], "image_auroc": float(res[names.IMAGE_AUROC]),
            "pixel_auroc": float(res[names.PIXEL_AUROC]), "memory_vectors": det.memory_vectors(),
            "build_s": build_s, "head_ms_per_image": 1000 * head_s / m,
            "sizes": {s: [min(mm.sizes()), max(mm.sizes())] for s, mm in zip(det.stream_names, det.memories)},
            "enlarged": {s: int(mm.enlarged.sum()) for s, mm in zip(det.stream_names, det.memories)},
        }
        log(json.dumps(rows[option]))
        save(args.out, {"machine": machine(), "data": str(root), "weights": str(weights), "train_images": n,
                        "test_images": m, "extract_s": {k: feats.get(f"{k}_s") for k in ("train", "test")},
                        "rows": rows})
    lines = ["| option | image AUROC | pixel AUROC | memory vectors | region sizes | build s | head ms/img |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for name, r in rows.items():
        sizes = ", ".join(f"{k} {a}–{b}" for k, (a, b) in r["sizes"].items())
        lines.append(f"| {name} | {100 * r['image_auroc']:.2f} | {100 * r['pixel_auroc']:.2f} | {r['memory_vectors']:,} "
                     f"| {sizes} | {r['build_s']:.1f} | {r['search_ms_per_image']:.1f} |")
    print("\n".join(lines))


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--sizes", default="500,1000,2000")
    e.add_argument("--batch", type=int, default=16)
    add_fit_args(sub.add_parser("fit", help="real tiles, expanded; the product's fit path (fapm train)"))
    w = sub.add_parser("fit-run", help="child of fit: one run")
    w.add_argument("--n", type=int, required=True)
    w.add_argument("--option", choices=sorted(REAL_FIT_OPTIONS), required=True)
    w.add_argument("--root", required=True)
    w.add_argument("--run-dir", required=True)
    w.add_argument("--backbone", default="efficientnet_lite0")
    w.add_argument("--threads", type=int, default=1)
    j = sub.add_parser("fit-table", help="join fit result files into one table")
    j.add_argument("--inputs", required=True)
    j.add_argument("--out", required=True)
    j.add_argument("--backbone", default="efficientnet_lite0")
    j.add_argument("--sizes", default="500,1000,2000,5000")
    j.add_argument("--options", default="fapm,fapm_scalable,patchcore_scalable")
    j.add_argument("--threads", type=int, default=1)
    c = sub.add_parser("coreset", help="PatchCore's coreset on real features: exact vs composable, same process")
    c.add_argument("--sizes", default="50,100")
    c.add_argument("--backbone", default="efficientnet_lite0")
    c.add_argument("--source", default=os.environ.get("FAPM_MTD_ROOT", str(ROOT.parent.parent / "shared" / "data" / "mtd")))
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--out", default="scale_coreset_lite0.json")
    h = sub.add_parser("fit-shapes", help="random features of a backbone's shapes: peak RSS, build, search")
    h.add_argument("--sizes", default="1000,2000")
    h.add_argument("--n", type=int, default=0, help="(child) one size")
    h.add_argument("--option", choices=sorted(REAL_FIT_OPTIONS), default="fapm_scalable_fp16_host")
    h.add_argument("--backbone", default="wide_resnet50_2")
    h.add_argument("--threads", type=int, default=1)
    h.add_argument("--out", default=None)
    h.add_argument("--resume", action="store_true")
    f = sub.add_parser("fit-cached", help="issue 13: cached WRN-50-2 features of generated images")
    f.add_argument("--sizes", default="500,1000,2000")
    f.add_argument("--options", default="fapm_exact,fapm_fp16,fapm_proj,fapm_scalable,patchcore")
    f.add_argument("--threads", type=int, default=2)
    f.add_argument("--nprobe", type=int, default=16)
    f.add_argument("--out", default="scale_fit.json")
    f.add_argument("--resume", action="store_true", help="keep the rows already in --out")
    o = sub.add_parser("fit-cached-one")
    o.add_argument("--n", type=int, required=True)
    o.add_argument("--option", choices=sorted(OPTIONS), required=True)
    o.add_argument("--threads", type=int, default=2)
    o.add_argument("--nprobe", type=int, default=16)
    m = sub.add_parser("micro")
    m.add_argument("--sizes", default="1e3,1e4,1e5,4e5,1e6")
    m.add_argument("--dims", default="512,1024,1536")
    m.add_argument("--max-floats", type=float, default=6.2e8, help="cap memory x dims (RAM)")
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--nprobe", type=int, default=16)
    m.add_argument("--out", default="scale_micro.json")
    m.add_argument("--resume", action="store_true")
    m.add_argument("--nprobe-sweep", default="", help="also time the IVF index at these nprobe values")
    r = sub.add_parser("real")
    r.add_argument("--shared", default=os.environ.get("FAPM_SHARED", str(ROOT.parent.parent / "shared")))
    r.add_argument("--options", default="fapm_exact,fapm_scalable,fapm_scalable_cap400,fapm_fp16")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--out", default="scale_real.json")
    r.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    commands = {"extract": cmd_extract, "fit": cmd_fit, "fit-shapes": cmd_fit_shapes, "fit-table": cmd_fit_table, "coreset": cmd_coreset, "fit-run": cmd_fit_run, "fit-cached": cmd_fit_cached,
                "fit-cached-one": cmd_fit_one, "micro": cmd_micro, "real": cmd_real}
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
