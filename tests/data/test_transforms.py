"""FAPM pre-processing: shapes, normalisation, and image/mask crop alignment."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fapm.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocess, denormalize


def test_output_shapes_and_no_crop() -> None:
    img = Image.new("RGB", (300, 200), (128, 64, 32))
    assert Preprocess()(img).shape == (3, 224, 224)
    assert Preprocess(image_size=128, crop_size=None)(img).shape == (3, 128, 128)
    mask = np.zeros((200, 300), dtype=bool)
    assert Preprocess().mask(mask).shape == (1, 224, 224)


def test_normalisation_and_denormalize_roundtrip() -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    out = Preprocess()(Image.fromarray(array))
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
    pre = Preprocess()
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
