"""NNPACK's batch-1 inference convolution, called directly (CPU stylization speed, issue 8).

PyTorch bundles NNPACK in its CPU library but exposes one call, ``torch._nnpack_spatial_convolution``,
which transforms the kernel again on every call, applies no activation and runs on a thread pool
sized once per process. For a frozen network applied to many images ``nnp_convolution_inference``
itself does better: the kernel's Winograd / Fourier transform is computed once per layer and input
size (strategy *precompute*, then *reuse*), a following ReLU is fused into the output transform,
the workspace is allocated once per thread, and the thread pool is ours (:func:`threads`).

The two C symbols (``nnp_convolution_inference``, ``pthreadpool_create``) are looked up in the
already loaded ``torch_cpu`` library. :func:`available` also checks one small convolution against
``torch.nn.functional.conv2d`` before anything uses them, so a PyTorch build without NNPACK (or
with another ABI) makes :func:`conv3x3` return ``None`` and callers use ordinary convolutions.

Why :func:`threads` runs PyTorch's own operators on one thread: OpenMP worker threads keep
spinning after each PyTorch operator (padding, pooling), and on a machine with as many threads as
cores they then compete with NNPACK's threads. On a 2-core machine that cost ~30% of a 256 px
stylization (measured: 3.0 images/s, 4.3 with the operators single-threaded).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
import warnings
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# enum values and structs of nnpack.h (stable since 2017)
_ALGORITHMS = {"ft16x16": 2, "wt8x8": 3}
_PRECOMPUTE, _REUSE = 2, 3
_IDENTITY, _RELU = 0, 1
_SUCCESS = 0
_ALIGNMENT = 64  # bytes, NNPACK's requirement for workspace and transformed kernels


class _Size(ctypes.Structure):
    _fields_ = [("width", ctypes.c_size_t), ("height", ctypes.c_size_t)]


class _Padding(ctypes.Structure):
    _fields_ = [("top", ctypes.c_size_t), ("right", ctypes.c_size_t),
                ("bottom", ctypes.c_size_t), ("left", ctypes.c_size_t)]


_P = ctypes.c_void_p
_SIGNATURE = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t, _Size, _Padding, _Size, _Size,
              _P, _P, _P, _P, _P, ctypes.POINTER(ctypes.c_size_t), ctypes.c_int, _P, _P, _P]


@functools.cache
def torch_available() -> bool:
    """torch's own NNPACK operator works here. ``torch._nnpack_available()`` also initialises
    NNPACK, which ``torch._nnpack_spatial_convolution`` and the direct calls need first."""
    try:
        return bool(torch._nnpack_available())
    except Exception:  # noqa: BLE001 - torch built without the NNPACK operator
        return False


@functools.cache
def _library() -> ctypes.CDLL | None:
    """torch_cpu with the two symbols typed, or None (no NNPACK in this build, no library file)."""
    if not torch_available():
        return None
    lib_dir = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        if (lib_dir / name).exists():
            try:
                lib = ctypes.CDLL(str(lib_dir / name))
                conv, create = lib.nnp_convolution_inference, lib.pthreadpool_create
            except (OSError, AttributeError):
                return None
            conv.argtypes, conv.restype = _SIGNATURE, ctypes.c_int
            create.argtypes, create.restype = [ctypes.c_size_t], ctypes.c_void_p
            return lib
    return None


@functools.cache
def _threadpool(n: int) -> int | None:
    """A pthreadpool of ``n`` threads for NNPACK, kept for the process; None runs on the caller."""
    return _library().pthreadpool_create(n) if n > 1 else None


_state = threading.local()  # per calling thread: NNPACK thread count override, workspace buffer


@contextlib.contextmanager
def threads():
    """Run NNPACK on ``torch.get_num_threads()`` threads and PyTorch's own operators on one, inside.

    See the module docstring; restores the thread count on exit. Does nothing without NNPACK.
    """
    n = torch.get_num_threads()
    if not available() or n == 1 or getattr(_state, "threads", None) is not None:
        yield
        return
    _state.threads = n
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
        _state.threads = None


@contextlib.contextmanager
def single_threaded():
    """NNPACK on the calling thread only, inside (for callers running images on parallel threads:
    each image's convolutions then stay on its thread). :func:`threads` inside it does nothing."""
    before = getattr(_state, "threads", None)
    _state.threads = 1
    try:
        yield
    finally:
        _state.threads = before


def _nnpack_threads() -> int:
    return getattr(_state, "threads", None) or torch.get_num_threads()


def _workspace(nbytes: int) -> Tensor:
    buf = getattr(_state, "workspace", None)
    if buf is None or buf.numel() < nbytes:
        buf = _state.workspace = _aligned_bytes(nbytes)
    return buf


def _aligned_bytes(nbytes: int) -> Tensor:
    buf = torch.empty(max(nbytes, 1) + _ALIGNMENT, dtype=torch.uint8)
    offset = -buf.data_ptr() % _ALIGNMENT
    return buf[offset : offset + max(nbytes, 1)]


def choose_algorithm(in_channels: int, out_channels: int, out_height: int, out_width: int) -> str:
    """Winograd F(6x6, 3x3) on 8x8 tiles, except FFT on 16x16 tiles for layers with <= 64 channels
    on both sides and >= 128x128 outputs.

    Measured per VGG19/decoder layer at 256 px (AVX2, best of 5): 64->64 FFT 1.0-1.3x faster on 2
    threads, on par on one; 64->128 and every wider layer Winograd (e.g. 64->128 at 128x128: 12.6
    vs 14.8 ms on 1 thread, 7.6 vs 8.2-8.6 ms on 2); 128->64 FFT 1.05-1.15x faster on 2 threads but
    Winograd 1.1x on one, so Winograd there: the choice must not depend on the thread count, or an
    image's result (to ~1e-6) would depend on whether it ran alone or in a batch."""
    if max(in_channels, out_channels) <= 64 and out_height * out_width >= 128 * 128:
        return "ft16x16"
    return "wt8x8"


class Conv3x3Plan:
    """One ``nn.Conv2d`` (3x3, stride 1, zero padding <= 2) prepared for one input size: its
    kernel transform, computed once, and the workspace size. Stale once the weights change."""

    def __init__(self, conv: nn.Conv2d, height: int, width: int, relu: bool, algorithm: str | None = None):
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        ph, pw = conv.padding
        self.input_size = _Size(width, height)
        self.padding = _Padding(ph, pw, ph, pw)
        self.out_height, self.out_width = height + 2 * ph - 2, width + 2 * pw - 2
        self.algorithm = algorithm or choose_algorithm(self.in_channels, self.out_channels,
                                                       self.out_height, self.out_width)
        self.activation = _RELU if relu else _IDENTITY
        self.weights_version = weights_version(conv)
        weight = conv.weight.detach().float().contiguous()
        self.bias = (conv.bias.detach().float().contiguous() if conv.bias is not None
                     else torch.zeros(self.out_channels))
        self.kernel = _aligned_bytes(self._query(_PRECOMPUTE))
        self._call(_PRECOMPUTE, None, weight.data_ptr(), None, self.kernel, _nnpack_threads())
        self.workspace_bytes = self._query(_REUSE)

    def _query(self, strategy: int) -> int:
        size = ctypes.c_size_t(0)
        self._check(_library().nnp_convolution_inference(
            _ALGORITHMS[self.algorithm], strategy, self.in_channels, self.out_channels, self.input_size,
            self.padding, _Size(3, 3), _Size(1, 1), None, None, None, None, None, ctypes.byref(size),
            self.activation, None, None, None), "workspace query")
        return size.value

    def _call(self, strategy: int, x: int | None, kernel: int, out: int | None, buffer: Tensor, n_threads: int):
        size = ctypes.c_size_t(buffer.numel())
        self._check(_library().nnp_convolution_inference(
            _ALGORITHMS[self.algorithm], strategy, self.in_channels, self.out_channels, self.input_size,
            self.padding, _Size(3, 3), _Size(1, 1), x, kernel, self.bias.data_ptr(), out, buffer.data_ptr(),
            ctypes.byref(size), self.activation, None, _threadpool(n_threads), None), "convolution")

    def _check(self, status: int, what: str) -> None:
        if status != _SUCCESS:
            raise RuntimeError(f"NNPACK {what} failed with status {status} ({self.in_channels}->"
                               f"{self.out_channels} channels, {self.input_size.height}x{self.input_size.width} input, "
                               f"{self.algorithm})")

    def __call__(self, x: Tensor) -> Tensor:
        """Convolve one image ``x`` (1, C, H, W), float32, contiguous, of the planned size."""
        want = (1, self.in_channels, self.input_size.height, self.input_size.width)
        if tuple(x.shape) != want or x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous():
            raise ValueError(f"NNPACK plan planned for a contiguous float32 CPU tensor of shape {want}, "
                             f"got {x.dtype} {tuple(x.shape)} on {x.device}")
        out = torch.empty((1, self.out_channels, self.out_height, self.out_width))
        self._call(_REUSE, x.data_ptr(), self.kernel.data_ptr(), out.data_ptr(),
                   _workspace(self.workspace_bytes), _nnpack_threads())
        return out


def weights_version(conv: nn.Conv2d) -> tuple:
    """Changes whenever the weights do (in-place updates bump ``_version``; new tensors, the pointer)."""
    return tuple(None if t is None else (t.data_ptr(), _counter(t)) for t in (conv.weight, conv.bias))


def _counter(t: Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # an inference tensor (created under inference mode) has no counter
        return None


#: Plans per convolution module, keyed by (height, width, relu); at most _PLANS_PER_CONV sizes each
#: (a transformed kernel takes 4-16x the weights' memory, e.g. 33 MB for VGG19's conv4_1).
_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PLANS_PER_CONV = 2
_plans_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child has only the forking thread: a thread pool made before the fork has no
    threads there (PyTorch guards its own pools likewise), and another thread may have held the
    plan lock at the fork. Both made anew."""
    global _plans_lock
    _threadpool.cache_clear()
    _plans_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def conv3x3(conv: nn.Conv2d, x: Tensor, relu: bool = False) -> Tensor | None:
    """``conv(x)`` (then ReLU if ``relu``) for one image through NNPACK, or None where unavailable.

    ``conv``: 3x3, stride 1, dilation 1, one group, zero padding of at most 2; ``x``: (1, C, H, W)
    float32 on CPU. Same values as ``conv`` to ~1e-6 relative (float32 transform rounding).
    """
    if not available():
        return None
    x = x.contiguous()
    key, version = (x.shape[-2], x.shape[-1], relu), weights_version(conv)
    if any(v is not None and v[1] is None for v in version):
        return Conv3x3Plan(conv, *key)(x)  # inference-tensor weights: no counter tells when they change
    with _plans_lock:
        per_conv = _plans.setdefault(conv, {})
        plan = per_conv.get(key)
        if plan is None or plan.weights_version != version:
            per_conv.pop(key, None)
            while len(per_conv) >= _PLANS_PER_CONV:
                per_conv.pop(next(iter(per_conv)))
            plan = per_conv[key] = Conv3x3Plan(conv, *key)
    return plan(x)


@functools.cache
def available() -> bool:
    """The direct NNPACK path works here: symbols found and one small convolution (with and
    without the fused ReLU, both algorithms) equal to ``F.conv2d``; warns once if they differ."""
    if _library() is None:
        return False
    with torch.inference_mode(False), torch.random.fork_rng(devices=[]):  # the caller's RNG untouched
        return _matches_conv2d()


def _matches_conv2d() -> bool:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 20, 20, generator=gen)
    for padding, out_ch, relu in ((1, 16, False), (0, 16, True)):
        conv = nn.Conv2d(8, out_ch, 3, padding=padding)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.1)
        for algorithm in _ALGORITHMS:
            try:
                got = Conv3x3Plan(conv, 20, 20, relu, algorithm)(x)
            except RuntimeError as err:
                warnings.warn(f"ctxstyle.fast.nnpack: disabled, {err}", RuntimeWarning, stacklevel=2)
                return False
            with torch.no_grad():
                want = F.conv2d(x, conv.weight, conv.bias, padding=padding)
                want = want.relu() if relu else want
            if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
                warnings.warn("ctxstyle.fast.nnpack: disabled, NNPACK's result differs from F.conv2d "
                              f"(max abs difference {float((got - want).abs().max()):.2e})",
                              RuntimeWarning, stacklevel=2)
                return False
    return True
