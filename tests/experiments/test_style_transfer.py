"""Fast tests of the style-transfer metrics: LPIPS, anatomy preservation, CIS (notebook 03)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxstyle.errors import InputError, WeightsNotFoundError
from ctxstyle.metrics.anatomy import bone_overlap, dice_iou, edge_ssim, gray_threshold, sobel_edges
from ctxstyle.metrics.cis import SoftmaxHead, cis_from_probs, conditional_inception_score, train_softmax_head


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _phantom(n=3, size=32, seed=0) -> np.ndarray:
    """Gray (n, size, size) images in [0, 1]: a bright 'vertebra' disc on soft tissue, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for k in range(n):
        cy, cx, r = size / 2 + k, size / 2 - k, size / 5
        img = 0.25 + 0.05 * rng.standard_normal((size, size))
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 0.8
        out.append(np.clip(img, 0, 1))
    return np.stack(out).astype(np.float32)


# ------------------------------------------------------------------------------------- LPIPS
@pytest.fixture(scope="module")
def lpips_mod():
    from ctxstyle.metrics import perceptual

    try:
        perceptual.lpips_model()
    except WeightsNotFoundError as exc:  # a fresh offline machine without the packaged weights
        pytest.skip(f"AlexNet weights unavailable: {exc}")
    return perceptual


def test_lpips_identical_is_zero_and_shape(lpips_mod):
    x = torch.from_numpy(_phantom(4))[:, None]
    d = lpips_mod.lpips_distance(x, x)
    assert d.shape == (4,)
    assert torch.allclose(d, torch.zeros(4), atol=1e-6)
    y = torch.from_numpy(_phantom(4, seed=1))[:, None]
    assert (lpips_mod.lpips_distance(x, y) > 0).all()


def test_lpips_uses_pretrained_alexnet(lpips_mod):
    model = lpips_mod.lpips_model()
    w = model.net.slice1[0].weight  # AlexNet conv1 (64, 3, 11, 11)
    # ImageNet AlexNet conv1: std ~0.117; torchvision's random init (kaiming uniform, fan-in 363) gives ~0.03
    assert abs(float(w.std()) - 0.117) < 0.003
    assert lpips_mod.lpips_provenance()["arch"] == "alexnet"
    # the heads are LPIPS v0.1's calibrated linear heads (the lpips package's alex.pth), not a random init
    import lpips

    ref = torch.load(Path(lpips.__file__).parent / "weights/v0.1/alex.pth", map_location="cpu", weights_only=True)
    assert sorted(ref) == [f"lin{i}.model.1.weight" for i in range(5)]
    state = model.state_dict()
    assert [tuple(state[f"lin{i}.model.1.weight"].shape) for i in range(5)] == [
        (1, 64, 1, 1), (1, 192, 1, 1), (1, 384, 1, 1), (1, 256, 1, 1), (1, 256, 1, 1)]
    for k, v in ref.items():
        assert torch.equal(state[k], v)


def test_lpips_gray_equals_repeated_rgb_and_broadcast(lpips_mod):
    a = torch.from_numpy(_phantom(2))[:, None]
    b = torch.from_numpy(_phantom(2, seed=3))[:, None]
    gray = lpips_mod.lpips_distance(a, b)
    rgb = lpips_mod.lpips_distance(a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1))
    assert torch.allclose(gray, rgb, atol=1e-6)
    assert torch.allclose(lpips_mod.lpips_distance(a[:, 0], b[:, 0]), gray, atol=1e-6)  # (N, H, W)
    one = lpips_mod.lpips_distance(a, b[:1])
    assert torch.allclose(one[0], gray[0], atol=1e-6)
    with pytest.raises(InputError):
        lpips_mod.lpips_distance(torch.zeros(2, 2, 32, 32), torch.zeros(2, 2, 32, 32))
    with pytest.raises(InputError):
        lpips_mod.lpips_distance(a, b[:, :, :16])


