"""Naive full-matrix contextual loss, used only as the benchmark baseline.

A transcription of the way common public PyTorch ports do it (e.g. the ``contextual_loss``
of S-aiueo32/contextual_loss_pytorch, itself ported from roimehrez/contextualLoss): the whole
(N, Ng, Nt) distance matrix and every intermediate of eqs 5-10 are materialised at once and
autograd keeps them for the backward pass. Two changes so that it computes exactly the same
quantity as :func:`ctxstyle.fast.contextual.contextual_loss`: the target mean is taken per image
(the public code also averages over the batch; identical for one image) and the loss is
``-log(CX)`` (the public code uses ``-log(CX + 1e-5)``). Not part of the library.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def naive_contextual_loss(generated: Tensor, target: Tensor, band_width: float = 0.5, eps: float = 1e-5) -> Tensor:
    """Contextual loss (eqs 4-10) with the full distance matrix in memory."""
    n, c = generated.shape[:2]
    x = generated.reshape(n, c, -1)
    y = target.reshape(n, c, -1)
    y_mu = y.mean(dim=2, keepdim=True)
    x_normalized = F.normalize(x - y_mu, p=2, dim=1)
    y_normalized = F.normalize(y - y_mu, p=2, dim=1)
    cosine_sim = torch.bmm(x_normalized.transpose(1, 2), y_normalized)  # (N, Ng, Nt)
    dist_raw = 1 - cosine_sim
    dist_min, _ = torch.min(dist_raw, dim=2, keepdim=True)
    dist_tilde = dist_raw / (dist_min + eps)
    w = torch.exp((1 - dist_tilde) / band_width)
    cx = w / torch.sum(w, dim=2, keepdim=True)
    cx = torch.mean(torch.max(cx, dim=1)[0], dim=1)
    return torch.mean(-torch.log(cx))
