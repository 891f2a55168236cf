"""Intensity augmentations a domain-generalisation study compares style transfer with (issue 15).

Each is an on-the-fly augmentation of a U-Net training batch with the interface of
:class:`ctxstyle.experiments.augment.IntensityAugment` (``aug(images (N, 1, H, W), generator)`` ->
new tensor; ``to_dict()`` for run hashes; randomness only from the ``torch.Generator``), written
from its paper:

* :class:`NnUNetV2Intensity`: nnU-Net v2's default intensity transforms with their published
  probabilities and ranges (Isensee et al., Nature Methods 2021; ``nnUNetTrainer``'s training
  transforms with batchgeneratorsv2): noise 0.1 (SD ~ U(0, 0.1) of z-scored data), blur 0.2 (then
  0.5 per channel, one sigma per axis), brightness 0.15, contrast 0.15, low resolution 0.25 (0.5
  per channel; nearest down, linear up), inverted gamma 0.1, gamma 0.3, each gamma keeping mean
  and std. It is applied with its own probabilities (about 2 samples in 3 change), not through
  :class:`SampleShare`;
* :class:`BigAugIntensity`: a BigAug-style stack (Zhang et al., IEEE TMI 2020, "deep stacked
  transformation"): blur or sharpen, noise, brightness, contrast and an intensity perturbation,
  each with probability 0.5 (its spatial transforms are left out: the comparison is about gray
  scales);
* :class:`RandomWindowLUT`: the cheap generator of "other gray scales": the slice taken back to HU
  through the source window, a random window over generic CT display ranges (level -500..1000 HU,
  width 200..4000 HU; not fitted to the target styles), then a random monotone display curve;
* :class:`GIN`: global intensity non-linear augmentation (Ouyang et al., IEEE TMI 2022): a freshly
  drawn shallow convolutional network (4 layers, 2 channels, 1x1 or 3x3 kernels, Gaussian weights,
  leaky ReLU), mixed with the input by a uniform weight and rescaled to the input's Frobenius norm;
* :class:`RandConv`: random convolutions (Xu et al., ICLR 2021): one freshly drawn convolution of
  size 1, 3, 5 or 7 with Kaiming-normal weights, mixed with the input by a uniform weight.

Version 2 (in every ``to_dict``, so that cached U-Nets of version 1 retrain): nnU-Net noise as SD,
per-axis blur sigma, linear upsampling; GIN's leaky ReLU at 0.01; RandConv zero-padded; generic
window ranges. GIN and RandConv outputs are not clipped (a negative random kernel would otherwise turn the slice
black while its mask stays): as in their papers, the network sees whatever range they produce.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ctxstyle.experiments.augment import gaussian_blur
from ctxstyle.images import as_image_batch

__all__ = ["NnUNetV2Intensity", "BigAugIntensity", "RandomWindowLUT", "GIN", "RandConv", "SampleShare", "DG_AUGMENTS"]


def _u(lo: float, hi: float, gen: torch.Generator) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=gen))


def _chance(p: float, gen: torch.Generator) -> bool:
    return bool(torch.rand((), generator=gen) < p)


def _around_one(lo: float, hi: float, gen: torch.Generator) -> float:
    """batchgenerators' ``BGContrast``: below or above 1 with equal chance, uniform on that side."""
    if _chance(0.5, gen) and lo < 1:
        return _u(lo, 1.0, gen)
    return _u(max(lo, 1.0), hi, gen)


def _gamma(x: Tensor, gamma: float, invert: bool, retain_stats: bool) -> Tensor:
    """batchgenerators' gamma transform of one image: ``((x - min) / range) ** gamma`` back on the
    image's range, on ``-x`` when ``invert``, then the mean and std restored."""
    x = -x if invert else x
    mean, sd = x.mean(), x.std()
    lo, rng = x.min(), x.max() - x.min()
    x = ((x - lo) / (rng + 1e-7)).pow(gamma) * rng + lo
    if retain_stats:
        x = (x - x.mean()) / (x.std() + 1e-8) * sd + mean
    return -x if invert else x


def _batch(images, name: str = "images") -> Tensor:
    return as_image_batch(images, name).clone()


#: Bumped whenever an augmentation's draws change: it is part of every ``to_dict`` (U-Net run keys).
VERSION = 2


