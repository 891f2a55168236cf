"""Conditional Inception Score (CIS; Huang et al., MUNIT, ECCV 2018) over gray-scale style domains.

MUNIT's CIS asks, for one input, whether its outputs are (a) each confidently classified into a
target-domain class and (b) spread over those classes; it is

    CIS(x) = exp( mean over outputs o of x  KL( p(y | o) || p(y | x) ) ),
    p(y | x) = mean over outputs o of x  p(y | o),

averaged over the inputs x. Identical predictions for every output give 1; K outputs that are
confidently put into K different classes give K (the maximum for K outputs).

Classifier used here (MUNIT fine-tuned Inception-v3 on the target classes): the ImageNet
Inception-v3 trunk is frozen (TF ``inception-2015-12-05``, the FID network, 2048-d pool3
features, :func:`ctxstyle.backbones.weights.build_inception_features`; there is no ImageNet head to
fine-tune here) and a softmax head (multinomial logistic regression, L2-penalised, full-batch
L-BFGS, features standardised with the training mean/std) is trained on the style bank (training
patients) over every style of the protocol (source + targets). Images (gray, [0, 1]) are resized
bilinearly to 299 x 299, repeated to RGB and mapped to [-1, 1] (the TF graph's input).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ctxstyle.errors import InputError
from ctxstyle.images import as_image_batch
from ctxstyle.store import atomic_write

__all__ = ["INCEPTION_SIZE", "inception_model", "inception_features", "SoftmaxHead", "train_softmax_head",
           "cis_from_probs", "conditional_inception_score"]

INCEPTION_SIZE = 299


@lru_cache(maxsize=1)
def _model():
    from ctxstyle.backbones.weights import build_inception_features, resolve_weights

    sd, prov = resolve_weights("inception_v3")
    return build_inception_features(sd, prov, transform_input=False), prov


def inception_model():
    """(cached frozen Inception-v3 pool3 model taking RGB in [-1, 1], its WeightsProvenance)."""
    return _model()


@torch.inference_mode()
def inception_features(images, *, batch_size: int = 16, cache_dir: str | Path | None = None) -> np.ndarray:
    """2048-d Inception-v3 pool3 features (N, 2048) of images (N, 1 or 3, H, W) in [0, 1] (other
    values are refused, not clipped); gray images enter as three equal channels at 299 px in [-1, 1].

    With ``cache_dir`` the features are stored in ``<cache_dir>/inception-<sha>.npy`` keyed by
    the sha256 of the image bytes, so repeated runs skip the slow 299-pixel forward passes.
    """
    x = as_image_batch(images, "images", channels=(1, 3), unit_range=True).contiguous()
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(x.numpy().tobytes() + str(tuple(x.shape)).encode()).hexdigest()[:20]
        path = Path(cache_dir) / f"inception-{digest}.npy"
        if path.is_file():
            return np.load(path)
    model, _ = _model()
    out = []
    for chunk in x.split(batch_size):
        rgb = chunk.clamp(0, 1).expand(-1, 3, -1, -1)
        rgb = F.interpolate(rgb, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        out.append(model(rgb * 2 - 1).numpy())
    feats = np.concatenate(out).astype(np.float32)
    if path is not None:
        atomic_write(path, lambda tmp: np.save(tmp, feats))
    return feats


@dataclass
class SoftmaxHead:
    """Multinomial logistic regression on standardised features: p(y | f) = softmax(W z + b)."""

    classes: list[str]
    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray  # (K, D)
    bias: np.ndarray  # (K,)
    l2: float = 1e-3
    info: dict = field(default_factory=dict)

    def logits(self, feats: np.ndarray) -> np.ndarray:
        z = (np.asarray(feats, np.float64) - self.mean) / self.std
        return z @ self.weight.T + self.bias

    def predict_proba(self, feats: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K)."""
        lg = self.logits(feats)
        lg -= lg.max(axis=1, keepdims=True)
        p = np.exp(lg)
        return p / p.sum(axis=1, keepdims=True)

    def accuracy(self, feats: np.ndarray, labels) -> float:
        return float((self.predict_proba(feats).argmax(1) == np.asarray(labels)).mean())

    def to_dict(self) -> dict:
        return {"classes": self.classes, "l2": self.l2, "features": "Inception-v3 pool3 (2048-d), standardised",
                **self.info}


def train_softmax_head(feats: np.ndarray, labels, classes: list[str], *, l2: float = 1e-3,
                       max_iter: int = 200) -> SoftmaxHead:
    """Fit the softmax head by full-batch L-BFGS (deterministic): mean cross-entropy +
    ``l2`` * ||W||^2 / 2 on features standardised with their training mean/std.

    ``head.info["train_loss"]`` is that objective evaluated at the fitted weights (after
    ``optimizer.step`` has finished), ``train_accuracy`` the fitted head's training accuracy."""
    x = np.asarray(feats, np.float64)
    y = np.asarray(labels, np.int64)
    if x.ndim != 2 or len(x) != len(y):
        raise InputError("feats", f"expected (N, D) features with N labels, got {x.shape} and {y.shape}")
    k = len(classes)
    if y.min() < 0 or y.max() >= k:
        raise InputError("labels", f"labels must lie in [0, {k})")
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y)
    w = torch.zeros(k, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, yt) + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)  # returns the first closure value (ln K at w = b = 0), not the fitted loss
    with torch.no_grad():  # the objective of the fitted head, after the optimisation
        loss = float(F.cross_entropy(z @ w.T + b, yt) + 0.5 * l2 * w.pow(2).sum())
    head = SoftmaxHead(list(classes), mean, std, w.detach().numpy().copy(), b.detach().numpy().copy(), l2)
    head.info = {"train_loss": loss, "train_accuracy": head.accuracy(x, y), "n_train": int(len(y))}
    return head


def cis_from_probs(probs) -> float:
    """CIS of one input from the class probabilities (M, K) of its M outputs."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise InputError("probs", f"expected (M, K) probabilities, got shape {p.shape}")
    if (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-6):
        raise InputError("probs", "rows must be probability vectors (non-negative, summing to 1)")
    marginal = p.mean(0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * (np.log(p) - np.log(marginal)), 0.0).sum(1)
    return float(np.exp(kl.mean()))


def conditional_inception_score(probs_per_input) -> tuple[float, float, np.ndarray]:
    """(mean, std, per-input values) of CIS over inputs; ``probs_per_input`` is a sequence of
    (M, K) arrays, or one array (N, M, K)."""
    values = np.array([cis_from_probs(p) for p in probs_per_input])
    return float(values.mean()), float(values.std()), values
