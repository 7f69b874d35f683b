"""MVTec layout: sample dicts, ordering, hold-out split and every bad-data error."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fapm.data.errors import DataError
from fapm.data.mvtec import MVTecDataModule, MVTecDataset


def _module(root: Path, **kwargs) -> MVTecDataModule:
    return MVTecDataModule(str(root), "widget", image_size=32, crop_size=28, **kwargs)


def test_samples_have_expected_fields(mvtec_tree) -> None:
    dm = _module(mvtec_tree())
    dm.setup("fit")
    train = dm.train_dataset()
    s = train[0]
    assert s["image"].shape == (3, 28, 28) and s["image"].dtype == torch.float32
    assert s["mask"].shape == (1, 28, 28) and s["mask"].sum() == 0
    assert s["label"].dtype == torch.int64 and s["label"].item() == 0 and s["label"].dim() == 0
    assert s["defect_type"] == "good" and s["has_mask"] is True
    assert s["path"].endswith("train/good/000.png")

    test = dm.test_dataset()
    by_type = {(t["defect_type"], Path(t["path"]).name): t for t in test}
    crack = by_type[("crack", "001.png")]
    assert crack["label"].item() == 1
    assert crack["path"] == str(dm.root / "widget" / "test" / "crack" / "001.png")
    assert set(crack["mask"].unique().tolist()) == {0.0, 1.0}
    assert by_type[("good", "000.png")]["mask"].sum() == 0


def test_order_is_sorted_and_extensions_case_insensitive(mvtec_tree) -> None:
    root = mvtec_tree(n_train=3)
    good = root / "widget" / "train" / "good"
    (good / "001.png").rename(good / "001.PNG")
    (good / "readme.txt").write_text("not an image")
    dm = _module(root, train_batch_size=2)
    paths = [p for batch in dm.train_dataloader() for p in batch["path"]]
    assert [Path(p).name for p in paths] == ["000.png", "001.PNG", "002.png"]
    test_types = [r.defect_type for r in dm.test_records]
    assert test_types == sorted(test_types)


def test_batches_collate(mvtec_tree) -> None:
    dm = _module(mvtec_tree(), eval_batch_size=3)
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (3, 3, 28, 28) and batch["mask"].shape == (3, 1, 28, 28)
    assert batch["label"].tolist() == [1, 1, 0] and batch["has_mask"].dtype == torch.bool
    assert batch["defect_type"] == ["crack", "crack", "good"]


def test_describe_counts(mvtec_tree) -> None:
    dm = _module(mvtec_tree(n_train=5, n_test_good=2, defects={"crack": 2, "hole": 3}), normal_holdout=0.2)
    info = dm.describe()
    assert info["n_train"] == 4 and info["n_val"] == 1 and info["n_test"] == 7
    assert info["test_per_type"] == {"crack": 2, "good": 2, "hole": 3}
    assert info["defect_types"] == ["crack", "hole"] and info["has_masks"] is True
    assert info["preprocess"]["crop_size"] == 28


def test_holdout_split_is_disjoint_seeded_and_sized(mvtec_tree) -> None:
    root = mvtec_tree(n_train=10)
    dm = _module(root, normal_holdout=0.3, seed=1)
    dm.setup()
    train = {str(r.image_path) for r in dm.train_records}
    val = {str(r.image_path) for r in dm.val_records}
    assert len(train) == 7 and len(val) == 3 and not train & val
    assert len(train | val) == 10
    again = _module(root, normal_holdout=0.3, seed=1)
    again.setup()
    assert {str(r.image_path) for r in again.val_records} == val
    vals = set()
    for seed in range(5):
        other = _module(root, normal_holdout=0.3, seed=seed)
        other.setup()
        vals.add(frozenset(str(r.image_path) for r in other.val_records))
    assert len(vals) > 1
    val_loader = dm.val_dataloader()
    assert sorted(p for b in val_loader for p in b["path"]) == sorted(val)


def test_no_holdout_gives_empty_val_loader(mvtec_tree) -> None:
    dm = _module(mvtec_tree())
    assert dm.val_dataloader() == []
    assert len(dm.train_records) == 4


def test_holdout_arguments_checked(mvtec_tree) -> None:
    with pytest.raises(ValueError):
        _module(mvtec_tree(), normal_holdout=1.0)
    dm = _module(mvtec_tree(n_train=1, root=Path(mvtec_tree().parent / "one")), normal_holdout=0.5)
    with pytest.raises(DataError, match="normal_holdout"):
        dm.setup()


def test_mvtec_dataset_standalone(mvtec_tree) -> None:
    root = mvtec_tree()
    assert len(MVTecDataset(root, "widget", "train")) == 4
    test = MVTecDataset(root, "widget", "test")
    # the default pre-processing inspects the whole image: resize to 256, no crop
    assert len(test) == 4 and test[0]["image"].shape == (3, 256, 256)
    assert bool(test[0]["valid"].all())  # squashed: every pixel shows the image
    with pytest.raises(ValueError):
        MVTecDataset(root, "widget", "val")  # type: ignore[arg-type]


# --- bad data ------------------------------------------------------------------------------------
def test_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        _module(missing).setup()


def test_missing_category_lists_existing(mvtec_tree) -> None:
    root = mvtec_tree()
    dm = MVTecDataModule(str(root), "gizmo")
    with pytest.raises(DataError) as err:
        dm.setup()
    assert str(root / "gizmo") in str(err.value) and "widget" in str(err.value)


@pytest.mark.parametrize("remove", ["train/good", "train/good/*", "test", "test/*/*"])
def test_missing_or_empty_folders(mvtec_tree, remove: str) -> None:
    root = mvtec_tree()
    cat = root / "widget"
    for path in cat.glob(remove):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    folder = cat / remove.split("/*")[0]
    with pytest.raises(DataError, match=re.escape(str(folder))):
        _module(root).setup()


def test_defect_without_mask_names_expected_mask(mvtec_tree) -> None:
    root = mvtec_tree()
    expected = root / "widget" / "ground_truth" / "crack" / "001_mask.png"
    expected.unlink()
    with pytest.raises(DataError, match=re.escape(str(expected))):
        _module(root).setup()


def test_mask_of_other_size_names_both_files(mvtec_tree, write_png) -> None:
    root = mvtec_tree(size=(48, 40))
    mask = root / "widget" / "ground_truth" / "crack" / "000_mask.png"
    write_png(mask, np.zeros((40, 47), dtype=np.uint8))
    with pytest.raises(DataError) as err:
        _module(root).setup()
    message = str(err.value)
    assert str(mask) in message and str(root / "widget" / "test" / "crack" / "000.png") in message
    assert "47x40" in message and "48x40" in message


def test_corrupt_image_file(mvtec_tree) -> None:
    root = mvtec_tree()
    bad = root / "widget" / "test" / "good" / "001.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=re.escape(str(bad))):
        _module(root).setup()


def test_truncated_image_fails_at_load_with_data_error(mvtec_tree) -> None:
    root = mvtec_tree(size=(64, 64))
    bad = root / "widget" / "train" / "good" / "002.png"
    bad.write_bytes(bad.read_bytes()[:200])  # header intact, pixel data cut
    dm = _module(root)
    dm.setup()
    with pytest.raises(DataError, match=re.escape(str(bad))):
        for _ in dm.train_dataloader():
            pass


def test_prepare_data_generates_demo_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fapm.data.demo as demo

    calls = []
    original = demo.generate_demo

    def small(root, categories=None, seed=0):
        calls.append((categories, seed))
        return original(root, categories, seed, n_train=2, n_test_good=1, n_test_defect_per_type=1, size=128)

    monkeypatch.setattr(demo, "generate_demo", small)
    dm = MVTecDataModule(str(tmp_path / "demo"), "weave", generate_demo=True, demo_seed=3)
    dm.prepare_data()
    dm.prepare_data()  # the category now exists: no second generation
    assert calls == [(["weave"], 3)]
    assert dm.describe()["n_test"] == 1 + len(demo.DEMO_DEFECT_TYPES["weave"])
    with pytest.raises(DataError, match="not a demo category"):
        MVTecDataModule(str(tmp_path / "demo"), "bottle", generate_demo=True).prepare_data()


# --- one reader for training, testing and predict ------------------------------------------------
def test_image_below_the_minimum_size_is_refused_at_setup(mvtec_tree, write_png) -> None:
    """A 1x1 training image (predict would refuse it) is a DataError at set-up naming the file."""
    root = mvtec_tree()
    tiny = write_png(root / "widget" / "train" / "good" / "009.png", np.zeros((1, 1, 3), np.uint8))
    thin = write_png(root / "widget" / "test" / "good" / "009.png", np.zeros((15, 48, 3), np.uint8))
    with pytest.raises(DataError) as err:
        _module(root).setup()
    message = str(err.value)
    assert f"{tiny}: image of 1x1 pixels is too small" in message
    assert f"{thin}: image of 48x15 pixels is too small" in message and "min side 16 px" in message


def test_zero_one_masks_mark_defects(mvtec_tree, write_png) -> None:
    """Masks stored as 0/1 (not 0/255) give the same pixel ground truth as 0/255 ones."""
    root = mvtec_tree()
    mask_file = root / "widget" / "ground_truth" / "crack" / "000_mask.png"
    expected = _module(root).test_dataset()[0]["mask"]
    assert expected.sum() > 0
    write_png(mask_file, (np.asarray(Image.open(mask_file)) > 0).astype(np.uint8))  # the same mask as 0/1
    sample = _module(root).test_dataset()[0]
    assert sample["path"].endswith("crack/000.png") and torch.equal(sample["mask"], expected)


def test_all_zero_mask_of_a_defect_warns_naming_it(mvtec_tree, write_png) -> None:
    root = mvtec_tree()
    mask_file = write_png(root / "widget" / "ground_truth" / "crack" / "001_mask.png", np.zeros((40, 48), np.uint8))
    dataset = _module(root).test_dataset()
    with pytest.warns(UserWarning, match=re.escape(str(mask_file))) as caught:
        sample = dataset[1]
    assert sample["mask"].sum() == 0 and sample["label"].item() == 1
    assert any(type(w.message).__name__ == "MaskWarning" for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mask with defect pixels does not warn
        dataset[0]


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_rotated_image_and_its_mask_line_up(mvtec_tree, suffix: str) -> None:
    """A camera image stored sideways with an EXIF rotation, its mask drawn on the displayed image."""
    root = mvtec_tree(size=(48, 40))
    displayed = np.zeros((48, 40, 3), np.uint8)  # 40 wide, 48 high as shown
    displayed[4:14, 22:36] = 255  # a bright defect near the top right
    stored = np.rot90(displayed, 1)  # what the camera wrote: rotated back by 90°
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    image_file = root / "widget" / "test" / "crack" / f"000{suffix}"
    (root / "widget" / "test" / "crack" / "000.png").unlink()
    Image.fromarray(np.ascontiguousarray(stored)).save(image_file, exif=exif.tobytes(), quality=100)
    mask = np.zeros((48, 40), np.uint8)
    mask[4:14, 22:36] = 255
    Image.fromarray(mask).save(root / "widget" / "ground_truth" / "crack" / "000_mask.png")
    dm = MVTecDataModule(str(root), "widget", image_size=48, crop_size=None)
    dm.setup()  # sizes agree once the rotation is applied
    sample = next(s for s in dm.test_dataset() if s["path"] == str(image_file))
    bright = sample["image"].mean(0) > 1.0  # normalised: the white defect is far above the mean
    defect = sample["mask"][0] > 0
    assert defect.sum() > 0 and (bright & defect).sum() / defect.sum() > 0.8