class _Augment:
    """Shared plumbing: a dataclass of ranges, ``to_dict`` with a ``kind``, per-image application."""

    def to_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {"kind": type(self).__name__, "version": VERSION, **d}

    def one(self, x: Tensor, gen: torch.Generator) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Augment a batch (N, 1, H, W); returns a new tensor (clipped to [0, 1] unless stated)."""
        out = _batch(images)
        for i in range(out.shape[0]):
            out[i: i + 1] = self.one(out[i: i + 1], generator)
        return out


@dataclass(frozen=True)
class NnUNetV2Intensity(_Augment):
    """nnU-Net v2's default intensity augmentation (module docstring), on images in [0, 1]: the noise
    SD is in units of the image's own SD (nnU-Net draws it on z-scored images)."""

    p_noise: float = 0.1
    noise_var: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    p_blur_channel: float = 0.5
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    p_low_res: float = 0.25
    p_low_res_channel: float = 0.5
    low_res_scale: tuple[float, float] = (0.5, 1.0)
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)

    def one(self, x: Tensor, gen: torch.Generator) -> Tensor:
        if _chance(self.p_noise, gen):
            sd = _u(*self.noise_var, gen) * float(x.std())
            x = x + sd * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        if _chance(self.p_blur, gen) and _chance(self.p_blur_channel, gen):
            x = gaussian_blur(x, _u(*self.blur_sigma, gen), _u(*self.blur_sigma, gen))  # one sigma per axis
        if _chance(self.p_brightness, gen):
            x = x * _around_one(*self.brightness, gen)
        if _chance(self.p_contrast, gen):
            lo, hi, m = x.min(), x.max(), x.mean()
            x = ((x - m) * _around_one(*self.contrast, gen) + m).clamp(lo, hi)  # preserve_range
        if _chance(self.p_low_res, gen) and _chance(self.p_low_res_channel, gen):
            h, w = x.shape[-2:]
            s = _u(*self.low_res_scale, gen)
            small = F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="nearest")
            x = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        if _chance(self.p_gamma_inverted, gen):
            x = _gamma(x, _around_one(*self.gamma, gen), invert=True, retain_stats=True)
        if _chance(self.p_gamma, gen):
            x = _gamma(x, _around_one(*self.gamma, gen), invert=False, retain_stats=True)
        return x.clamp(0.0, 1.0)


@dataclass(frozen=True)
class BigAugIntensity(_Augment):
    """The intensity part of BigAug (module docstring); each transform with probability ``p``."""

    p: float = 0.5
    blur_sigma: tuple[float, float] = (0.25, 1.5)
    sharpen_sigma: tuple[float, float] = (0.5, 1.0)
    sharpen_sigma2: float = 0.5
    sharpen_alpha: tuple[float, float] = (10.0, 30.0)
    noise_sd: tuple[float, float] = (0.1, 1.0)  # in units of the image's std
    brightness_shift: tuple[float, float] = (-0.1, 0.1)
    contrast: tuple[float, float] = (0.65, 1.5)
    perturbation_scale: tuple[float, float] = (-0.1, 0.1)

    def one(self, x: Tensor, gen: torch.Generator) -> Tensor:
        if _chance(self.p, gen):  # image quality: blurred, or sharpened by unsharp masking of a blurred copy
            if _chance(0.5, gen):
                x = gaussian_blur(x, _u(*self.blur_sigma, gen))
            else:
                b1 = gaussian_blur(x, _u(*self.sharpen_sigma, gen))
                x = b1 + _u(*self.sharpen_alpha, gen) * (b1 - gaussian_blur(b1, self.sharpen_sigma2))
        if _chance(self.p, gen):
            sd = _u(*self.noise_sd, gen) * float(x.std())
            x = x + sd * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        if _chance(self.p, gen):  # appearance
            x = x + _u(*self.brightness_shift, gen)
        if _chance(self.p, gen):
            m = x.mean()
            x = (x - m) * _u(*self.contrast, gen) + m
        if _chance(self.p, gen):  # intensity perturbation: a random linear ramp of scale and shift
            h, w = x.shape[-2:]
            yy = torch.linspace(-1, 1, h, dtype=x.dtype).view(h, 1)
            xx = torch.linspace(-1, 1, w, dtype=x.dtype).view(1, w)
            a, b = _u(*self.perturbation_scale, gen), _u(*self.perturbation_scale, gen)
            x = x * (1 + a * yy + b * xx).to(x.device)
        return x.clamp(0.0, 1.0)


