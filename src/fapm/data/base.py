"""Shared Lightning data module: record validation, normal hold-out split and dataloaders.

Concrete datasets (MVTec, VisA, folder) only implement ``build_records()``.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, DistributedSampler

from fapm.data.errors import DataError
from fapm.data.records import GOOD, SampleListDataset, SampleRecord, validate_records
from fapm.data.sampling import PaddedDataset, ShardedBatches
from fapm.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from fapm.distributed import world


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"normal_holdout must be in [0, 1), got {fraction}")


def worker_start_method(num_workers: int) -> str | None:
    """Start method of the DataLoader worker processes; ``None`` keeps Python's default.

    Inside a joblib worker (``hydra/launcher=joblib``) the process-wide default start method
    is joblib's own ``loky``, with which a DataLoader cannot start its workers ("'Process'
    object has no attribute 'env'"); the platform's standard method is used there instead.
    """
    if num_workers == 0:
        return None
    current = multiprocessing.get_start_method(allow_none=True)
    standard = multiprocessing.get_all_start_methods()  # the platform default first
    return None if current is None or current in standard else standard[0]


def split_holdout(
    records: list[SampleRecord], fraction: float, seed: int
) -> tuple[list[SampleRecord], list[SampleRecord]]:
    """Split normal training records into ``(train, held_out)`` with a seeded permutation.

    ``round(fraction * n)`` records (at least 1 when ``fraction > 0``) are held out; both
    parts keep the original (sorted) order.
    """
    _check_fraction(fraction)
    n = len(records)
    n_held = 0 if fraction == 0.0 else max(1, round(fraction * n))
    if n_held == 0:
        return list(records), []
    if n_held >= n:
        raise DataError(
            f"normal_holdout={fraction} would hold out {n_held} of only {n} training images, "
            "leaving none to build the memory bank"
        )
    held = set(np.random.default_rng(seed).permutation(n)[:n_held].tolist())
    train = [r for i, r in enumerate(records) if i not in held]
    held_out = [r for i, r in enumerate(records) if i in held]
    return train, held_out


class AnomalyDataModule(L.LightningDataModule):
    """Base data module. Subclasses implement ``build_records() -> (train, test)``.

    ``setup()`` builds and validates every record once (any stage) and raises a single
    ``DataError`` on bad data: a missing or unreadable file, an image under
    :data:`~fapm.data.image_io.MIN_SIDE` pixels on a side or over
    :data:`~fapm.data.image_io.MAX_PIXELS` pixels (predict's limits), a mask of another
    size. The training set is the normal images minus a seeded ``normal_holdout``
    fraction, which forms the validation set. ``mean``/``std`` normalise the images as the
    backbone expects.
    """

    def __init__(
        self,
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
        super().__init__()
        _check_fraction(normal_holdout)
        if train_batch_size < 1 or eval_batch_size < 1 or num_workers < 0:
            raise ValueError("batch sizes must be >= 1 and num_workers >= 0")
        self.preprocess = Preprocess(image_size=image_size, crop_size=crop_size, mean=mean, std=std, resize=resize)
        self.train_batch_size = train_batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.normal_holdout = normal_holdout
        self.seed = seed
        self.train_records: list[SampleRecord] = []
        self.val_records: list[SampleRecord] = []
        self.test_records: list[SampleRecord] = []
        self._is_setup = False

    # --- to implement -------------------------------------------------------------------
    def build_records(self) -> tuple[list[SampleRecord], list[SampleRecord]]:
        """Return ``(train_normal_records, test_records)``; raise ``DataError`` on layout problems."""
        raise NotImplementedError

    # --- Lightning hooks ----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Build, validate and split the records (idempotent; every stage gets everything)."""
        if self._is_setup:
            return
        train, test = self.build_records()
        validate_records(train + test)
        self.train_records, self.val_records = split_holdout(train, self.normal_holdout, self.seed)
        self.test_records = test
        self._is_setup = True

    def _dataset(self, records: list[SampleRecord]) -> SampleListDataset:
        return SampleListDataset(records, self.preprocess)

    def _loader(self, split: str, batch_size: int) -> DataLoader:
        self.setup()  # before reading the records: Lightning may call a loader without setup()
        records = {"train": self.train_records, "val": self.val_records, "test": self.test_records}[split]
        dataset: Any = self._dataset(records)
        common: dict[str, Any] = {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "multiprocessing_context": worker_start_method(self.num_workers),
        }
        rank, size = world()
        module = getattr(getattr(self, "trainer", None), "lightning_module", None)
        if size == 1:
            # memory building is order-independent; a fixed order keeps runs reproducible
            return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, **common)
        if split == "train" and getattr(module, "equal_batches_per_rank", False):
            # gradient training (LAMP): DDP all-reduces every batch, torch's padded sampler is right
            sampler = DistributedSampler(dataset, num_replicas=size, rank=rank, shuffle=False)
            return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=False, **common)
        # Every sample exactly once, in this rank's contiguous share of the single-process
        # batches (topped up with flagged padding batches): a memory holds each training image
        # once, with the features one process would compute, and metrics count each test image once.
        batches = ShardedBatches(len(dataset), batch_size, rank, size)
        return DataLoader(PaddedDataset(dataset), batch_sampler=batches, **common)

    def train_dataloader(self) -> DataLoader:
        """Normal training images (minus the hold-out), in sorted order."""
        return self._loader("train", self.train_batch_size)

    def val_dataloader(self) -> DataLoader | list:
        """Held-out normal images; ``[]`` when ``normal_holdout == 0`` (Lightning 2.6 then skips validation)."""
        self.setup()
        if not self.val_records:
            return []
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """The test set: normal and defective images, sorted by defect type then name."""
        return self._loader("test", self.eval_batch_size)

    # --- introspection ------------------------------------------------------------------
    def train_dataset(self) -> SampleListDataset:
        """Dataset of the training records (after ``setup``)."""
        self.setup()
        return self._dataset(self.train_records)

    def val_dataset(self) -> SampleListDataset:
        """Dataset of the held-out normal training images (``normal_holdout``; empty when none), after ``setup``."""
        self.setup()
        return self._dataset(self.val_records)

    def test_dataset(self) -> SampleListDataset:
        """Dataset of the test records (after ``setup``)."""
        self.setup()
        return self._dataset(self.test_records)

    @property
    def has_masks(self) -> bool:
        """True when every test image has known pixel ground truth (pixel metrics are valid)."""
        self.setup()
        return all(r.has_mask for r in self.test_records)

    @property
    def defect_types(self) -> list[str]:
        """Sorted defect types present in the test set (``"good"`` excluded)."""
        self.setup()
        return sorted({r.defect_type for r in self.test_records if r.defect_type != GOOD})

    def describe(self) -> dict[str, Any]:
        """Counts for logs/reports: split sizes, test images per defect type, mask availability."""
        self.setup()
        per_type = Counter(r.defect_type for r in self.test_records)
        return {
            "n_train": len(self.train_records),
            "n_val": len(self.val_records),
            "n_test": len(self.test_records),
            "n_test_good": sum(1 for r in self.test_records if r.label == 0),
            "n_test_defect": sum(1 for r in self.test_records if r.label == 1),
            "test_per_type": dict(sorted(per_type.items())),
            "defect_types": self.defect_types,
            "has_masks": self.has_masks,
            "preprocess": self.preprocess.to_dict(),
        }
