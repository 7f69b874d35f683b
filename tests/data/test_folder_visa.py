"""Folder and VisA data modules on tiny generated trees."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fapm.data.errors import DataError
from fapm.data.folder import FolderDataModule
from fapm.data.visa import VisADataModule, read_visa_csv

H, W = 20, 24


def _img(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _square_mask(value: int = 255) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[5:10, 6:12] = value
    return mask


@pytest.fixture
def folder_tree(tmp_path: Path, write_png) -> Path:
    root = tmp_path / "folders"
    for i in range(3):
        write_png(root / "normal" / f"n{i}.png", _img(i))
    for i in range(2):
        write_png(root / "test_normal" / f"t{i}.png", _img(10 + i))
    write_png(root / "abnormal" / "a0.png", _img(20))
    write_png(root / "abnormal" / "a1.jpg", _img(21))
    write_png(root / "abnormal" / "scratch" / "s0.png", _img(22))
    write_png(root / "masks" / "a0_mask.png", _square_mask())
    write_png(root / "masks" / "a1_mask.png", _square_mask())
    write_png(root / "masks" / "scratch" / "s0_mask.png", _square_mask())
    return root


def _folder(root: Path, **kwargs) -> FolderDataModule:
    args = {"normal_dir": "normal", "abnormal_dir": "abnormal", "test_normal_dir": "test_normal", "root": str(root)}
    return FolderDataModule(**{**args, **kwargs}, image_size=32, crop_size=None)


def test_folder_records_and_masks(folder_tree: Path) -> None:
    dm = _folder(folder_tree, mask_dir="masks", mask_suffix="_mask")
    info = dm.describe()
    assert info["n_train"] == 3 and info["test_per_type"] == {"abnormal": 2, "good": 2, "scratch": 1}
    assert dm.has_masks
    samples = {Path(s["path"]).name: s for s in dm.test_dataset()}
    assert samples["s0.png"]["defect_type"] == "scratch" and samples["s0.png"]["label"].item() == 1
    assert samples["a1.jpg"]["mask"].sum() > 0 and samples["a1.jpg"]["has_mask"] is True
    assert samples["t0.png"]["mask"].sum() == 0 and samples["t0.png"]["label"].item() == 0
    assert [r.mask_path.name for r in dm.test_records if r.label == 1] == ["a0_mask.png", "a1_mask.png", "s0_mask.png"]


def test_folder_without_masks_marks_them_unknown(folder_tree: Path) -> None:
    dm = _folder(folder_tree)
    assert dm.has_masks is False and dm.describe()["has_masks"] is False
    abnormal = [s for s in dm.test_dataset() if s["label"].item() == 1]
    assert len(abnormal) == 3 and not any(s["has_mask"] for s in abnormal)
    assert all(s["mask"].sum() == 0 for s in abnormal)
    good = [s for s in dm.test_dataset() if s["label"].item() == 0]
    assert all(s["has_mask"] for s in good)


def test_folder_missing_mask_names_expected_path(folder_tree: Path) -> None:
    (folder_tree / "masks" / "a1_mask.png").unlink()
    with pytest.raises(DataError, match=re.escape(str(folder_tree / "masks" / "a1_mask.png"))):
        _folder(folder_tree, mask_dir="masks", mask_suffix="_mask").setup()


@pytest.mark.parametrize("arg", ["normal_dir", "test_normal_dir", "abnormal_dir", "mask_dir"])
def test_folder_missing_dirs(folder_tree: Path, arg: str) -> None:
    with pytest.raises(DataError, match=re.escape(str(folder_tree / "nope"))):
        _folder(folder_tree, **{arg: "nope"}).setup()


def test_folder_empty_train(folder_tree: Path) -> None:
    for p in (folder_tree / "normal").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=re.escape(str(folder_tree / "normal"))):
        _folder(folder_tree).setup()


# --- VisA ----------------------------------------------------------------------------------------
@pytest.fixture
def visa_root(tmp_path: Path, write_png) -> Path:
    root = tmp_path / "visa"
    rows = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(3):
            rows.append(f"{obj},train,normal,{obj}/Data/Images/Normal/{i:03d}.JPG,")
            write_png(root / obj / "Data" / "Images" / "Normal" / f"{i:03d}.JPG", _img(i))
        rows.append(f"{obj},train,anomaly,{obj}/Data/Images/Anomaly/100.JPG,{obj}/Data/Masks/Anomaly/100.png")
        for i in (3, 4):
            rows.append(f"{obj},test,normal,{obj}/Data/Images/Normal/{i:03d}.JPG,")
            write_png(root / obj / "Data" / "Images" / "Normal" / f"{i:03d}.JPG", _img(i))
        for i in (100, 101):
            rows.append(f"{obj},test,anomaly,{obj}/Data/Images/Anomaly/{i}.JPG,{obj}/Data/Masks/Anomaly/{i}.png")
            write_png(root / obj / "Data" / "Images" / "Anomaly" / f"{i}.JPG", _img(i))
            write_png(root / obj / "Data" / "Masks" / "Anomaly" / f"{i}.png", _square_mask(value=1))
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_csv_parsing(visa_root: Path) -> None:
    train, test = read_visa_csv(visa_root, "candle", "split_csv/1cls.csv")
    assert [r.image_path.name for r in train] == ["000.JPG", "001.JPG", "002.JPG"]  # training anomaly dropped
    assert all(r.image_path.parent.parts[-4] == "candle" for r in train + test)
    assert [(r.label, r.defect_type) for r in test] == [(1, "anomaly"), (1, "anomaly"), (0, "good"), (0, "good")]
    assert test[0].mask_path == visa_root / "candle/Data/Masks/Anomaly/100.png"


def test_visa_masks_are_nonzero_binarised(visa_root: Path) -> None:
    dm = VisADataModule(str(visa_root), "pcb1", image_size=H, crop_size=None)
    sample = dm.test_dataset()[0]
    assert sample["label"].item() == 1 and sample["has_mask"] is True
    assert sample["mask"].sum().item() == 5 * 5  # value-1 mask counts; width 24 -> 20 keeps 5 of 6 columns
    assert dm.describe()["test_per_type"] == {"anomaly": 2, "good": 2}


def test_visa_errors(visa_root: Path) -> None:
    with pytest.raises(DataError, match="objects present"):
        read_visa_csv(visa_root, "cashew", "split_csv/1cls.csv")
    with pytest.raises(DataError, match=re.escape(str(visa_root / "split_csv" / "2cls.csv"))):
        read_visa_csv(visa_root, "candle", "split_csv/2cls.csv")
    csv_path = visa_root / "split_csv" / "1cls.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace("test,anomaly", "test,broken", 1))
    with pytest.raises(DataError, match="line"):
        read_visa_csv(visa_root, "candle", csv_path)
    csv_path.write_text(text.replace("object,split", "obj,split"))
    with pytest.raises(DataError, match="object"):
        read_visa_csv(visa_root, "candle", csv_path)
    csv_path.write_text(text)
    mask = visa_root / "candle/Data/Masks/Anomaly/101.png"
    mask.unlink()
    with pytest.raises(DataError, match=re.escape(str(mask))):
        VisADataModule(str(visa_root), "candle").setup()


def test_folder_lists_webp_not_gif(folder_tree: Path) -> None:
    """The folder module accepts the reader's formats: a WebP training image is used, a GIF is not."""
    from PIL import Image

    Image.fromarray(_img(7)).save(folder_tree / "normal" / "n7.webp", lossless=True)
    Image.fromarray(_img(8)).save(folder_tree / "normal" / "n8.gif")
    dm = _folder(folder_tree)
    dm.setup()
    assert [r.image_path.name for r in dm.train_records] == ["n0.png", "n1.png", "n2.png", "n7.webp"]
    assert dm.train_dataset()[3]["image"].shape == (3, 32, 32)


def test_visa_all_zero_mask_warns(visa_root: Path) -> None:
    mask = visa_root / "pcb1/Data/Masks/Anomaly/100.png"
    from PIL import Image

    Image.fromarray(np.zeros((H, W), np.uint8)).save(mask)
    dm = VisADataModule(str(visa_root), "pcb1", image_size=H, crop_size=None)
    with pytest.warns(UserWarning, match=re.escape(str(mask))):
        assert dm.test_dataset()[0]["mask"].sum() == 0
