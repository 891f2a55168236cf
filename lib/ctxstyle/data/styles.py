"""Gray-scale style domains: realistic ways one CT slice (in HU) ends up as different gray values.

A :class:`GrayStyle` applies, in this order (each step optional):

1. **site calibration** in HU: ``hu * hu_scale + hu_offset``, and ``bone_scale`` multiplies
   positive HU only (a lower tube voltage raises bone and contrast HU much more than water/fat);
   ``hu_knots`` (pairs HU in -> HU out, linear between them) may bend it, also non-monotonically
   (a calibration that swaps tissues' order);
1b. **bias field** in HU: a smooth seeded field (white noise blurred with sigma ``bias_mm``, peak
   ``bias_hu``): scatter / beam-hardening inhomogeneity that shifts one tissue differently across
   the slice;
2. **dose noise** in HU (before the kernel, so a sharp kernel amplifies it, as in a real
   reconstruction): white Gaussian noise, lightly correlated (Gaussian, sigma ``noise_corr_mm``),
   SD ``noise_hu`` per pixel;
3. **reconstruction kernel**: ``smooth_mm`` Gaussian blur (sigma in mm) for a soft kernel, or
   unsharp masking ``hu + sharpen * (hu - blur(hu, sharpen_mm))`` for a sharp (bone) kernel;
4. **window** ``level`` / ``width`` mapped linearly to [0, 1] and clipped (DICOM VOI LINEAR);
5. **display LUT**: ``v ** gamma``, then ``out_low + (out_high - out_low) * v``.

Every length is in millimetres and converted to pixels with the image's pixel spacing
(``spacing_mm``, a required argument of :meth:`GrayStyle.apply`), so a style is the same physical
change at every resolution: ``site_shift`` blurs 1.2 mm whether a slice has 64, 128 or 256 pixels
across its 128 mm field of view. Each style is reproducible from its name and a seed (the seed
only drives the noise).
The source domain (labelled training data) is ``bone``; :data:`TARGET_STYLES` lists the
target domains of the protocol.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, replace

import numpy as np

from ctxstyle.errors import InputError

__all__ = ["GrayStyle", "STYLES", "SOURCE_STYLE", "TARGET_STYLES", "HARD_STYLES", "list_styles", "get_style",
           "apply_style", "window", "monotone_lut_rmse"]


@dataclass(frozen=True)
class GrayStyle:
    """One gray-scale domain (see the module docstring for the order of operations)."""

    name: str
    description: str
    level: float = 500.0
    width: float = 2000.0
    hu_scale: float = 1.0
    hu_offset: float = 0.0
    bone_scale: float = 1.0
    hu_knots: tuple[tuple[float, float], ...] = ()
    bias_hu: float = 0.0
    bias_mm: float = 40.0
    noise_hu: float = 0.0
    noise_corr_mm: float = 0.6
    smooth_mm: float = 0.0
    sharpen: float = 0.0
    sharpen_mm: float = 1.0
    gamma: float = 1.0
    out_low: float = 0.0
    out_high: float = 1.0
    role: str = "extra"  # "source" | "target" | "hard" (not a monotone LUT of the source) | "extra"

    def apply(self, hu: np.ndarray, seed: int = 0, *, spacing_mm: float) -> np.ndarray:
        """Render HU (H, W) or (N, H, W) with pixels of ``spacing_mm`` in this style: float32 in [0, 1]."""
        from scipy import ndimage

        x = _check_hu(hu)
        spacing = float(spacing_mm)
        if not np.isfinite(spacing) or spacing <= 0:
            raise InputError("spacing_mm", f"must be a positive pixel size in mm, got {spacing_mm!r}")
        spatial = (0.0, 1.0, 1.0) if x.ndim == 3 else (1.0, 1.0)
        sig = lambda mm: tuple(mm / spacing * a for a in spatial)  # noqa: E731  blur H, W only, mm -> px
        if self.hu_scale != 1.0 or self.hu_offset != 0.0:
            x = x * np.float32(self.hu_scale) + np.float32(self.hu_offset)
        if self.bone_scale != 1.0:
            x = np.where(x > 0, x * np.float32(self.bone_scale), x)
        if self.hu_knots:
            knots = np.asarray(self.hu_knots, np.float64)
            x = np.interp(x, knots[:, 0], knots[:, 1]).astype(np.float32)
        if self.bias_hu > 0:  # its own stream: adding it leaves the noise of other styles as it was
            rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(self.name.encode()), 1])
            field = ndimage.gaussian_filter(rng.standard_normal(x.shape, dtype=np.float32), sig(self.bias_mm),
                                            mode="wrap")
            field -= field.mean(axis=(-2, -1), keepdims=True)  # a spatial variation, not an offset per slice
            x = x + field * np.float32(self.bias_hu / max(float(np.abs(field).max()), 1e-12))
        if self.noise_hu > 0:
            rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(self.name.encode())])
            noise = rng.standard_normal(x.shape, dtype=np.float32)
            noise = ndimage.gaussian_filter(noise, sig(self.noise_corr_mm))
            noise *= np.float32(self.noise_hu) / max(float(noise.std()), 1e-6)
            x = x + noise
        if self.smooth_mm > 0:
            x = ndimage.gaussian_filter(x, sig(self.smooth_mm), mode="nearest")
        if self.sharpen > 0:
            blur = ndimage.gaussian_filter(x, sig(self.sharpen_mm), mode="nearest")
            x = x + np.float32(self.sharpen) * (x - blur)
        v = window(x, self.level, self.width)
        if self.gamma != 1.0:
            v = v ** np.float32(self.gamma)
        if self.out_low != 0.0 or self.out_high != 1.0:
            v = np.float32(self.out_low) + np.float32(self.out_high - self.out_low) * v
        return np.clip(v, 0.0, 1.0).astype(np.float32, copy=False)

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "GrayStyle":
        """A modified copy (e.g. ``STYLES['bone'].replace(name='bone_w1500', width=1500)``)."""
        return replace(self, **changes)


def window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Linear window: ``(hu - (level - width/2)) / width`` clipped to [0, 1], float32."""
    lo = np.float32(level - width / 2.0)
    return np.clip((np.asarray(hu, np.float32) - lo) / np.float32(width), 0.0, 1.0)


