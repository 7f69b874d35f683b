"""Speed benchmark: FAPM (E), ablation D and PatchCore (A) on the same data, backbone and features.

One process, one backbone, one set of extracted features:

* fit = feature extraction (shared, timed once per image) + memory build per variant;
* per-image latency at batch 1, split into the backbone and the head (the detector's public
  scoring stage: search, fusion, map, blur and image score; median and p90 over the test images after a warm-up; data loading excluded), with
  the backbone alone timed on the same image just before (the baseline of the latency
  target); CUDA events on a GPU, one synchronisation per image;
* throughput at batch 1 and at a larger batch; memory vectors and bytes;
* peak RSS of a separate child process that fits FAPM on the largest training set;
* optionally a sweep over the number of training images.

* with ``--deploy``: FAPM in every CPU runtime (eager fp32 / bf16, TorchScript, ONNX Runtime
  fp32 / INT8, OpenVINO fp32 / bf16 / INT8; :mod:`fapm.deploy`), each with its backbone alone
  in the same runtime (the head's share), plus anomalib's PatchCore exported to OpenVINO on
  the same images (``--anomalib-python``: a separate environment with anomalib, see
  docs/deploy.md).

Prints Markdown tables and writes JSON. Example (the numbers of docs/performance.md)::

    python -m benchmarks.speed --train-images 200 --sweep 50,100,200,400 --out benchmarks/results/speed_cpu.json
    python -m benchmarks.speed --variants "" --skip-rss --deploy --anomalib-python /work/venv-anomalib/bin/python \
        --out benchmarks/results/deploy_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

from typing import Any, Callable

import torch

from fapm.conf import compose
from fapm.models.detector import layer_batches

from fapm.data.transforms import IMAGENET_MEAN, IMAGENET_STD

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"fapm": "E FAPM", "ablation_d": "D patch+layer", "patchcore": "A PatchCore"}


# ------------------------------------------------------------------------------ set-up
def compose_cfg(overrides: list[str]):
    return compose(["paths.output_dir=/tmp", *overrides])


def detector_for(cfg: Any, extractor: Any = None) -> Any:
    """The package's own detector for a composed config (validated settings → builders)."""
    from fapm.builders import build_memory_detector
    from fapm.pipeline.common import validated_settings

    settings = validated_settings(cfg)
    return build_memory_detector(settings.model, settings.backbone, settings.seed, extractor=extractor)


def extractor_for(cfg: Any) -> Any:
    """The package's own backbone for a composed config."""
    from fapm.builders import build_extractor
    from fapm.pipeline.common import validated_settings

    return build_extractor(validated_settings(cfg).backbone)


def dataset(args: argparse.Namespace, n_train: int) -> tuple[Any, Any]:
    """(train dataset, test dataset) of the demo category with at least ``n_train`` images."""
    from fapm.data import MVTecDataModule
    from fapm.data.demo import generate_demo

    root = Path(args.data_root) if args.data_root else ROOT / "data" / f"speed_demo_{args.max_train}"
    if not args.data_root:
        generate_demo(root, categories=[args.category], n_train=args.max_train, n_test_good=30,
                      n_test_defect_per_type=8)
    dm = MVTecDataModule(root=str(root), category=args.category, num_workers=0)
    dm.setup("fit")
    return dm.train_dataset(), dm.test_dataset()


def stack(ds: Any, n: int) -> torch.Tensor:
    return torch.stack([ds[i]["image"] for i in range(min(n, len(ds)))])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Stage timer: CUDA events on a GPU (one synchronisation per ``intervals`` call, none
    between stages), ``perf_counter`` on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.marks: list[Any] = []

    def start(self) -> "Stopwatch":
        self.marks = []
        sync(self.device)
        return self.stamp()

    def stamp(self) -> "Stopwatch":
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())
        return self

    def intervals(self) -> list[float]:
        """Seconds between consecutive stamps."""
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    watch = Stopwatch(device).start()
    out = fn()
    return out, watch.stamp().intervals()[0]


def proc_field(path: str, key: str) -> str | None:
    """Value of the first ``key: value`` line of a Linux /proc file (None elsewhere)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    name = proc_field("/proc/cpuinfo", "model name")
    return f"CPU {name}" if name else platform.processor() or "CPU"


def peak_rss_mb() -> float:
    """Peak RSS of this process image. ``VmHWM`` where Linux has it: ``ru_maxrss`` of a
    child started by fork/vfork + exec also counts the parent's pages from before the exec."""
    hwm = proc_field("/proc/self/status", "VmHWM")  # "123456 kB"
    if hwm:
        return int(hwm.split()[0]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"median": statistics.median(ordered), "p90": p90}


