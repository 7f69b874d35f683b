"""The predict command's work: score image files, write results, overlays and masks.

``input`` is an image file, a folder (every visible file below it, recursively, in sorted
order) or a glob pattern (``**`` recurses). Files are read ``batch_size`` at a time, so a
folder is never held in memory. Every file gets one row in ``results.csv`` and
``results.jsonl`` (same columns, :data:`RESULT_FIELDS`); a file that cannot be scored gets
its error there and the run goes on. ``overlays/<relative path>.png`` and
``masks/<relative path>.png`` are written at the image's original size. ``summary.json``
holds the counts and the thresholds used.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from fapm.inference.api import FAPM, PredictionResult
from fapm.inference.images import InputError, open_image
from fapm.inference.visualize import mask_image, overlay

log = logging.getLogger(__name__)

RESULTS_CSV = "results.csv"
RESULTS_JSONL = "results.jsonl"
SUMMARY_JSON = "summary.json"
#: Columns of the results files, in order. ``label``: 1/true = defective.
RESULT_FIELDS = ("path", "score", "normalised_score", "label", "width", "height", "overlay", "mask", "error")
_GLOB_CHARS = frozenset("*?[")


@dataclass
class PredictSummary:
    """What a predict run did (also written to ``summary.json``)."""

    input: str
    output: str
    scored: int = 0
    failed: int = 0
    defective: int = 0
    seconds: float = 0.0
    image_threshold: float | None = None
    pixel_threshold: float | None = None
    message: str | None = None
    files: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when at least one image was scored, else 1."""
        return 0 if self.scored > 0 else 1


# ------------------------------------------------------------------------------ inputs
def _visible(path: Path, base: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(base).parts)


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and (path.resolve() == folder or folder in path.resolve().parents)


def list_sources(spec: str | Path, exclude: Path | None = None) -> tuple[list[Path], Path]:
    """Files named by ``spec`` (file, folder or glob) and the base folder output names are relative to.

    Hidden files and folders and anything inside ``exclude`` (the output folder) are skipped.

    Raises:
        InputError: ``spec`` names nothing, or a folder / pattern with no files.
    """
    text = str(spec)
    path = Path(text).expanduser()
    folder = exclude.resolve() if exclude is not None else None
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _visible(p, path) and not _inside(p, folder))
        if not files:
            raise InputError(f"no files found in the folder {path}")
        return files, path
    if _GLOB_CHARS & set(text):
        parts = Path(text).parts
        fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if _GLOB_CHARS & set(p))]]
        base = Path(*fixed) if fixed else Path(".")
        files = sorted(
            Path(p) for p in glob.iglob(text, recursive=True)
            if Path(p).is_file() and not _inside(Path(p), folder)
        )
        if not files:
            raise InputError(f"the pattern {text!r} matches no files")
        return files, base
    raise InputError(f"input not found: {text} (an image file, a folder or a glob pattern)")


def output_name(path: Path, base: Path, used: set[str]) -> str:
    """``<relative dir>/<stem>.png``; ``<stem>.<ext>.png`` when two inputs would share a name."""
    try:
        relative = path.relative_to(base)
    except ValueError:
        relative = Path(path.name)
    name = str(relative.with_suffix(".png"))
    if name in used:
        name = str(relative) + ".png"
    used.add(name)
    return name


# ------------------------------------------------------------------------------ results
class ResultWriter:
    """Appends rows to ``results.csv`` and ``results.jsonl`` as they come (flushed per batch)."""

    def __init__(self, folder: Path) -> None:
        self.csv_path = folder / RESULTS_CSV
        self.jsonl_path = folder / RESULTS_JSONL
        self._csv_file: IO[str] = open(self.csv_path, "w", newline="", encoding="utf-8")
        self._jsonl: IO[str] = open(self.jsonl_path, "w", encoding="utf-8")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=RESULT_FIELDS)
        self._csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        record = {k: row.get(k) for k in RESULT_FIELDS}
        self._jsonl.write(json.dumps(record) + "\n")
        flat = dict(record)
        if isinstance(flat["label"], bool):
            flat["label"] = int(flat["label"])
        self._csv.writerow({k: "" if v is None else v for k, v in flat.items()})

    def flush(self) -> None:
        self._csv_file.flush()
        self._jsonl.flush()

    def close(self) -> None:
        self._csv_file.close()
        self._jsonl.close()


