"""VisA in its ``split_csv`` layout (``object,split,label,image,mask``; paths relative to the root)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from fapm.data.base import AnomalyDataModule
from fapm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fapm.data.errors import DataError
from fapm.data.records import GOOD, SampleRecord

#: The 12 VisA objects.
VISA_CATEGORIES: tuple[str, ...] = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)  # fmt: skip
#: ``defect_type`` of VisA anomalies (the split csv does not name defect classes).
ANOMALY = "anomaly"
_COLUMNS = ("object", "split", "label", "image", "mask")


def read_visa_csv(
    root: str | Path, category: str, split_csv: str | Path
) -> tuple[list[SampleRecord], list[SampleRecord]]:
    """Parse a VisA split csv into ``(train_normal, test)`` records for ``category``.

    Training anomalies (present in the 2-class few-shot splits) are left out: the memory
    bank is built from normal images only. Records are sorted by (defect type, path).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"Dataset root not found: {root}")
    csv_path = Path(split_csv).expanduser()
    csv_path = csv_path if csv_path.is_absolute() else root / csv_path
    if not csv_path.is_file():
        raise DataError(f"VisA split csv not found: {csv_path}")
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = [c.strip() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"Cannot read VisA split csv {csv_path}: {exc}") from exc
    missing = [c for c in _COLUMNS if c not in header]
    if missing:
        raise DataError(f"VisA split csv {csv_path} lacks columns {missing} (has {header})")

    train: list[SampleRecord] = []
    test: list[SampleRecord] = []
    objects: set[str] = set()
    for line, raw in enumerate(rows, start=2):  # line 1 is the header
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        objects.add(row["object"])
        if row["object"] != category:
            continue
        split, label = row["split"].lower(), row["label"].lower()
        if split not in ("train", "test") or label not in ("normal", "anomaly"):
            raise DataError(f"{csv_path}, line {line}: unexpected split {row['split']!r} / label {row['label']!r}")
        image = root / row["image"]
        if label == "normal":
            record = SampleRecord(image, None, 0, GOOD)
        else:
            record = SampleRecord(image, root / row["mask"] if row["mask"] else None, 1, ANOMALY)
        if split == "train":
            if label == "normal":
                train.append(record)
        else:
            test.append(record)
    if not objects & {category}:
        raise DataError(f"Category {category!r} not in {csv_path} (objects present: {sorted(objects)})")
    if not train:
        raise DataError(f"No normal training images for {category!r} in {csv_path}")
    if not test:
        raise DataError(f"No test images for {category!r} in {csv_path}")
    train.sort(key=lambda r: str(r.image_path))
    test.sort(key=lambda r: (r.defect_type, str(r.image_path)))
    return train, test


class VisADataModule(AnomalyDataModule):
    """Lightning data module for one VisA object. Masks: any nonzero pixel is a defect (VisA stores 0/1)."""

    def __init__(
        self,
        root: str,
        category: str,
        split_csv: str = "split_csv/1cls.csv",
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
    ) -> None:
        super().__init__(
            image_size, crop_size, train_batch_size, eval_batch_size, num_workers, normal_holdout, seed, mean, std,
            resize=resize,
        )
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.category = category
        self.split_csv = split_csv

    def build_records(self) -> tuple[list[SampleRecord], list[SampleRecord]]:
        return read_visa_csv(self.root, self.category, self.split_csv)
