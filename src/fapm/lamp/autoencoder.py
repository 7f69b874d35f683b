"""Convolutional autoencoder of LAMP (no skip connections), with optional patch-wise
reconstruction and optional SE / MS-SAR recalibration in the encoder blocks.

Encoder block: ``conv (stride 2) → BN → LeakyReLU [→ recalibration]``.
Decoder block: ``upsample ×2 → conv → BN → LeakyReLU``.
After the last decoder block a ``1×1`` conv maps the features back to image channels,
followed by ``output_activation`` (sigmoid by default, for images in ``[0, 1]``): the
paper does not say what its output layer is, and a block ending in BN + LeakyReLU cannot
produce an image in a fixed range.

Depth follows the paper: six blocks each side for large inputs (256 px), four for small
ones (MNIST); the input (or each patch) is padded to a multiple of ``2^depth`` so that
every block halves the map exactly (224 → padded 256 → 4×4 bottleneck), and the
reconstruction is cropped back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn
from torch.nn import functional as F

from fapm.lamp.msar import MSSAR

Recalibration = Literal["none", "se", "msar"]
PadMode = Literal["reflect", "replicate", "constant"]


def default_depth(input_size: int, large_min_size: int = 128) -> int:
    """Blocks per side: 6 for inputs of at least ``large_min_size`` px (paper: 256 px), else 4."""
    return 6 if input_size >= large_min_size else 4


def default_channels(depth: int, base_channels: int = 32, max_channels: int = 256) -> list[int]:
    """Encoder widths: ``base · 2^i`` capped at ``max_channels``, one per block."""
    return [min(base_channels * 2**i, max_channels) for i in range(depth)]


def recalibration_scales(recalibration: Recalibration, msar_scales: Sequence[int] = (1, 2, 4)) -> tuple[int, ...] | None:
    """Scales of the recalibration block for a ``model.recalibration`` option.

    ``"se"`` is MS-SAR with the single scale 1 (squeeze-and-excitation), ``"msar"`` uses
    ``msar_scales``, ``"none"`` gives ``None`` (no block).
    """
    table: dict[str, tuple[int, ...] | None] = {"none": None, "se": (1,), "msar": tuple(int(k) for k in msar_scales)}
    if recalibration not in table:
        raise ValueError(f"recalibration must be one of {sorted(table)}, got {recalibration!r}")
    return table[recalibration]


def padded_size(size: int, depth: int) -> int:
    """Smallest multiple of ``2^depth`` that is ``>= size``."""
    step = 2**depth
    return -(-size // step) * step


class EncoderBlock(nn.Module):
    """``[B, C_in, H, W]`` → ``[B, C_out, H/2, W/2]``: conv(stride 2) → BN → LeakyReLU [→ MS-SAR]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        negative_slope: float = 0.2,
        scales: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=2, padding=kernel_size // 2, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU(negative_slope, inplace=True)
        self.recalibrate: nn.Module = MSSAR(out_channels, scales) if scales else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.recalibrate(self.act(self.norm(self.conv(x))))


