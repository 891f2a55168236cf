"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) for binary spine segmentation of CT slices.

The architecture of the paper's segmentation experiment, sized by two knobs:

* ``base_channels`` (the paper: 64) - the width of the first level; each level down doubles it;
* ``depth`` (the paper: 4) - the number of 2x2 max-pool downsamplings. The input side must be a
  multiple of ``2 ** depth`` (64 px at depth 3 gives an 8 x 8 bottleneck; 256 px at depth 4
  gives 16 x 16).

Each level is two 3 x 3 convolutions with ReLU. Differences from the 2015 paper, all common in
modern U-Nets: ``padding=1`` convolutions (output size = input size, no cropping of the skip
connections), a normalisation layer after each convolution (``norm``: ``"batch"`` by default;
``"instance"`` or ``"none"`` on request), 2 x 2 transposed-convolution upsampling, and a single
output channel (the spine logit; sigmoid > 0.5 is spine) instead of a two-class softmax. The
output bias starts at ``prior_logit`` (-2: sigmoid 0.12, about the spine's share of a slice) so
that the first steps do not have to unlearn a 50 % foreground guess.

Note on ``norm="instance"``: an instance norm after the first convolution removes any affine
change of the input gray values (``a * x + b``, ``a > 0``) from everything downstream, so it
would make the baseline partly gray-scale invariant by construction. The experiment keeps
batch norm, like the plain U-Net of the paper, so that robustness has to come from the data.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ctxstyle.errors import InputError

__all__ = ["UNet", "NORMS"]

NORMS = ("batch", "instance", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class DoubleConv(nn.Sequential):
    """(3x3 conv -> norm -> ReLU) x 2."""

    def __init__(self, c_in: int, c_out: int, norm: str):
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias), _norm(norm, c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias), _norm(norm, c_out), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """Encoder-decoder with skip connections; input (N, C, H, W), output logits (N, 1, H, W)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 16,
                 depth: int = 3, norm: str = "batch", prior_logit: float = -2.0):
        super().__init__()
        if depth < 1:
            raise InputError("depth", f"must be >= 1, got {depth}")
        if base_channels < 1:
            raise InputError("base_channels", f"must be >= 1, got {base_channels}")
        if norm not in NORMS:
            raise InputError("norm", f"{norm!r} is not one of {NORMS}")
        self.depth, self.base_channels, self.norm = int(depth), int(base_channels), norm
        widths = [base_channels * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([DoubleConv(in_channels, widths[0], norm)])
        self.down.extend(DoubleConv(widths[i], widths[i + 1], norm) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                for i in reversed(range(depth)))
        self.merge = nn.ModuleList(DoubleConv(2 * widths[i], widths[i], norm) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        nn.init.constant_(self.head.bias, prior_logit)

    @property
    def multiple(self) -> int:
        """Input sides must be a multiple of this (``2 ** depth``)."""
        return 2 ** self.depth

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise InputError("input", f"expected (N, C, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise InputError("input", f"size {h}x{w} is not a multiple of 2**depth = {self.multiple}")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
