"""The reference stylization loop: how common public AdaIN test scripts run a network.

Modelled on the AdaIN test script of naoto0804/pytorch-AdaIN (``test.py``: for each content
image and each style image, ``style_transfer(vgg, decoder, content, style, alpha)`` under
``torch.no_grad()``: encode the content, encode the style again, AdaIN, decode): one image at a
time, float32, default (NCHW) memory format, ``torch.no_grad`` (not inference mode), the style
re-encoded for every content image, plain ``nn.Sequential`` modules. Its own AdaIN
(``calc_mean_std`` with the unbiased variance + eps, as in that script), so that comparing its
output with :meth:`ctxstyle.model.StyleTransferNet.stylize` checks the fast path end to end.

It runs a private copy of the network's weights (``copy.deepcopy``, contiguous memory format),
so whatever the fast path does to its own network (channels_last, ...) never leaks into it.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def calc_mean_std(feat: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-image, per-channel mean and std (unbiased variance + eps), as the AdaIN reference."""
    n, c = feat.shape[:2]
    feat_var = feat.reshape(n, c, -1).var(dim=2) + eps
    feat_std = feat_var.sqrt().view(n, c, 1, 1)
    feat_mean = feat.reshape(n, c, -1).mean(dim=2).view(n, c, 1, 1)
    return feat_mean, feat_std


def adaptive_instance_normalization(content_feat: Tensor, style_feat: Tensor) -> Tensor:
    size = content_feat.size()
    style_mean, style_std = calc_mean_std(style_feat)
    content_mean, content_std = calc_mean_std(content_feat)
    normalized = (content_feat - content_mean.expand(size)) / content_std.expand(size)
    return normalized * style_std.expand(size) + style_mean.expand(size)


class ReferenceAdaIN:
    """``vgg`` (input normalisation + encoder stages up to the AdaIN layer) and ``decoder`` as
    plain modules, copied from a :class:`ctxstyle.model.StyleTransferNet`."""

    def __init__(self, net):
        enc = copy.deepcopy(net.encoder).to(memory_format=torch.contiguous_format).float().eval()
        stages = enc.layer_names[: enc.layer_names.index(net.adain_layer) + 1]
        self.vgg = nn.Sequential(enc.normalize, *[enc.stages[name] for name in stages])
        self.decoder = copy.deepcopy(net.decoder).to(memory_format=torch.contiguous_format).float().eval()

    def style_transfer(self, content: Tensor, style: Tensor, alpha: float = 1.0) -> Tensor:
        assert 0.0 <= alpha <= 1.0
        content_f = self.vgg(content)
        style_f = self.vgg(style)
        feat = adaptive_instance_normalization(content_f, style_f)
        feat = feat * alpha + content_f * (1 - alpha)
        return self.decoder(feat)

    def __call__(self, contents: Tensor, style: Tensor, alpha: float = 1.0) -> Tensor:
        """Stylize every content image (N, 1, H, W) with one style image (1, 1, H', W'), one at a
        time, re-encoding the style each time; outputs clamped to [0, 1] (N, 1, H, W)."""
        outputs = []
        for i in range(contents.shape[0]):
            content = contents[i : i + 1]
            with torch.no_grad():
                output = self.style_transfer(content, style, alpha)
            outputs.append(output.clamp(0.0, 1.0))
        return torch.cat(outputs)
