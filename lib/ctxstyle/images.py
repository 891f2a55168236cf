"""The one validator of images passed to the public API."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ctxstyle.errors import InputError

#: Slack around [0, 1] that ``unit_range`` accepts (float rounding, not rescaling).
RANGE_TOLERANCE = 1e-6


def as_image_batch(x, name: str, channels: Sequence[int] | None = (1,), *, dtype: torch.dtype = torch.float32,
                   unit_range: bool = False, finite: bool = True) -> Tensor:
    """``x`` (H, W), (N, H, W) or (N, C, H, W), tensor or array, as an (N, C, H, W) tensor of ``dtype``.

    Raises :class:`InputError` naming ``name`` for another shape, a channel count outside
    ``channels`` (None: any), non-finite values (``finite``), or, with ``unit_range``, an empty batch or values
    outside [0, 1] (:data:`RANGE_TOLERANCE`); nothing is rescaled.
    """
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    x = x.detach().cpu() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x, dtype=np_dtype))
    if unit_range and x.numel() == 0:
        raise InputError(name, f"is empty (shape {tuple(x.shape)})")
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or (channels is not None and x.shape[1] not in channels):
        allowed = "any C" if channels is None else "C = " + " or ".join(map(str, channels))
        raise InputError(name, f"expected images (N, C, H, W) with {allowed}, got {tuple(x.shape)}")
    if finite and not bool(torch.isfinite(x).all()):
        raise InputError(name, "contains NaN or infinite values")
    if unit_range:
        lo, hi = float(x.min()), float(x.max())
        if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
            raise InputError(name, f"values must lie in [0, 1], found [{lo:.4g}, {hi:.4g}]; this transform does not "
                                   "rescale: window HU first (e.g. ctxstyle.data.window, MONAI's ScaleIntensityRanged)")
    return x.to(dtype)