# ------------------------------------------------------------------------------ measuring
@torch.inference_mode()
def extract_all(extractor: torch.nn.Module, images: torch.Tensor, device: torch.device, batch: int) -> tuple[dict, float]:
    feats: dict[str, list[torch.Tensor]] = {}
    seconds = 0.0
    for lo in range(0, len(images), batch):
        out, s = timed(lambda: extractor(images[lo : lo + batch].to(device)), device)
        seconds += s
        for k, v in out.items():
            feats.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in feats.items()}, seconds


@torch.inference_mode()
def fit_variant(det: Any, feats: dict[str, torch.Tensor], n: int, batch: int = 16) -> float:
    """Seconds of the detector's public fit stage on the first ``n`` images' extracted features."""
    first = {k: v[:n] for k, v in feats.items()}
    _, seconds = timed(lambda: det.fit_features(layer_batches(first, batch), expected_images=n),
                       feats[next(iter(feats))].device)
    return seconds


@torch.inference_mode()
def latency(det: Any, images: torch.Tensor, device: torch.device, warmup: int) -> dict[str, Any]:
    """Per-image stage times at batch 1: one stopwatch stamp between stages, read once per image."""
    names = ("backbone", "head")
    stages: dict[str, list[float]] = {k: [] for k in (*names, "total", "backbone_alone")}
    watch = Stopwatch(device)
    for i in range(len(images)):
        x = images[i : i + 1].to(device)
        # the backbone alone on the same image just before, so that the latency ratio is
        # immune to drift of the machine's speed between separate passes
        watch.start()
        det.extractor(x)
        alone = watch.stamp().intervals()[0]
        watch.start()
        layers = det.extractor(x)
        watch.stamp()
        det.score_features(layers, tuple(x.shape[-2:]))
        watch.stamp()
        if i >= warmup:
            times = watch.intervals()
            for name, t in zip(names, times):
                stages[name].append(t)
            stages["total"].append(sum(times))
            stages["backbone_alone"].append(alone)
    return {k: {q: 1000 * v for q, v in quantiles(vals).items()} for k, vals in stages.items()}


@torch.inference_mode()
def throughput(det: Any, images: torch.Tensor, device: torch.device, batch: int, warmup: int) -> float:
    for i in range(warmup):
        det(images[i * batch % len(images) :][:batch].to(device))
    chunks = [images[lo : lo + batch] for lo in range(0, len(images) - batch + 1, batch)]
    total = 0.0
    for chunk in chunks:
        x = chunk.to(device)
        _, s = timed(lambda: det(x), device)
        total += s
    return sum(len(c) for c in chunks) / total


@torch.inference_mode()
def graphed(det: Any, images: torch.Tensor, device: torch.device, batch: int, warmup: int) -> dict[str, Any]:
    """Whole pass replayed as one CUDA graph: per-image latency at batch 1 (input copy
    included) and throughput at batch 1 and ``batch``."""
    from fapm.models.cuda_graph import GraphCache

    try:
        run = GraphCache(det)
        run(images[:1].to(device))
        run(images[:batch].to(device))
    except Exception as err:  # e.g. PatchCore's support-set score uses Python indices
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"}
    return {
        "latency_ms": per_image_ms(run, images, device, warmup),
        "fps_batch1": throughput(run, images, device, 1, warmup),
        f"fps_batch{batch}": throughput(run, images, device, batch, 1),
    }


@torch.inference_mode()
def per_image_ms(fn: Callable[[torch.Tensor], Any], images: torch.Tensor, device: torch.device, warmup: int) -> dict:
    """Median and p90 ms of ``fn`` on each image at batch 1, the host-to-device copy included."""
    times = []
    for i in range(len(images)):
        _, s = timed(lambda: fn(images[i : i + 1].to(device)), device)
        if i >= warmup:
            times.append(s)
    return {q: 1000 * v for q, v in quantiles(times).items()}


