"""CPU inference for :class:`ctxstyle.method.net.StyleTransferNet`, a drop-in replacement.

:func:`accelerate` (``Stylizer(..., fast=True)``) gives a :class:`FastStyleTransferNet` that shares the
net's modules; its ``stylize`` / ``style_features`` / ``decode_stylized`` return the plain ones' values
(convolutions to ~1e-5, tested). Inference speed ( measured by ``python -m reproduce.benchmarks``):
on CPU in float32, images of at least 64x64 go one at a time, and their 3x3 stride-1 convolutions
run through NNPACK's Winograd / FFT kernels, called directly (:mod:`ctxstyle.fast.nnpack`: kernels
transformed once per layer and image size, ReLU fused, PyTorch's own operators single-threaded
meanwhile; max abs difference ~1e-5 on [0, 1] outputs). With several torch threads, a batch's
images run on that many worker threads at once, one image per thread (``parallel_images``).
Where that binding is unavailable,
``torch._nnpack_spatial_convolution`` takes its place with narrower thresholds (below; its thread
pool is sized once per process with ``torch.get_num_threads()`` at its first convolution).
Everything else (smaller images and layers, non-VGG encoders, other devices, dtypes, autocast)
takes the ordinary module path. ``FastStyleTransferNet.winograd = False`` turns it all off.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

import torch
from torch import Tensor, nn

from ..method.function import adain_blend
from ..method.net import StyleTransferNet, VGGEncoder
from . import nnpack

__all__ = ["FastStyleTransferNet", "accelerate", "cpu_autocast", "run_modules", "reflect_pad1"]


def cpu_autocast() -> bool:
    """Whether CPU autocast is active (the fast paths then leave the work to the plain modules)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


#: Where NNPACK beats oneDNN for one image (measured per layer and per image size on a 2-core AVX2
#: machine, batch 1, 1-2 threads), for each of the two ways to call it.
#: torch's operator (``torch._nnpack_spatial_convolution``, kernel transformed on every call): from
#: 32x32 output positions (1.1-1.5x there, 2.6-2.9x at 64x64; up to 4x slower at 8x8) and 16 channels;
#: images from 64x64, or from 256x256 with 2 or more threads (its thread pool barely gains from a
#: second thread: vs the reference loop 128 px 1.02x with it vs 1.58x on the module path).
WINOGRAD_MIN_POSITIONS = 32 * 32
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_IMAGE_POSITIONS = 64 * 64
WINOGRAD_MIN_IMAGE_POSITIONS_THREADED = 256 * 256
#: The direct path (:mod:`ctxstyle.fast.nnpack`: kernels transformed once, ReLU fused, own thread pool):
#: from 16x16 output positions and 16 channels (the 3-channel first layer is as fast on oneDNN),
#: images from 64x64 at any thread count (2 threads vs the reference loop: 128 px 2.6-2.8x vs
#: 1.3-1.5x on the module path; 64 px ~2x vs ~1.5x).
NNPACK_DIRECT_MIN_POSITIONS = 16 * 16
#: ... with PyTorch's own operators on one thread (:func:`ctxstyle.fast.nnpack.threads`) for images up to
#: this size; larger ones keep them multi-threaded (2 threads, images/s: 256 px 5.1 vs 4.1; 384 px
#: 2.2 vs 2.1; 512 px 1.07 vs 1.17: their copies grow with the image, the spinning cost does not).
NNPACK_SINGLE_THREAD_TORCH_MAX_POSITIONS = 384 * 384
NNPACK_DIRECT_MIN_IMAGE_POSITIONS = 64 * 64


@functools.cache
def _image_pool(workers: int) -> ThreadPoolExecutor:
    """Worker threads for :attr:`StyleTransferNet.parallel_images`, kept for the process."""
    return ThreadPoolExecutor(workers, thread_name_prefix="ctxstyle-image")


# A forked child inherits the pools but not their threads (its tasks would wait forever): new ones.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_image_pool.cache_clear)


