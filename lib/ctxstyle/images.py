"""Validation of image batches passed to the public API."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import InputError


def as_image_batch(x, name: str, channels: Sequence[int] = (1,)) -> Tensor:
    """``x`` (H, W), (N, H, W) or (N, C, H, W) as a float32 (N, C, H, W) tensor.

    Raises :class:`InputError` naming ``name`` for a channel count outside ``channels`` or
    non-finite values.
    """
    if not isinstance(x, Tensor):
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or x.shape[1] not in channels:
        raise InputError(name, f"expected images (N, C, H, W) with C in {tuple(channels)}, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError(name, "contains NaN or infinite values")
    return x.float()
