"""Anatomy preservation between a content slice and its stylized output, measured directly.

A gray-scale transfer should change how tissue looks, not where it is. Two measures, per image:

* **bone overlap** (:func:`bone_overlap`): the bone region of the content (pixels at or above a
  fixed HU threshold, mapped to a gray value through the content's style) against the bone
  region of the output (the same HU threshold mapped through the *target* style's window and
  display curve, :func:`gray_threshold`): Dice and IoU. A perfect output in the target style
  keeps the bone region; a method that moves, invents or erases bone, or that misses the
  target's gray level, loses overlap. With ``output_threshold=None`` the output is instead cut
  at the gray level that keeps the content's bone *fraction* (rank matching), which measures the
  shape only, whatever the gray level.
* **edge SSIM** (:func:`edge_ssim`): SSIM (Wang et al. 2004; ``skimage``, 7x7 window) between the
  Sobel gradient magnitude maps of content and output, each divided by its own 99th percentile
  and clipped to [0, 1], so that a global contrast change is not counted as an anatomy change.
  Edges the target style legitimately removes (bone interior saturated in a soft-tissue
  window) or adds (noise) lower it too: compare with the same score of the ground-truth
  rendering of the slice in the target style.

Inputs: tensors or arrays (N, 1, H, W), (N, H, W) or (H, W) in [0, 1]; outputs float arrays (N,).
"""

from __future__ import annotations

import numpy as np
import torch

from ctxstyle.errors import InputError
from ctxstyle.images import as_image_batch

__all__ = ["BONE_HU", "gray_threshold", "bone_overlap", "dice_iou", "sobel_edges", "edge_ssim"]

#: Default bone threshold in HU (cancellous vertebral bone lies at about 150-300 HU, cortex above).
BONE_HU = 200.0


def _images(x, name: str) -> np.ndarray:
    """Gray images as an (N, H, W) float64 array (:func:`ctxstyle.images.as_image_batch` checks them)."""
    return as_image_batch(x, name, dtype=torch.float64).numpy()[:, 0]


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _images(a, "content"), _images(b, "output")
    if a.shape != b.shape:
        raise InputError("output", f"shape {b.shape} differs from the content's {a.shape}")
    return a, b


def gray_threshold(style, hu: float = BONE_HU) -> float:
    """The gray value [0, 1] that ``hu`` gets in a style (calibration, window, display curve;
    noise and kernel, which do not move a flat region, left out)."""
    from ctxstyle.data.styles import get_style

    s = get_style(style).replace(noise_hu=0.0, smooth_mm=0.0, sharpen=0.0)
    return float(s.apply(np.full((3, 3), hu, np.float32), spacing_mm=1.0)[1, 1])


def dice_iou(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU per image of two boolean stacks (N, H, W); 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    inter = (a & b).sum(axis=(1, 2)).astype(np.float64)
    sa, sb = a.sum(axis=(1, 2)), b.sum(axis=(1, 2))
    union = sa + sb - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(sa + sb > 0, 2 * inter / (sa + sb), 1.0)
        iou = np.where(union > 0, inter / union, 1.0)
    return dice, iou


def bone_overlap(content, output, content_threshold: float, output_threshold: float | None = None
                 ) -> dict[str, np.ndarray]:
    """Dice and IoU of ``content >= content_threshold`` against the output's bone region.

    ``output_threshold``: the output's gray threshold (e.g. :func:`gray_threshold` of the target
    style); None picks, per image, the output's gray level above which the same fraction of
    pixels lies as in the content's bone region (rank matching; shape only).
    """
    a, b = _pair(content, output)
    bone_a = a >= content_threshold
    if output_threshold is None:
        bone_b = np.zeros_like(bone_a)
        for i in range(len(a)):
            k = int(bone_a[i].sum())
            if k:
                cut = np.sort(b[i].ravel())[-k]
                bone_b[i] = b[i] >= cut
    else:
        bone_b = b >= output_threshold
    dice, iou = dice_iou(bone_a, bone_b)
    return {"dice": dice, "iou": iou}


def sobel_edges(x, normalise: bool = True) -> np.ndarray:
    """Sobel gradient magnitude per image (N, H, W); with ``normalise`` divided by its own 99th
    percentile and clipped to [0, 1]."""
    from skimage.filters import sobel

    x = _images(x, "images")
    e = np.stack([sobel(im) for im in x])
    if normalise:
        p = np.percentile(e.reshape(len(e), -1), 99, axis=1).reshape(-1, 1, 1)
        e = np.clip(e / np.maximum(p, 1e-8), 0.0, 1.0)
    return e


def edge_ssim(content, output) -> np.ndarray:
    """SSIM between the normalised Sobel edge maps of content and output, per image (N,)."""
    from skimage.metrics import structural_similarity

    a, b = _pair(content, output)
    ea, eb = sobel_edges(a), sobel_edges(b)
    win = min(7, a.shape[-1] - (1 - a.shape[-1] % 2), a.shape[-2] - (1 - a.shape[-2] % 2))
    return np.array([structural_similarity(x, y, data_range=1.0, win_size=win) for x, y in zip(ea, eb)])
