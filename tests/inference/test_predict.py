"""The predict command: results files, overlays and masks, and every kind of bad input."""

import csv
import json
import math
import os
import runpy
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fapm.inference import FAPM
from fapm.inference.predict import RESULT_FIELDS, predict_files
from fapm.outputs import AnomalyOutput

ROOT = Path(__file__).resolve().parents[2]


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width × height`` with (almost) no pixel data: costs nothing to write."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def model(model_path: Path) -> FAPM:
    """One loaded model shared by the tests (tests that patch it use monkeypatch, undone after each)."""
    return FAPM.load(model_path)


@pytest.fixture(scope="module")
def mixed_folder(demo_images: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good demo images, odd-but-valid images and one file of each bad kind."""
    folder = tmp_path_factory.mktemp("mixed")
    rgb = Image.open(demo_images[-1]).convert("RGB")
    rgb.save(folder / "a_good.png")
    (folder / "sub").mkdir()
    Image.open(demo_images[0]).convert("RGB").save(folder / "sub" / "b_good.jpg", quality=95)
    rgb.resize((90, 50)).save(folder / "c_wide.png")  # non-square: maps at 90x50
    Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257).save(folder / "d_grey16.png")
    rgb.convert("L").save(folder / "e_grey.png")
    rgb.convert("RGBA").save(folder / "f_rgba.png")
    # bad ones
    (folder / "bad_text.png").write_text("this is not an image")
    (folder / "bad_notes.txt").write_text("notes")
    (folder / "bad_empty.png").write_bytes(b"")
    _png_header_only(folder / "bad_zero_size.png", 0, 0)  # a 0x0 image
    data = (folder / "a_good.png").read_bytes()
    (folder / "bad_truncated.png").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (1, 1)).save(folder / "bad_one_pixel.png")
    _png_header_only(folder / "bad_huge.png", 10_000, 8_000)  # 80 MP > max_pixels (50 MP)
    _png_header_only(folder / "bad_bomb.png", 100_000, 100_000)  # PIL's own bomb guard
    (folder / ".hidden.png").write_text("skipped")
    return folder


EXPECTED_ERRORS = {
    "bad_text.png": "Cannot read image file",
    "bad_notes.txt": "skipped: not an image file type (.txt",
    "bad_empty.png": "empty file",
    "bad_zero_size.png": "Cannot read image file",
    "bad_truncated.png": "Cannot read image file",
    "bad_one_pixel.png": "too small",
    "bad_huge.png": "exceeds the limit of 50000000 pixels",
    "bad_bomb.png": "decompression bomb",
}
SCORED = ("a_good.png", "b_good.jpg", "c_wide.png", "d_grey16.png", "e_grey.png", "f_rgba.png")


@pytest.fixture(scope="module")
def cli_run(model_path: Path, mixed_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("predicted")
    cmd = [sys.executable, "predict.py", f"ckpt_path={model_path}", f"input={mixed_folder}", f"output={out}",
           "batch_size=2", "device=cpu", "progress=false", f"hydra.run.dir={out / 'hydra'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return proc, out


def _rows(out: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    with open(out / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == RESULT_FIELDS
        by_csv = {Path(r["path"]).name: r for r in reader}
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(tuple(line) == RESULT_FIELDS for line in lines)
    return by_csv, {Path(r["path"]).name: r for r in lines}


def test_cli_scores_good_files_and_reports_each_bad_one(cli_run, mixed_folder: Path) -> None:
    proc, out = cli_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_csv, by_json = _rows(out)
    assert set(by_csv) == set(SCORED) | set(EXPECTED_ERRORS)  # hidden file skipped, every other file listed
    for name, message in EXPECTED_ERRORS.items():
        assert message in by_json[name]["error"], (name, by_json[name]["error"])
        assert by_json[name]["score"] is None and by_csv[name]["score"] == ""
        assert by_json[name]["status"] == ("skipped" if name.endswith(".txt") else "error")
    for name in SCORED:
        row = by_json[name]
        assert row["error"] is None and row["status"] == "ok", (name, row["error"])
        assert isinstance(row["label"], bool) and by_csv[name]["label"] in ("0", "1")
        assert 0.0 <= row["normalised_score"] <= 1.0
        assert row["label"] == (row["normalised_score"] >= 0.5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == len(SCORED) and summary["failed"] + summary["skipped"] == len(EXPECTED_ERRORS)
    assert summary["skipped"] == 1 and summary["hidden"] == 1 and summary["exit_code"] == 0
    assert summary["not_inspected"] == 0.0  # the model's crop (64 of 64) hides nothing


def test_overlays_and_masks_at_the_original_size(cli_run, mixed_folder: Path) -> None:
    _, out = cli_run
    _, by_json = _rows(out)
    for name in SCORED:
        row = by_json[name]
        original = Image.open(row["path"]).size
        overlay, mask = Image.open(out / row["overlay"]), Image.open(out / row["mask"])
        assert overlay.size == mask.size == original == (row["width"], row["height"]), name
        assert overlay.mode == "RGB" and mask.mode == "L"
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    assert by_json["c_wide.png"]["width"] == 90 and by_json["c_wide.png"]["height"] == 50
    assert by_json["b_good.jpg"]["overlay"] == str(Path("overlays") / "sub" / "b_good.png")


def test_nothing_scored_gives_a_non_zero_exit_code(model_path: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "only_bad").mkdir()
    (tmp_path / "only_bad" / "x.png").write_bytes(b"")
    # The real entry point, in this process (a second interpreter would cost ~10 s of imports).
    argv = ["predict.py", f"ckpt_path={model_path}", f"input={tmp_path / 'only_bad'}", f"output={tmp_path / 'out'}",
            "progress=false", f"hydra.run.dir={tmp_path / 'hydra'}"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "predict.py"), run_name="__main__")
    assert exit_info.value.code == 1
    assert "none of the 1 input file(s) could be scored" in capsys.readouterr().out
    _, by_json = _rows(tmp_path / "out")
    assert "empty file" in by_json["x.png"]["error"]


def test_empty_folder_and_missing_input(model: FAPM, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    summary = predict_files(model, tmp_path / "empty", tmp_path / "o1", progress=False)
    assert summary.exit_code == 1 and "no files found in the folder" in summary.message
    assert (tmp_path / "o1" / "results.csv").read_text().strip() == ",".join(RESULT_FIELDS)
    summary = predict_files(model, tmp_path / "nowhere", tmp_path / "o2", progress=False)
    assert summary.exit_code == 1 and "input not found" in summary.message
    summary = predict_files(model, str(tmp_path / "empty" / "*.png"), tmp_path / "o3", progress=False)
    assert summary.exit_code == 1 and "matches no files" in summary.message


def test_glob_single_file_and_limits(model_path: Path, mixed_folder: Path, tmp_path: Path) -> None:
    model = FAPM.load(model_path, max_pixels=3000)
    summary = predict_files(model, str(mixed_folder / "*_good.*"), tmp_path / "g", batch_size=1, progress=False,
                            write_overlays=False)
    assert summary.scored == 0 and summary.failed == 1  # a_good.png (64x64 = 4096 px) is over 3000
    assert "exceeds the limit of 3000 pixels" in (tmp_path / "g" / "results.jsonl").read_text()
    model = FAPM.load(model_path)  # the default limits again
    summary = predict_files(model, mixed_folder / "c_wide.png", tmp_path / "s", progress=False, write_masks=False)
    assert summary.scored == 1 and summary.exit_code == 0
    assert (tmp_path / "s" / "overlays" / "c_wide.png").is_file() and not (tmp_path / "s" / "masks").exists()


def test_sources_skip_hidden_files_and_the_output_folder(mixed_folder: Path) -> None:
    from fapm.inference.predict import list_inputs

    listing = list_inputs(mixed_folder, exclude=mixed_folder / "sub")
    names = {p.name for p in listing.images}
    assert ".hidden.png" not in names and "b_good.jpg" not in names and "a_good.png" in names
    assert listing.base == mixed_folder and listing.hidden == 1
    recursive = list_inputs(f"{mixed_folder}/**/*.jpg")
    assert [p.name for p in recursive.images] == ["b_good.jpg"]


def test_overlay_blends_heatmap_over_the_image() -> None:
    from fapm.inference.visualize import heatmap, mask_image, overlay

    image = Image.fromarray(np.full((5, 7, 3), 200, np.uint8))
    values = np.linspace(0, 1, 35, dtype=np.float32).reshape(5, 7)
    assert np.array_equal(np.asarray(overlay(image, values, alpha=0.0)), np.asarray(image))
    assert np.array_equal(np.asarray(overlay(image, values, alpha=1.0)), heatmap(values))
    colours = heatmap(np.array([[0.0, 1.0]]))
    assert colours[0, 0, 2] > colours[0, 0, 0] and colours[0, 1, 0] > colours[0, 1, 2]  # blue → red
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, values.T)
    assert np.asarray(mask_image(values > 0.5)).max() == 255


# ------------------------------------------------------------------------------ failing closed
def _strict_rows(out: Path) -> list[dict]:
    """``results.jsonl`` rows in file order, parsed as strict JSON (a bare NaN / Infinity fails)."""

    def refuse(name: str) -> None:
        raise AssertionError(f"non-JSON constant {name} written")

    return [json.loads(line, parse_constant=refuse) for line in (out / "results.jsonl").read_text().splitlines()]


def _strict_summary(out: Path) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-JSON constant {name} written")

    return json.loads((out / "summary.json").read_text(), parse_constant=refuse)


def _copy(images: list[Path], folder: Path, names: list[str]) -> Path:
    for source, name in zip(images, names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(source.read_bytes())
    return folder


@pytest.mark.parametrize(
    ("key", "value"), [("threshold", "nan"), ("threshold", float("inf")), ("pixel_threshold", "-inf"),
                       ("pixel_threshold", float("nan"))],
)
def test_non_finite_thresholds_are_refused_naming_the_key(model_path: Path, key: str, value) -> None:
    from fapm.inference.thresholds import ThresholdError

    with pytest.raises(ThresholdError, match=rf"^{key} must be auto, quantile, f1 or a number, got .*(nan|inf)"):
        FAPM.load(model_path, **{key: value})


def test_non_finite_scores_are_error_rows_never_good(model: FAPM, demo_images: list[Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN or Inf image score, or NaN map pixels, give an error row: no label, no bare NaN in the files."""
    real = model.score

    def poisoned(images: torch.Tensor) -> AnomalyOutput:
        out = real(images)
        scores, maps = out.image_scores.clone(), out.anomaly_maps.clone()
        scores[0] = float("nan")
        if len(scores) > 2:
            scores[1] = float("inf")
            maps[2, 3:5, 3:5] = float("nan")
        return AnomalyOutput(scores, maps)

    monkeypatch.setattr(model, "score", poisoned)
    folder = _copy(demo_images, tmp_path / "in", ["a.png", "b.png", "c.png", "d.png"])
    summary = predict_files(model, folder, tmp_path / "out", batch_size=4, progress=False)
    rows = _strict_rows(tmp_path / "out")
    assert [r["status"] for r in rows] == ["error", "error", "error", "ok"]
    assert "non-finite image score (nan)" in rows[0]["error"] and "non-finite image score (inf)" in rows[1]["error"]
    assert "4 non-finite pixel(s)" in rows[2]["error"]
    for row in rows[:3]:
        assert row["label"] is None and row["score"] is None and row["overlay"] is None
    assert rows[3]["label"] in (True, False) and math.isfinite(rows[3]["score"])
    assert summary.failed == 3 and summary.scored == 1 and _strict_summary(tmp_path / "out")["failed"] == 3
    # The Python API fails closed too: a NaN score is "defective" and NaN pixels are in the mask.
    result = model.predict(demo_images[0])
    assert math.isnan(result.score) and result.label is True
    results = model.predict(demo_images[:3])
    assert results[2].mask[np.isnan(results[2].anomaly_map)].all()


def _run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """The real entry point in this process (a second interpreter costs ~10 s of imports)."""
    monkeypatch.setattr(sys, "argv", ["predict.py", *argv])
    code = 0
    try:
        runpy.run_path(str(ROOT / "predict.py"), run_name="__main__")
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_setup_errors_are_one_line_and_come_before_any_work(
    tmp_path: Path, demo_images: list[Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Bad settings, device or output: exit code 2, one line naming the key or path, nothing written.

    The model file does not exist, so each error is found before the model is even loaded.
    """
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU-only machine
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    missing_model = tmp_path / "no_model.pt"
    cases = {
        "threshold=nan": "threshold must be auto, quantile, f1 or a number, got nan",
        "pixel_threshold=inf": "pixel_threshold must be auto, quantile, f1 or a number, got inf",
        "batch_size=0": "batch_size must be an integer >= 1, got 0",
        "overwrite=maybe": "overwrite must be true or false, got 'maybe'",
        "device=cuda": "device='cuda' but CUDA is not available on this machine",
        "device=gpu9": "device='gpu9' is not a device",
        f"output={a_file}": f"output={a_file} is a file, not a folder",
    }
    for i, (override, message) in enumerate(cases.items()):
        out = tmp_path / f"out{i}"
        argv = [f"ckpt_path={missing_model}", f"input={demo_images[0]}", f"output={out}", "progress=false",
                f"hydra.run.dir={tmp_path / f'hydra{i}'}", override]
        code, stdout, stderr = _run_cli(argv, monkeypatch, capsys)
        assert code == 2, (override, stdout, stderr[-2000:])
        assert f"predict: error: {message}" in stderr and "Traceback" not in stderr, (override, stderr[-2000:])
        assert not (out / "results.csv").exists()
    code, _, stderr = _run_cli([f"ckpt_path={missing_model}", f"input={demo_images[0]}", f"output={tmp_path / 'm'}",
                                f"hydra.run.dir={tmp_path / 'hydra_m'}"], monkeypatch, capsys)
    assert code == 2 and str(missing_model) in stderr and "Traceback" not in stderr
    no_model = [f"input={demo_images[0]}", f"hydra.run.dir={tmp_path / 'hydra_n'}"]
    code, _, stderr = _run_cli(no_model, monkeypatch, capsys)
    assert code == 2 and "predict: error: ckpt_path is required" in stderr and "Traceback" not in stderr


def test_unusable_output_folder_is_one_clear_error(model: FAPM, demo_images: list[Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(Exception, match=f"output={a_file} is a file, not a folder") as err:
        predict_files(model, demo_images[0], a_file, progress=False)
    assert type(err.value).__name__ == "OutputError" and isinstance(err.value, ValueError)
    with pytest.raises(ValueError, match=f"cannot create the output folder {a_file / 'sub'}: Not a directory"):
        predict_files(model, demo_images[0], a_file / "sub", progress=False)
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real_open = os.open

    def denied(path, *args, **kwargs):  # root ignores file modes, so the refusal is simulated
        if str(path).startswith(str(read_only)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(ValueError, match=f"the output folder {read_only} is not writable: Permission denied"):
        predict_files(model, demo_images[0], read_only, progress=False)
    assert list(read_only.iterdir()) == []


# ------------------------------------------------------------------------------ never clobbering
def test_output_with_results_is_refused_unless_overwrite(model: FAPM, demo_images: list[Path],
                                                         tmp_path: Path) -> None:
    first = _copy(demo_images, tmp_path / "first", ["a.png", "sub/b.png"])
    second = _copy(demo_images[2:], tmp_path / "second", ["c.png"])
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "mine.txt").write_text("the user's own file")
    predict_files(model, first, out, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"already holds predict results \(results.csv, .*set overwrite=true"):
        predict_files(model, second, out, progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    summary = predict_files(model, second, out, progress=False, overwrite=True)
    assert summary.scored == 1 and [Path(r["path"]).name for r in _strict_rows(out)] == ["c.png"]
    pictures = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert pictures == ["masks/c.png", "overlays/c.png"]  # the first run's overlays and masks are gone
    assert (out / "notes" / "mine.txt").read_text() == "the user's own file"


@pytest.mark.skipif(os.name == "nt", reason="the helper process locks with fcntl")
def test_a_second_run_into_a_folder_in_use_fails_at_once(model: FAPM, demo_images: list[Path],
                                                         tmp_path: Path) -> None:
    """Another process holds the folder's lock (as a running predict does): this run refuses, writes nothing."""
    lock_file = ".fapm-predict.lock"  # the protocol every predict run follows (fapm.inference.predict.LOCK_FILE)
    out = tmp_path / "out"
    out.mkdir()
    hold = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('locked', flush=True); "
            "time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out / lock_file)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"another predict run \(pid {holder.pid}\) is writing into {out}"):
            predict_files(model, demo_images[0], out, progress=False)
        assert sorted(p.name for p in out.iterdir()) == [lock_file]
    finally:
        holder.kill()
        holder.wait()
    # The holder died without cleaning up: the OS released its lock, the folder is usable.
    assert predict_files(model, demo_images[0], out, progress=False).scored == 1
    # and a finished run leaves the folder's lock free: another process takes it at once
    import fcntl

    fd = os.open(out / lock_file, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if still held
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ listing
@pytest.mark.skipif(os.name == "nt", reason="symbolic links and FIFOs")
def test_symlinked_folders_are_not_followed(model: FAPM, demo_images: list[Path], tmp_path: Path) -> None:
    """`ln -s . loop` and `ln -s .. up` neither multiply images nor hang; each link gets a row saying why."""
    root = _copy(demo_images, tmp_path / "in", ["a.png", "sub/b.png"])
    (root / "loop").symlink_to(".")
    (root / "sub" / "up").symlink_to("..")
    (root / "link.png").symlink_to(root / "a.png")  # a link to a file is scored
    (root / "dangling.png").symlink_to(root / "nowhere.png")
    os.mkfifo(root / "pipe.png")  # opening it would block forever
    for i, spec in enumerate([root, f"{root}/**/*.png"]):
        start = time.perf_counter()
        predict_files(model, spec, tmp_path / f"out{i}", write_overlays=False, write_masks=False, progress=False)
        assert time.perf_counter() - start < 60
        rows = {Path(r["path"]).relative_to(root).as_posix(): r for r in _strict_rows(tmp_path / f"out{i}")}
        assert sorted(k for k, r in rows.items() if r["error"] is None) == ["a.png", "link.png", "sub/b.png"], spec
        for link in ("loop", "sub/up"):
            assert rows[link].get("status") == "skipped" and "symbolic link to a folder" in rows[link]["error"]
        assert "broken symbolic link" in rows["dangling.png"]["error"]
        assert "not a regular file" in rows["pipe.png"]["error"]
        assert len(rows) == 7


def test_rows_follow_the_listing_order_errors_included(model: FAPM, demo_images: list[Path],
                                                       tmp_path: Path) -> None:
    folder = _copy(demo_images, tmp_path / "in", ["a.png", "d.png", "f/g.png", "h.png"])
    (folder / "b.png").write_text("not an image")
    (folder / "c.txt").write_text("notes")
    (folder / "e.png").write_bytes(b"")
    (folder / ".x.png").write_bytes(demo_images[0].read_bytes())
    summary = predict_files(model, folder, tmp_path / "out", batch_size=2, progress=False,
                            write_overlays=False)
    rows = _strict_rows(tmp_path / "out")
    assert [Path(r["path"]).relative_to(folder).as_posix() for r in rows] == [
        "a.png", "b.png", "c.txt", "d.png", "e.png", "f/g.png", "h.png"]
    assert [r["status"] for r in rows] == ["ok", "error", "skipped", "ok", "error", "ok", "ok"]
    with open(tmp_path / "out" / "results.csv", newline="") as handle:
        assert [r["path"] for r in csv.DictReader(handle)] == [r["path"] for r in rows]
    assert (summary.scored, summary.failed, summary.skipped, summary.hidden) == (4, 2, 1, 1)


def test_an_interrupted_run_keeps_its_rows_and_says_why(model: FAPM, demo_images: list[Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the second batch: the first batch's rows stay, summary.json says where it stopped, no lock left."""
    folder = _copy(demo_images, tmp_path / "in", ["a.png", "b.png", "c.png"])
    real = model.predict_pil
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "predict_pil", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict_files(model, folder, tmp_path / "out", batch_size=2, progress=False)
    assert [Path(r["path"]).name for r in _strict_rows(tmp_path / "out")] == ["a.png", "b.png"]
    summary = _strict_summary(tmp_path / "out")
    assert summary["scored"] == 2 and summary["partial"] is True
    assert summary["message"] == "PARTIAL OUTPUT: interrupted after 2 row(s) of 3: KeyboardInterrupt()"
    monkeypatch.setattr(model, "predict_pil", real)
    assert predict_files(model, folder, tmp_path / "out", progress=False, overwrite=True).scored == 3


def test_sigterm_marks_the_output_partial(model: FAPM, demo_images: list[Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Failed before: SIGTERM left 5 of 52 rows and nothing saying the output was partial."""
    import os
    import signal

    from fapm import signals

    folder = _copy(demo_images, tmp_path / "in", ["a.png", "b.png", "c.png"])
    real = model.predict_pil
    calls = []

    def terminated(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "predict_pil", terminated)
    with signals.sigterm_as_interrupt(), pytest.raises(signals.Terminated):
        predict_files(model, folder, tmp_path / "out", batch_size=2, progress=False)
    summary = _strict_summary(tmp_path / "out")
    assert summary["partial"] is True and summary["scored"] == 2
    assert summary["message"].startswith("PARTIAL OUTPUT: interrupted after 2 row(s) of 3: Terminated(")
    assert signals.interrupt_status() == 143
