"""The predict command's work: score image files, write results, overlays and masks.

``input`` is an image file, a folder (every entry below it, recursively) or a glob pattern
(``**`` recurses). Symbolic links to folders are never followed (so ``ln -s . loop`` neither
multiplies images nor hangs); symbolic links to files are. Hidden entries (names starting
with ``.``) are skipped and only counted (``summary.json``: ``hidden``).

Every other entry gets exactly one row in ``results.csv`` and ``results.jsonl`` (same
columns, :data:`RESULT_FIELDS`), in the sorted order of the listing whatever the batching:
``status`` is ``ok`` (scored), ``error`` (an image file that cannot be scored, or a
non-finite model score: never labelled) or ``skipped`` (not an image file: another
extension, a folder link, a broken link, a device or pipe, a folder that cannot be listed),
with the reason in ``error``. Files are read ``batch_size`` images at a time, so a folder is
never held in memory. ``overlays/<relative path>.png`` and ``masks/<relative path>.png`` are
written at the image's original size; ``summary.json`` holds the counts and thresholds.

The output folder is locked for the run (:class:`OutputFolder`): a folder that already holds
results is refused unless ``overwrite=True``, and a second run into a folder in use fails at
once, so two runs never interleave or silently replace each other's rows.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fapm.errors import FapmError
from fapm.data.image_io import IMAGE_EXTENSIONS
from fapm.inference.api import FAPM, PredictionResult
from fapm.inference.images import InputError, open_image
from fapm.inference.visualize import mask_image, overlay
from fapm.runlock import try_lock

log = logging.getLogger(__name__)

RESULTS_CSV = "results.csv"
RESULTS_JSONL = "results.jsonl"
SUMMARY_JSON = "summary.json"
OVERLAYS = "overlays"
MASKS = "masks"
#: Held (locked) by the run writing into a folder; left in place (unlinking a lock file races).
LOCK_FILE = ".fapm-predict.lock"
#: Columns of the results files, in order. ``label``: 1/true = defective; ``status``: ok | error | skipped.
RESULT_FIELDS = ("path", "score", "normalised_score", "label", "width", "height", "overlay", "mask", "error", "status")
_GLOB_CHARS = frozenset("*?[")


class PredictError(FapmError, ValueError):
    """A predict run that cannot start (bad setting, output folder, device); the message names the key or path."""


class OutputError(PredictError):
    """The output folder cannot be used: not a folder, not writable, in use, or already holding results."""


@dataclass
class PredictSummary:
    """What a predict run did (also written to ``summary.json``).

    ``scored``: images scored; ``failed``: image files that could not be scored (error rows);
    ``skipped``: entries that are not image files (skipped rows); ``hidden``: hidden entries
    left out without a row; ``defective``: scored images labelled defective;
    ``not_inspected``: the largest share of an image's area that the model's centre crop
    removes (0 when the model inspects whole images).
    """

    input: str
    output: str
    scored: int = 0
    failed: int = 0
    skipped: int = 0
    hidden: int = 0
    defective: int = 0
    seconds: float = 0.0
    image_threshold: float | None = None
    pixel_threshold: float | None = None
    not_inspected: float = 0.0
    message: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    #: True when the run stopped before every input had its row (Ctrl-C, SIGTERM, disk full...):
    #: the results files hold the rows written so far, not the whole input.
    partial: bool = False
    #: True only when the model file and every graph that scored were verified with the signing key
    #: (``FAPM.verified``; docs/reliability.md, "Model files are data").
    verified: bool = False

    @property
    def exit_code(self) -> int:
        """0 when at least one image was scored, else 1."""
        return 0 if self.scored > 0 else 1


# ------------------------------------------------------------------------------ device
def check_device(device: str | torch.device) -> torch.device:
    """The torch device for a ``device`` setting (``auto | cpu | cuda | cuda:<n>``), checked before any work.

    Raises:
        PredictError: not a device name, or a CUDA device this machine does not have.
    """
    text = str(device).strip()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise PredictError(f"device={text!r} is not a device (auto, cpu, cuda or cuda:<n>)") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise PredictError(f"device={text!r}: only auto, cpu, cuda or cuda:<n> are supported")
    if not torch.cuda.is_available():
        raise PredictError(
            f"device={text!r} but CUDA is not available on this machine (torch.cuda.is_available() is False); "
            "use device=cpu or device=auto"
        )
    count = torch.cuda.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise PredictError(f"device={text!r} but this machine has {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})")
    return resolved


# ------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class Entry:
    """One listed input entry: an image file to score (``skip`` None) or why it is not scored."""

    path: Path
    skip: str | None = None


@dataclass
class Listing:
    """What ``input`` names: entries in sorted order, the folder output names are relative to, hidden count."""

    entries: list[Entry]
    base: Path
    hidden: int = 0

    @property
    def images(self) -> list[Path]:
        """The entries that will be read as images."""
        return [e.path for e in self.entries if e.skip is None]


_ACCEPTED = ", ".join(sorted(IMAGE_EXTENSIONS))
_DIR_LINK = "skipped: symbolic link to a folder (links to folders are not followed)"
_BROKEN_LINK = "skipped: broken symbolic link"
_SPECIAL = "skipped: not a regular file (device, pipe or socket)"


def _file_entry(path: Path) -> Entry:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return Entry(path)
    return Entry(path, f"skipped: not an image file type ({suffix or 'no extension'}; accepted: {_ACCEPTED})")


def _classify(entry: os.DirEntry) -> str:
    """``dir`` | ``file`` | ``dirlink`` | ``broken`` | ``special`` of one directory entry (never follows folders)."""
    try:
        if entry.is_symlink():
            if entry.is_dir():
                return "dirlink"
            if entry.is_file():
                return "file"
            return "special" if os.path.exists(entry.path) else "broken"
        if entry.is_dir(follow_symlinks=False):
            return "dir"
        if entry.is_file(follow_symlinks=False):
            return "file"
    except OSError:  # e.g. a symlink loop a -> b -> a
        return "broken"
    return "special"


def _walk(
    root: Path,
    exclude: Path | None,
    descend: Callable[[tuple[str, ...]], bool],
    wanted: Callable[[tuple[str, ...], str], bool],
) -> tuple[list[tuple[tuple[str, ...], Entry]], int]:
    """Entries below ``root`` without following folder links: ``[(relative parts, Entry)]`` and the hidden count.

    ``descend(parts)`` says whether to enter the sub-folder ``parts``; ``wanted(parts, kind)``
    whether an entry gets a row. Folders are listed with ``os.scandir`` (one system call per
    folder; the tree is never held open).
    """
    found: list[tuple[tuple[str, ...], Entry]] = []
    hidden = 0
    stack: list[tuple[str, ...]] = [()]
    while stack:
        rel = stack.pop()
        folder = root.joinpath(*rel)
        try:
            with os.scandir(folder) as it:
                listed = list(it)
        except OSError as err:
            found.append((rel, Entry(folder, f"skipped: cannot list this folder ({err.strerror or err})")))
            continue
        for item in listed:
            parts = (*rel, item.name)
            kind = _classify(item)
            if item.name.startswith("."):
                hidden += wanted(parts, kind) or (kind == "dir" and descend(parts))
                continue
            path = folder / item.name
            if kind == "dir":
                if descend(parts) and not (exclude is not None and _same_or_inside(path, exclude)):
                    stack.append(parts)
                continue
            if not wanted(parts, kind):
                continue
            if kind == "file":
                found.append((parts, _file_entry(path)))
            else:
                found.append((parts, Entry(path, {"dirlink": _DIR_LINK, "broken": _BROKEN_LINK}.get(kind, _SPECIAL))))
    found.sort(key=lambda item: item[0])
    return found, hidden


def _same_or_inside(path: Path, folder: Path) -> bool:
    resolved = path.resolve()
    return resolved == folder or folder in resolved.parents


def _glob_match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether relative path ``parts`` matches the glob components ``pattern`` (``**`` = any folders)."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_match(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and _glob_match(pattern[1:], parts[1:])


def _glob_prefix(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether something below the folder ``parts`` can still match ``pattern`` (prunes the walk)."""
    if not parts:
        return bool(pattern)
    if not pattern:
        return False
    if pattern[0] == "**":
        return True
    return fnmatchcase(parts[0], pattern[0]) and _glob_prefix(pattern[1:], parts[1:])