def test_lpips_from_features_equals_the_package_forward_and_chunks_do_not_matter(lpips_mod):
    a = torch.from_numpy(_phantom(5, size=64, seed=4))[:, None]
    b = torch.from_numpy(_phantom(5, size=64, seed=5))[:, None]
    with torch.inference_mode():
        want = lpips_mod.lpips_model()(a.expand(-1, 3, -1, -1) * 2 - 1, b.expand(-1, 3, -1, -1) * 2 - 1).reshape(-1)
    fa, fb = lpips_mod.lpips_features(a), lpips_mod.lpips_features(b)
    assert torch.equal(lpips_mod.lpips_from_features(fa, fb), want)
    assert torch.allclose(lpips_mod.lpips_distance(a, b, batch_size=2), want, atol=1e-6)
    assert lpips_mod.lpips_distance(a[:0], b[:0]).shape == (0,)
    with pytest.raises(InputError, match="another size"):
        lpips_mod.lpips_from_features(fa, lpips_mod.lpips_features(b[:, :, :40, :40]))
    with pytest.raises(InputError, match="give as many, or one"):
        lpips_mod.lpips_from_features(fa, lpips_mod.lpips_features(b[:2]))
    one = lpips_mod.lpips_from_features(fa, lpips_mod.lpips_features(b[:1]))
    assert torch.allclose(one, lpips_mod.lpips_distance(a, b[:1]), atol=1e-6)


# ------------------------------------------------------------------------------------- anatomy
def test_dice_iou_basic_cases():
    a = np.zeros((3, 8, 8), bool)
    b = np.zeros((3, 8, 8), bool)
    a[0, :4], b[0, :4] = True, True  # identical
    a[1, :4], b[1, 4:] = True, True  # disjoint
    a[2, :4], b[2, :2] = True, True  # half
    dice, iou = dice_iou(a, b)
    assert dice.tolist() == pytest.approx([1.0, 0.0, 2 * 16 / 48])
    assert iou.tolist() == pytest.approx([1.0, 0.0, 0.5])
    empty = np.zeros((1, 4, 4), bool)
    assert dice_iou(empty, empty)[0][0] == 1.0


def test_bone_overlap_properties():
    x = _phantom(3)
    assert bone_overlap(x, x, 0.5, 0.5)["dice"] == pytest.approx([1, 1, 1])
    # a monotone gray-scale change keeps the shape: rank-matched threshold gives Dice 1
    y = 0.1 + 0.5 * x**1.5
    assert bone_overlap(x, y, 0.5, None)["dice"] == pytest.approx([1, 1, 1])
    # the same threshold mapped through the change gives 1 too; a wrong gray level does not
    assert bone_overlap(x, y, 0.5, 0.1 + 0.5 * 0.5**1.5)["dice"] == pytest.approx([1, 1, 1])
    assert bone_overlap(x, y, 0.5, 0.95)["dice"] == pytest.approx([0, 0, 0])
    # moving the anatomy lowers it
    shifted = np.roll(x, 5, axis=2)
    assert (bone_overlap(x, shifted, 0.5, 0.5)["dice"] < 0.7).all()


def test_gray_threshold_follows_the_style():
    assert gray_threshold("bone", 200.0) == pytest.approx((200 + 500) / 2000, abs=1e-6)  # W2000 / L500
    assert gray_threshold("soft_tissue", 200.0) == pytest.approx((200 + 160) / 400, abs=1e-6)  # W400 / L40
    lo, hi = gray_threshold("dark_lowcontrast", -1000), gray_threshold("dark_lowcontrast", 3000)
    assert lo == pytest.approx(0.05, abs=1e-6) and hi == pytest.approx(0.6, abs=1e-6)