def rss_child(args: argparse.Namespace, n: int) -> float:
    """Peak RSS (MB) of a fresh process that extracts features of ``n`` images and fits FAPM."""
    cmd = [sys.executable, __file__, "--rss-child", str(n), "--category", args.category, "--backbone", args.backbone,
           "--max-train", str(args.max_train), "--device", args.device]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
    return float(out.stdout.strip().splitlines()[-1])


def run_rss_child(args: argparse.Namespace) -> None:
    n = args.rss_child
    device = torch.device(args.device)
    train_ds, _ = dataset(args, n)
    cfg = compose_cfg([f"backbone={args.backbone}", "backbone.pretrained=false", "model=fapm"])
    det = detector_for(cfg).to(device)
    with torch.inference_mode():
        det.reset_fit(expected_images=n)
        for lo in range(0, n, 16):
            det.collect(stack_range(train_ds, lo, min(n, lo + 16)).to(device))
        det.build()
    print(peak_rss_mb())


def stack_range(ds: Any, lo: int, hi: int) -> torch.Tensor:
    return torch.stack([ds[i]["image"] for i in range(lo, hi)])


# ------------------------------------------------------------------------------ deployment
DEPLOY_ROWS = ("eager fp32", "eager bf16", "torchscript", "onnxruntime fp32", "openvino fp32", "openvino bf16",
               "onnxruntime int8", "openvino int8")


def run_timing(fn: Callable[[torch.Tensor], Any], images: torch.Tensor, batch: int, warmup: int) -> dict[str, Any]:
    """Median/p90 ms per image at batch 1 and images/s at batch 1 and ``batch`` (CPU wall clock)."""
    for i in range(min(warmup, len(images))):
        fn(images[i : i + 1])
    times = []
    for i in range(len(images)):
        start = time.perf_counter()
        fn(images[i : i + 1])
        times.append(time.perf_counter() - start)
    fn(images[:batch])
    chunks = [images[lo : lo + batch] for lo in range(0, len(images) - batch + 1, batch)]
    start = time.perf_counter()
    for chunk in chunks:
        fn(chunk)
    seconds = time.perf_counter() - start
    return {"latency_ms": {q: 1000 * v for q, v in quantiles(times).items()}, "fps_batch1": len(times) / sum(times),
            f"fps_batch{batch}": sum(len(c) for c in chunks) / seconds}