def _on_worker(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    # grad mode is per thread (a worker starts with it on); NNPACK stays on this thread
    with torch.inference_mode(), nnpack.single_threaded():
        return fn(x)


def _min_image_positions(direct: bool) -> int:
    if direct:
        return NNPACK_DIRECT_MIN_IMAGE_POSITIONS
    if torch.get_num_threads() > 1:
        return WINOGRAD_MIN_IMAGE_POSITIONS_THREADED
    return WINOGRAD_MIN_IMAGE_POSITIONS


def _winograd_conv(m: nn.Module, x: Tensor, direct: bool) -> bool:
    """An NNPACK-eligible 3x3 convolution of ``x`` (``direct``: through :mod:`ctxstyle.fast.nnpack`)."""
    if not (type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1)
            and m.dilation == (1, 1) and m.groups == 1 and m.padding_mode == "zeros"
            and not isinstance(m.padding, str) and max(m.padding) < 3
            and min(m.in_channels, m.out_channels) >= WINOGRAD_MIN_CHANNELS):
        return False
    ph, pw = m.padding
    positions = (x.shape[-2] + 2 * ph - 2) * (x.shape[-1] + 2 * pw - 2)
    return positions >= (NNPACK_DIRECT_MIN_POSITIONS if direct else WINOGRAD_MIN_POSITIONS)


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
    """nn.MaxPool2d(2, 2): as the maximum of row pairs, then of column pairs (whole rows first:
    vectorised), ~10x faster than aten's max_pool2d on NCHW CPU tensors, one thread; exact."""
    return (type(m) is nn.MaxPool2d and m.kernel_size in (2, (2, 2)) and m.stride in (2, (2, 2))
            and m.padding in (0, (0, 0)) and m.dilation in (1, (1, 1)) and not m.ceil_mode
            and not m.return_indices)


def _upsample2(m: nn.Module) -> bool:
    return (type(m) is nn.Upsample and m.mode == "nearest" and m.size is None
            and m.scale_factor in (2, 2.0, (2, 2), (2.0, 2.0)))


def _reflect1(m: nn.Module) -> bool:
    return type(m) is nn.ReflectionPad2d and tuple(m.padding) == (1, 1, 1, 1)


#: A lone ReflectionPad2d(1) is written by :func:`reflect_pad1` from this many positions (aten's
#: is faster below: 0.65 vs 0.9 ms at 128x128x128; 4.2 vs 1.9 ms at 64x256x256, one thread).
REFLECT_PAD_MIN_POSITIONS = 256 * 256


def reflect_pad1(x: Tensor, upsample: bool) -> Tensor:
    """ReflectionPad2d(1) of ``x`` (N, C, H, W), or of its 2x nearest upsampling, written straight
    into one buffer. Exact. One thread, vs aten's upsample + pad: 15x faster on the decoder's
    256x32x32 map (aten's upsample is slow on small maps), equal at 64x128x128."""
    n, c, h, w = x.shape
    f = 2 if upsample else 1
    hh, ww = f * h, f * w
    out = x.new_empty((n, c, hh + 2, ww + 2))
    if upsample:
        for dx in (1, 2):  # every other column of the odd rows, then each odd row copied below
            out[:, :, 1 : hh + 1 : 2, dx : ww + dx : 2] = x
        out[:, :, 2 : hh + 2 : 2, 1 : ww + 1] = out[:, :, 1 : hh + 1 : 2, 1 : ww + 1]
    else:
        out[:, :, 1 : hh + 1, 1 : ww + 1] = x
    out[:, :, 0, 1 : ww + 1] = out[:, :, 2, 1 : ww + 1]  # reflected rows, then columns (corners too)
    out[:, :, hh + 1, 1 : ww + 1] = out[:, :, hh - 1, 1 : ww + 1]
    out[:, :, :, 0] = out[:, :, :, 2]
    out[:, :, :, ww + 1] = out[:, :, :, ww - 1]
    return out