def test_edge_ssim_properties():
    x = _phantom(2)
    assert edge_ssim(x, x) == pytest.approx([1.0, 1.0])
    # a global contrast change is not an anatomy change: edge maps are normalised per image
    assert edge_ssim(x, 0.5 * x) == pytest.approx([1.0, 1.0], abs=1e-6)
    shifted = np.roll(x, 6, axis=1)
    assert (edge_ssim(x, shifted) < 0.8).all()
    e = sobel_edges(x)
    assert e.shape == x.shape and e.min() >= 0 and e.max() <= 1
    with pytest.raises(InputError):
        edge_ssim(x, x[:, :16])
    assert edge_ssim(torch.from_numpy(x)[:, None], torch.from_numpy(x)[:, None]) == pytest.approx([1, 1])


# ------------------------------------------------------------------------------------- CIS
def test_cis_identical_predictions_is_one():
    p = np.tile([[0.7, 0.2, 0.1]], (5, 1))
    assert cis_from_probs(p) == pytest.approx(1.0)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_cis_k_distinct_one_hot_is_k(k):
    assert cis_from_probs(np.eye(k)) == pytest.approx(k)
    assert cis_from_probs(np.eye(6)[:k]) == pytest.approx(k)  # unused classes do not count


def test_cis_between_and_over_inputs():
    p = np.array([[0.9, 0.1], [0.1, 0.9]])
    v = cis_from_probs(p)
    kl = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert v == pytest.approx(math.exp(kl)) and 1 < v < 2
    mean, std, values = conditional_inception_score([np.eye(3), np.tile([[1.0, 0, 0]], (3, 1))])
    assert values.tolist() == pytest.approx([3.0, 1.0]) and mean == pytest.approx(2.0) and std == pytest.approx(1.0)
    with pytest.raises(InputError):
        cis_from_probs(np.array([[0.5, 0.6]]))


def test_inception_features_of_gray_images_and_their_cache(tmp_path):
    """Gray images enter as three equal channels (the same features as an explicit RGB copy); with
    ``cache_dir`` the features are read back from the file keyed by the images' bytes; values
    outside [0, 1] are refused, not clamped."""
    from ctxstyle.metrics import cis

    try:
        cis.inception_model()
    except WeightsNotFoundError as exc:  # a fresh offline machine without the packaged weights
        pytest.skip(f"Inception-v3 weights unavailable: {exc}")
    gray = torch.from_numpy(_phantom(2, size=64))[:, None]
    feats = cis.inception_features(gray, cache_dir=tmp_path)
    assert feats.shape == (2, 2048) and feats.dtype == np.float32 and np.isfinite(feats).all()
    np.testing.assert_allclose(cis.inception_features(gray.expand(-1, 3, -1, -1)), feats, rtol=1e-5, atol=1e-6)
    (cached,) = tmp_path.glob("inception-*.npy")
    np.save(cached, np.zeros_like(feats))  # the cache, not a new forward pass, answers the same images
    assert not cis.inception_features(gray, cache_dir=tmp_path).any()
    assert cis.inception_features(gray.flip(-1), cache_dir=tmp_path).any()  # other images: another file
    assert len(list(tmp_path.glob("inception-*.npy"))) == 2
    with pytest.raises(InputError, match="images"):
        cis.inception_features(gray * 1000.0)


def test_softmax_head_learns_separable_classes():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 16)) * 3
    y = np.repeat(np.arange(3), 20)
    x = centres[y] + rng.standard_normal((60, 16))
    head = train_softmax_head(x, y, ["a", "b", "c"], l2=1e-2)
    assert isinstance(head, SoftmaxHead)
    assert head.accuracy(x, y) == 1.0
    p = head.predict_proba(x)
    assert p.shape == (60, 3) and np.allclose(p.sum(1), 1)
    again = train_softmax_head(x, y, ["a", "b", "c"], l2=1e-2)
    assert np.array_equal(again.weight, head.weight)  # deterministic