class DecoderBlock(nn.Module):
    """``[B, C_in, H, W]`` → ``[B, C_out, 2H, 2W]``: upsample → conv → BN → LeakyReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        negative_slope: float = 0.2,
        upsample_mode: str = "nearest",
    ) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode=upsample_mode)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU(negative_slope, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(self.up(x))))


class ConvAutoencoder(nn.Module):
    """LAMP's convolutional autoencoder.

    Args:
        in_channels: image channels ``C``.
        input_size: side of the images (of each patch when ``patches_per_side > 1``) the
            model is built for; chooses the depth and validates the recalibration scales.
        depth: blocks per side; ``None`` → :func:`default_depth` of the patch size.
        channels: encoder widths (length ``depth``); ``None`` → :func:`default_channels`.
        base_channels, max_channels: for :func:`default_channels`.
        large_min_size: patch size from which the six-block depth is used.
        kernel_size: convolution kernel (odd).
        negative_slope: LeakyReLU slope.
        upsample_mode: ``nn.Upsample`` mode in the decoder.
        patches_per_side: patch-wise reconstruction, ``n``: the image is cut into ``n×n``
            non-overlapping patches, each reconstructed independently by the same network.
        recalibration: ``"none"``, ``"se"`` or ``"msar"`` in every encoder block.
        msar_scales: scales for ``"msar"``; each must divide every encoder map.
        pad_mode: how inputs are padded to a multiple of ``2^depth``.
        output_activation: applied to the output conv (``None`` → identity, for targets
            that are not in ``[0, 1]``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        input_size: int = 256,
        depth: int | None = None,
        channels: Sequence[int] | None = None,
        base_channels: int = 32,
        max_channels: int = 256,
        large_min_size: int = 128,
        kernel_size: int = 3,
        negative_slope: float = 0.2,
        upsample_mode: str = "nearest",
        patches_per_side: int = 1,
        recalibration: Recalibration = "none",
        msar_scales: Sequence[int] = (1, 2, 4),
        pad_mode: PadMode = "reflect",
        output_activation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if patches_per_side < 1 or input_size % patches_per_side:
            raise ValueError(f"patches_per_side={patches_per_side} must divide input_size={input_size}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.in_channels = in_channels
        self.input_size = input_size
        self.patches_per_side = patches_per_side
        self.patch_size = input_size // patches_per_side
        self.depth = depth if depth is not None else default_depth(self.patch_size, large_min_size)
        widths = list(channels) if channels is not None else default_channels(self.depth, base_channels, max_channels)
        if len(widths) != self.depth:
            raise ValueError(f"channels has {len(widths)} entries for depth {self.depth}")
        self.channels = widths
        self.pad_mode: PadMode = pad_mode
        self.recalibration = recalibration
        scales = recalibration_scales(recalibration, msar_scales)
        self.scales = scales
        if scales:
            self._check_scales(scales)

        ins = [in_channels, *widths[:-1]]
        self.encoder = nn.Sequential(
            *(EncoderBlock(i, o, kernel_size, negative_slope, scales) for i, o in zip(ins, widths))
        )
        # Mirror of the encoder; the last block keeps the first width at full resolution.
        dec_out = [*reversed(widths[:-1]), widths[0]]
        self.decoder = nn.Sequential(
            *(
                DecoderBlock(i, o, kernel_size, negative_slope, upsample_mode)
                for i, o in zip(reversed(widths), dec_out)
            )
        )
        self.head = nn.Conv2d(widths[0], in_channels, kernel_size=1)
        self.output_activation = output_activation if output_activation is not None else nn.Identity()

    def _check_scales(self, scales: Sequence[int]) -> None:
        size = padded_size(self.patch_size, self.depth)
        for block in range(1, self.depth + 1):
            side = size // 2**block
            bad = [k for k in scales if side % k]
            if bad:
                raise ValueError(
                    f"MS-SAR scales {bad} do not divide the {side}×{side} map of encoder block {block} "
                    f"(patch {self.patch_size} px padded to {size}, depth {self.depth}); "
                    f"use scales dividing {side}, a smaller depth or a larger input"
                )

    # ---------------------------------------------------------------- patches
    def to_patches(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` → ``[B·n², C, H/n, W/n]`` (row-major patch order)."""
        n = self.patches_per_side
        if n == 1:
            return x
        b, c, h, w = x.shape
        if h % n or w % n:
            raise ValueError(f"patches_per_side={n} must divide the image size {h}×{w}")
        x = x.view(b, c, n, h // n, n, w // n).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b * n * n, c, h // n, w // n)

    def from_patches(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`to_patches`."""
        n = self.patches_per_side
        if n == 1:
            return x
        bnn, c, ph, pw = x.shape
        b = bnn // (n * n)
        x = x.view(b, n, n, c, ph, pw).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, n * ph, n * pw)

    # ---------------------------------------------------------------- model
    def _pad(self, x: Tensor) -> tuple[Tensor, tuple[int, int, int, int]]:
        h, w = x.shape[-2:]
        ph, pw = padded_size(h, self.depth) - h, padded_size(w, self.depth) - w
        pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        if not any(pads):
            return x, pads
        mode = self.pad_mode
        if mode == "reflect" and max(pads) >= min(h, w):
            mode = "replicate"  # reflect padding must be smaller than the input
        return F.pad(x, pads, mode=mode), pads

    def encode(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` (one patch each) → latent ``[B, C_d, H'/2^d, W'/2^d]`` (``H'`` padded)."""
        return self.encoder(self._pad(x)[0])

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct ``x [B, C, H, W]`` → ``[B, C, H, W]``."""
        patches = self.to_patches(x)
        padded, (left, right, top, bottom) = self._pad(patches)
        out = self.output_activation(self.head(self.decoder(self.encoder(padded))))
        h, w = out.shape[-2:]
        out = out[..., top : h - bottom, left : w - right]
        return self.from_patches(out)
