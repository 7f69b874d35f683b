"""anomalib's PatchCore exported to OpenVINO and timed on a CPU (run in an environment with anomalib).

    /path/to/anomalib-venv/bin/python -m benchmarks.anomalib_openvino --data-root data/speed_demo_200 \\
        --category bracket --train-images 200 --test-images 60 --out /tmp/anomalib_ov.json

Called by ``benchmarks/speed.py --deploy --anomalib-python ...`` for its comparison row; it
does not import fapm. anomalib 2.7 ``Patchcore`` (timm WRN-50-2, random init — timing does
not depend on the weights; ``layer2``+``layer3``, 9 support neighbours) with a 224×224
pre-processor (the images are resized to 256 and centre-cropped to 224 here, as FAPM's), its
memory bank set to a seeded random 10 % of the training embeddings — the size anomalib's
coreset gives; inference cost depends on the size only, and the greedy selection over
N·784 vectors would take many minutes on a 2-core CPU. Exported with anomalib's own
``to_openvino`` (pre-processing, model and post-processing in one graph), compiled by
OpenVINO for the CPU (``PERFORMANCE_HINT=LATENCY``) and timed at batch 1 (anomalib 2.7's
dynamic-batch export freezes the batch inside its upsampling, so it is exported static).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def load(paths: list[Path]) -> torch.Tensor:
    """RGB float [N, 3, 224, 224] in [0, 1]: resize 256 (bilinear), centre crop 224."""
    out = []
    for path in paths:
        image = Image.open(path).convert("RGB").resize((256, 256), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.float32)[16:240, 16:240] / 255.0
        out.append(torch.from_numpy(array).permute(2, 0, 1))
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--category", default="bracket")
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--test-images", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import anomalib
    import openvino as ov
    from anomalib.models import Patchcore

    torch.manual_seed(args.seed)
    cat = Path(args.data_root) / args.category
    train = load(sorted((cat / "train" / "good").glob("*.png"))[: args.train_images])
    tests = sorted(p for p in (cat / "test").glob("*/*.png"))[: args.test_images + args.warmup]
    test = load(tests)
    model = Patchcore(backbone="wide_resnet50_2", layers=["layer2", "layer3"], pre_trained=False,
                      coreset_sampling_ratio=0.1, num_neighbors=9,
                      pre_processor=Patchcore.configure_pre_processor(image_size=(224, 224)))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    core = model.model
    core.train()
    embeddings = []
    with torch.no_grad():
        for lo in range(0, len(train), 16):
            embeddings.append(core((train[lo : lo + 16] - mean) / std))
    embedding = torch.cat(embeddings)
    keep = torch.randperm(len(embedding), generator=torch.Generator().manual_seed(args.seed))[: int(0.1 * len(embedding))]
    core.memory_bank = embedding[keep].contiguous()
    core.embedding_store = []
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        # anomalib 2.7's dynamic-batch export freezes the batch inside its layer3 upsampling
        # (OpenVINO: "Argument shapes are inconsistent" at any other batch), so it is exported
        # with a static batch of 1 and timed at batch 1 only
        path = model.to_openvino(export_root=tmp, input_size=(224, 224),
                                 onnx_kwargs={"dynamic_axes": {}, "dynamic_shapes": None})
        compiled = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY"})

        def run(x: torch.Tensor):
            return compiled(x.numpy())

        for i in range(args.warmup):
            run(test[i : i + 1])
        timed = test[args.warmup :]
        times = []
        for i in range(len(timed)):
            start = time.perf_counter()
            run(timed[i : i + 1])
            times.append(time.perf_counter() - start)
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    report = {
        "latency_ms": {"median": 1000 * statistics.median(ordered), "p90": 1000 * p90},
        "fps_batch1": len(times) / sum(times), f"fps_batch{args.batch}": None,
        "note": "anomalib's OpenVINO export works at a static batch size only: timed at batch 1",
        "memory_bank": list(core.memory_bank.shape), "anomalib": anomalib.__version__, "openvino": ov.__version__,
        "torch": torch.__version__, "train_images": len(train),
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