def test_softmax_head_records_the_fitted_train_loss():
    """info["train_loss"] is the objective of the fitted head, not L-BFGS's first closure value
    (ln K at zero weights): below ln K on separable data, and equal to the loss recomputed from
    the head's own probabilities and weights."""
    rng = np.random.default_rng(1)
    k = 4
    centres = rng.standard_normal((k, 12)) * 3
    y = np.repeat(np.arange(k), 15)
    x = centres[y] + rng.standard_normal((len(y), 12))
    l2 = 1e-2
    head = train_softmax_head(x, y, list("abcd"), l2=l2)
    loss = head.info["train_loss"]
    assert head.info["train_accuracy"] == 1.0
    assert loss < math.log(k) - 0.5
    p = head.predict_proba(x)
    recomputed = -np.log(p[np.arange(len(y)), y]).mean() + 0.5 * l2 * (head.weight**2).sum()
    assert loss == pytest.approx(recomputed, rel=1e-6, abs=1e-9)


# ------------------------------------------------------------------------------------- baselines
def test_window_oracle_is_exact_for_a_pure_window_style():
    from ctxstyle.data import apply_style
    from ctxstyle.experiments.style_transfer import histogram_match, window_oracle

    hu = np.random.default_rng(0).uniform(-1000, 1500, (2, 16, 16)).astype(np.float32)
    assert np.array_equal(window_oracle(hu, "soft_tissue"), apply_style(hu, "soft_tissue", spacing_mm=1.0))
    assert not np.allclose(window_oracle(hu, "wide_gamma"), apply_style(hu, "wide_gamma", spacing_mm=1.0))  # misses the gamma
    src, ref = apply_style(hu, "bone", spacing_mm=1.0), apply_style(hu[::-1], "wide_gamma", spacing_mm=1.0)
    out = histogram_match(src, ref)
    assert out.shape == src.shape
    assert abs(out[0].mean() - ref[0].mean()) < 0.03  # ties (clipped pixels) keep it from being exact
    assert np.quantile(out[0], 0.5) == pytest.approx(np.quantile(ref[0], 0.5), abs=0.05)


# ------------------------------------------------------------------------------------- experiment plumbing
def test_sweep_grid_and_spread():
    from ctxstyle.experiments.style_transfer import evenly_spaced, sweep_grid

    grid = sweep_grid(["ours", "adain"], {"style_weight": [1, 3], "lr": [1e-3]}, {"band_width": 0.5})
    assert len(grid) == 4 and grid[0] == ("ours", {"band_width": 0.5, "style_weight": 1, "lr": 1e-3})
    assert evenly_spaced(10, None).tolist() == list(range(10))
    assert evenly_spaced(10, 3).tolist() == [0, 4, 9]


@pytest.mark.slow
def test_continuing_a_shorter_run_equals_training_from_scratch(tmp_path):
    from ctxstyle.experiments.presets import method_config
    from ctxstyle.experiments.style_transfer import train_extending
    from ctxstyle.train import load_checkpoint

    rng = np.random.default_rng(0)
    np.save(tmp_path / "c.npy", rng.uniform(0, 1, (6, 16, 16)).astype(np.float32))
    np.save(tmp_path / "s.npy", rng.uniform(0, 1, (6, 16, 16)).astype(np.float32))
    kw = dict(image_size=16, batch_size=2, seed=0, content_data=str(tmp_path / "c.npy"),
              style_data=str(tmp_path / "s.npy"), device="cpu")
    direct = train_extending(method_config("ours", iterations=3, **kw), tmp_path / "a", "ours", progress=False)
    train_extending(method_config("ours", iterations=1, **kw), tmp_path / "b", "ours", progress=False)
    extended = train_extending(method_config("ours", iterations=3, **kw), tmp_path / "b", "ours", progress=False)
    sa, sb = load_checkpoint(direct.checkpoint), load_checkpoint(extended.checkpoint)
    assert sb["step"] == 3 and len(sb["history"]) == 3
    assert [h["total"] for h in sa["history"]] == [h["total"] for h in sb["history"]]
    assert all(torch.equal(sa["decoder"][k], sb["decoder"][k]) for k in sa["decoder"])
    assert len(list((tmp_path / "b").iterdir())) == 2  # the 1-step run is kept as it was