def list_inputs(spec: str | Path, exclude: Path | None = None) -> Listing:
    """Entries named by ``spec`` (file, folder or glob), sorted, and the base folder output names are relative to.

    Folder links are not followed, hidden entries are counted, not listed, and the output
    folder ``exclude`` is left out when it lies inside the input.

    Raises:
        InputError: ``spec`` names nothing, or a folder / pattern with no entries.
    """
    text = os.path.expanduser(str(spec))
    path = Path(text)
    folder = exclude.resolve() if exclude is not None else None
    if path.is_file():
        return Listing([_file_entry(path)], path.parent)
    if path.is_dir():
        if folder is not None and _same_or_inside(path, folder):
            raise InputError(f"the input folder {path} is inside the output folder {exclude}")
        found, hidden = _walk(path, folder, lambda parts: True, lambda parts, kind: True)
        if not found:
            raise InputError(f"no files found in the folder {path}" + (f" ({hidden} hidden)" if hidden else ""))
        return Listing([entry for _, entry in found], path, hidden)
    if _GLOB_CHARS & set(text):
        parts = path.parts
        first = next(i for i, p in enumerate(parts) if _GLOB_CHARS & set(p))
        base = Path(*parts[:first]) if first else Path(".")
        pattern = tuple(parts[first:])
        found, hidden = [], 0
        if base.is_dir():
            found, hidden = _walk(
                base,
                folder,
                lambda rel: _glob_prefix(pattern, rel),
                lambda rel, kind: _glob_match(pattern, rel) or (kind == "dirlink" and _glob_prefix(pattern, rel)),
            )
        if not found:
            raise InputError(f"the pattern {text!r} matches no files")
        return Listing([entry for _, entry in found], base, hidden)
    if path.exists() or path.is_symlink():
        raise InputError(f"input {text} is not a regular file or folder")
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


