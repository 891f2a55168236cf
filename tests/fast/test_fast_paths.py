"""ctxstyle.fast: every speed path is a drop-in replacement of the plain method, checked here."""

from __future__ import annotations

import pytest
import torch

from ctxstyle.fast.contextual import contextual_loss as fast_contextual_loss
from ctxstyle.fast.inference import FastStyleTransferNet, accelerate
from ctxstyle.method.function import contextual_loss
from ctxstyle.stylize import Stylizer
from ctxstyle.train import TrainConfig, build_net, training_losses

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("shapes", [((2, 16, 6, 5), (2, 16, 4, 7)), ((1, 8, 30), (1, 8, 30)), ((3, 4, 2, 2), (3, 4, 3, 3))])
@pytest.mark.parametrize("h", [0.1, 0.5, 2.0])
def test_fast_contextual_loss_equals_the_plain_one_with_its_gradients(shapes, h):
    g0, t0 = _rand(*shapes[0], seed=1, dtype=torch.float64), _rand(*shapes[1], seed=2, dtype=torch.float64)
    results = []
    for fn, kw in ((contextual_loss, {}), (fast_contextual_loss, {"chunk_size": 3}), (fast_contextual_loss, {})):
        g, t = g0.clone().requires_grad_(), t0.clone().requires_grad_()
        loss = fn(g, t, band_width=h, **kw)
        loss.backward()
        results.append((float(loss.detach()), g.grad, t.grad))
    (plain, gg, gt), *fast = results
    for value, fg, ft in fast:
        assert value == pytest.approx(plain, rel=1e-9, abs=1e-12)
        assert torch.allclose(fg, gg, rtol=1e-7, atol=1e-10) and torch.allclose(ft, gt, rtol=1e-7, atol=1e-10)


def test_fast_contextual_loss_rejects_what_the_plain_one_rejects():
    from ctxstyle.errors import InputError

    for bad in (dict(band_width=0), dict(eps=-1.0)):
        for fn in (contextual_loss, fast_contextual_loss):
            with pytest.raises(InputError):
                fn(_rand(1, 4, 3, 3), _rand(1, 4, 3, 3), **bad)


@pytest.mark.parametrize("method", ["ours", "contextual"])
def test_training_losses_fast_equal_plain_in_float32(method):
    cfg = TrainConfig(method=method, adain_layer="relu2_1", content_layers=("relu2_1",),
                      style_layers=("relu1_1", "relu2_1"), cx_style_layers=("relu1_1", "relu2_1"),
                      image_size=32, batch_size=2, device="cpu")
    torch.manual_seed(0)
    net = build_net(cfg)
    x, y = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    plain, fast = training_losses(net, x, y, cfg), training_losses(net, x, y, cfg, fast=True)
    for k in plain:
        assert float(fast[k].detach()) == pytest.approx(float(plain[k].detach()), rel=1e-5, abs=1e-7)


def test_accelerated_net_shares_the_modules_and_gives_the_plain_outputs(make_random_net):
    image = torch.rand(64, 64, generator=torch.Generator().manual_seed(3)).numpy()
    net = make_random_net(image)
    fast = accelerate(net)
    assert isinstance(fast, FastStyleTransferNet) and fast.decoder is net.decoder and fast.encoder is net.encoder
    assert accelerate(fast) is fast
    gen = torch.Generator().manual_seed(4)
    contents, style = torch.rand(3, 1, 96, 96, generator=gen), torch.rand(1, 1, 96, 96, generator=gen)
    with torch.no_grad():  # rescale the last convolution so that G spreads over (0, 1), not clamped
        raw = net(contents, style.expand(3, -1, -1, -1))
        last = [m for m in net.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        scale = 0.15 / raw.std()
        last.weight.mul_(scale)
        last.bias.mul_(scale).add_(0.5 - raw.mean() * scale)
    plain_out = Stylizer(net)(contents, style)
    fast_out = Stylizer(net, fast=True)(contents, style)
    assert 0.5 < float(((plain_out > 0) & (plain_out < 1)).float().mean())  # a comparison of values, not of clamps
    assert fast_out.shape == plain_out.shape
    assert float((fast_out - plain_out).abs().max()) < 1e-4