def _check_hu(hu) -> np.ndarray:
    x = np.asarray(hu, dtype=np.float32)
    if x.ndim not in (2, 3):
        raise InputError("hu", f"expected (H, W) or (N, H, W) HU array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise InputError("hu", f"{int(np.count_nonzero(~np.isfinite(x)))} NaN/inf values")
    return x


_STYLE_LIST = [
    GrayStyle("bone", "SOURCE. Bone window W2000/L500, standard kernel: how the labelled "
              "spine scans are read.", 500, 2000, role="source"),
    GrayStyle("soft_tissue", "Abdominal soft-tissue window W400/L40: all bone saturates white, "
              "muscle/fat contrast dominates (another department's default export).", 40, 400,
              role="target"),
    GrayStyle("wide_gamma", "Very wide window W3500/L300 with display gamma 0.6: bright, "
              "washed-out, low contrast (PACS export with a non-linear display LUT).", 300, 3500,
              gamma=0.6, role="target"),
    GrayStyle("sharp_noisy", "Low-dose scan, sharp bone kernel: 45 HU dose noise amplified by "
              "unsharp masking (amount 1.5, sigma 1 mm), bone window W1500/L400.", 400, 1500,
              noise_hu=45.0, sharpen=1.5, sharpen_mm=1.0, role="target"),
    GrayStyle("dark_lowcontrast", "Dark, low-contrast display LUT: window W2600/L700, gamma 1.4, "
              "output compressed to [0.05, 0.6] (old console / digitised film look).", 700, 2600,
              gamma=1.4, out_low=0.05, out_high=0.6, role="target"),
    GrayStyle("site_shift", "Another site: 80 kVp-like calibration (positive HU x1.35, "
              "+40 HU offset), soft kernel (Gaussian 1.2 mm), spine window W1200/L250.", 250, 1200,
              hu_offset=40.0, bone_scale=1.35, smooth_mm=1.2, role="target"),
    GrayStyle("spine", "Narrow bone ('spine') window W1200/L300, standard kernel: trabecular "
              "detail.", 300, 1200),
    # Styles no single monotone lookup table of the source image produces (monotone_lut_rmse):
    GrayStyle("lowdose_bias", "Low-dose scan with inhomogeneity: 35 HU dose noise, soft kernel (0.8 mm), a "
              "smooth +-120 HU bias field over ~40 mm (scatter / beam hardening), window W1500/L400.", 400, 1500,
              noise_hu=35.0, smooth_mm=0.8, bias_hu=120.0, bias_mm=40.0, role="hard"),
    GrayStyle("tissue_swap", "A calibration that is not monotone between tissues: fat (-100 HU) read as +80 HU, "
              "brighter than water and muscle, the rest unchanged (a failed material calibration); window "
              "W1000/L150.", 150, 1000, hu_knots=((-1024.0, -1024.0), (-250.0, -250.0), (-100.0, 80.0), (-20.0, -20.0),
                                                 (3071.0, 3071.0)), role="hard"),
    GrayStyle("wide", "Full-range window W4000/L0, linear: nearly flat gray.", 0, 4000),
]

#: Every named style, name -> GrayStyle.
STYLES: dict[str, GrayStyle] = {s.name: s for s in _STYLE_LIST}
#: The labelled training domain.
SOURCE_STYLE = "bone"
#: The unlabelled target domains of the protocol.
TARGET_STYLES: tuple[str, ...] = tuple(s.name for s in _STYLE_LIST if s.role == "target")
#: Styles that are not a lookup table of the source image by construction: a spatially varying bias
#: field, a non-monotone calibration (not yet in the protocol; sharp_noisy and site_shift are not
#: LUTs either, through noise and the reconstruction kernel).
HARD_STYLES: tuple[str, ...] = tuple(s.name for s in _STYLE_LIST if s.role == "hard")


def list_styles() -> list[str]:
    """Names of all styles (source first, then targets, then extras)."""
    return list(STYLES)


def get_style(style: str | GrayStyle) -> GrayStyle:
    if isinstance(style, GrayStyle):
        return style
    try:
        return STYLES[style]
    except KeyError:
        raise InputError("style", f"unknown style {style!r}; known: {list_styles()}") from None


def monotone_lut_rmse(source: np.ndarray, target: np.ndarray) -> float:
    """How far ``target`` is from any monotone lookup table of ``source`` (same shape, gray values):
    the RMSE of the best non-decreasing or non-increasing function of the source pixel value
    predicting the target pixel value (isotonic regression, pool-adjacent-violators). 0 for a
    window, gamma or display LUT of the source where the source is not clipped (a target window
    wider than the source's also separates HU that the source clipped to one value); positive where
    noise, blur, a bias field or a non-monotone calibration make equal source values land on
    different target values."""
    x, y = np.asarray(source, np.float64).ravel(), np.asarray(target, np.float64).ravel()
    if x.shape != y.shape or x.size == 0:
        raise InputError("target", f"needs as many pixels as source: {y.size} vs {x.size}")
    keys, inverse = np.unique(x, return_inverse=True)  # equal source values share one LUT entry
    w = np.bincount(inverse).astype(np.float64)
    mean = np.bincount(inverse, weights=y) / w

    def isotonic_sse(m: np.ndarray) -> float:
        vals, wts, sizes = [], [], []
        for v, wi in zip(m, w):
            vals.append(v); wts.append(wi); sizes.append(1)
            while len(vals) > 1 and vals[-2] > vals[-1]:
                wt = wts[-2] + wts[-1]
                v2 = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / wt
                n = sizes[-2] + sizes[-1]
                del vals[-1], wts[-1], sizes[-1]
                vals[-1], wts[-1], sizes[-1] = v2, wt, n
        fit = np.repeat(vals, sizes)
        return float((w * (m - fit) ** 2).sum())

    within = float(((y - mean[inverse]) ** 2).sum())  # no LUT can split one source value
    best = min(isotonic_sse(mean), isotonic_sse(-mean))
    return float(np.sqrt((within + best) / x.size))


def apply_style(hu: np.ndarray, style: str | GrayStyle, seed: int = 0, *, spacing_mm: float) -> np.ndarray:
    """Render HU (H, W) or (N, H, W) with pixels of ``spacing_mm`` in a named style: float32 in
    [0, 1], same shape."""
    return get_style(style).apply(hu, seed=seed, spacing_mm=spacing_mm)