# ------------------------------------------------------------------------------ output folder
class OutputFolder:
    """The output folder of one predict run, created, checked and locked before any work.

    ``open()`` (or ``with``) creates the folder, takes an exclusive lock on its
    :data:`LOCK_FILE` (released by the OS if the process dies, so no stale locks), and
    refuses a folder that already holds results (:data:`RESULTS_CSV`, :data:`RESULTS_JSONL`,
    :data:`SUMMARY_JSON`, a non-empty ``overlays/`` or ``masks/``) unless ``overwrite``; with
    ``overwrite`` the earlier results files and the overlays and masks the earlier
    ``results.jsonl`` lists are deleted first (nothing else in the folder is touched).

    Raises:
        OutputError: the path is a file, cannot be created, is not writable, is locked by
            another run, or already holds results and ``overwrite`` is False.
    """

    def __init__(self, folder: str | Path, overwrite: bool = False) -> None:
        self.path = Path(folder).expanduser()
        self.overwrite = overwrite
        self._fd: int | None = None

    def open(self) -> OutputFolder:
        path = self.path
        if path.exists() and not path.is_dir():
            raise OutputError(f"output={path} is a file, not a folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot create the output folder {path}: {err.strerror or err}") from None
        try:
            fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise OutputError(f"the output folder {path} is not writable: {err.strerror or err}") from None
        if not try_lock(fd, "the output folder"):
            holder = _read_pid(fd)
            os.close(fd)
            raise OutputError(
                f"another predict run{f' (pid {holder})' if holder else ''} is writing into {path}; "
                "wait for it to finish or choose another output"
            )
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._check_results()
        except OSError as err:
            self.close()
            raise OutputError(f"the output folder {path} is not writable: {err.strerror or err}") from None
        except BaseException:
            self.close()
            raise
        return self

    def _existing(self) -> list[str]:
        names = [n for n in (RESULTS_CSV, RESULTS_JSONL, SUMMARY_JSON) if (self.path / n).exists()]
        folders = [self.path / n for n in (OVERLAYS, MASKS)]
        return names + [f"{f.name}/" for f in folders if f.is_dir() and any(f.iterdir())]

    def _check_results(self) -> None:
        existing = self._existing()
        if not existing:
            return
        if not self.overwrite:
            raise OutputError(
                f"the output folder {self.path} already holds predict results ({', '.join(existing)}); "
                "set overwrite=true to replace them, or choose another output"
            )
        self._remove_previous()

    def _remove_previous(self) -> None:
        """Delete the earlier run's results files and the overlays/masks its results.jsonl lists."""
        jsonl = self.path / RESULTS_JSONL
        kept = 0
        if jsonl.is_file():
            # Only real sub-folders: an overlays/ that is a link to elsewhere is never emptied.
            roots = [(self.path / d).resolve() for d in (OVERLAYS, MASKS) if not (self.path / d).is_symlink()]
            for line in jsonl.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                for key in ("overlay", "mask"):
                    name = row.get(key) if isinstance(row, dict) else None
                    if not isinstance(name, str):
                        continue
                    target = (self.path / name).resolve()
                    # Only files inside overlays/ or masks/ of this folder, whatever the line says.
                    if any(root in target.parents for root in roots) and target.is_file():
                        target.unlink()
        for name in (RESULTS_CSV, RESULTS_JSONL, SUMMARY_JSON):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        for sub in (OVERLAYS, MASKS):
            folder = self.path / sub
            if folder.is_dir():
                for directory in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()),
                                        key=lambda p: len(p.parts), reverse=True):
                    with contextlib.suppress(OSError):
                        directory.rmdir()  # only empty ones
                with contextlib.suppress(OSError):
                    folder.rmdir()
                if folder.is_dir():
                    kept += sum(1 for p in folder.rglob("*") if p.is_file())
        if kept:
            log.warning("overwrite: %d file(s) in %s/{overlays,masks} were not listed by the earlier results; kept",
                        kept, self.path)

    def close(self) -> None:
        """Release the lock (the lock file stays)."""
        if self._fd is not None:
            os.close(self._fd)  # closing releases flock / msvcrt locks
            self._fd = None

    def __enter__(self) -> OutputFolder:
        return self.open() if self._fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode(errors="replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


# ------------------------------------------------------------------------------ results
def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: non-finite floats are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ResultWriter:
    """Appends rows to ``results.csv`` and ``results.jsonl`` as they come (flushed per batch)."""

    def __init__(self, folder: Path) -> None:
        self.csv_path = folder / RESULTS_CSV
        self.jsonl_path = folder / RESULTS_JSONL
        self._csv_file: IO[str] = open(self.csv_path, "x", newline="", encoding="utf-8")
        self._jsonl: IO[str] = open(self.jsonl_path, "x", encoding="utf-8")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=RESULT_FIELDS)
        self._csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        record = {k: _finite_or_none(row.get(k)) for k in RESULT_FIELDS}
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
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