def deploy_rows(args: argparse.Namespace, extractor: Any, feats: dict, train_rgb: torch.Tensor, test_images: torch.Tensor,
                device: torch.device, extra: list[str]) -> dict[str, Any]:
    """FAPM (``model=fapm``) in every runtime of ``--deploy-runtimes``, and each one's backbone alone.

    Inputs are RGB in [0, 1] (the exported graphs' input; the torch rows normalise inside the
    timed call, as the graphs do). Training features for the float rows are the shared ones.
    """
    import tempfile

    from fapm.deploy import DeployInfo, build_int8, export_onnx, make_scorer
    from fapm.deploy.graph import BackboneGraph, scoring_graph
    from fapm.deploy.onnx_export import export_backbone, save
    from fapm.deploy.quantize import BackboneRunner
    from fapm.deploy.runtimes import cpu_supports_bf16

    if device.type != "cpu":
        raise SystemExit("--deploy times CPU runtimes: run it with --device cpu")
    cfg = compose_cfg([f"backbone={args.backbone}", "backbone.pretrained=false", "model=fapm", *extra])
    det = detector_for(cfg, extractor).eval()
    fit_variant(det, feats, len(train_rgb))
    side = test_images.shape[-1]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rgb = test_images * std + mean  # the demo tensors come normalised
    train_rgb = train_rgb * std + mean
    info = DeployInfo(image_size=side)
    wanted = [r for r in args.deploy_runtimes.split(",") if r]
    tmp = Path(tempfile.mkdtemp(prefix="fapm_deploy_bench_"))
    rows: dict[str, Any] = {}
    full: dict[str, Callable[[torch.Tensor], Any]] = {}
    alone: dict[str, Callable[[torch.Tensor], Any]] = {}
    bb_graph = BackboneGraph(det, info.mean, info.std).eval()

    def no_grad(fn: Callable) -> Callable:
        return lambda x: torch.inference_mode()(fn)(x)

    if "eager fp32" in wanted or "eager bf16" in wanted:
        for dtype, name in ((None, "eager fp32"), ("bfloat16", "eager bf16")):
            if name in wanted:
                scorer = make_scorer("torch", detector=det, info=info, backbone_dtype=dtype)
                full[name] = scorer.score_rgb

                def backbone_only(x: torch.Tensor, dtype: str | None = dtype) -> Any:
                    det.extractor.autocast_dtype = dtype
                    return det.extractor((x - mean) / std)

                alone[name] = no_grad(backbone_only)
        det.extractor.autocast_dtype = None
    if "torchscript" in wanted:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = scoring_graph(det, side, info.mean, info.std, None)
            traced = torch.jit.freeze(torch.jit.trace(graph, rgb[:2], check_trace=False))
            traced_bb = torch.jit.freeze(torch.jit.trace(bb_graph, rgb[:2], check_trace=False))
        full["torchscript"], alone["torchscript"] = no_grad(traced), no_grad(traced_bb)
    fp32 = [r for r in ("onnxruntime fp32", "openvino fp32", "openvino bf16") if r in wanted]
    if fp32:
        path = export_onnx(det, tmp / "fapm.onnx", info)
        backbone_path = save(export_backbone(det, info), tmp / "backbone.onnx")
        for name in fp32:
            runtime, precision = name.split()
            options = {} if runtime == "onnxruntime" else {"precision": precision.replace("fp", "f")}
            if precision == "bf16" and not cpu_supports_bf16():
                rows[name] = {"error": "this CPU has no bf16 in OpenVINO (OPTIMIZATION_CAPABILITIES)"}
                continue
            full[name] = make_scorer(runtime, path=path, **options).score_rgb
            if runtime == "onnxruntime":
                alone[name] = BackboneRunner(backbone_path, "onnxruntime")
            else:
                from fapm.deploy.runtimes import ov_compile

                compiled = ov_compile(backbone_path, options["precision"])
                alone[name] = lambda x, c=compiled: c(x.numpy())
    for name in [r for r in ("onnxruntime int8", "openvino int8") if r in wanted]:
        runtime = name.split()[0]
        start = time.perf_counter()
        model = build_int8(det, train_rgb, info, tmp / f"fapm_{runtime}_int8.onnx", calibration_images=args.calibration,
                           runtime=runtime)
        rows.setdefault(name, {})["int8_build_s"] = time.perf_counter() - start
        full[name] = make_scorer(runtime, path=model.path).score_rgb
        alone[name] = BackboneRunner(model.backbone, runtime)
    rows = {name: rows.get(name, {}) for name in wanted}  # table order = --deploy-runtimes order
    for name in wanted:
        if name not in full:
            rows.setdefault(name, {}).setdefault("error", "not run")
            continue
        print(f"[speed] deploy: {name} …", file=sys.stderr, flush=True)
        rows.setdefault(name, {}).update(run_timing(full[name], rgb, args.batch, args.warmup))
        rows[name]["backbone"] = run_timing(alone[name], rgb, args.batch, args.warmup)
    return rows


