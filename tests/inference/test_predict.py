"""The predict command: results files, overlays and masks, and every kind of bad input."""

import csv
import json
import runpy
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fapm.inference import FAPM
from fapm.inference.predict import RESULT_FIELDS, list_sources, predict_files

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
    "bad_notes.txt": "Cannot read image file",
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
    for name in SCORED:
        row = by_json[name]
        assert row["error"] is None, (name, row["error"])
        assert isinstance(row["label"], bool) and by_csv[name]["label"] in ("0", "1")
        assert 0.0 <= row["normalised_score"] <= 1.0
        assert row["label"] == (row["normalised_score"] >= 0.5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == len(SCORED) and summary["failed"] == len(EXPECTED_ERRORS)
    assert summary["exit_code"] == 0


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


def test_empty_folder_and_missing_input(model_path: Path, tmp_path: Path) -> None:
    model = FAPM.load(model_path)
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
    model = FAPM.load(model_path)
    summary = predict_files(model, mixed_folder / "c_wide.png", tmp_path / "s", progress=False, write_masks=False)
    assert summary.scored == 1 and summary.exit_code == 0
    assert (tmp_path / "s" / "overlays" / "c_wide.png").is_file() and not (tmp_path / "s" / "masks").exists()


def test_sources_skip_hidden_files_and_the_output_folder(mixed_folder: Path) -> None:
    files, base = list_sources(mixed_folder, exclude=mixed_folder / "sub")
    names = {p.name for p in files}
    assert ".hidden.png" not in names and "b_good.jpg" not in names and "a_good.png" in names
    assert base == mixed_folder
    recursive, _ = list_sources(f"{mixed_folder}/**/*.jpg")
    assert [p.name for p in recursive] == ["b_good.jpg"]


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
