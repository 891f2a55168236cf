"""ctxstyle.experiments.dg_augment: the domain-generalisation baselines of Table 2 (issue 15)."""

from __future__ import annotations

import json

import pytest
import torch

from ctxstyle.data.styles import monotone_lut_rmse
from ctxstyle.experiments.dg_augment import DG_AUGMENTS, GIN, NnUNetV2Intensity, RandConv, RandomWindowLUT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = 0.2 + 0.5 * (yy * xx)
    return (base + 0.1 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("name", sorted(DG_AUGMENTS))
def test_seeded_shape_keeping_and_input_untouched(name):
    aug, x = DG_AUGMENTS[name], _images()
    before = x.clone()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and torch.equal(x, before)
    assert json.loads(json.dumps(aug.to_dict()))["kind"] == type(aug).__name__
    if name != "nnunet_v2":  # applied to every image: another seed, another augmentation
        assert not torch.equal(a, aug(x, torch.Generator().manual_seed(2)))


def test_random_window_lut_is_a_new_monotone_gray_scale_per_image():
    x = _images(6)
    y = RandomWindowLUT()(x, torch.Generator().manual_seed(3))
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    for i in range(len(x)):
        assert monotone_lut_rmse(x[i, 0].numpy(), y[i, 0].numpy()) < 1e-6
    assert len({round(float(v), 4) for v in y.mean(dim=(1, 2, 3))}) == len(x)


def test_gin_keeps_the_frobenius_norm_and_changes_the_image():
    x = _images(3)
    y = GIN()(x, torch.Generator().manual_seed(4))
    for i in range(3):
        assert float(y[i].norm()) == pytest.approx(float(x[i].norm()), rel=1e-5)
        assert not torch.allclose(y[i], x[i], atol=1e-3)


def test_randconv_with_a_1x1_kernel_is_a_linear_gray_scale_change():
    x = _images(3)
    y = RandConv(kernel_sizes=(1,))(x, torch.Generator().manual_seed(5))
    for i in range(3):
        assert monotone_lut_rmse(x[i, 0].numpy(), y[i, 0].numpy()) < 1e-5


def test_nnunet_v2_applies_its_published_probabilities():
    x = _images(400, size=16)
    y = NnUNetV2Intensity()(x, torch.Generator().manual_seed(6))
    changed = float((y - x).abs().flatten(1).amax(1).gt(1e-6).float().mean())
    # P(at least one transform) = 1 - 0.9 * (1 - 0.2 * 0.5) * 0.85 * 0.85 * (1 - 0.25 * 0.5) * 0.9 * 0.7
    expected = 1 - 0.9 * 0.9 * 0.85 * 0.85 * 0.875 * 0.9 * 0.7
    assert abs(changed - expected) < 0.07, (changed, expected)
    off = NnUNetV2Intensity(p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_low_res=0, p_gamma_inverted=0,
                            p_gamma=0)
    assert torch.equal(off(x, torch.Generator().manual_seed(6)), x)
    gamma_only = NnUNetV2Intensity(p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_low_res=0,
                                   p_gamma_inverted=0, p_gamma=1)
    z = gamma_only(x[:20], torch.Generator().manual_seed(7))
    assert torch.allclose(z.mean(dim=(1, 2, 3)), x[:20].mean(dim=(1, 2, 3)), atol=2e-3)  # retain_stats
