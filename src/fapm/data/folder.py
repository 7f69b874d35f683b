"""Generic folder dataset: normal train images, normal + abnormal test images, optional masks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fapm.data.base import AnomalyDataModule
from fapm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fapm.data.errors import DataError
from fapm.data.image_io import list_images
from fapm.data.records import GOOD, SampleRecord

#: ``defect_type`` of abnormal images placed directly in ``abnormal_dir``.
DEFAULT_DEFECT_TYPE = "abnormal"


def _existing_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} folder not found: {path}")
    return path


def _typed_images(folder: Path) -> list[tuple[Path, str]]:
    """Images in ``folder`` (type ``"abnormal"``) and in its immediate sub-folders (type = sub-folder name)."""
    found = [(p, DEFAULT_DEFECT_TYPE) for p in list_images(folder)]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += [(p, sub.name) for p in list_images(sub)]
    return found


def _by_stem(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the images in ``folder`` (``.png`` wins when a stem has several files)."""
    index: dict[str, Path] = {}
    if folder.is_dir():
        for path in list_images(folder):
            if path.stem not in index or path.suffix.lower() == ".png":
                index[path.stem] = path
    return index


class FolderDataModule(AnomalyDataModule):
    """Data module for plain folders.

    Train = images in ``normal_dir``. Test = ``test_normal_dir`` (label 0) + ``abnormal_dir``
    (label 1; images directly inside get defect type ``"abnormal"``, images in sub-folders get
    the sub-folder name). Masks are matched by stem in ``mask_dir`` (same sub-folder or its top
    level), named ``<stem><mask_suffix>.<ext>`` (``.png`` preferred); a missing mask is an error.
    Without ``mask_dir`` abnormal masks are unknown: samples have ``has_mask=False`` and the
    module's ``has_masks`` is False, so pixel metrics must be skipped. Relative paths are
    resolved against ``root`` when given.
    """

    def __init__(
        self,
        normal_dir: str,
        abnormal_dir: str,
        test_normal_dir: str,
        mask_dir: str | None = None,
        mask_suffix: str = "",
        root: str | None = None,
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
        base = self.root = Path(root).expanduser() if root is not None else None

        def resolve(path: str) -> Path:
            p = Path(path).expanduser()
            return base / p if base is not None and not p.is_absolute() else p

        self.normal_dir = resolve(normal_dir)
        self.abnormal_dir = resolve(abnormal_dir)
        self.test_normal_dir = resolve(test_normal_dir)
        self.mask_dir = resolve(mask_dir) if mask_dir is not None else None
        self.mask_suffix = mask_suffix

    def build_records(self) -> tuple[list[SampleRecord], list[SampleRecord]]:
        if self.root is not None:
            _existing_dir(self.root, "Dataset root")
        train_images = list_images(_existing_dir(self.normal_dir, "Normal (training)"))
        if not train_images:
            raise DataError(f"No training images in {self.normal_dir}")
        test_normal = list_images(_existing_dir(self.test_normal_dir, "Normal test"))
        abnormal = _typed_images(_existing_dir(self.abnormal_dir, "Abnormal"))
        if not test_normal and not abnormal:
            raise DataError(f"No test images in {self.test_normal_dir} or {self.abnormal_dir}")
        if self.mask_dir is not None:
            _existing_dir(self.mask_dir, "Mask")

        train = [SampleRecord(p, None, 0, GOOD) for p in train_images]
        test = [SampleRecord(p, None, 0, GOOD) for p in test_normal]
        indexes: dict[Path, dict[str, Path]] = {}  # mask folder -> {stem: mask file}, each listed once
        for image, defect_type in sorted(abnormal, key=lambda item: (item[1], item[0].name)):
            if self.mask_dir is None:
                test.append(SampleRecord(image, None, 1, defect_type, has_mask=False))
                continue
            # Images from a sub-folder look in mask_dir/<sub-folder>/ first, then in mask_dir.
            folders = (
                [self.mask_dir] if image.parent == self.abnormal_dir else [self.mask_dir / defect_type, self.mask_dir]
            )
            stem = f"{image.stem}{self.mask_suffix}"
            mask = None
            for folder in folders:
                if folder not in indexes:
                    indexes[folder] = _by_stem(folder)
                mask = indexes[folder].get(stem)
                if mask is not None:
                    break
            test.append(SampleRecord(image, mask if mask is not None else folders[0] / f"{stem}.png", 1, defect_type))
        return train, test
