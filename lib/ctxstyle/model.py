"""Encoder + AdaIN + decoder as one module (paper Fig 2).

Inference speed (``stylize`` / ``style_features``, measured by ``python -m reproduce.benchmarks``):
on CPU in float32, images of at least 64x64 (256x256 with 2 or more threads: NNPACK's batch-1
path barely gains from a second thread, oneDNN's batched path does) go one at a time, and their 3x3 stride-1
convolutions with at least 32x32 output positions run through NNPACK's Winograd kernels
(``torch._nnpack_spatial_convolution``; 1.1-1.5x oneDNN's direct convolution at 32x32, 2.6-2.9x
at 64x64 and above, on AVX2; max abs difference ~1e-5 on [0, 1] outputs). Everything else
(smaller images and layers, non-VGG encoders, other devices, dtypes, autocast) takes the
ordinary module path.
``StyleTransferNet.winograd = False`` turns it off. NNPACK sizes its thread pool once per process,
with ``torch.get_num_threads()`` at its first convolution: set the thread count before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from .adain import adain, adain_blend
from .decoder import Decoder, build_decoder
from .encoders import FeatureEncoder, VGGEncoder


_NNPACK: bool | None = None


def _winograd_available() -> bool:
    """NNPACK usable on this machine. ``torch._nnpack_available()`` also initialises NNPACK,
    which ``torch._nnpack_spatial_convolution`` needs first (it fails otherwise)."""
    global _NNPACK
    if _NNPACK is None:
        try:
            _NNPACK = bool(torch._nnpack_available())
        except Exception:  # noqa: BLE001 - a torch build without NNPACK
            _NNPACK = False
    return _NNPACK


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


#: Where NNPACK's Winograd beats oneDNN (measured per layer on AVX2, batch 1, 1-2 threads): from
#: 32x32 output positions (1.1-1.5x there, 2.6-2.9x at 64x64); below it the fixed cost of
#: transforming the kernels loses (up to 4x slower at 8x8). Not for 1-3 channel convolutions.
WINOGRAD_MIN_POSITIONS = 32 * 32
WINOGRAD_MIN_CHANNELS = 16
#: Images smaller than this (positions) take the batched module path: too few layers gain.
WINOGRAD_MIN_IMAGE_POSITIONS = 64 * 64
#: The same with 2 or more torch threads. Idle 2-core AVX2 machine, 2 threads, vs the reference
#: loop: 128 px 1.02x (Winograd) vs 1.58x (module path); 256 px 2.07x vs 1.50x; 512 px 3.47x vs 1.54x.
WINOGRAD_MIN_IMAGE_POSITIONS_THREADED = 256 * 256


def _min_image_positions() -> int:
    if torch.get_num_threads() > 1:
        return WINOGRAD_MIN_IMAGE_POSITIONS_THREADED
    return WINOGRAD_MIN_IMAGE_POSITIONS


def _winograd_conv(m: nn.Module, x: Tensor) -> bool:
    if not (type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1)
            and m.dilation == (1, 1) and m.groups == 1 and m.padding_mode == "zeros"
            and not isinstance(m.padding, str) and max(m.padding) < 3
            and min(m.in_channels, m.out_channels) >= WINOGRAD_MIN_CHANNELS):
        return False
    ph, pw = m.padding
    return (x.shape[-2] + 2 * ph - 2) * (x.shape[-1] + 2 * pw - 2) >= WINOGRAD_MIN_POSITIONS


def _conv_few_outputs(m: nn.Module, x: Tensor) -> bool:
    """A 3x3 stride-1 unpadded convolution to <= 4 channels (the decoder's last): oneDNN runs it
    at ~5 GFLOP/s; as one (9 Cout x Cin) @ (Cin x HW) matmul plus 9 shifted adds it is ~4x faster."""
    return (type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1) and m.dilation == (1, 1)
            and m.groups == 1 and m.padding == (0, 0) and m.out_channels <= 4 and x.shape[0] == 1)


def _conv3x3_planes(m: nn.Conv2d, x: Tensor) -> Tensor:
    _, c, hp, wp = x.shape
    h, w = hp - 2, wp - 2
    k = m.out_channels
    planes = torch.matmul(m.weight.permute(2, 3, 0, 1).reshape(9 * k, c), x.reshape(c, hp * wp))
    planes = planes.view(3, 3, k, hp, wp)
    out = planes[0, 0, :, :h, :w] + m.bias.view(k, 1, 1) if m.bias is not None else planes[0, 0, :, :h, :w].clone()
    for dy in range(3):
        for dx in range(3):
            if dy or dx:
                out += planes[dy, dx, :, dy : dy + h, dx : dx + w]
    return out.unsqueeze(0)


def _maxpool2(m: nn.Module) -> bool:
    """nn.MaxPool2d(2, 2): as the max of 4 strided slices it is ~4x faster than aten's
    max_pool2d (which also computes indices) on NCHW CPU tensors; exact."""
    return (type(m) is nn.MaxPool2d and m.kernel_size in (2, (2, 2)) and m.stride in (2, (2, 2))
            and m.padding in (0, (0, 0)) and m.dilation in (1, (1, 1)) and not m.ceil_mode
            and not m.return_indices)


def _run_inference(modules: Iterable[nn.Module], x: Tensor) -> Tensor:
    """Apply ``modules`` in order to one image (1, C, H, W), large 3x3 convolutions via NNPACK.

    Same values as the modules (convolutions to ~1e-6 relative), faster: see the helpers above;
    a ReLU right after a convolution runs in place on the convolution's fresh output.
    """
    fresh = False  # x is a new tensor made here (so an in-place ReLU may overwrite it)
    for m in modules:
        if _winograd_conv(m, x):
            w = m.weight if m.weight.is_contiguous() else m.weight.contiguous()
            try:
                x = torch._nnpack_spatial_convolution(x.contiguous(), w, m.bias, list(m.padding))
            except RuntimeError:  # e.g. NNPACK out of memory: the ordinary convolution
                x = m(x)
            fresh = True
        elif _conv_few_outputs(m, x):
            x, fresh = _conv3x3_planes(m, x), True
        elif type(m) is nn.Conv2d:
            x, fresh = m(x), True
        elif type(m) is nn.ReLU and fresh:
            x = x.relu_()
        elif _maxpool2(m):
            h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
            a = torch.maximum(x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2])
            x, fresh = torch.maximum(a, torch.maximum(x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2]), out=a), True
        else:
            x, fresh = m(x), False
    return x


class StyleTransferNet(nn.Module):
    """G = D(AdaIN(E(X), E(Y))) with a frozen encoder E and a trainable decoder D."""

    #: Use NNPACK Winograd convolutions in ``stylize`` / ``style_features`` (CPU, float32).
    winograd: bool = True

    def __init__(self, encoder: FeatureEncoder, adain_layer: str, decoder: Decoder | None = None):
        super().__init__()
        self.encoder = encoder.freeze()
        self.adain_layer = adain_layer
        self.decoder = decoder if decoder is not None else build_decoder(encoder, adain_layer)

    def encode(self, images: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        return self.encoder(images, layers)

    def decode(self, features: Tensor) -> Tensor:
        return self.decoder(features)

    def _fast(self, x: Tensor) -> bool:
        return (self.winograd and isinstance(self.encoder, VGGEncoder) and x.device.type == "cpu"
                and x.dtype == torch.float32 and x.dim() == 4
                and x.shape[0] > 0 and x.shape[-2] * x.shape[-1] >= _min_image_positions()
                and not _cpu_autocast() and _winograd_available())

    def _encode_one(self, x: Tensor) -> Tensor:
        """AdaIN-layer features of one image (1, C, H, W), inference only (see module doc)."""
        enc = self.encoder
        h = enc.normalize(x)
        for name in enc.layer_names[: enc.layer_names.index(self.adain_layer) + 1]:
            stage = enc.stages[name]
            h = _run_inference(stage, h) if isinstance(stage, nn.Sequential) else stage(h)
        return h

    def _decode_one(self, t: Tensor) -> Tensor:
        dec = self.decoder
        if not isinstance(dec.net, nn.Sequential) or t.shape[1] != dec.in_channels:
            return dec(t)  # the module path (and its error message)
        return _run_inference(dec.net, t * dec.input_scale)

    @torch.inference_mode()
    def style_features(self, styles: Tensor) -> Tensor:
        """AdaIN-layer features of style images; compute once, reuse for many contents."""
        return self._adain_layer_features(styles)

    def _adain_layer_features(self, images: Tensor) -> Tensor:
        if self._fast(images):  # one image at a time: NNPACK's fast path is its batch-1 inference
            self.encoder._check_layers([self.adain_layer])
            return torch.cat([self._encode_one(x) for x in images.split(1)])
        return self.encoder(images, [self.adain_layer])[self.adain_layer]

    @torch.inference_mode()
    def stylize(
        self,
        content: Tensor,
        style_feats: Sequence[Tensor],
        weights: Sequence[float] | None = None,
        alpha: float = 1.0,
    ) -> Tensor:
        """Inference: stylized images in [0, 1] for content (N, 1, H, W) and per-style features."""
        t = adain_blend(self._adain_layer_features(content), list(style_feats), weights, alpha)
        if self._fast(content):
            return torch.cat([self._decode_one(ti) for ti in t.split(1)]).clamp_(0.0, 1.0)
        return self.decoder(t).clamp_(0.0, 1.0)

    def forward(self, content: Tensor, style: Tensor, alpha: float = 1.0) -> Tensor:
        """Training path: raw decoder output for paired content/style batches."""
        with torch.no_grad():
            c = self.encoder(content, [self.adain_layer])[self.adain_layer]
            s = self.encoder(style, [self.adain_layer])[self.adain_layer]
            t = adain(c, s)
            if alpha < 1.0:
                t = alpha * t + (1 - alpha) * c
        return self.decoder(t)