def run_modules(modules: Iterable[nn.Module], x: Tensor, direct: bool | None = None) -> Tensor:
    """Apply ``modules`` in order to one image (1, C, H, W), large 3x3 convolutions via NNPACK.

    Same values as the modules (convolutions to ~1e-6 relative), faster: see the helpers above.
    ``direct`` (default: where available) calls NNPACK through :mod:`ctxstyle.fast.nnpack`, which fuses
    a ReLU right after a convolution; otherwise through torch's operator, the ReLU in place.
    """
    direct = nnpack.available() if direct is None else direct and nnpack.available()
    modules = list(modules)
    fresh = False  # x is a new tensor made here (so an in-place ReLU may overwrite it)
    i = 0
    while i < len(modules):
        m = modules[i]
        i += 1
        if _winograd_conv(m, x, direct):
            if direct:  # available, so conv3x3 returns the result (never None)
                relu = i < len(modules) and type(modules[i]) is nn.ReLU
                x, fresh, i = nnpack.conv3x3(m, x, relu), True, i + relu
                continue
            w = m.weight if m.weight.is_contiguous() else m.weight.contiguous()
            try:
                x = torch._nnpack_spatial_convolution(x.contiguous(), w, m.bias, list(m.padding))
            except RuntimeError:  # e.g. NNPACK out of memory: the ordinary convolution
                x = m(x)
            fresh = True
        elif _upsample2(m) and i < len(modules) and _reflect1(modules[i]):
            x, fresh, i = reflect_pad1(x, upsample=True), True, i + 1
        elif _reflect1(m) and x.shape[-2] * x.shape[-1] >= REFLECT_PAD_MIN_POSITIONS and min(x.shape[-2:]) > 1:
            x, fresh = reflect_pad1(x, upsample=False), True
        elif _conv_few_outputs(m, x):
            x, fresh = _conv3x3_planes(m, x), True
        elif type(m) is nn.Conv2d:
            x, fresh = m(x), True
        elif type(m) is nn.ReLU and fresh:
            x = x.relu_()
        elif _maxpool2(m):
            h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
            rows = torch.maximum(x[..., 0:h:2, :w], x[..., 1:h:2, :w])  # whole rows: vectorised
            x, fresh = torch.maximum(rows[..., 0::2], rows[..., 1::2]), True
        else:
            x, fresh = m(x), False
    return x


