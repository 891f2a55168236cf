"""ctxstyle.method.net: the network G = D(AdaIN(E(X), E(Y))) and eq 11, through its public names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from ctxstyle.backbones import build_encoder
from ctxstyle.method.function import adain, content_mse, contextual_loss, mean_std, style_loss
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


def _independent_terms(net, x, y, cfg):
    """Eq 11's terms written out from the public functions, the relative weighting by hand."""
    layer = net.adain_layer
    with torch.no_grad():
        c, s = net.encode(x, [layer, *cfg.style_layers]), net.encode(y, [layer, *cfg.style_layers])
        if cfg.method == "reconstruction":
            return (net.decode(c[layer]) - x).abs().mean(), torch.zeros(())
        t = adain(c[layer], s[layer])
        g = net.encode(net.decode(t), [layer, *cfg.style_layers, *cfg.cx_style_layers])
        if cfg.method == "adain":
            content = content_mse(g[layer], t) / (t ** 2).mean()
        else:
            content = contextual_loss(g[layer], c[layer], cfg.band_width)
        if cfg.method == "contextual":
            style = sum(contextual_loss(g[l], s[l], cfg.band_width) for l in cfg.cx_style_layers) / len(cfg.cx_style_layers)
        else:
            style = 0.0
            for l in cfg.style_layers:
                mu, sigma = mean_std(s[l])
                style = style + style_loss([g[l]], [s[l]]) / ((mu ** 2).mean() + (sigma ** 2).mean())
    return content, style


@pytest.mark.parametrize("method", sorted(METHODS))
def test_eq_11_terms_are_the_losses_they_name(method):
    """Each method's content and style terms equal the paper's losses computed independently:
    reconstruction L1 to X; ours eqs 4-10 to E(X) + eq 12 (each layer divided by the style's
    mean(mu^2) + mean(sigma^2), ``loss_scale="relative"``, the default); adain MSE to t over mean(t^2)
    + eq 12; contextual eqs 4-10 to E(X) and to E(Y)."""
    x, y = _img(2, seed=11), _img(2, seed=12)
    cfg = _cfg(method)
    assert cfg.loss_scale == "relative"
    net = build_net(cfg)
    with torch.no_grad():
        losses = net.losses(x, None if method == "reconstruction" else y, cfg)
    content, style = _independent_terms(net, x, y, cfg)
    assert float(losses["content"]) == pytest.approx(float(content), rel=1e-5)
    assert float(losses["style"]) == pytest.approx(float(style), rel=1e-5, abs=1e-12)


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


def test_contextual_method_refuses_style_statistics():
    """Its style term compares feature positions, which statistics do not have."""
    from ctxstyle.errors import InputError

    cfg = _cfg("contextual")
    net = build_net(cfg)
    with torch.no_grad():
        stats = {k: mean_std(v) for k, v in net.encode(_img(2, seed=10), ["relu1_1", "relu2_1"]).items()}
    with pytest.raises(InputError, match="needs style images"):
        net.losses(_img(2, seed=9), stats, cfg)


def test_calibrate_scales_the_decoder_input_to_unit_std():
    net = _net()
    feats = 7.0 * torch.randn(2, 128, 8, 8, generator=torch.Generator().manual_seed(13))
    net.decoder.calibrate(feats)
    assert float(net.decoder.input_scale) == pytest.approx(1.0 / float(feats.std()), rel=1e-6)
    with torch.no_grad():  # the decoder sees features / std: scaling its input by 3 is undone by 1/3
        first = net.decoder(feats)
        net.decoder.calibrate(3.0 * feats)
        assert torch.allclose(net.decoder(3.0 * feats), first, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.3, 0.75])
def test_alpha_between_0_and_1_mixes_the_adain_and_content_features(alpha):
    net = _net()
    x, y = _img(2, seed=14), _img(2, seed=15)
    with torch.no_grad():
        c = net.encode(x, ["relu2_1"])["relu2_1"]
        t = alpha * adain(c, net.encode(y, ["relu2_1"])["relu2_1"]) + (1 - alpha) * c
        assert torch.allclose(net(x, y, alpha=alpha), net.decode(t), atol=1e-5)
        one = net.encode(y[:1], ["relu2_1"])["relu2_1"]
        blended = net.stylize(x, [one], alpha=alpha)
        assert torch.allclose(blended, net.decode_stylized(alpha * adain(c, one) + (1 - alpha) * c), atol=1e-5)
