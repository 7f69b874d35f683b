"""Data layer: image I/O, FAPM pre-processing, MVTec/VisA/folder datasets and the synthetic demo.

Names are imported lazily so that e.g. ``python -m fapm.data.demo`` does not import Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "DEMO_CATEGORIES",
    "DEMO_DEFECT_TYPES",
    "GOOD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "MVTEC_CATEGORIES",
    "VISA_CATEGORIES",
    "AnomalyDataModule",
    "DataError",
    "FolderDataModule",
    "MVTecDataModule",
    "MVTecDataset",
    "Preprocess",
    "SampleListDataset",
    "SampleRecord",
    "VisADataModule",
    "denormalize",
    "generate_demo",
    "list_images",
    "load_mask",
    "load_rgb",
    "read_size",
    "read_visa_csv",
    "render_sample",
    "split_holdout",
    "validate_records",
]

# public name -> sub-module defining it
_MODULE_OF: dict[str, str] = {
    **dict.fromkeys(["DataError"], "errors"),
    **dict.fromkeys(["IMAGE_EXTENSIONS", "list_images", "load_mask", "load_rgb", "read_size"], "image_io"),
    **dict.fromkeys(["IMAGENET_MEAN", "IMAGENET_STD", "Preprocess", "denormalize"], "transforms"),
    **dict.fromkeys(["GOOD", "SampleListDataset", "SampleRecord", "validate_records"], "records"),
    **dict.fromkeys(["AnomalyDataModule", "split_holdout"], "base"),
    **dict.fromkeys(["MVTEC_CATEGORIES", "MVTecDataModule", "MVTecDataset"], "mvtec"),
    **dict.fromkeys(["FolderDataModule"], "folder"),
    **dict.fromkeys(["VISA_CATEGORIES", "VisADataModule", "read_visa_csv"], "visa"),
    **dict.fromkeys(["DEMO_CATEGORIES", "DEMO_DEFECT_TYPES", "generate_demo", "render_sample"], "demo"),
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from fapm.data.base import AnomalyDataModule, split_holdout
    from fapm.data.demo import DEMO_CATEGORIES, DEMO_DEFECT_TYPES, generate_demo, render_sample
    from fapm.data.errors import DataError
    from fapm.data.folder import FolderDataModule
    from fapm.data.image_io import IMAGE_EXTENSIONS, list_images, load_mask, load_rgb, read_size
    from fapm.data.mvtec import MVTEC_CATEGORIES, MVTecDataModule, MVTecDataset
    from fapm.data.records import GOOD, SampleListDataset, SampleRecord, validate_records
    from fapm.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocess, denormalize
    from fapm.data.visa import VISA_CATEGORIES, VisADataModule, read_visa_csv