class FastStyleTransferNet(StyleTransferNet):
    """:class:`StyleTransferNet` whose inference runs the NNPACK path on CPU (module doc)."""

    #: Use NNPACK Winograd convolutions in ``stylize`` / ``style_features`` (CPU, float32).
    winograd: bool = True
    #: ... called directly (:mod:`ctxstyle.fast.nnpack`) where possible, else via torch's operator.
    direct_nnpack: bool = True
    #: ... and with several torch threads, the images of a batch on that many worker threads at
    #: once, each image on one thread (NNPACK and PyTorch single-threaded in it): no per-layer
    #: synchronisation between cores, and the copies between convolutions run on every core
    #: (2 threads, 256 px, batch 8: ~1.2x the images/s of one image at a time on both threads,
    #: median of 8 interleaved rounds; 128 px ~1.25x, 512 px ~1.1x).
    parallel_images: bool = True

    def _direct(self) -> bool:
        return self.direct_nnpack and nnpack.available()

    def uses_fast_path(self, x: Tensor, positions: int | None = None) -> bool:
        """Whether ``x`` (images, or AdaIN features of images of ``positions`` pixels) takes the
        one-image-at-a-time NNPACK path in :meth:`style_features` / :meth:`stylize` (CPU, float32,
        no autocast, images of at least the measured crossover size; else the plain path)."""
        positions = x.shape[-2] * x.shape[-1] if positions is None else positions
        return (self.winograd and isinstance(self.encoder, VGGEncoder) and x.device.type == "cpu"
                and x.dtype == torch.float32 and x.dim() == 4
                and x.shape[0] > 0 and positions >= _min_image_positions(self._direct())
                and not cpu_autocast() and nnpack.torch_available())

    def _workers(self, fast: bool, batch: int) -> int:
        """Worker threads for a batch of ``batch`` images on the fast path (see
        :attr:`parallel_images`): ``torch.get_num_threads()``, or 1 (images one after another, each
        on all threads) for a single image, another path, or one thread."""
        if not (fast and self.parallel_images and self._direct() and batch > 1):
            return 1
        return torch.get_num_threads()

    @contextlib.contextmanager
    def _inference_path(self, x: Tensor, positions: int | None = None):
        """``(fast, workers)`` for ``x`` (see :meth:`uses_fast_path`, :meth:`_workers`); inside, on the direct
        fast path with parallel images or images of at most ``NNPACK_SINGLE_THREAD_TORCH_MAX_POSITIONS``
        pixels, :func:`ctxstyle.fast.nnpack.threads` (PyTorch's operators on one thread, workers too)."""
        positions = x.shape[-2] * x.shape[-1] if positions is None else positions
        fast = self.uses_fast_path(x, positions)
        workers = self._workers(fast, x.shape[0])
        single = fast and self._direct() and (workers > 1 or positions <= NNPACK_SINGLE_THREAD_TORCH_MAX_POSITIONS)
        with nnpack.threads() if single else contextlib.nullcontext():
            yield fast, workers

    @staticmethod
    def _per_image(fn: Callable[[Tensor], Tensor], x: Tensor, workers: int) -> Tensor:
        """``fn`` applied to each image (1, ...) of ``x`` on ``workers`` threads, concatenated in order.
        Every image finishes (or fails) before this returns; the first failure is raised."""
        images = x.split(1)
        if workers <= 1:
            return torch.cat([fn(xi) for xi in images])
        pool = _image_pool(workers)
        futures = [pool.submit(_on_worker, fn, xi) for xi in images]
        wait(futures)
        return torch.cat([f.result() for f in futures])

    def _encode_one(self, x: Tensor) -> Tensor:
        """AdaIN-layer features of one image (1, C, H, W), inference only (see module doc)."""
        enc = self.encoder
        h = enc.normalize(x)
        for name in enc.layer_names[: enc.layer_names.index(self.adain_layer) + 1]:
            stage = enc.stages[name]
            h = run_modules(stage, h, self._direct()) if isinstance(stage, nn.Sequential) else stage(h)
        return h

    def _decode_one(self, t: Tensor) -> Tensor:
        dec = self.decoder
        if not isinstance(dec.net, nn.Sequential) or t.shape[1] != dec.in_channels:
            return dec(t)  # the module path (and its error message)
        return run_modules(dec.net, t * dec.input_scale, self._direct())

    @torch.inference_mode()
    def style_features(self, styles: Tensor) -> Tensor:
        """AdaIN-layer features of style images; compute once, reuse for many contents."""
        with self._inference_path(styles) as (fast, workers):
            return self._adain_layer_features(styles, fast, workers)

    def _adain_layer_features(self, images: Tensor, fast: bool, workers: int = 1) -> Tensor:
        if fast:  # one image at a time: NNPACK's fast path is its batch-1 inference
            self.encoder.check_layers([self.adain_layer])
            return self._per_image(self._encode_one, images, workers)
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
        with self._inference_path(content) as (fast, workers):
            t = adain_blend(self._adain_layer_features(content, fast, workers), list(style_feats), weights, alpha)
            return self._decode(t, fast, workers)

    @torch.inference_mode()
    def decode_stylized(self, t: Tensor) -> Tensor:
        """D(t) clamped to [0, 1] for AdaIN outputs ``t``, decoded as :meth:`stylize` decodes them
        (for callers that blend features themselves, e.g. several decoders on shared features)."""
        with self._inference_path(t, t.shape[-2] * t.shape[-1] * self.decoder.stride**2) as (fast, workers):
            return self._decode(t, fast, workers)

    def _decode(self, t: Tensor, fast: bool, workers: int = 1) -> Tensor:
        if fast:
            return self._per_image(self._decode_one, t, workers).clamp_(0.0, 1.0)
        return self.decoder(t).clamp_(0.0, 1.0)


def accelerate(net: StyleTransferNet) -> FastStyleTransferNet:
    """``net`` with the fast inference path: a :class:`FastStyleTransferNet` on the same encoder and
    decoder modules (nothing copied; training ``net`` trains this one)."""
    if isinstance(net, FastStyleTransferNet):
        return net
    return FastStyleTransferNet(net.encoder, net.adain_layer, net.decoder)