def anomalib_row(args: argparse.Namespace, n_train: int) -> dict[str, Any]:
    """anomalib's PatchCore exported to OpenVINO, timed by benchmarks/anomalib_openvino.py in its own env."""
    root = Path(args.data_root) if args.data_root else ROOT / "data" / f"speed_demo_{args.max_train}"
    out = Path(tempfile_name("anomalib_ov", ".json"))
    cmd = [args.anomalib_python, str(ROOT / "benchmarks" / "anomalib_openvino.py"), "--data-root", str(root),
           "--category", args.category, "--train-images", str(n_train), "--test-images", str(args.test_images),
           "--warmup", str(args.warmup), "--batch", str(args.batch), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(out.read_text())


def tempfile_name(prefix: str, suffix: str) -> str:
    import tempfile

    handle, name = tempfile.mkstemp(prefix=prefix, suffix=suffix)
    os.close(handle)
    return name


def deploy_markdown(report: dict[str, Any], batch: int) -> str:
    rows = report["deploy"]
    eager = rows.get("eager fp32", {}).get("fps_batch1")
    lines = [
        f"FAPM (model=fapm) by runtime, {report['backbone']}, {report['train_images']} training images, RGB "
        f"{report.get('image_side', '')} input; backbone alone in the same runtime; head = total − backbone.",
        "",
        f"| runtime | latency ms b1 (p90) | img/s b1 | img/s b{batch} | backbone ms b1 | backbone img/s b{batch} | "
        f"head % of backbone (b1 / b{batch}) | × eager fp32 img/s b1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        if "error" in r and "fps_batch1" not in r:
            lines.append(f"| {name} | {r['error']} | | | | | | |")
            continue
        bb = r.get("backbone")
        if bb:
            head1 = 100 * (r["latency_ms"]["median"] - bb["latency_ms"]["median"]) / bb["latency_ms"]["median"]
            headb = 100 * (bb[f"fps_batch{batch}"] / r[f"fps_batch{batch}"] - 1)
            bb_cells = f"{bb['latency_ms']['median']:.1f} | {bb[f'fps_batch{batch}']:.2f} | {head1:.0f} % / {headb:.0f} %"
        else:
            bb_cells = "— | — | —"
        speedup = f"{r['fps_batch1'] / eager:.2f}" if eager else "—"
        fps_b = r.get(f"fps_batch{batch}")
        lines.append(f"| {name} | {r['latency_ms']['median']:.1f} ({r['latency_ms']['p90']:.1f}) | "
                     f"{r['fps_batch1']:.2f} | {'—' if fps_b is None else f'{fps_b:.2f}'} | {bb_cells} | {speedup} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="wide_resnet50_2", help="backbone config name (conf/backbone)")
    parser.add_argument("--category", default="bracket")
    parser.add_argument("--data-root", default=None, help="MVTec-layout root (default: a generated demo)")
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--test-images", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="the larger batch for throughput")
    parser.add_argument("--sweep", default="", help="comma-separated training-set sizes for the scaling table")
    parser.add_argument("--variants", default="fapm,ablation_d,patchcore")
    parser.add_argument("--sweep-variants", default="fapm,ablation_d")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model-overrides", default="", help="extra Hydra overrides for every variant, comma-separated")
    parser.add_argument("--out", default=None, help="JSON output path")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--cuda-graph", action="store_true", help="also time each variant replayed as a CUDA graph")
    parser.add_argument("--deploy", action="store_true", help="FAPM in every CPU runtime (fapm.deploy)")
    parser.add_argument("--deploy-runtimes", default=",".join(DEPLOY_ROWS), help="rows of the --deploy table")
    parser.add_argument("--calibration", type=int, default=64, help="INT8 calibration images (training set)")
    parser.add_argument("--anomalib-python", default=None,
                        help="python of an environment with anomalib + openvino: adds its OpenVINO PatchCore")
    parser.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--max-train", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
    sweep = [int(s) for s in args.sweep.split(",") if s]
    if args.test_images < args.batch:
        parser.error(f"--test-images ({args.test_images}) must be at least --batch ({args.batch})")
    args.max_train = args.max_train or max([args.train_images, *sweep])
    if args.rss_child:
        run_rss_child(args)
        return

    device = torch.device(args.device)
    extra = [o for o in args.model_overrides.split(",") if o]
    train_ds, test_ds = dataset(args, args.max_train)
    n_max = min(args.max_train, len(train_ds))
    train_images = stack(train_ds, n_max)
    test_images = stack(test_ds, args.test_images + args.warmup)
    base = compose_cfg([f"backbone={args.backbone}", "backbone.pretrained=false", *extra])
    extractor = extractor_for(base).to(device)
    feats, extract_s = extract_all(extractor, train_images, device, batch=16)
    per_image_extract = extract_s / n_max
    report: dict[str, Any] = {
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
        },
        "backbone": args.backbone, "weights": str(extractor.weight_source), "category": args.category,
        "image_side": int(test_images.shape[-1]),
        "train_images": args.train_images, "test_images": args.test_images, "warmup": args.warmup,
        "feature_extraction_ms_per_image": 1000 * per_image_extract,
        "backbone_latency_ms": per_image_ms(extractor, test_images, device, args.warmup),
        "variants": {}, "sweep": {},
    }

    def measure(variant: str, n: int, full: bool) -> dict[str, Any]:
        cfg = compose_cfg([f"backbone={args.backbone}", "backbone.pretrained=false", f"model={variant}", *extra])
        det = detector_for(cfg, extractor).to(device)
        build_s = fit_variant(det, feats, n)
        row: dict[str, Any] = {
            "name": VARIANTS.get(variant, variant), "train_images": n,
            "fit_extract_s": per_image_extract * n, "fit_build_s": build_s,
            "memory_vectors": det.memory_vectors(), "memory_mb": det.memory_bytes() / 2**20,
            "enlarged_regions": {s: int(m.enlarged.sum()) for s, m in zip(det.stream_names, det.memories)},
            "latency_ms": latency(det, test_images, device, args.warmup),
        }
        if full:
            row["fps_batch1"] = throughput(det, test_images, device, 1, args.warmup)
            row[f"fps_batch{args.batch}"] = throughput(det, test_images, device, args.batch, 1)
            if args.cuda_graph and device.type == "cuda":
                row["cuda_graph"] = graphed(det, test_images, device, args.batch, args.warmup)
        del det
        return row

    for variant in [v for v in args.variants.split(",") if v]:
        print(f"[speed] {variant} with {args.train_images} training images …", file=sys.stderr, flush=True)
        report["variants"][variant] = measure(variant, min(args.train_images, n_max), full=True)
    for variant in [v for v in args.sweep_variants.split(",") if v and sweep]:
        for n in sweep:
            print(f"[speed] sweep {variant} n={n} …", file=sys.stderr, flush=True)
            report["sweep"].setdefault(variant, {})[n] = measure(variant, min(n, n_max), full=False)
    if args.deploy:
        report["deploy"] = deploy_rows(args, extractor, feats, train_images[: min(args.train_images, n_max)],
                                       test_images, device, extra)
        if args.anomalib_python:
            report["deploy"]["anomalib PatchCore (OpenVINO)"] = anomalib_row(args, min(args.train_images, n_max))
    if not args.skip_rss:
        report["fit_peak_rss_mb"] = {str(n_max): rss_child(args, n_max)}
    report["process_peak_rss_mb"] = peak_rss_mb()
    report["targets"] = targets(report, args.batch, sweep)
    print(markdown(report, args.batch))
    if "deploy" in report:
        print("\n" + deploy_markdown(report, args.batch))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))


