"""Synthetic demo dataset: determinism, exact masks, visible defects, idempotent and concurrent writing."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fapm.data.demo import (
    DEMO_CATEGORIES,
    DEMO_DEFECT_TYPES,
    MARKER_NAME,
    generate_demo,
    lock_path,
    main,
    render_sample,
)
from fapm.data.errors import DataError

SMALL = {"n_train": 2, "n_test_good": 2, "n_test_defect_per_type": 2, "size": 128}
TINY = {"n_train": 1, "n_test_good": 1, "n_test_defect_per_type": 1, "size": 64}
SRC = Path(__file__).resolve().parents[2] / "src"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo"), seed=0, **SMALL)


def test_categories_and_defect_types() -> None:
    assert len(DEMO_CATEGORIES) >= 2 and {"bracket", "weave"} <= set(DEMO_CATEGORIES)
    assert all(len(DEMO_DEFECT_TYPES[c]) >= 3 for c in DEMO_CATEGORIES)


def test_layout_and_image_format(small_demo: Path) -> None:
    for category in DEMO_CATEGORIES:
        cat = small_demo / category
        assert len(list((cat / "train" / "good").glob("*.png"))) == 2
        assert len(list((cat / "test" / "good").glob("*.png"))) == 2
        assert not (cat / "ground_truth" / "good").exists()
        assert sorted(p.name for p in (cat / "ground_truth").iterdir()) == sorted(DEMO_DEFECT_TYPES[category])
        for defect in DEMO_DEFECT_TYPES[category]:
            for image in sorted((cat / "test" / defect).glob("*.png")):
                img = Image.open(image)
                assert img.mode == "RGB" and img.size == (128, 128)
                mask = np.asarray(Image.open(cat / "ground_truth" / defect / f"{image.stem}_mask.png"))
                assert mask.shape == (128, 128) and set(np.unique(mask)) == {0, 255}


def test_same_seed_is_byte_identical_and_other_seed_differs(small_demo: Path, tmp_path: Path) -> None:
    again = generate_demo(tmp_path / "again", seed=0, **SMALL)
    assert _files(again) == _files(small_demo)
    other = _files(generate_demo(tmp_path / "other", categories=["weave"], seed=1, **SMALL))
    reference = _files(small_demo)
    same = [k for k, v in other.items() if k.endswith(".png") and reference[k] == v]
    assert not same


@pytest.mark.parametrize("category", DEMO_CATEGORIES)
def test_defects_change_only_masked_pixels(category: str) -> None:
    for defect in DEMO_DEFECT_TYPES[category]:
        for index in range(2):
            sample = render_sample(category, 0, "test", defect, index, size=128)
            assert sample.mask.any(), (defect, index)
            changed = sample.image != sample.clean
            assert not changed[~sample.mask].any()  # outside the mask: identical to the clean scene
            diff = np.abs(sample.image.astype(int) - sample.clean.astype(int)).max(axis=2)
            assert diff[sample.mask].mean() > 20, (defect, index)
            margin = int(0.08 * 128)  # defects survive the 224/256 centre crop
            inner = np.zeros_like(sample.mask)
            inner[margin:-margin, margin:-margin] = True
            assert not (sample.mask & ~inner).any()


def test_good_samples_have_empty_masks() -> None:
    for category in DEMO_CATEGORIES:
        sample = render_sample(category, 0, "test", "good", 0, size=128)
        assert not sample.mask.any() and np.array_equal(sample.image, sample.clean)


def test_good_images_vary_but_stay_aligned() -> None:
    # Natural variation between normal images, yet the same object layout (per-region memory works).
    a = render_sample("bracket", 0, "train", "good", 0, size=128).image.astype(float)
    b = render_sample("bracket", 0, "train", "good", 1, size=128).image.astype(float)
    assert np.abs(a - b).mean() > 1
    assert np.corrcoef(a.mean(2).ravel(), b.mean(2).ravel())[0, 1] > 0.7


def test_idempotent_and_safe(tmp_path: Path) -> None:
    root = generate_demo(tmp_path / "d", categories=["bracket"], **SMALL)
    marker = root / "bracket" / MARKER_NAME
    stamp = marker.stat().st_mtime_ns
    generate_demo(root, categories=["bracket"], **SMALL)
    assert marker.stat().st_mtime_ns == stamp  # skipped: marker matched
    generate_demo(root, categories=["bracket"], seed=5, **SMALL)
    assert '"seed": 5' in marker.read_text()
    # No temp/stale folders left; the (empty) lock file stays.
    assert sorted(p.name for p in root.iterdir()) == sorted(["bracket", lock_path(root, "bracket").name])
    (root / "weave").mkdir()
    with pytest.raises(DataError, match=re.escape(str(root / "weave"))):
        generate_demo(root, categories=["weave"], **SMALL)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--root", str(tmp_path / "cli"), "--seed", "2", "--categories", "weave",
          "--n-train", "1", "--n-test-good", "1", "--n-test-defect-per-type", "1", "--size", "96"])  # fmt: skip
    assert len(list((tmp_path / "cli" / "weave" / "test").rglob("*.png"))) == 1 + len(DEMO_DEFECT_TYPES["weave"])
    assert "weave" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# Several processes at once (parallel sweep jobs), crashes
# --------------------------------------------------------------------------------------------
def _start_generators(root: Path, count: int, script: str) -> list[subprocess.Popen[str]]:
    """``count`` processes that import everything, wait for a common start, then run ``script``.

    ``script`` sees ``root``, ``TINY``, ``demo`` (the module) and ``generate_demo``; all
    processes leave the start line within milliseconds of each other.
    """
    go = root.parent / "go"
    root.parent.mkdir(parents=True, exist_ok=True)
    prologue = f"""
        import logging, sys, time
        from pathlib import Path
        import fapm.data.demo as demo
        from fapm.data.demo import generate_demo
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
        root, TINY = Path({str(root)!r}), {TINY!r}
        Path(sys.argv[1]).touch()
        while not Path({str(go)!r}).exists():
            time.sleep(0.005)
        started = time.monotonic()
    """
    code = textwrap.dedent(prologue) + textwrap.dedent(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    ready = [root.parent / f"ready{i}" for i in range(count)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(r)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for r in ready
    ]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break  # one died before the start line: its output tells why
        time.sleep(0.01)
    go.touch()
    return procs


def _finish(procs: list[subprocess.Popen[str]]) -> list[str]:
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out
    return outputs


# Each generation takes a second, so the two processes certainly overlap.
SLOW_WRITE = textwrap.dedent(
    """
    write = demo._write_category
    def slow_write(*args):
        print("WRITING", flush=True)
        time.sleep(1.0)
        write(*args)
    demo._write_category = slow_write
    """
)


def test_two_processes_at_once_write_one_intact_dataset(tmp_path: Path) -> None:
    root = tmp_path / "shared" / "demo"
    procs = _start_generators(root, 2, SLOW_WRITE + "generate_demo(root, ['weave'], **TINY)\n")
    outputs = _finish(procs)
    # One wrote the category; the other waited for the lock and then used it as it was.
    assert sum(out.count("WRITING") for out in outputs) == 1, outputs
    assert sum("another process is generating" in out for out in outputs) == 1, outputs
    reference = generate_demo(tmp_path / "sequential", ["weave"], **TINY)
    assert _files(root / "weave") == _files(reference / "weave")
    assert sorted(p.name for p in root.iterdir()) == sorted(["weave", lock_path(root, "weave").name])


def test_without_a_working_lock_the_rename_still_keeps_one_intact_dataset(tmp_path: Path) -> None:
    # A file system where locks do nothing: both processes write, the second rename yields.
    root = tmp_path / "shared" / "demo"
    no_lock = "import contextlib\ndemo._category_lock = lambda root, category: contextlib.nullcontext()\n"
    procs = _start_generators(root, 2, no_lock + SLOW_WRITE + "generate_demo(root, ['weave'], **TINY)\n")
    outputs = _finish(procs)
    assert sum(out.count("WRITING") for out in outputs) == 2
    reference = generate_demo(tmp_path / "sequential", ["weave"], **TINY)
    assert _files(root / "weave") == _files(reference / "weave")
    assert sorted(p.name for p in root.iterdir()) == ["weave"]  # both staging folders gone


def test_a_generation_killed_halfway_is_detected_and_redone(tmp_path: Path) -> None:
    root = tmp_path / "shared" / "demo"
    crash_after_two_files = """
        save, saved = demo._save_png, []
        def save_then_die(array, path):
            save(array, path)
            saved.append(path)
            if len(saved) == 2:
                import os
                os._exit(3)  # killed: no clean-up, no exception handler
        demo._save_png = save_then_die
        generate_demo(root, ['bracket'], **TINY)
    """
    (proc,) = _start_generators(root, 1, crash_after_two_files)
    proc.communicate(timeout=120)
    assert proc.returncode == 3
    assert not (root / "bracket").exists()  # never a partial category under its real name
    assert [p.name for p in root.glob(".bracket.tmp-*")]  # only its staging folder is left
    generate_demo(root, ["bracket"], **TINY)  # the dead process's lock is free again
    reference = generate_demo(tmp_path / "sequential", ["bracket"], **TINY)
    assert _files(root / "bracket") == _files(reference / "bracket")
    assert not list(root.glob(".bracket.tmp-*"))


def test_a_root_that_refuses_locks_is_still_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fapm.data.demo as demo

    root = generate_demo(tmp_path / "d", ["weave"], **TINY)
    before = _files(root / "weave")

    class ReadOnlyLock:  # what a read-only shared data folder answers
        def __init__(self, path: str) -> None:
            self.path = path

        def acquire(self, timeout: float | None = None) -> None:
            raise PermissionError(13, "Permission denied", self.path)

    monkeypatch.setattr(demo, "FileLock", ReadOnlyLock)
    generate_demo(root, ["weave"], **TINY)  # complete: nothing to write, no error
    assert _files(root / "weave") == before


def test_missing_files_are_generated_again(tmp_path: Path) -> None:
    root = generate_demo(tmp_path / "d", ["weave"], **TINY)
    before = _files(root / "weave")
    (root / "weave" / "test" / "hole" / "000.png").unlink()
    generate_demo(root, ["weave"], **TINY)
    assert _files(root / "weave") == before


def test_prepare_data_keeps_an_existing_demo_and_repairs_an_incomplete_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fapm.data.mvtec import MVTecDataModule

    root = generate_demo(tmp_path / "d", ["bracket"], seed=3, **TINY)
    before = _files(root / "bracket")
    marker = root / "bracket" / MARKER_NAME
    stamp = marker.stat().st_mtime_ns
    datamodule = MVTecDataModule(str(root), "bracket", generate_demo=True, demo_seed=0)
    with caplog.at_level(logging.WARNING, logger="fapm.data.mvtec"):
        datamodule.prepare_data()
    assert marker.stat().st_mtime_ns == stamp  # kept, with the arguments that wrote it
    assert "generated with seed 3" in caplog.text
    (root / "bracket" / "train" / "good" / "000.png").unlink()
    datamodule.prepare_data()
    assert _files(root / "bracket") == before  # repaired with the same (tiny, seed 3) arguments
    (root / "bracket").rename(root / "mine")
    (root / "mine" / MARKER_NAME).unlink()
    MVTecDataModule(str(root), "mine", generate_demo=True).prepare_data()  # not a demo: used as is