def _error_row(path: Path, error: str) -> dict[str, Any]:
    return {"path": str(path), "error": error}


def _result_row(result: PredictionResult, overlay_name: str | None, mask_name: str | None) -> dict[str, Any]:
    width, height = result.size
    return {
        "path": result.path,
        "score": result.score,
        "normalised_score": result.normalised_score,
        "label": None if result.label is None else bool(result.label),
        "width": width,
        "height": height,
        "overlay": overlay_name,
        "mask": mask_name,
    }


# ------------------------------------------------------------------------------ running
def _batches(sources: list[Path], batch_size: int, model: FAPM, errors: list[tuple[Path, str]]
             ) -> Iterator[list[tuple[Path, Image.Image]]]:
    """Loaded ``(path, image)`` batches; unreadable files go to ``errors`` instead."""
    batch: list[tuple[Path, Image.Image]] = []
    for path in sources:
        try:
            batch.append((path, open_image(path, model.min_side, model.max_pixels)))
        except InputError as err:
            errors.append((path, str(err)))
            continue
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_files(
    model: FAPM,
    input: str | Path,
    output: str | Path,
    batch_size: int = 8,
    write_overlays: bool = True,
    write_masks: bool = True,
    alpha: float = 0.5,
    progress: bool = True,
) -> PredictSummary:
    """Score every file of ``input`` with ``model`` and write the results into ``output``.

    Args:
        model: the loaded model (its thresholds and size limits apply).
        input: an image file, a folder or a glob pattern.
        output: folder for the results files, ``overlays/`` and ``masks/``.
        batch_size: images scored together (and held in memory at once).
        write_overlays: write heat-map overlays.
        write_masks: write binary masks (255 = defect).
        alpha: heat-map weight in the overlays.
        progress: show a tqdm progress bar.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary(str(input), str(out), image_threshold=model.image_threshold,
                             pixel_threshold=model.pixel_threshold)
    writer = ResultWriter(out)
    summary.files = {"results_csv": str(writer.csv_path), "results_jsonl": str(writer.jsonl_path)}
    start = time.perf_counter()
    try:
        try:
            sources, base = list_sources(input, exclude=out)
        except InputError as err:
            summary.message = str(err)
            sources, base = [], Path(".")
        used: set[str] = set()
        errors: list[tuple[Path, str]] = []
        bar = tqdm(total=len(sources), desc="predict", unit="img", disable=not progress or not sources)
        for batch in _batches(sources, batch_size, model, errors):
            for path, error in errors:
                writer.write(_error_row(path, error))
                summary.failed += 1
                bar.update(1)
            errors.clear()
            try:
                results = model.predict_pil([image for _, image in batch], [str(path) for path, _ in batch])
            except RuntimeError as err:  # e.g. out of memory: this batch fails, the run goes on
                for path, _ in batch:
                    writer.write(_error_row(path, f"scoring failed: {err}"))
                summary.failed += len(batch)
                bar.update(len(batch))
                continue
            for (path, image), result in zip(batch, results):
                name = output_name(path, base, used)
                overlay_name = mask_name = None
                if write_overlays:
                    overlay_name = str(Path("overlays") / name)
                    shown = result.normalised_map if result.normalised_map is not None else _spread(result.anomaly_map)
                    _save_png(overlay(image, shown, alpha), out / overlay_name)
                if write_masks and result.mask is not None:
                    mask_name = str(Path("masks") / name)
                    _save_png(mask_image(result.mask), out / mask_name)
                writer.write(_result_row(result, overlay_name, mask_name))
                summary.scored += 1
                summary.defective += int(bool(result.label))
            bar.update(len(batch))
            writer.flush()
        for path, error in errors:  # failures after the last full batch
            writer.write(_error_row(path, error))
            summary.failed += 1
            bar.update(1)
        bar.close()
    finally:
        writer.close()
    summary.seconds = time.perf_counter() - start
    if summary.scored == 0 and summary.message is None:
        summary.message = f"none of the {summary.failed} input file(s) could be scored (see {writer.csv_path})"
    (out / SUMMARY_JSON).write_text(json.dumps({**asdict(summary), "exit_code": summary.exit_code}, indent=2))
    return summary


def _spread(values: "np.ndarray") -> "np.ndarray":
    """A map scaled to [0, 1] by its own range (overlays of a model without a pixel threshold)."""
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else values * 0.0


def _save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