def targets(report: dict[str, Any], batch: int, sweep: list[int]) -> dict[str, Any]:
    v = report["variants"]
    out: dict[str, Any] = {}
    backbone = report["backbone_latency_ms"]["median"]
    if "fapm" in v:
        lat = v["fapm"]["latency_ms"]
        ratio = lat["total"]["median"] / lat["backbone_alone"]["median"]
        out["fapm_latency_over_backbone"] = {"value": ratio, "target": "<= 1.15", "met": ratio <= 1.15}
        separate = lat["total"]["median"] / backbone
        out["fapm_latency_over_backbone_separate_pass"] = {"value": separate, "target": "(info)", "met": None}
    if "fapm" in v and "patchcore" in v:
        r = v["fapm"]["fps_batch1"] / v["patchcore"]["fps_batch1"]
        out["fapm_fps_over_patchcore_batch1"] = {"value": r, "target": ">= 4", "met": r >= 4}
        rb = v["fapm"][f"fps_batch{batch}"] / v["patchcore"][f"fps_batch{batch}"]
        out[f"fapm_fps_over_patchcore_batch{batch}"] = {"value": rb, "target": "(info)", "met": None}
        b = v["patchcore"]["fit_build_s"] / v["fapm"]["fit_build_s"]
        out["patchcore_build_over_fapm_build"] = {"value": b, "target": ">= 10", "met": b >= 10}
    fs = report["sweep"].get("fapm", {})
    if len(sweep) >= 2 and sweep[0] in fs and sweep[-1] in fs:
        g = fs[sweep[-1]]["latency_ms"]["total"]["median"] / fs[sweep[0]]["latency_ms"]["total"]["median"]
        out[f"fapm_latency_growth_{sweep[0]}_to_{sweep[-1]}"] = {"value": g, "target": "<= 1.5", "met": g <= 1.5}
    g = v.get("fapm", {}).get("cuda_graph", {})
    if "fps_batch1" in g:
        fps = g["fps_batch1"]
        out["fapm_fps_batch1_cuda_graph"] = {"value": fps, "target": ">= 300 (H100)", "met": fps >= 300}
    d = report.get("deploy", {})
    timed = {k: r for k, r in d.items() if "fps_batch1" in r and "anomalib" not in k}
    if "eager fp32" in timed and len(timed) > 1:
        best = max(timed, key=lambda k: timed[k]["fps_batch1"])
        r = timed[best]["fps_batch1"] / timed["eager fp32"]["fps_batch1"]
        out[f"fapm_best_runtime_over_eager_fp32 ({best})"] = {"value": r, "target": ">= 3", "met": r >= 3}
        anomalib = next((r for k, r in d.items() if "anomalib" in k and "fps_batch1" in r), None)
        if anomalib:
            ra = timed[best]["fps_batch1"] / anomalib["fps_batch1"]
            out["fapm_best_over_anomalib_openvino_patchcore"] = {"value": ra, "target": ">= 3", "met": ra >= 3}
    for name, row in timed.items():
        bb = row.get("backbone")
        if bb:
            head = (row["latency_ms"]["median"] - bb["latency_ms"]["median"]) / bb["latency_ms"]["median"]
            out[f"head_over_backbone_b1 ({name})"] = {"value": head, "target": "<= 0.10", "met": head <= 0.10}
    rss = report.get("fit_peak_rss_mb")
    if rss:
        n, mb = next(iter(rss.items()))
        out[f"fapm_fit_peak_rss_mb_{n}_images"] = {"value": mb, "target": "< 4096", "met": mb < 4096}
    return out