def _error_row(path: Path, error: str, status: str = "error", size: tuple[int, int] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"path": str(path), "error": error, "status": status}
    if size is not None:
        row["width"], row["height"] = size
    return row


def _non_finite(result: PredictionResult) -> str | None:
    """Why ``result`` cannot be labelled (a NaN/Inf score or map), or None."""
    if not math.isfinite(result.score):
        return f"the model returned a non-finite image score ({result.score}); not labelled"
    if not np.isfinite(result.anomaly_map).all():
        bad = int(result.anomaly_map.size - np.count_nonzero(np.isfinite(result.anomaly_map)))
        return f"the model returned an anomaly map with {bad} non-finite pixel(s); not labelled"
    return None


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
        "status": "ok",
    }


# ------------------------------------------------------------------------------ running
@dataclass
class _Pending:
    """One listed entry on its way to a row: already a row, or an image waiting for its batch."""

    path: Path
    row: dict[str, Any] | None = None
    image: Image.Image | None = None


def _batches(entries: list[Entry], batch_size: int, model: FAPM) -> Iterator[list[_Pending]]:
    """Entries in order, grouped so that each group holds at most ``batch_size`` loaded images.

    Entries that are not scored (skipped or unreadable) travel in the group of the next image
    so that rows are written in listing order.
    """
    group: list[_Pending] = []
    n_images = 0
    for entry in entries:
        if entry.skip is not None:
            group.append(_Pending(entry.path, row=_error_row(entry.path, entry.skip, "skipped")))
            continue
        try:
            image = open_image(entry.path, model.min_side, model.max_pixels)
        except InputError as err:
            group.append(_Pending(entry.path, row=_error_row(entry.path, str(err))))
            continue
        group.append(_Pending(entry.path, image=image))
        n_images += 1
        if n_images == batch_size:
            yield group
            group, n_images = [], 0
    if group:
        yield group


