"""Tests of the teaching helpers (ctxstyle.experiments.teaching) and the explorer's pure part (ctxstyle.experiments.explorer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctxstyle.errors import InputError
from ctxstyle.fast.contextual import contextual_loss
from ctxstyle.experiments.teaching import (channel_stats, contextual_steps, elastic_deform, normalise_to_first_nonzero, shift_image)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ contextual loss step by step


@pytest.mark.parametrize("h", [0.1, 0.5, 1.0])
def test_steps_equal_contextual_loss(h):
    g = torch.relu(_rand(2, 16, 5, 6, seed=1))  # relu-like features, different position counts
    t = torch.relu(_rand(2, 16, 4, 4, seed=2))
    steps = contextual_steps(g, t, band_width=h)
    assert float(steps.loss) == pytest.approx(float(contextual_loss(g, t, band_width=h)), rel=1e-5, abs=1e-6)


def test_steps_equal_contextual_loss_with_repeated_vectors():
    # flat background: identical feature vectors at many positions (the log(k) case of eq 8)
    t = torch.relu(_rand(1, 8, 6, 6, seed=3))
    t[..., :3, :] = t[..., :1, :1]
    g = t + 0.05 * _rand(1, 8, 6, 6, seed=4)
    assert float(contextual_steps(g, t).loss) == pytest.approx(float(contextual_loss(g, t)), rel=1e-5, abs=1e-6)


def test_steps_intermediates_have_their_defining_properties():
    g, t = _rand(1, 12, 20, seed=5), _rand(1, 12, 15, seed=6)
    s = contextual_steps(g, t, band_width=0.3)
    assert s.d.shape == s.d_rel.shape == s.w.shape == s.cx_ij.shape == (1, 20, 15)
    assert bool((s.d >= 0).all()) and bool((s.d <= 2 + 1e-12).all())  # cosine distance
    assert torch.allclose(s.d_rel.min(dim=2).values, torch.ones(1, 20, dtype=torch.float64), atol=1e-3)  # eq 6: row minimum ~1
    assert torch.allclose(s.cx_ij.sum(dim=2), torch.ones(1, 20, dtype=torch.float64))  # eq 8: rows sum to 1
    assert torch.allclose(s.max_over_generated, s.cx_ij.max(dim=1).values)
    assert float(s.loss) == pytest.approx(float(-torch.log(s.cx_ij.max(dim=1).values.mean())))


def test_contextual_loss_ignores_the_order_of_generated_positions():
    g, t = _rand(1, 10, 30, seed=7), _rand(1, 10, 25, seed=8)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    assert float(contextual_steps(g[..., perm], t).loss) == pytest.approx(float(contextual_steps(g, t).loss), rel=1e-12)


def test_steps_reject_mismatched_channels():
    with pytest.raises(InputError):
        contextual_steps(_rand(1, 4, 9), _rand(1, 5, 9))


def test_channel_stats_columns_and_values():
    f = _rand(1, 3, 4, 4, seed=9) * 2 + 1
    df = channel_stats({"content": f})
    assert list(df.columns) == ["channel", "content_mean", "content_std"]
    assert np.allclose(df["content_mean"], f[0].reshape(3, -1).mean(1).numpy(), atol=1e-6)


# ------------------------------------------------------------------ misalignment helpers


def _image(size=32, seed=0):
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    return np.clip(ndimage.gaussian_filter(rng.random((size, size)), 2) * 3 - 1, 0, 1).astype(np.float32)


def test_shift_moves_content_by_whole_pixels():
    img = _image()
    out = shift_image(img, 3)
    assert out.shape == img.shape and out.dtype == np.float32
    assert np.allclose(out[:, 3:], img[:, :-3])
    assert np.array_equal(shift_image(img, 0), img)


def test_elastic_deform_zero_is_identity_and_displacement_is_bounded():
    img = _image()
    assert np.array_equal(elastic_deform(img, 0), img)
    out = elastic_deform(img, 2.0, seed=1)
    assert out.shape == img.shape and 0 <= out.min() and out.max() <= 1
    assert not np.allclose(out, img)
    # a linear ramp moves by at most `strength` pixels, so values change by at most strength * slope
    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    assert np.abs(elastic_deform(ramp, 2.0, seed=1) - ramp).max() <= 2.0 / 31 + 1e-5
    assert np.array_equal(elastic_deform(img, 2.0, seed=1), out)  # seeded


def test_normalise_to_first_nonzero():
    assert np.allclose(normalise_to_first_nonzero([0, 0, 2, 4]), [0, 0, 1, 2])
    assert np.isnan(normalise_to_first_nonzero([0, 0])).all()


# ------------------------------------------------------------------ explorer


@pytest.fixture(scope="module")
def stylizer(make_random_net):
    """A random-weight stylizer whose pictures are not blank: a random decoder's output is nearly
    constant and negative, i.e. black after clipping, so every comparison of two pictures would
    pass; its last convolution is rescaled so the reconstruction of ``_image(32)`` has mean 0.5,
    SD 0.15."""
    from ctxstyle.stylize import Stylizer

    net = make_random_net(_image(32))
    last = [m for m in net.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        x = torch.from_numpy(_image(32))[None, None]
        y = net.decode(net.encode(x, ["relu4_1"])["relu4_1"])
        scale = 0.15 / y.std()
        last.weight.mul_(scale)
        last.bias.copy_(scale * (last.bias - y.mean()) + 0.5)
    return Stylizer(net)


def test_render_shapes_and_ranges(stylizer):
    from ctxstyle.experiments.explorer import render

    content, styles = _image(32, 1), [_image(32, 2), _image(32, 3) * 0.5]
    frame = render(stylizer, content, styles, weights=[0.3, 0.7], alpha=0.8, level=0.4, width=0.5)
    for key in ("content", "stylized", "content_shown", "stylized_shown", "difference"):
        assert frame[key].shape == (32, 32) and frame[key].dtype == np.float32
    assert frame["styles"].shape == frame["styles_shown"].shape == (2, 32, 32)
    for key in ("content", "stylized", "content_shown", "stylized_shown", "styles_shown"):
        assert 0.0 <= frame[key].min() and frame[key].max() <= 1.0
    assert np.allclose(frame["difference"], frame["stylized"] - frame["content"])
    assert frame["stylized"].std() > 0.01  # a picture, not a blank (the comparisons below would be empty)
    # the display window only changes what is shown: full window (0.5, 1.0) shows the gray values
    full = render(stylizer, content, styles, weights=[0.3, 0.7], alpha=0.8)
    assert np.array_equal(full["stylized"], frame["stylized"])
    assert np.allclose(full["stylized_shown"], full["stylized"])


def test_render_alpha_zero_is_the_reconstruction(stylizer):
    from ctxstyle.experiments.explorer import render

    content = _image(32, 1)
    a = render(stylizer, content, [_image(32, 2)], alpha=0.0)["stylized"]
    b = render(stylizer, content, [_image(32, 5) * 0.3], alpha=0.0)["stylized"]
    assert np.allclose(a, b, atol=1e-6)  # the style does not matter at alpha = 0
    with torch.inference_mode():
        x = torch.from_numpy(content)[None, None]
        recon = stylizer.net.decode(stylizer.net.encode(x, ["relu4_1"])["relu4_1"]).clamp(0, 1)[0, 0].numpy()
    assert np.allclose(a, recon, atol=1e-5)


def test_render_blend_weight_one_equals_single_style(stylizer):
    from ctxstyle.experiments.explorer import render

    content, s1, s2 = _image(32, 1), _image(32, 2), _image(32, 3) * 0.5
    blend = render(stylizer, content, [s1, s2], weights=[1.0, 0.0])["stylized"]
    single = render(stylizer, content, [s1])["stylized"]
    assert np.allclose(blend, single, atol=1e-5)


def test_render_rejects_bad_input(stylizer):
    from ctxstyle.experiments.explorer import render

    with pytest.raises(InputError):
        render(stylizer, _image(32), [])
    with pytest.raises(InputError):
        render(stylizer, _image(32)[None], [_image(32)])
    with pytest.raises(InputError):
        render(stylizer, _image(32), [_image(32)], width=0)


def test_display_window_hu_of_the_full_window_is_the_source_window():
    from ctxstyle.experiments.explorer import display_window_hu
    from ctxstyle.stylize import default_window

    assert display_window_hu(0.5, 1.0) == pytest.approx(default_window())
    assert display_window_hu(0.5, 1.0, (40, 400)) == pytest.approx((40, 400))


def test_gray_window_is_the_inverse_of_display_window_hu():
    from ctxstyle.experiments.explorer import display_window_hu, gray_window, window_presets

    for src in [(500.0, 2000.0), (40.0, 400.0)]:
        for level, width in [(0.5, 1.0), (0.27, 0.2), (0.9, 1.7)]:
            assert gray_window(*display_window_hu(level, width, src), src) == pytest.approx((level, width))
    assert gray_window(500, 2000, (500, 2000)) == pytest.approx((0.5, 1.0))  # the source window shows v as is
    presets = window_presets((500.0, 2000.0))
    assert list(presets.values()) == [(500.0, 2000.0), (40.0, 400.0)]  # bone is the source window here: once
    assert len(window_presets((40.0, 350.0))) == 3
    with pytest.raises(InputError):
        gray_window(40, 0)


def test_build_explorer_runs_headless(stylizer, tmp_path):
    pytest.importorskip("ipywidgets")
    from ctxstyle.experiments.explorer import NO_STYLE, build_explorer, window_presets

    contents = np.stack([_image(32, k) for k in range(3)])
    source = (500.0, 2000.0)
    panel = build_explorer(stylizer, contents, {"a": contents[:2], "b": contents[1:] * 0.5}, save_dir=tmp_path / "s",
                           source_window=source, defaults={"weight1": 0.5})
    c = panel.controls
    first = panel.shown()
    assert first is not None and "shown" in panel.status.value and len(first["frame"]["styles"]) == 1
    c["alpha"].value = 0.0  # alpha moves the picture towards the content's reconstruction; the status names it
    assert "alpha 0.00" in panel.status.value and panel.shown()["settings"]["alpha"] == 0.0
    assert not np.allclose(panel.shown()["frame"]["stylized"], first["frame"]["stylized"], atol=1e-3)
    c["alpha"].value = 1.0
    assert np.allclose(panel.shown()["frame"]["stylized"], first["frame"]["stylized"], atol=1e-6)
    c["style1"].value = "b"
    assert len(panel.shown()["frame"]["styles"]) == 2
    c["weight0"].value = 0.0  # a zero-weight style is neither blended nor drawn
    assert len(panel.shown()["frame"]["styles"]) == 1
    c["weight1"].value = 0.0
    assert "All style weights are 0" in panel.status.value
    assert panel.shown()["settings"]["weight1"] == 0.5  # the picture shown is still the last one computed
    c["window"].value = "soft tissue (W400/L40)"  # a preset sets the HU sliders, one picture for both
    assert (c["level"].value, c["width"].value) == window_presets(source)["soft tissue (W400/L40)"]
    c["weight0"].value = 1.0
    assert panel.shown()["settings"]["width"] == 400.0
    c["level"].value = 100.0
    assert c["window"].value == "custom"
    panel.reset()
    assert c["window"].value == next(iter(window_presets(source))) and c["weight0"].value == 1.0
    assert c["style1"].value == NO_STYLE and panel.shown()["settings"]["level"] == 500.0
    assert np.allclose(panel.shown()["frame"]["stylized_shown"], first["frame"]["stylized_shown"], atol=1e-6)  # the first picture again
    saved = [panel.save(), panel.save()]  # two saves: two new file pairs
    assert all(p.is_file() and p.with_suffix(".json").is_file() for p in saved) and saved[0] != saved[1]
    import json
    assert json.loads(saved[0].with_suffix(".json").read_text())["settings"]["window"] == c["window"].value
    no_save = build_explorer(stylizer, contents, {"a": contents[:2]}, source_window=source)
    assert no_save.buttons["save"].disabled and no_save.save() is None
    with pytest.raises(InputError):
        build_explorer(stylizer, contents, {"a": contents[:2]}, defaults={"window": "nope"})
