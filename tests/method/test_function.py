"""ctxstyle.method.function: AdaIN (eqs 1-3), the contextual loss as written (eqs 4-10), the style
loss (eq 12) and the content MSE."""

import pytest
import torch
import torch.nn.functional as F

from ctxstyle.errors import InputError
from ctxstyle.method.function import adain, adain_blend, content_mse, contextual_loss, mean_std, style_loss


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _feats(seed, n=2, c=8, h=6, w=5, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g) * scale + shift


def test_output_has_style_statistics():
    content, style = _feats(0), _feats(1, scale=3.0, shift=-2.0)
    out = adain(content, style)
    out_mean, out_std = mean_std(out)
    s_mean, s_std = mean_std(style)
    torch.testing.assert_close(out_mean, s_mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_std, s_std, atol=1e-3, rtol=1e-3)


def test_single_style_broadcasts_over_content_batch():
    content, style = _feats(0, n=4), _feats(1, n=1, scale=2.0)
    out = adain(content, style)
    torch.testing.assert_close(mean_std(out)[0], mean_std(style)[0].expand(4, -1, -1, -1), atol=1e-5, rtol=0)


def test_content_structure_is_kept():
    # AdaIN is a per-channel affine map: the normalised content is unchanged.
    content, style = _feats(0), _feats(1, scale=5.0)
    out = adain(content, style)
    norm = lambda f: (f - mean_std(f)[0]) / mean_std(f)[1]  # noqa: E731
    torch.testing.assert_close(norm(out), norm(content), atol=1e-3, rtol=1e-3)


def test_blend_alpha_zero_returns_content_and_one_equals_adain():
    content, style = _feats(0), _feats(1, scale=2.0)
    torch.testing.assert_close(adain_blend(content, [style], alpha=0.0), content)
    torch.testing.assert_close(adain_blend(content, [style], alpha=1.0), adain(content, style))


def test_blend_weights_mix_style_statistics():
    content, s1, s2 = _feats(0), _feats(1, shift=-3.0), _feats(2, shift=4.0, scale=2.0)
    out = adain_blend(content, [s1, s2], weights=[3, 1])
    expected_mean = 0.75 * mean_std(s1)[0] + 0.25 * mean_std(s2)[0]
    expected_std = 0.75 * mean_std(s1)[1] + 0.25 * mean_std(s2)[1]
    torch.testing.assert_close(mean_std(out)[0], expected_mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(mean_std(out)[1], expected_std, atol=1e-3, rtol=1e-3)
    # one style with weight 1 and another with weight 0 is plain AdaIN
    torch.testing.assert_close(adain_blend(content, [s1, s2], weights=[1, 0]), adain(content, s1))


@pytest.mark.parametrize(
    "content, style, match",
    [
        (torch.zeros(2, 8, 4), torch.zeros(1, 8, 4, 4), "shape"),
        (torch.zeros(2, 8, 4, 4), torch.zeros(1, 4, 4, 4), "channels"),
        (torch.zeros(2, 8, 4, 4), torch.zeros(3, 8, 4, 4), "batch"),
        (torch.zeros(2, 8, 1, 1), torch.zeros(1, 8, 4, 4), "2 spatial"),
    ],
)
def test_bad_shapes_raise_clear_errors(content, style, match):
    with pytest.raises(InputError, match=match):
        adain(content, style)


def test_bad_blend_arguments():
    c, s = _feats(0), _feats(1)
    with pytest.raises(InputError, match="alpha"):
        adain_blend(c, [s], alpha=1.5)
    with pytest.raises(InputError, match="weights"):
        adain_blend(c, [s, s], weights=[1.0])
    with pytest.raises(InputError, match="non-negative"):
        adain_blend(c, [s, s], weights=[1.0, -2.0])

# ---------------------------------------------------------------------------------------------
# style loss (eq 12) and content MSE


def _stats(x):
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    return flat.mean(2), (flat.var(2, unbiased=True) + 1e-5).sqrt()


def test_style_loss_zero_for_identical_and_positive_otherwise():
    feats = [_rand(2, 8, 6, 6, seed=30), _rand(2, 16, 3, 3, seed=31)]
    assert float(style_loss(feats, [f.clone() for f in feats])) == 0.0
    other = [f * 1.5 + 0.3 for f in feats]
    assert float(style_loss(feats, other)) > 0.0


def test_style_loss_formula_and_gradient():
    gen = [_rand(2, 8, 6, 6, seed=32).requires_grad_(), _rand(2, 4, 5, 3, seed=33).requires_grad_()]
    sty = [_rand(2, 8, 4, 4, seed=34) * 2, _rand(2, 4, 5, 3, seed=35) + 1]  # positions may differ
    expected = 0.0
    for g, s in zip(gen, sty):
        (gm, gs), (sm, ss) = _stats(g.detach()), _stats(s)
        expected += float(((gm - sm) ** 2).mean() + ((gs - ss) ** 2).mean())
    loss = style_loss(gen, sty)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert all(torch.isfinite(g.grad).all() and g.grad.abs().sum() > 0 for g in gen)


def test_style_loss_errors():
    a = _rand(1, 4, 3, 3)
    with pytest.raises(InputError, match="layers"):
        style_loss([a, a], [a])
    with pytest.raises(InputError, match="at least one"):
        style_loss([], [])
    with pytest.raises(InputError) as err:
        style_loss([a], [_rand(1, 5, 3, 3)])
    assert err.value.source == "style_feats[0]"
    with pytest.raises(InputError) as err:
        style_loss([a, torch.full((1, 4, 2, 2), float("nan"))], [a, a])
    assert err.value.source == "generated_feats[1]"
    with pytest.raises(InputError, match="sequence"):
        style_loss(a, [a])


def test_content_mse():
    g = _rand(2, 8, 4, 4, seed=36)
    t = _rand(2, 8, 4, 4, seed=37)
    assert float(content_mse(g, t)) == pytest.approx(float(F.mse_loss(g, t)), rel=1e-6)
    assert float(content_mse(g, g)) == 0.0
    with pytest.raises(InputError) as err:
        content_mse(g, t[:, :, :3])
    assert err.value.source == "target"


# ---------------------------------------------------------------------------------------------
# contextual loss (eqs 4-10) as written


@pytest.mark.parametrize("h", [0.1, 0.5, 2.0])
def test_contextual_loss_is_the_literal_transcription(contextual_reference, h):
    g, t = _rand(2, 8, 5, 4, seed=1, dtype=torch.float64), _rand(2, 8, 3, 6, seed=2, dtype=torch.float64)
    assert float(contextual_loss(g, t, band_width=h)) == pytest.approx(contextual_reference(g.numpy(), t.numpy(), h), abs=1e-10)


def test_contextual_loss_is_zero_for_identical_features_and_differentiable():
    x = _rand(1, 16, 4, 4, seed=3, dtype=torch.float64)
    assert float(contextual_loss(x, x.clone())) == pytest.approx(0.0, abs=1e-9)
    g, t = _rand(1, 4, 3, 3, seed=4, dtype=torch.float64).requires_grad_(), _rand(1, 4, 2, 3, seed=5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: contextual_loss(a, t, 0.5), (g,))