@dataclass(frozen=True)
class RandomWindowLUT(_Augment):
    """A random window on the HU behind the source rendering, then a random monotone display curve.

    The slice in [0, 1] is mapped back to HU through the source window (``source_level``,
    ``source_width``), windowed with a level ~ U(``level``) and width ~ U(``width``), and passed
    through a piecewise-linear increasing curve with ``knots`` interior knots (Dirichlet(1)
    increments): every output is a monotone function of the input, a new gray scale per image."""

    p: float = 1.0
    source_level: float = 500.0
    source_width: float = 2000.0
    level: tuple[float, float] = (-500.0, 1000.0)
    width: tuple[float, float] = (200.0, 4000.0)
    knots: int = 4

    def one(self, x: Tensor, gen: torch.Generator) -> Tensor:
        if not _chance(self.p, gen):
            return x
        hu = (x - 0.5) * self.source_width + self.source_level
        level, width = _u(*self.level, gen), _u(*self.width, gen)
        v = ((hu - (level - width / 2)) / width).clamp(0.0, 1.0)
        grid = torch.linspace(0, 1, self.knots + 2, dtype=x.dtype)
        steps = -torch.log(torch.rand(self.knots + 1, generator=gen, dtype=x.dtype).clamp_min(1e-12))
        values = torch.cat([torch.zeros(1, dtype=x.dtype), torch.cumsum(steps / steps.sum(), 0)])
        idx = torch.clamp(torch.bucketize(v.flatten().cpu(), grid[1:-1]), 0, self.knots)
        t = (v.flatten().cpu() - grid[idx]) / (grid[idx + 1] - grid[idx])
        out = values[idx] + t * (values[idx + 1] - values[idx])
        return out.view_as(x).to(x.device).clamp(0.0, 1.0)


@dataclass(frozen=True)
class GIN(_Augment):
    """Global intensity non-linear augmentation (module docstring). Not clipped: the output keeps
    the input's Frobenius norm, as in the paper."""

    layers: int = 4
    channels: int = 2
    kernel_sizes: tuple[int, ...] = (1, 3)
    negative_slope: float = 0.01

    def one(self, x: Tensor, gen: torch.Generator) -> Tensor:
        h = x
        for k in range(self.layers):
            c_in = 1 if k == 0 else self.channels
            c_out = 1 if k == self.layers - 1 else self.channels
            size = self.kernel_sizes[int(torch.randint(len(self.kernel_sizes), (), generator=gen))]
            w = torch.randn((c_out, c_in, size, size), generator=gen, dtype=x.dtype).to(x.device)
            b = torch.randn(c_out, generator=gen, dtype=x.dtype).to(x.device)
            h = F.conv2d(h, w, b, padding=size // 2)
            if k < self.layers - 1:
                h = F.leaky_relu(h, self.negative_slope)
        alpha = _u(0.0, 1.0, gen)
        mixed = alpha * h + (1 - alpha) * x
        return mixed * (x.norm() / mixed.norm().clamp_min(1e-12))


@dataclass(frozen=True)
class RandConv(_Augment):
    """Random convolution with mixing (module docstring); not clipped."""

    kernel_sizes: tuple[int, ...] = (1, 3, 5, 7)

    def one(self, x: Tensor, gen: torch.Generator) -> Tensor:
        size = self.kernel_sizes[int(torch.randint(len(self.kernel_sizes), (), generator=gen))]
        w = torch.randn((1, 1, size, size), generator=gen, dtype=x.dtype) / math.sqrt(size * size)  # Kaiming normal
        y = F.conv2d(x, w.to(x.device), padding=size // 2)
        alpha = _u(0.0, 1.0, gen)
        return alpha * x + (1 - alpha) * y


@dataclass(frozen=True)
class SampleShare:
    """``augment`` applied to each sample of a batch with probability ``p_sample`` (the others pass
    unchanged): every augmentation of Table 2 changes the same share of the U-Net's training
    samples (the stylized sets: copies / (sources + copies))."""

    augment: object
    p_sample: float

    def to_dict(self) -> dict:
        return {"kind": "SampleShare", "version": VERSION, "p_sample": float(self.p_sample),
                "augment": self.augment.to_dict()}

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        out = _batch(images)
        chosen = torch.nonzero(torch.rand(out.shape[0], generator=generator) < self.p_sample).flatten()
        if len(chosen):
            out[chosen] = self.augment(out[chosen], generator)
        return out


#: Name -> augmentation with its paper's defaults.
DG_AUGMENTS = {"nnunet_v2": NnUNetV2Intensity(), "bigaug": BigAugIntensity(), "window_lut": RandomWindowLUT(),
               "gin": GIN(), "randconv": RandConv()}
