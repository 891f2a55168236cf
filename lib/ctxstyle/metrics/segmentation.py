"""Binary segmentation metrics (background vs spine) and paired comparisons between models.

Definitions (the FCN convention of Long, Shelhamer & Darrell 2015, which the paper's "pixel
accuracy" and "mIoU" follow): the counts are **pooled over every pixel of an evaluation set**
(one confusion matrix per set, e.g. one test patient in one gray-scale style), then

* ``PA   = (TP + TN) / (TP + TN + FP + FN)``  - correct pixels / all pixels;
* ``IoU_spine = TP / (TP + FP + FN)``, ``IoU_background = TN / (TN + FN + FP)``;
* ``mIoU = (IoU_background + IoU_spine) / 2``  - mean over the two classes;
* ``Dice = 2 TP / (2 TP + FP + FN)``  (spine class only).

TP/FP/FN/TN count spine as the positive class. A ratio whose denominator is 0 (a class absent
from both prediction and ground truth) is NaN. Pooling weights every pixel equally, so a slice
with little spine does not swing the score the way a per-image mean would.

PA is dominated by background: with spine covering a few percent of a slice, predicting
"background" everywhere already scores a high PA and mIoU ~ 0.5 (``IoU_background`` near 1,
``IoU_spine`` = 0). Read PA together with mIoU and Dice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["confusion_counts", "scores_from_counts", "segmentation_scores", "pixel_accuracy",
           "mean_iou", "dice_score", "paired_comparison", "METRICS"]

#: Score names returned by :func:`scores_from_counts`.
METRICS = ("pa", "miou", "iou_bg", "iou_spine", "dice")


def _binary(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype != bool:
        arr = arr > 0.5 if np.issubdtype(arr.dtype, np.floating) else arr != 0
    return arr


def confusion_counts(pred, target) -> dict[str, int]:
    """Pooled binary confusion counts ``{"tp", "fp", "fn", "tn"}`` over all pixels of all images.

    ``pred`` and ``target`` have the same shape (any); booleans, 0/1 integers, or floats
    thresholded at 0.5 (probabilities).
    """
    p, t = _binary(pred, "pred"), _binary(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and target {t.shape} differ in shape")
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(p.size - tp - fp - fn)}


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def scores_from_counts(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    """PA, mIoU, both class IoUs and spine Dice from (pooled) confusion counts."""
    iou_spine = _ratio(tp, tp + fp + fn)
    iou_bg = _ratio(tn, tn + fn + fp)
    return {
        "pa": _ratio(tp + tn, tp + fp + fn + tn),
        "miou": float(np.nanmean([iou_bg, iou_spine])) if not (np.isnan(iou_bg) and np.isnan(iou_spine)) else float("nan"),
        "iou_bg": iou_bg,
        "iou_spine": iou_spine,
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def segmentation_scores(pred, target) -> dict[str, float]:
    """Scores of one evaluation set: pooled counts, then :func:`scores_from_counts`."""
    return scores_from_counts(**confusion_counts(pred, target))


def pixel_accuracy(pred, target) -> float:
    return segmentation_scores(pred, target)["pa"]


def mean_iou(pred, target) -> float:
    return segmentation_scores(pred, target)["miou"]


def dice_score(pred, target) -> float:
    return segmentation_scores(pred, target)["dice"]


def paired_comparison(a: Sequence[float], b: Sequence[float], *, n_boot: int = 10000,
                      seed: int = 0, ci: float = 0.95) -> dict[str, float]:
    """Paired comparison of ``a`` against ``b`` (same units, e.g. Dice per (seed, style, patient)).

    Returns the mean difference ``a - b``, a percentile **paired bootstrap** CI of that mean
    (resampling the pairs), the two-sided **Wilcoxon signed-rank** p value (``zsplit`` zero
    handling; NaN when every difference is 0 or there are fewer than 2 pairs), the number of
    pairs and how many pairs ``a`` wins / loses.
    """
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in shape: {a.shape} vs {b.shape}")
    d = a - b
    d = d[np.isfinite(d)]
    n = len(d)
    out = {"n": n, "mean_diff": float(d.mean()) if n else float("nan"),
           "ci_low": float("nan"), "ci_high": float("nan"), "wilcoxon_p": float("nan"),
           "wins": int(np.sum(d > 0)), "losses": int(np.sum(d < 0))}
    if n == 0:
        return out
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    alpha = (1.0 - ci) / 2.0
    out["ci_low"], out["ci_high"] = (float(v) for v in np.quantile(boot, [alpha, 1.0 - alpha]))
    if n >= 2 and np.any(d != 0):
        out["wilcoxon_p"] = float(stats.wilcoxon(d, zero_method="zsplit").pvalue)
    return out
