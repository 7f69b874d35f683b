"""A larger training set from a category's own ``train/good`` images (scale measurements).

``expand_training_set`` writes ``n`` training images in MVTec layout, each one of the source
training images under a seeded random crop (80–100 % of its area, the aspect kept), optional
horizontal / vertical flips and a rotation by a multiple of 90°. Only ``train/good`` is read for
them: no pixel of an output training image comes from a test image. The test split and its
masks are the source's own (symlinked, or copied), so a fit on the expanded set is scored on
the real test set:

    python -m fapm.data.expand --source ../shared/data/mtd --category magnetic_tile \\
        --out /tmp/mtd_5000 --images 5000
    fapm train data=mtd data.root=/tmp/mtd_5000

Deterministic: image ``i`` depends only on ``(seed, i)`` and the sorted source list, so the same
arguments give the same bytes, and a smaller set is a prefix of a larger one. Every output is
recorded in ``expand_manifest.json`` (its source file and the transform), from which it can be
re-derived (:func:`render`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fapm.data.errors import DataError
from fapm.data.image_io import list_images

MANIFEST = "expand_manifest.json"
GOOD = "good"


@dataclass(frozen=True)
class Transform:
    """How one output image is made from its source (pixel box on the source, then flips, then rotation).

    Attributes:
        source: the source file's path relative to ``<root>/<category>`` (always under ``train/good``).
        box: ``(left, top, right, bottom)`` crop on the source.
        flip_h: mirror left-right.
        flip_v: mirror top-bottom.
        rot90: counter-clockwise quarter turns, 0..3.
    """

    source: str
    box: tuple[int, int, int, int]
    flip_h: bool
    flip_v: bool
    rot90: int


def plan(sources: list[str], sizes: list[tuple[int, int]], index: int, seed: int,
         min_area: float = 0.8, max_area: float = 1.0) -> Transform:
    """The transform of output ``index``: source ``index mod len(sources)`` (each used evenly),
    the rest drawn from a generator seeded by ``(seed, index)`` only."""
    rng = np.random.default_rng([seed, index])
    src = index % len(sources)
    width, height = sizes[src]
    scale = math.sqrt(rng.uniform(min_area, max_area))  # same factor on both sides: the aspect is kept
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    left = int(rng.integers(0, width - w + 1))
    top = int(rng.integers(0, height - h + 1))
    return Transform(sources[src], (left, top, left + w, top + h), bool(rng.integers(2)), bool(rng.integers(2)),
                     int(rng.integers(4)))


def render(image: Image.Image, t: Transform) -> Image.Image:
    """Apply ``t`` to the source ``image``."""
    out = image.crop(t.box)
    if t.flip_h:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if t.flip_v:
        out = out.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    for _ in range(t.rot90):
        out = out.transpose(Image.Transpose.ROTATE_90)
    return out


def expand_training_set(
    source_root: str | Path, category: str, out_root: str | Path, images: int, seed: int = 0,
    link_test: bool = True, min_area: float = 0.8, max_area: float = 1.0,
) -> Path:
    """Write ``images`` training images made from ``<source_root>/<category>/train/good`` to
    ``<out_root>/<category>/train/good`` (PNG, lossless), with the source's test split and masks.

    Args:
        link_test: symlink ``test`` and ``ground_truth`` to the source's (False: copy them).
        min_area, max_area: range of the crop's share of the source's area.

    Returns:
        the output category folder.

    Raises:
        DataError: the source has no ``train/good`` images, or the output folder is not empty.
    """
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    if not 0 < min_area <= max_area <= 1:
        raise ValueError(f"need 0 < min_area <= max_area <= 1, got {min_area}, {max_area}")
    src_cat = Path(source_root).expanduser() / category
    train = src_cat / "train" / GOOD
    files = list_images(train) if train.is_dir() else []
    if not files:
        raise DataError(f"No training images in {train}")
    out_cat = Path(out_root).expanduser() / category
    if out_cat.exists() and any(out_cat.iterdir()):
        raise DataError(f"Output folder is not empty: {out_cat}")
    rel = [str(p.relative_to(src_cat)) for p in files]
    sizes = []
    for p in files:
        with Image.open(p) as im:
            sizes.append(im.size)
    dest = out_cat / "train" / GOOD
    dest.mkdir(parents=True)
    width = max(4, len(str(images - 1)))
    records = []
    for i in range(images):
        t = plan(rel, sizes, i, seed, min_area, max_area)
        with Image.open(src_cat / t.source) as im:
            out = render(im, t)
        name = f"{i:0{width}d}.png"
        out.save(dest / name, format="PNG", optimize=False, compress_level=6)
        records.append({"file": f"train/{GOOD}/{name}", **asdict(t)})
    for part in ("test", "ground_truth"):
        if (src_cat / part).is_dir():
            if link_test:
                (out_cat / part).symlink_to((src_cat / part).resolve(), target_is_directory=True)
            else:
                shutil.copytree(src_cat / part, out_cat / part)
    manifest = {"source": str(src_cat.resolve()), "category": category, "images": images, "seed": seed,
                "min_area": min_area, "max_area": max_area, "sources": len(rel), "outputs": records}
    (out_cat / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return out_cat


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", required=True, help="dataset root in MVTec layout")
    p.add_argument("--category", required=True)
    p.add_argument("--out", required=True, help="output dataset root (its category folder must be empty)")
    p.add_argument("--images", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--copy-test", action="store_true", help="copy test/ and ground_truth/ instead of symlinking")
    args = p.parse_args(argv)
    out = expand_training_set(args.source, args.category, args.out, args.images, args.seed, not args.copy_test)
    print(f"wrote {args.images} training images to {out}")


if __name__ == "__main__":
    main()