def markdown(report: dict[str, Any], batch: int) -> str:
    m = report["machine"]
    lines = [
        f"Device: {m['device']} · {m['cpu_count']} CPUs · torch {m['torch']} ({m['torch_threads']} threads) · "
        f"backbone {report['backbone']} ({report['weights']}) · {report['train_images']} training images · "
        f"{report['test_images']} timed test images (after {report['warmup']} warm-up)",
        "",
        f"Backbone to last layer alone: median {report['backbone_latency_ms']['median']:.1f} ms, "
        f"p90 {report['backbone_latency_ms']['p90']:.1f} ms per image (batch 1).",
        "",
        "| variant | fit: extract s | fit: build s | memory vectors | memory MB | backbone alone ms | backbone ms | "
        "head ms | total ms (p90) | img/s b1 | img/s b" + str(batch) + " |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["variants"].values():
        lat = row["latency_ms"]
        lines.append(
            f"| {row['name']} | {row['fit_extract_s']:.1f} | {row['fit_build_s']:.2f} | {row['memory_vectors']} | "
            f"{row['memory_mb']:.1f} | {lat['backbone_alone']['median']:.1f} | {lat['backbone']['median']:.1f} | "
            f"{lat['head']['median']:.2f} | {lat['total']['median']:.1f} "
            f"({lat['total']['p90']:.1f}) | {row['fps_batch1']:.2f} | {row[f'fps_batch{batch}']:.2f} |"
        )
    graphs = {k: r["cuda_graph"] for k, r in report["variants"].items() if "cuda_graph" in r}
    if graphs:
        lines += ["", "Replayed as one CUDA graph per input shape (`fapm.models.cuda_graph`):", "",
                  f"| variant | total ms (p90) | img/s b1 | img/s b{batch} |", "|---|---:|---:|---:|"]
        for key, g in graphs.items():
            name = report["variants"][key]["name"]
            if "error" in g:
                lines.append(f"| {name} | not capturable: {g['error']} | | |")
            else:
                lines.append(f"| {name} | {g['latency_ms']['median']:.2f} ({g['latency_ms']['p90']:.2f}) | "
                             f"{g['fps_batch1']:.1f} | {g[f'fps_batch{batch}']:.1f} |")
    if report["sweep"]:
        lines += ["", "| variant | train images | fit: extract s | fit: build s | memory vectors | head ms | total ms |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for variant, rows in report["sweep"].items():
            for n, row in rows.items():
                lat = row["latency_ms"]
                lines.append(
                    f"| {row['name']} | {n} | {row['fit_extract_s']:.1f} | {row['fit_build_s']:.2f} | "
                    f"{row['memory_vectors']} | {lat['head']['median']:.2f} | {lat['total']['median']:.1f} |"
                )
    if report.get("fit_peak_rss_mb"):
        n, mb = next(iter(report["fit_peak_rss_mb"].items()))
        lines += ["", f"Peak RSS of a process fitting FAPM on {n} images: {mb:.0f} MB."]
    lines += ["", "| target | value | required | met |", "|---|---:|---|---|"]
    for name, t in report["targets"].items():
        met = "—" if t["met"] is None else ("yes" if t["met"] else "NO")
        lines.append(f"| {name} | {t['value']:.2f} | {t['target']} | {met} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
