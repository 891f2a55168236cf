"""Gray-scale augmentations for segmentation training: the copy plan, histogram matching,
stylized copies, and classical (nnU-Net-style) intensity augmentation.

**One budget for every augmentation.** A :class:`CopyPlan` fixes, once per experiment seed,
which training slice gets an augmented copy in which target style and with which unlabelled
style-bank reference image: copy ``j`` of slice ``i`` gets target style
``targets[(offset_i + j) % len(targets)]`` (``offset_i`` = a seeded random permutation of the
slices modulo the number of targets, so every target style gets the same number of copies, and
with ``copies_per_slice == len(targets)`` every slice is copied once into every target style)
and a reference drawn uniformly from that style's bank. Style transfer (any decoder) and histogram
matching turn the *same* (content, reference) pairs into copies; the oracle renders the same
(slice, style) pairs with the true style; classical augmentation augments a sample on the fly
with probability ``copies / (1 + copies)``, the share of augmented images in the other sets.
Masks are never changed: every augmentation here keeps the anatomy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError

__all__ = ["CopyPlan", "copy_plan", "gather_copies", "histogram_match_copies", "stylize_copies",
           "IntensityAugment"]


@dataclass(frozen=True)
class CopyPlan:
    """Which slice (``content``) is copied into which ``style`` with which reference (``ref``)."""

    content: np.ndarray  # (K,) int index into the training slices
    style: np.ndarray  # (K,) str target style name
    ref: np.ndarray  # (K,) int index into that style's reference bank
    styles: tuple[str, ...]
    n_refs: int
    seed: int

    def __len__(self) -> int:
        return int(len(self.content))

    def counts(self) -> dict[str, int]:
        """Copies per target style."""
        return {s: int(np.sum(self.style == s)) for s in self.styles}

    def to_dict(self) -> dict:
        return {"copies": len(self), "styles": list(self.styles), "n_refs": self.n_refs,
                "seed": self.seed, "per_style": self.counts()}


def copy_plan(n_slices: int, styles: Sequence[str], copies_per_slice: int = 1, n_refs: int = 16,
              seed: int = 0) -> CopyPlan:
    """The seeded copy plan (see the module docstring); ``n_slices * copies_per_slice`` copies."""
    styles = tuple(styles)
    if n_slices < 1 or not styles:
        raise InputError("copy_plan", "needs at least one slice and one target style")
    if copies_per_slice < 1 or n_refs < 1:
        raise InputError("copy_plan", "copies_per_slice and n_refs must be >= 1")
    rng = np.random.default_rng([int(seed), 4242])
    offset = rng.permutation(n_slices) % len(styles)  # balanced: styles differ by <= 1 copy
    content = np.repeat(np.arange(n_slices), copies_per_slice)
    j = np.tile(np.arange(copies_per_slice), n_slices)
    style_idx = (offset[content] + j) % len(styles)
    ref = rng.integers(0, n_refs, size=len(content))
    return CopyPlan(content, np.array(styles)[style_idx], ref, styles, int(n_refs), int(seed))


def _check_bank(refs_by_style: Mapping[str, np.ndarray], plan: CopyPlan) -> None:
    for s in plan.styles:
        if s not in refs_by_style:
            raise InputError("references", f"no reference bank for style {s!r}")
        if len(refs_by_style[s]) < plan.n_refs:
            raise InputError("references", f"style {s!r} has {len(refs_by_style[s])} references, plan needs {plan.n_refs}")


def gather_copies(images_by_style: Mapping[str, np.ndarray], plan: CopyPlan) -> np.ndarray:
    """Copies taken from images already rendered per style (the oracle): ``images_by_style[s][i]``."""
    out = [images_by_style[s][i] for i, s in zip(plan.content, plan.style)]
    return np.stack(out).astype(np.float32, copy=False)


def histogram_match_copies(contents: np.ndarray, refs_by_style: Mapping[str, np.ndarray],
                           plan: CopyPlan) -> np.ndarray:
    """Each planned copy: the content slice's gray values mapped so that its histogram matches its
    reference's (``skimage.exposure.match_histograms``, whole slice). (K, H, W) float32 in [0, 1]."""
    from skimage.exposure import match_histograms

    _check_bank(refs_by_style, plan)
    out = np.empty((len(plan), *contents.shape[1:]), np.float32)
    for k, (i, s, r) in enumerate(zip(plan.content, plan.style, plan.ref)):
        out[k] = match_histograms(contents[i], refs_by_style[s][r])
    return np.clip(out, 0.0, 1.0)