def predict_files(
    model: FAPM,
    input: str | Path,
    output: str | Path | OutputFolder,
    batch_size: int = 8,
    write_overlays: bool = True,
    write_masks: bool = True,
    alpha: float = 0.5,
    progress: bool = True,
    overwrite: bool = False,
) -> PredictSummary:
    """Score every entry of ``input`` with ``model`` and write the results into ``output``.

    Args:
        model: the loaded model (its thresholds and size limits apply).
        input: an image file, a folder or a glob pattern.
        output: folder for the results files, ``overlays/`` and ``masks/``, or an already
            open :class:`OutputFolder` (the predict command opens it before loading the model).
        batch_size: images scored together (and held in memory at once).
        write_overlays: write heat-map overlays.
        write_masks: write binary masks (255 = defect).
        alpha: heat-map weight in the overlays.
        progress: show a tqdm progress bar.
        overwrite: replace the results of an earlier run in ``output`` (a path ``output`` only).

    Raises:
        OutputError: ``output`` cannot be used (see :class:`OutputFolder`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(output, OutputFolder):
        with contextlib.nullcontext(output) if output._fd is not None else output as folder:
            return _run(model, input, folder.path, batch_size, write_overlays, write_masks, alpha, progress)
    with OutputFolder(output, overwrite) as folder:
        return _run(model, input, folder.path, batch_size, write_overlays, write_masks, alpha, progress)


def _run(model: FAPM, input: str | Path, out: Path, batch_size: int, write_overlays: bool, write_masks: bool,
         alpha: float, progress: bool) -> PredictSummary:
    summary = PredictSummary(str(input), str(out), image_threshold=model.image_threshold,
                             pixel_threshold=model.pixel_threshold, not_inspected=model.preprocess.border_share(),
                             verified=bool(getattr(model, "verified", False)))
    if summary.not_inspected > 0:
        log.warning("%s", model.preprocess.border_note())
    writer = ResultWriter(out)
    summary.files = {"results_csv": str(writer.csv_path), "results_jsonl": str(writer.jsonl_path)}
    start = time.perf_counter()
    try:
        try:
            listing = list_inputs(input, exclude=out)
        except InputError as err:
            summary.message = str(err)
            listing = Listing([], Path("."))
        summary.hidden = listing.hidden
        used: set[str] = set()
        bar = tqdm(total=len(listing.entries), desc="predict", unit="img", disable=not progress or not listing.entries)
        for group in _batches(listing.entries, batch_size, model):
            loaded = [item for item in group if item.image is not None]
            try:
                results = model.predict_pil([item.image for item in loaded], [str(item.path) for item in loaded])
            except RuntimeError as err:  # e.g. out of memory: this batch fails, the run goes on
                results = []
                for item in loaded:
                    item.row = _error_row(item.path, f"scoring failed: {err}")
            for item, result in zip(loaded, results):
                problem = _non_finite(result)
                if problem is not None:
                    item.row = _error_row(item.path, problem, size=result.size)
                    continue
                name = output_name(item.path, listing.base, used)
                overlay_name = mask_name = None
                if write_overlays:
                    overlay_name = str(Path(OVERLAYS) / name)
                    shown = result.normalised_map if result.normalised_map is not None else _spread(result.anomaly_map)
                    _save_png(overlay(item.image, shown, alpha), out / overlay_name)
                if write_masks and result.mask is not None:
                    mask_name = str(Path(MASKS) / name)
                    _save_png(mask_image(result.mask), out / mask_name)
                item.row = _result_row(result, overlay_name, mask_name)
            for item in group:  # listing order, errors included
                assert item.row is not None
                writer.write(item.row)
                status = item.row["status"]
                summary.scored += status == "ok"
                summary.failed += status == "error"
                summary.skipped += status == "skipped"
                summary.defective += status == "ok" and bool(item.row["label"])
                item.image = None
            bar.update(len(group))
            writer.flush()
        bar.close()
    except BaseException as exc:  # Ctrl-C, disk full...: the rows so far stay, the summary says why
        summary.partial = True
        summary.message = (
            f"PARTIAL OUTPUT: interrupted after {summary.scored + summary.failed + summary.skipped} row(s) "
            f"of {len(listing.entries) if 'listing' in locals() else '?'}: {exc!r}"
        )
        with contextlib.suppress(Exception):  # never hide the cause behind a second failure
            writer.close()
            _finish(out, summary, start, writer.csv_path)
        raise
    writer.close()
    _finish(out, summary, start, writer.csv_path)
    return summary


def _finish(out: Path, summary: PredictSummary, start: float, csv_path: Path) -> None:
    summary.seconds = time.perf_counter() - start
    if summary.scored == 0 and summary.message is None:
        summary.message = (
            f"none of the {summary.failed + summary.skipped} input file(s) could be scored (see {csv_path})"
        )
    _write_summary(out / SUMMARY_JSON, summary)


def _write_summary(path: Path, summary: PredictSummary) -> None:
    """``summary.json``, atomically (temporary file + rename), with null for any non-finite number."""
    data = {k: _finite_or_none(v) for k, v in {**asdict(summary), "exit_code": summary.exit_code}.items()}
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _spread(values: "np.ndarray") -> "np.ndarray":
    """A map scaled to [0, 1] by its own range (overlays of a model without a pixel threshold)."""
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else values * 0.0


def _save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
