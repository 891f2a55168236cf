"""Metrics: perceptual distance (LPIPS), conditional inception score, anatomy preservation and
segmentation scores. Submodules: :mod:`.perceptual`, :mod:`.cis`, :mod:`.anatomy`,
:mod:`.segmentation`."""

from ctxstyle.metrics.anatomy import bone_overlap, edge_ssim
from ctxstyle.metrics.cis import conditional_inception_score
from ctxstyle.metrics.perceptual import lpips_distance
from ctxstyle.metrics.segmentation import dice_score, mean_iou, pixel_accuracy, segmentation_scores

__all__ = [
    "lpips_distance",
    "conditional_inception_score",
    "bone_overlap",
    "edge_ssim",
    "pixel_accuracy",
    "mean_iou",
    "dice_score",
    "segmentation_scores",
]