@torch.no_grad()
def stylize_copies(stylizer, contents: np.ndarray, refs_by_style: Mapping[str, np.ndarray],
                   plan: CopyPlan, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Each planned copy: the content slice stylized by ``stylizer`` (a
    :class:`ctxstyle.stylize.Stylizer`) with its reference's style features (paper eqs 1-3 at
    inference: AdaIN of the content features to the reference's statistics, then the decoder).
    Output clipped to [0, 1]; (K, H, W) float32. Contents sharing a reference are batched."""
    from tqdm.auto import tqdm

    _check_bank(refs_by_style, plan)
    out = np.empty((len(plan), *contents.shape[1:]), np.float32)
    groups: dict[tuple[str, int], list[int]] = {}
    for k, (s, r) in enumerate(zip(plan.style, plan.ref)):
        groups.setdefault((str(s), int(r)), []).append(k)
    for (s, r), ks in tqdm(sorted(groups.items()), disable=not progress, desc="stylize copies"):
        feats = stylizer.style_features(torch.from_numpy(refs_by_style[s][r][None, None].copy()))
        content = torch.from_numpy(contents[plan.content[ks]][:, None].copy())
        res = stylizer(content, style_feats=feats, batch_size=batch_size)
        out[ks] = res[:, 0].clamp(0.0, 1.0).cpu().numpy()
    return out


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (1, 1, H, W) with reflect padding."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < radius:
        k = k[radius - pad: radius + pad + 1]
        k = k / k.sum()
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), k.view(1, 1, -1, 1))


@dataclass(frozen=True)
class IntensityAugment:
    """Classical on-the-fly intensity augmentation with nnU-Net's default transforms and ranges
    (Isensee et al., Nature Methods 2021; batchgenerators), for images in [0, 1].

    A sample is augmented with probability ``p_sample``; an augmented sample gets each transform
    below independently with probability ``p_each`` (at least one), in nnU-Net's order:

    1. Gaussian noise, variance ~ U(0, 0.1) in units of the image's own variance (nnU-Net draws
       it on z-scored images);
    2. Gaussian blur, sigma ~ U(0.5, 1.0) px;
    3. multiplicative brightness, factor ~ U(0.75, 1.25);
    4. contrast around the image mean, factor ~ U(0.75, 1.25), clipped to the image's range;
    5. gamma ~ U(0.7, 1.5) (``x ** gamma``), on the inverted image ``1 - (1 - x) ** gamma`` with
       probability ``p_invert``;

    then the result is clipped to [0, 1]. Randomness comes only from the ``torch.Generator``.
    """

    p_sample: float = 0.5
    p_each: float = 0.5
    noise_var: tuple[float, float] = (0.0, 0.1)
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    brightness: tuple[float, float] = (0.75, 1.25)
    contrast: tuple[float, float] = (0.75, 1.25)
    gamma: tuple[float, float] = (0.7, 1.5)
    p_invert: float = 0.15

    TRANSFORMS = ("noise", "blur", "brightness", "contrast", "gamma")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def _u(self, lo_hi: tuple[float, float], gen: torch.Generator) -> float:
        lo, hi = lo_hi
        return float(lo + (hi - lo) * torch.rand((), generator=gen))

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Augment a batch (N, 1, H, W) in [0, 1]; returns a new tensor of the same shape."""
        if images.dim() != 4 or images.shape[1] != 1:
            raise InputError("images", f"expected (N, 1, H, W), got {tuple(images.shape)}")
        out = images.clone()
        n = images.shape[0]
        chosen = torch.rand(n, generator=generator) < self.p_sample
        for i in torch.nonzero(chosen).flatten().tolist():
            which = torch.rand(len(self.TRANSFORMS), generator=generator) < self.p_each
            if not which.any():
                which[int(torch.randint(len(self.TRANSFORMS), (), generator=generator))] = True
            x = out[i: i + 1]
            if which[0]:
                sd = math.sqrt(self._u(self.noise_var, generator)) * float(x.std())
                x = x + sd * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            if which[1]:
                x = _gaussian_blur(x, self._u(self.blur_sigma, generator))
            if which[2]:
                x = x * self._u(self.brightness, generator)
            if which[3]:
                lo, hi, m = x.min(), x.max(), x.mean()
                x = ((x - m) * self._u(self.contrast, generator) + m).clamp(lo, hi)
            if which[4]:
                g = self._u(self.gamma, generator)
                x = x.clamp(0.0, 1.0)
                if float(torch.rand((), generator=generator)) < self.p_invert:
                    x = 1.0 - (1.0 - x) ** g
                else:
                    x = x ** g
            out[i: i + 1] = x.clamp(0.0, 1.0)
        return out