def test_a_shorter_run_saved_before_a_config_field_existed_is_continued(tmp_path):
    """A config.json without a later field (init_decoder) still matches its defaults."""
    import json
    from pathlib import Path

    from ctxstyle.experiments.presets import method_config
    from ctxstyle.experiments.style_transfer import extend_shorter_run, train_extending

    np.save(tmp_path / "c.npy", np.random.default_rng(0).uniform(0, 1, (6, 16, 16)).astype(np.float32))
    kw = dict(image_size=16, batch_size=2, seed=0, content_data=str(tmp_path / "c.npy"),
              style_data=str(tmp_path / "c.npy"), device="cpu")
    short = train_extending(method_config("ours", iterations=1, **kw), tmp_path, "ours", progress=False)
    config_file = Path(short.checkpoint).parent / "config.json"
    old = json.loads(config_file.read_text())
    del old["init_decoder"]
    config_file.write_text(json.dumps(old))
    assert extend_shorter_run(method_config("ours", iterations=2, **kw), tmp_path, "ours") is not None


def test_pair_set_renders_exactly_the_protocol_slices():
    from ctxstyle.data import protocol_slices, scaled_protocol
    from ctxstyle.experiments.style_transfer import pair_set

    pairs, proto = pair_set("val", 32, n=6), scaled_protocol(32)
    assert np.array_equal(pairs.content, protocol_slices("val", proto.source_style, protocol=proto)[0][pairs.index])
    for s in pairs.styles:
        rendered = protocol_slices("val", s, protocol=proto)[0]
        assert np.array_equal(pairs.truth[s], rendered[pairs.index])
        assert np.array_equal(pairs.refs[s], rendered[pairs.ref_index])


def test_style_evaluation_lpips_equals_pairwise_lpips(lpips_mod):
    """evaluate / diversity_lpips compute each image's features once, chunk by chunk: the same
    numbers as lpips_distance on every comparison."""
    from ctxstyle.experiments.style_transfer import PairSet, diversity_lpips, evaluate

    n, styles = 5, ("bone", "wide")
    img = lambda seed: _phantom(n, size=48, seed=seed).astype(np.float32)  # noqa: E731
    pairs = PairSet("test", 48, "soft_tissue", styles, img(0), np.zeros((n, 48, 48)), np.zeros((n, 48, 48), bool),
                    np.array(["p"] * n), np.arange(n), np.arange(n)[::-1].copy(),
                    {"bone": img(1), "wide": img(2)}, {"bone": img(3), "wide": img(4)})
    outputs = {"m1": {"bone": img(5), "wide": img(6)}, "m2": {"bone": img(7), "wide": img(8)}}
    rows = evaluate(pairs, outputs, lpips_batch=2).set_index(["method", "style", "pair"])
    for m, per_style in outputs.items():
        for s, out in per_style.items():
            for col, target in (("lpips_content", pairs.content), ("lpips_style", pairs.refs[s]),
                                ("lpips_truth", pairs.truth[s])):
                want = lpips_mod.lpips_distance(out, target).numpy()
                got = rows.loc[(m, s), col].to_numpy()
                assert np.allclose(got, want, atol=1e-6), (m, s, col)
    div = diversity_lpips(pairs, outputs, lpips_batch=2).set_index("method")
    want = lpips_mod.lpips_distance(outputs["m2"]["bone"], outputs["m2"]["wide"]).numpy()
    assert np.isclose(div.loc["m2", "lpips_diversity_mean"], want.mean(), atol=1e-6)
    with pytest.raises(InputError, match="two target styles"):
        diversity_lpips(PairSet(**{**pairs.__dict__, "styles": ("bone",)}), outputs)
