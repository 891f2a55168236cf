"""The reference stylization loop: how common public AdaIN test scripts run a network.

Modelled on the AdaIN test script of naoto0804/pytorch-AdaIN (``test.py``: for each content
image and each style image, ``style_transfer(vgg, decoder, content, style, alpha)`` under
``torch.no_grad()``: encode the content, encode the style again, AdaIN, decode): one image at a
time, float32, default (NCHW) memory format, ``torch.no_grad`` (not inference mode), the style
re-encoded for every content image, plain ``nn.Sequential`` modules. Its own AdaIN
(``calc_mean_std`` with the unbiased variance + eps, as in that script), so that comparing its
output with :meth:`ctxstyle.fast.inference.FastStyleTransferNet.stylize` checks the fast path end to end.

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
    plain modules, copied from a :class:`ctxstyle.method.net.StyleTransferNet`."""

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


class ReferenceTrainer:
    """The decoder training step of naoto0804/pytorch-AdaIN (``train.py`` around ``net.Net.forward``).

    Every step encodes the style batch through every style layer and the content batch up to the
    AdaIN layer (the frozen encoder's parameters have ``requires_grad=False``, no ``no_grad``),
    computes the style statistics again, AdaIN, decodes, re-encodes the output through every style
    layer, and takes the content loss (MSE to the AdaIN target at the AdaIN layer) and the style
    loss (MSE of channel means + MSE of channel stds, summed over the style layers); Adam on the
    decoder; float32, NCHW, plain ``nn.Sequential`` encoder slices. A private copy of the net's
    weights (contiguous), so that it runs the same network as the step it is compared with.
    """

    def __init__(self, net, style_layers, lr: float = 1e-4, content_weight: float = 1.0,
                 style_weight: float = 10.0):
        enc = copy.deepcopy(net.encoder).to(memory_format=torch.contiguous_format).float().eval()
        names = enc.layer_names
        self.adain_layer, self.style_layers = net.adain_layer, tuple(style_layers)
        cuts = sorted({*self.style_layers, self.adain_layer}, key=names.index)
        self.slices: list[tuple[str, nn.Module]] = []
        start = 0
        for cut in cuts:
            end = names.index(cut) + 1
            modules = [enc.stages[n] for n in names[start:end]]
            self.slices.append((cut, nn.Sequential(*([enc.normalize] if start == 0 else []), *modules)))
            start = end
        for p in enc.parameters():
            p.requires_grad_(False)
        self.decoder = copy.deepcopy(net.decoder).to(memory_format=torch.contiguous_format).float().train()
        self.optimizer = torch.optim.Adam(self.decoder.parameters(), lr=lr)
        self.content_weight, self.style_weight = content_weight, style_weight

    def encode_with_intermediate(self, x: Tensor, last: str | None = None) -> dict[str, Tensor]:
        feats, h = {}, x
        for name, module in self.slices:
            h = module(h)
            feats[name] = h
            if name == last:
                break
        return feats

    def losses(self, content: Tensor, style: Tensor) -> tuple[Tensor, Tensor]:
        style_feats = self.encode_with_intermediate(style)
        content_feat = self.encode_with_intermediate(content, self.adain_layer)[self.adain_layer]
        t = adaptive_instance_normalization(content_feat, style_feats[self.adain_layer])
        g_t = self.decoder(t)
        g_t_feats = self.encode_with_intermediate(g_t)
        loss_c = nn.functional.mse_loss(g_t_feats[self.adain_layer], t)
        loss_s = content.new_zeros(())
        for name in self.style_layers:
            g_mean, g_std = calc_mean_std(g_t_feats[name])
            s_mean, s_std = calc_mean_std(style_feats[name])
            loss_s = loss_s + nn.functional.mse_loss(g_mean, s_mean) + nn.functional.mse_loss(g_std, s_std)
        return loss_c, loss_s

    def step(self, content: Tensor, style: Tensor) -> float:
        """One training step on a content and a style batch (N, 1, H, W); returns the total loss."""
        loss_c, loss_s = self.losses(content, style)
        loss = self.content_weight * loss_c + self.style_weight * loss_s
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())
