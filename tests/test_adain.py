"""AdaIN (eqs 1-3): output statistics, blending and input checks."""

import pytest
import torch

from ctxstyle.adain import adain, adain_blend, mean_std
from ctxstyle.errors import InputError


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
