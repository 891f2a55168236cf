"""LPIPS (Zhang et al. 2018): the perceptual distance of the paper's Table 1.

:func:`lpips_distance` uses the ``lpips`` package's model ``LPIPS(net="alex", version="0.1")``:
AlexNet ``features`` with ImageNet weights, unit-normalised activations of its five ReLU layers,
squared differences weighted by the v0.1 linear heads (calibrated on human judgements), spatial
mean, summed over layers. The trunk is built with ``pnet_rand=True`` (so torchvision never tries
to download anything) and then loaded with the exact torchvision ImageNet AlexNet from
:func:`ctxstyle.backbones.weights.resolve_weights` (``"alexnet"``); the heads are the package's own
``weights/v0.1/alex.pth``. A random trunk is never used: if the weights cannot be resolved,
``WeightsNotFoundError`` is raised.

Gray CT images are repeated to RGB; inputs in [0, 1] are mapped to [-1, 1] as LPIPS expects.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from functools import lru_cache

import torch
from torch import Tensor

from ctxstyle.errors import InputError
from ctxstyle.images import as_image_batch

__all__ = ["lpips_model", "lpips_distance", "lpips_features", "lpips_from_features", "lpips_provenance"]


@lru_cache(maxsize=1)
def _cached_model():
    import lpips

    from ctxstyle.backbones.weights import resolve_weights

    state_dict, provenance = resolve_weights("alexnet")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation notice for `pretrained=`
        model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    # lpips' AlexNet keeps torchvision's `features` indices inside five slices: slice{k}.{index}.
    trunk = {}
    for name, _ in model.net.named_parameters():
        _, index, kind = name.split(".")  # "slice1", "0", "weight"
        trunk[name] = state_dict[f"features.{index}.{kind}"]
    missing = set(dict(model.net.named_parameters())) - set(trunk)
    if missing or len(trunk) != 10:
        raise RuntimeError(f"unexpected LPIPS AlexNet layout: {sorted(missing)}")
    model.net.load_state_dict(trunk, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, provenance


def lpips_model():
    """The cached LPIPS v0.1 AlexNet model (eval mode, frozen) with ImageNet weights."""
    return _cached_model()[0]


def lpips_provenance() -> dict:
    """Provenance of the AlexNet trunk weights (for run records)."""
    prov = _cached_model()[1]
    return {**prov.to_dict(), "lpips": "lpips package LPIPS(net='alex', version='0.1'), package heads"}


def _as_batch(x, name: str) -> Tensor:
    x = as_image_batch(x, name, channels=(1, 3))
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.inference_mode()
def lpips_features(images) -> list[Tensor]:
    """The half of LPIPS that depends on one image: the channel-unit-normalised activations of
    AlexNet's five ReLU layers, for images in [0, 1] (same layouts as :func:`lpips_distance`).

    Compute once per image, compare with many through :func:`lpips_from_features` (e.g. an output
    with its content, style and truth). Whole batch at once: split large sets.
    """
    import lpips

    x = _as_batch(images, "images")
    model = lpips_model()
    return [lpips.normalize_tensor(f) for f in model.net(model.scaling_layer(x.clamp(0, 1) * 2 - 1))]


@torch.inference_mode()
def lpips_from_features(fa: list[Tensor], fb: list[Tensor]) -> Tensor:
    """LPIPS v0.1 from :func:`lpips_features` of paired images, shape (N,): per layer the squared
    feature difference weighted by its linear head, averaged over space, summed over layers (the
    ``lpips`` package's ``LPIPS.forward``, the same operations in the same order). ``fb`` may hold
    one image, compared with every image of ``fa``."""
    if len(fa) != len(fb) or any(a.shape[1:] != b.shape[1:] for a, b in zip(fa, fb)):
        raise InputError("fb", "features of images of another size (or not LPIPS features)")
    if fb[0].shape[0] not in (1, fa[0].shape[0]):
        raise InputError("fb", f"features of {fb[0].shape[0]} images for {fa[0].shape[0]} (give as many, or one)")
    model = lpips_model()
    val = 0
    for lin, a, b in zip(model.lins, fa, fb):
        val = val + lin((a - b) ** 2).mean([2, 3], keepdim=True)
    return val.reshape(-1)


@torch.inference_mode()
def lpips_distance(a, b, *, batch_size: int = 64) -> Tensor:
    """LPIPS v0.1 (AlexNet) between paired images: one distance per pair, shape (N,).

    ``a`` and ``b`` are batches (N, C, H, W) in [0, 1] with C in {1, 3} (gray is repeated to RGB;
    (N, H, W) and (H, W) are accepted as gray); ``b`` may also hold one image, compared with
    every image of ``a`` (its features computed once). Values outside [0, 1] are clipped.
    """
    a, b = _as_batch(a, "a"), _as_batch(b, "b")
    one = b.shape[0] == 1 and a.shape[0] > 1
    if b.shape[1:] != a.shape[1:] or not (one or b.shape[0] == a.shape[0]):
        raise InputError("b", f"shape {tuple(b.shape)} differs from a's {tuple(a.shape)}")
    fb = lpips_features(b) if one else None
    out = []
    for lo in range(0, a.shape[0], batch_size):
        fa = lpips_features(a[lo : lo + batch_size])
        out.append(lpips_from_features(fa, fb if one else lpips_features(b[lo : lo + batch_size])))
    return torch.cat(out) if out else torch.zeros(0)
