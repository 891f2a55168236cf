"""Training image sets named by a short spec string (the ``*_data`` fields of TrainConfig).

| spec | images |
|---|---|
| ``protocol:<split>:source`` | the protocol split in the source gray scale (at the training size, same 128 mm field of view: :func:`ctxstyle.data.scaled_protocol`) |
| ``protocol:<split>:<style>`` | the split rendered in one named style |
| ``protocol:<split>:targets`` | the split rendered in every target style of the protocol |
| ``protocol:<split>:all`` | the split in the source style and every target style |
| ``protocol:<split>:<s1>+<s2>`` | the split in several named styles |
| ``protocol:<split>:all-<s1>-<s2>`` | ``all`` (or ``targets``) without the named styles; every other style is rendered exactly as in ``all`` (or ``targets``), same noise |
| a folder | every PNG inside (gray, [0, 1]); one whose shorter side is below the training size is scaled up to it, keeping its aspect ratio |
| a ``.npy`` file | an array (N, H, W) or (N, 1, H, W) of images in [0, 1] |

Protocol images can be loaded larger than the training size with ``load_size`` (a
``data_kwargs`` entry of TrainConfig; the others are ``plane`` and ``size`` of
:func:`ctxstyle.data.protocol_slices`; training passes them to protocol specs only): e.g. ``load_size: 128`` with ``image_size: 64`` keeps
the 128 mm field of view at 1 mm per pixel and the trainer takes random 64 px crops, the way
AdaIN trains on 256 px crops of larger images; the decoder then runs on whole 128 px slices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ctxstyle.errors import InputError
from ctxstyle.images import as_image_batch


def _as_tensor(images: np.ndarray, source: str) -> Tensor:
    try:
        arr = np.asarray(images, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(source, f"not numbers ({exc})") from None
    if arr.ndim not in (3, 4):
        raise InputError(source, f"expected a non-empty stack (N, H, W) of gray images, got shape {arr.shape}")
    return as_image_batch(np.ascontiguousarray(arr), source, unit_range=True)


def _protocol_images(split: str, styles: str, size: int, seed: int, *, load_size: int | None = None,
                     **kwargs) -> np.ndarray:
    from ctxstyle.data import PROTOCOL, TARGET_STYLES, protocol_slices, scaled_protocol

    load_size = int(load_size or size)
    if load_size < size:
        raise InputError("load_size", f"{load_size} is smaller than the training image size {size}")
    kwargs.setdefault("protocol", scaled_protocol(load_size))

    base, *left_out = styles.split("-")
    if styles == "source":
        names = [PROTOCOL.source_style]
    elif base == "targets":
        names = list(TARGET_STYLES)
    elif base == "all":
        names = [PROTOCOL.source_style, *TARGET_STYLES]
    else:
        names = styles.split("+")
    if left_out and (base not in ("all", "targets") or not set(left_out) <= set(names) or set(names) <= set(left_out)):
        raise InputError(f"protocol:{split}:{styles}", f"'-' leaves styles of {names} out of 'all' or 'targets', "
                                                       "and at least one must stay")
    # the noise seed of a style is its position in the full list, so leaving styles out changes no other one
    stacks = [protocol_slices(split, name, seed=seed + i, **kwargs)[0] for i, name in enumerate(names)
              if name not in left_out]
    return np.concatenate(stacks)


def _folder_images(folder: Path, size: int) -> np.ndarray:
    from ctxstyle.data import read_png

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise InputError(folder, "no PNG images in the folder")
    images = []
    for path in files:
        img = torch.from_numpy(read_png(path))[None, None]
        if min(img.shape[-2:]) < size:  # the shorter side to ``size``, the aspect ratio kept
            scale = size / min(img.shape[-2:])
            shape = tuple(max(size, round(n * scale)) for n in img.shape[-2:])
            img = torch.nn.functional.interpolate(img, size=shape, mode="bilinear", align_corners=False)
        images.append(img[0, 0].numpy())
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise InputError(folder, f"images differ in size {sorted(shapes)}; use one size per folder")
    return np.stack(images)


#: The ``data_kwargs`` a protocol spec takes (module docstring).
PROTOCOL_KWARGS = ("load_size", "plane", "size")


def check_protocol_kwargs(kwargs) -> None:
    """InputError naming ``data_kwargs`` unless every key is one of :data:`PROTOCOL_KWARGS`."""
    unknown = sorted(set(kwargs) - set(PROTOCOL_KWARGS))
    if unknown:
        raise InputError("data_kwargs", f"unknown {unknown}; a protocol spec takes {list(PROTOCOL_KWARGS)}")


def load_images(spec: str, size: int, seed: int = 0, **kwargs) -> Tensor:
    """Images (N, 1, H, W) in [0, 1] for a spec (see the module docstring); ``kwargs``: the
    ``data_kwargs`` of a protocol spec (:data:`PROTOCOL_KWARGS`)."""
    if spec.startswith("protocol:"):
        parts = spec.split(":")
        if len(parts) != 3:
            raise InputError(spec, "expected 'protocol:<split>:<style|source|targets>'")
        check_protocol_kwargs(kwargs)
        return _as_tensor(_protocol_images(parts[1], parts[2], size, seed, **kwargs), spec)
    if kwargs:
        raise InputError("data_kwargs", f"{sorted(kwargs)} go with 'protocol:...' specs only, not {spec}")
    path = Path(spec).expanduser()
    if path.is_dir():
        return _as_tensor(_folder_images(path, size), spec)
    if path.suffix == ".npy" and path.is_file():
        try:
            arr = np.load(path)  # allow_pickle stays False: never code
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(path, f"not a readable array of images ({exc})") from None
        return _as_tensor(arr, spec)
    raise InputError(spec, "not a 'protocol:...' spec, a folder of PNGs or a .npy file")
