"""Small helpers for the teaching notebooks (01 AdaIN, 02 contextual loss).

* :func:`contextual_steps` computes the contextual loss (paper eqs 4-10) one equation at a time
  with every intermediate matrix kept, for display. It materialises (N, Ng, Nt) matrices in
  float64, so it is for small feature maps only; training uses the chunked
  :func:`ctxstyle.fast.contextual.contextual_loss`, and the two give the same value (tested).
* :func:`shift_image` and :func:`elastic_deform` misalign a slice in controlled ways, and
  :func:`misalignment_losses` compares the contextual loss with feature and pixel MSE on them.
* :func:`channel_stats` tabulates per-channel means and standard deviations (eqs 2-3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ctxstyle.method.function import mean_std
from ctxstyle.errors import InputError
from ctxstyle.fast.contextual import contextual_loss

__all__ = [
    "ContextualSteps",
    "channel_stats",
    "contextual_steps",
    "elastic_deform",
    "misalignment_losses",
    "normalise_to_first_nonzero",
    "shift_image",
]


@dataclass
class ContextualSteps:
    """Every intermediate of eqs 4-10 for a batch of N feature pairs (float64).

    Matrices are (N, Ng, Nt): row i is a generated position, column j a target position.
    """

    mu: Tensor  # (N, C) eq 4: the target's mean feature
    d: Tensor  # eq 5: cosine distance 1 - cos(g_i - mu, t_j - mu)
    d_rel: Tensor  # eq 6: d_ij / (min_k d_ik + eps)
    w: Tensor  # eq 7: exp((1 - d_rel_ij) / h)
    cx_ij: Tensor  # eq 8: w_ij / sum_k w_ik (each row sums to 1)
    max_over_generated: Tensor  # (N, Nt) eq 9 inner part: max_i CX_ij
    cx: Tensor  # (N,) eq 9: mean_j max_i CX_ij
    loss: Tensor  # () eq 10: mean over the batch of -log CX
    band_width: float
    eps: float


def _as_positions(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() not in (3, 4):
        raise InputError(name, f"expected a tensor (N, C, H, W) or (N, C, L), got {getattr(x, 'shape', type(x))}")
    return x.detach().to(torch.float64).reshape(x.shape[0], x.shape[1], -1)


def contextual_steps(generated: Tensor, target: Tensor, band_width: float = 0.5,
                     eps: float = 1e-5) -> ContextualSteps:
    """Eqs 4-10 literally, keeping each intermediate (see :class:`ContextualSteps`).

    Same arguments and conventions as :func:`ctxstyle.fast.contextual.contextual_loss`; its ``loss``
    equals that function's value up to float32 rounding.
    """
    g, t = _as_positions(generated, "generated"), _as_positions(target, "target")
    if g.shape[:2] != t.shape[:2]:
        raise InputError("target", f"batch/channels {tuple(t.shape[:2])} differ from generated's {tuple(g.shape[:2])}")
    mu = t.mean(dim=2, keepdim=True)  # eq 4
    gn = F.normalize(g - mu, dim=1)
    tn = F.normalize(t - mu, dim=1)
    d = 1.0 - torch.bmm(gn.transpose(1, 2), tn)  # eq 5, (N, Ng, Nt)
    d = d.clamp_min(0.0)  # rounding can give -1e-16
    d_rel = d / (d.min(dim=2, keepdim=True).values + eps)  # eq 6
    w = torch.exp((1.0 - d_rel) / band_width)  # eq 7
    cx_ij = w / w.sum(dim=2, keepdim=True)  # eq 8
    max_over_generated = cx_ij.max(dim=1).values  # eq 9, inner max over generated i
    cx = max_over_generated.mean(dim=1)  # eq 9, mean over target j
    loss = (-torch.log(cx)).mean()  # eq 10
    return ContextualSteps(mu[..., 0], d, d_rel, w, cx_ij, max_over_generated, cx, loss,
                           float(band_width), float(eps))


def channel_stats(features: Mapping[str, Tensor], eps: float = 1e-5):
    """Per-channel mean and std (eqs 2-3) of image 0 of each named feature tensor, as a DataFrame
    with columns ``channel``, ``<name>_mean``, ``<name>_std``."""
    import pandas as pd

    cols: dict[str, np.ndarray] = {}
    for name, feat in features.items():
        m, s = mean_std(feat[:1].detach().float(), eps)
        cols[f"{name}_mean"] = m.flatten().numpy()
        cols[f"{name}_std"] = s.flatten().numpy()
    n = len(next(iter(cols.values())))
    return pd.DataFrame({"channel": np.arange(n), **cols})


# ---------------------------------------------------------------------------------------------
# misalignment


def _check_image(image) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise InputError("image", f"expected one gray image (H, W), got shape {img.shape}")
    return img


def shift_image(image, dx: float, dy: float = 0.0) -> np.ndarray:
    """Translate an (H, W) image by (dy, dx) pixels (content moves right/down for positive
    values); the border is filled by repeating the edge pixels. Linear interpolation."""
    from scipy import ndimage

    img = _check_image(image)
    if dx == 0 and dy == 0:
        return img.copy()
    return ndimage.shift(img, (dy, dx), order=1, mode="nearest").astype(np.float32)


def elastic_deform(image, strength: float, smoothness: float | None = None, seed: int = 0) -> np.ndarray:
    """Elastic deformation: a smooth random displacement field whose largest displacement is
    ``strength`` pixels (the field is Gaussian noise blurred with sigma ``smoothness`` pixels,
    default H / 8, then scaled). Linear interpolation, edge pixels repeated at the border."""
    from scipy import ndimage

    img = _check_image(image)
    if strength < 0:
        raise InputError("strength", f"must be >= 0, got {strength}")
    if strength == 0:
        return img.copy()
    sigma = smoothness if smoothness is not None else img.shape[0] / 8.0
    rng = np.random.default_rng(seed)
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal(img.shape), sigma, mode="reflect")
                      for _ in range(2)])
    field *= strength / max(float(np.sqrt((field ** 2).sum(axis=0)).max()), 1e-12)
    rows, cols = np.meshgrid(np.arange(img.shape[0]), np.arange(img.shape[1]), indexing="ij")
    coords = np.stack([rows + field[0], cols + field[1]])
    return ndimage.map_coordinates(img, coords, order=1, mode="nearest").astype(np.float32)


def misalignment_losses(encoder, reference, variants: Sequence[tuple[str, float, np.ndarray]],
                        layer: str = "relu4_1", band_widths: Sequence[float] = (0.5,)):
    """Losses between a reference slice and misaligned copies of it.

    ``variants`` holds ``(kind, amount, image)`` triples. Returns a DataFrame with one row per
    variant: ``kind``, ``amount``, ``pixel_mse`` (images), ``feature_mse`` (``layer`` features)
    and ``contextual_h<h>`` (contextual loss of the variant's features to the reference's, one
    column per band width h).
    """
    import pandas as pd

    ref = torch.as_tensor(_check_image(reference))[None, None]
    images = torch.stack([torch.as_tensor(_check_image(img)) for _, _, img in variants])[:, None]
    with torch.inference_mode():  # one batch: an unchanged copy gets bit-identical features
        feats = encoder(torch.cat([ref, images]), [layer])[layer]
    f_ref, f_var = feats[:1], feats[1:]
    rows = []
    for k, (kind, amount, _) in enumerate(variants):
        row = {"kind": kind, "amount": float(amount),
               "pixel_mse": float(F.mse_loss(images[k:k + 1], ref)),
               "feature_mse": float(F.mse_loss(f_var[k:k + 1], f_ref))}
        for h in band_widths:
            row[f"contextual_h{h:g}"] = float(contextual_loss(f_var[k:k + 1], f_ref, band_width=h))
        rows.append(row)
    return pd.DataFrame(rows)


def normalise_to_first_nonzero(values: Sequence[float], tol: float = 1e-12) -> np.ndarray:
    """``values`` divided by their first entry whose magnitude exceeds ``tol`` (NaN if none)."""
    v = np.asarray(values, dtype=np.float64)
    nonzero = np.flatnonzero(np.abs(v) > tol)
    if len(nonzero) == 0:
        return np.full_like(v, np.nan)
    return v / v[nonzero[0]]
