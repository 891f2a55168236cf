"""ctxstyle.method.net: the network G = D(AdaIN(E(X), E(Y))) and eq 11, through its public names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from ctxstyle.backbones import build_encoder
from ctxstyle.method.function import adain, contextual_loss, mean_std
from ctxstyle.method.net import METHODS, StyleTransferNet, style_term_layers
from ctxstyle.train import TrainConfig, build_net

pytestmark = pytest.mark.usefixtures("one_torch_thread")
METHOD_DIR = Path(__file__).resolve().parents[2] / "lib" / "ctxstyle" / "method"


def _net(layer="relu2_1"):
    torch.manual_seed(0)
    enc = build_encoder("vgg19", pretrained=False, last_layer="relu3_1")
    return StyleTransferNet(enc, layer)


def _img(n, size=32, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_the_method_never_imports_the_fast_paths():
    for path in METHOD_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any("fast" in n.split(".") for n in names), f"{path.name} imports {names}"


def test_the_method_fits_on_two_screens():
    assert sum(len(p.read_text().splitlines()) for p in METHOD_DIR.glob("*.py") if p.name != "__init__.py") <= 500


def test_decoder_mirrors_the_encoder_back_to_one_channel_at_the_input_size():
    net = _net("relu2_1")
    x = _img(2)
    t = net.encode(x, ["relu2_1"])["relu2_1"]
    assert t.shape == (2, 128, 16, 16)
    assert net.decode(t).shape == (2, 1, 32, 32)


def test_forward_is_the_decoder_of_the_adain_features():
    net = _net()
    x, y = _img(2, seed=1), _img(2, seed=2)
    with torch.no_grad():
        t = adain(net.encode(x, ["relu2_1"])["relu2_1"], net.encode(y, ["relu2_1"])["relu2_1"])
        assert torch.allclose(net(x, y), net.decode(t), atol=1e-6)
        # alpha = 0 decodes the content's own features
        assert torch.allclose(net(x, y, alpha=0.0), net.decode(net.encode(x, ["relu2_1"])["relu2_1"]), atol=1e-5)


def test_stylize_clamps_to_the_unit_range_and_blends_like_adain():
    net = _net()
    x, y = _img(2, seed=3), _img(1, seed=4)
    out = net.stylize(x, [net.style_features(y)])
    assert out.shape == (2, 1, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1
    with torch.no_grad():
        t = adain(net.encode(x, ["relu2_1"])["relu2_1"], net.style_features(y))
    assert torch.allclose(net.decode_stylized(t), out, atol=1e-6)


def test_style_term_layers_per_method():
    assert style_term_layers("ours", ("a", "b"), ("c",)) == ("a", "b")
    assert style_term_layers("adain", ("a", "b"), ("c",)) == ("a", "b")
    assert style_term_layers("contextual", ("a", "b"), ("c",)) == ("c",)
    assert style_term_layers("reconstruction", ("a", "b"), ("c",)) == ()
    assert set(METHODS) == {"ours", "adain", "contextual", "reconstruction"}


def _cfg(method, **kw):
    return TrainConfig(method=method, adain_layer="relu2_1", content_layers=("relu2_1",),
                       style_layers=("relu1_1", "relu2_1"), cx_style_layers=("relu1_1", "relu2_1"),
                       image_size=32, batch_size=2, device="cpu", channels_last=False, **kw)


def test_eq_11_is_the_weighted_sum_of_its_terms_for_every_method():
    x, y = _img(2, seed=5), _img(2, seed=6)
    for method in METHODS:
        cfg = _cfg(method, style_weight=2.5, content_weight=0.5)
        net = build_net(cfg)
        losses = net.losses(x, None if method == "reconstruction" else y, cfg)
        assert set(losses) == {"total", "content", "style"}
        if method == "reconstruction":
            assert float(losses["style"]) == 0.0
            assert torch.allclose(losses["total"], losses["content"])
        else:
            assert torch.allclose(losses["total"], 0.5 * losses["content"] + 2.5 * losses["style"], rtol=1e-6)
            assert float(losses["content"].detach()) > 0 and float(losses["style"].detach()) > 0


def test_ours_content_term_is_the_contextual_loss_to_the_content():
    x, y = _img(2, seed=7), _img(2, seed=8)
    cfg = _cfg("ours")
    net = build_net(cfg)
    losses = net.losses(x, y, cfg)
    with torch.no_grad():
        s = net.encode(y, ["relu2_1"])["relu2_1"]
        c = net.encode(x, ["relu2_1"])["relu2_1"]
        g = net.decode(adain(c, s))
        want = contextual_loss(net.encode(g, ["relu2_1"])["relu2_1"], c, cfg.band_width)
    assert float(losses["content"].detach()) == pytest.approx(float(want), rel=1e-5)


def test_style_statistics_enter_as_well_as_images():
    x, y = _img(2, seed=9), _img(2, seed=10)
    cfg = _cfg("adain")
    net = build_net(cfg)
    with torch.no_grad():
        feats = net.encode(y, ["relu1_1", "relu2_1"])
    stats = {k: mean_std(v) for k, v in feats.items()}
    a, b = net.losses(x, y, cfg), net.losses(x, stats, cfg)
    assert torch.allclose(a["total"], b["total"], rtol=1e-6)
