"""MVTec AD layout: ``<root>/<category>/{train/good, test/<type>, ground_truth/<type>/<stem>_mask.png}``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from fapm.data.base import AnomalyDataModule
from fapm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fapm.data.errors import DataError
from fapm.data.image_io import list_images
from fapm.data.records import GOOD, SampleListDataset, SampleRecord, validate_records
from fapm.data.transforms import Preprocess

log = logging.getLogger(__name__)

#: The 15 MVTec AD categories.
MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip


def category_dir(root: str | Path, category: str) -> Path:
    """``<root>/<category>``, or ``DataError`` naming the root / listing existing categories."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"Dataset root not found: {root}")
    folder = root / category
    if not folder.is_dir():
        existing = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise DataError(f"Category folder not found: {folder} (categories present in {root}: {existing or 'none'})")
    return folder


def mvtec_mask_path(category_folder: Path, defect_type: str, image_path: Path) -> Path:
    """Where MVTec keeps the mask of a defective test image."""
    return category_folder / "ground_truth" / defect_type / f"{image_path.stem}_mask.png"


def mvtec_train_records(root: str | Path, category: str) -> list[SampleRecord]:
    """Sorted ``train/good`` records; ``DataError`` if the folder is missing or has no images."""
    folder = category_dir(root, category) / "train" / GOOD
    if not folder.is_dir():
        raise DataError(f"Training folder not found: {folder}")
    images = list_images(folder)
    if not images:
        raise DataError(f"No training images in {folder}")
    return [SampleRecord(p, None, 0, GOOD) for p in images]


def mvtec_test_records(root: str | Path, category: str) -> list[SampleRecord]:
    """Test records sorted by defect type then file name; masks from ``ground_truth``."""
    cat = category_dir(root, category)
    test_dir = cat / "test"
    if not test_dir.is_dir():
        raise DataError(f"Test folder not found: {test_dir}")
    records: list[SampleRecord] = []
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        defect_type = type_dir.name
        for image in list_images(type_dir):
            if defect_type == GOOD:
                records.append(SampleRecord(image, None, 0, GOOD))
            else:
                records.append(SampleRecord(image, mvtec_mask_path(cat, defect_type, image), 1, defect_type))
    if not records:
        raise DataError(f"No test images in {test_dir} (expected images in {test_dir}/<defect_type>/)")
    return records


class MVTecDataset(SampleListDataset):
    """One split of an MVTec-layout category (sample dict: see ``SampleListDataset``)."""

    def __init__(
        self,
        root: str | Path,
        category: str,
        split: Literal["train", "test"],
        preprocess: Preprocess | None = None,
        validate: bool = True,
    ) -> None:
        if split == "train":
            records = mvtec_train_records(root, category)
        elif split == "test":
            records = mvtec_test_records(root, category)
        else:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if validate:
            validate_records(records)
        super().__init__(records, preprocess)
        self.category = category
        self.split = split


class MVTecDataModule(AnomalyDataModule):
    """Lightning data module for one MVTec AD (or demo) category.

    With ``generate_demo=True``, ``prepare_data()`` writes the synthetic demo dataset
    (``fapm.data.demo``) into ``root`` when ``<root>/<category>`` does not exist yet.
    """

    def __init__(
        self,
        root: str,
        category: str,
        image_size: int = 256,
        crop_size: int | None = None,
        train_batch_size: int = 8,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        normal_holdout: float = 0.0,
        seed: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        resize: str = "squash",
        generate_demo: bool = False,
        demo_seed: int = 0,
    ) -> None:
        super().__init__(
            image_size, crop_size, train_batch_size, eval_batch_size, num_workers, normal_holdout, seed, mean, std,
            resize=resize,
        )
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.category = category
        self.generate_demo = generate_demo
        self.demo_seed = demo_seed

    def prepare_data(self) -> None:
        """Generate the demo category if asked to and it is missing or incomplete.

        Safe when parallel jobs start together: :func:`fapm.data.demo.generate_demo` locks
        the category, so one job writes it and the others wait, then use it. A category that
        is already there is kept with the arguments that wrote it (only files missing from it
        are a reason to write it again); a folder that is not a generated demo is used as is.
        """
        if not self.generate_demo:
            return
        from fapm.data.demo import DEMO_CATEGORIES, generate_demo, is_complete_demo, marker_arguments, read_demo_marker

        target = self.root / self.category
        marker = read_demo_marker(target)
        if target.exists() and marker is None:
            return  # the user's own images under the demo root
        if marker is not None and marker.get("seed") != self.demo_seed:
            log.warning(
                "data.demo_seed=%s but %s was generated with seed %s: using it as it is "
                "(delete it, or choose another data.root, to generate seed %s)",
                self.demo_seed, target, marker.get("seed"), self.demo_seed,
            )  # fmt: skip
        if marker is not None and is_complete_demo(target):
            return
        if self.category not in DEMO_CATEGORIES:
            raise DataError(
                f"generate_demo=True but {self.category!r} is not a demo category "
                f"(choose from {list(DEMO_CATEGORIES)}); root: {self.root}"
            )
        # Missing: generate it. Incomplete: again, with the arguments that wrote it.
        arguments = marker_arguments(marker) if marker is not None else {"seed": self.demo_seed}
        log.info("generating the demo category %r in %s (once; later runs reuse it)", self.category, target)
        generate_demo(self.root, categories=[self.category], **arguments)

    def build_records(self) -> tuple[list[SampleRecord], list[SampleRecord]]:
        return mvtec_train_records(self.root, self.category), mvtec_test_records(self.root, self.category)
