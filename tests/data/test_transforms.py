"""FAPM pre-processing: shapes, normalisation, and image/mask crop alignment."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fapm.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Box, Preprocess, denormalize


def test_output_shapes_and_no_crop() -> None:
    img = Image.new("RGB", (300, 200), (128, 64, 32))
    assert Preprocess(crop_size=224)(img).shape == (3, 224, 224)
    assert Preprocess()(img).shape == (3, 256, 256)  # no crop unless asked: the whole image is inspected
    assert Preprocess(image_size=128, crop_size=None)(img).shape == (3, 128, 128)
    mask = np.zeros((200, 300), dtype=bool)
    assert Preprocess(crop_size=224).mask(mask).shape == (1, 224, 224)


def test_normalisation_and_denormalize_roundtrip() -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    out = Preprocess(crop_size=224)(Image.fromarray(array))
    expected = torch.from_numpy(array[16:240, 16:240].astype(np.float32) / 255).permute(2, 0, 1)
    manual = (expected - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(out, manual, atol=1e-5)
    assert torch.allclose(denormalize(out.unsqueeze(0))[0], expected, atol=1e-5)
    assert denormalize(out.unsqueeze(0) * 10).max() <= 1.0


def test_mask_crop_aligns_with_image_crop() -> None:
    # 512 -> 256 halves coordinates; the 224 centre crop then removes 16 pixels per side.
    array = np.zeros((512, 512, 3), dtype=np.uint8)
    mask = np.zeros((512, 512), dtype=bool)
    array[200:300, 100:180] = 255
    mask[200:300, 100:180] = True
    pre = Preprocess(crop_size=224)
    m = pre.mask(mask)[0]
    rows, cols = torch.nonzero(m, as_tuple=True)
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (84, 133, 34, 73)
    assert set(m.unique().tolist()) == {0.0, 1.0}
    assert m.sum().item() == 50 * 40
    grey = denormalize(pre(Image.fromarray(array)).unsqueeze(0))[0].mean(0)
    assert grey[86:132, 36:72].min() > 0.99  # interior of the square (bilinear blurs the 1-px border)
    outside = torch.ones_like(grey, dtype=torch.bool)
    outside[82:136, 32:76] = False
    assert grey[outside].max() < 0.01


def test_dict_roundtrip_and_validation() -> None:
    pre = Preprocess(image_size=320, crop_size=288)
    params = json.loads(json.dumps(pre.to_dict()))
    assert Preprocess.from_dict(params) == pre
    assert Preprocess.from_dict(Preprocess(crop_size=None).to_dict()).crop_size is None
    with pytest.raises(ValueError, match=r"(?i)unknown"):
        Preprocess.from_dict({**params, "interpolation": "bicubic"})
    with pytest.raises(ValueError):
        Preprocess(image_size=224, crop_size=256)


def test_letterbox_keeps_the_aspect_ratio_and_pads_with_the_mean() -> None:
    """A 200x100 (w x h) white image on a 64 canvas: 64x32 of image in rows 16..47, padding 0 after normalising."""
    pre = Preprocess(image_size=64, crop_size=None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="letterbox")
    out = pre(Image.new("RGB", (200, 100), (255, 255, 255)))
    assert out.shape == (3, 64, 64)
    assert torch.allclose(out[:, 16:48], torch.ones(3, 32, 64), atol=1e-5)  # white: (1 - 0.5) / 0.5
    assert float(out[:, :16].abs().max()) == 0.0 and float(out[:, 48:].abs().max()) == 0.0
    valid = pre.valid(200, 100)[0]
    assert int(valid.sum()) == 64 * 32 and bool(valid[16:48].all())
    mask = np.zeros((100, 200), dtype=bool)
    mask[:50, :100] = True  # the top-left quarter
    m = pre.mask(mask)[0]
    assert int(m.sum()) == 32 * 16 and bool(m[16:32, :32].all())
    # a tall image pads left and right instead; squash fills the square
    assert pre.box(100, 200) == Box(0, 16, 64, 32)
    assert Preprocess(image_size=64, resize="squash").box(100, 200) == Box(0, 0, 64, 64)


def test_hidden_share_of_the_centre_crop() -> None:
    """256 -> 224 removes 1 - (224/256)^2 = 23.4 % of a squashed image; no crop removes nothing."""
    assert Preprocess(image_size=256, crop_size=224).hidden_share(300, 200) == pytest.approx(1 - (224 / 256) ** 2)
    assert Preprocess(image_size=256, crop_size=None).hidden_share(300, 200) == 0.0
    # letterboxed: the crop cuts the padded sides' image rows less than a squashed image's
    wide = Preprocess(image_size=256, crop_size=224, resize="letterbox").hidden_share(512, 256)
    assert 0 < wide < 1 - (224 / 256) ** 2


def test_border_note_says_what_the_crop_leaves_out() -> None:
    note = Preprocess(image_size=256, crop_size=224).border_note()
    assert "23.4 %" in note and "16-pixel border" in note and "crop_size=null" in note
    assert Preprocess(image_size=256, crop_size=None).border_note() == ""
    assert Preprocess(image_size=224, crop_size=224).border_note() == ""  # a crop of the whole image hides nothing
