"""Segmentation: metric definitions, U-Net shapes, a short training, augmentations (fast, CPU)."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from ctxstyle.experiments.augment import (IntensityAugment, copy_plan, gather_copies, held_out_plan, histogram_match_copies,
                                          remake_copies, stylize_copies)
from ctxstyle.errors import InputError
from ctxstyle.metrics.segmentation import (confusion_counts, dice_score, mean_iou, paired_comparison, pixel_accuracy, scores_from_counts, segmentation_scores)
from ctxstyle.experiments.segmentation import (SegConfig, TrainingSet, build_training_sets, choose_unet_lr, even_subsample, evaluate,
                                               held_out_conclusion_markdown, held_out_frame, pooled_scores, run_key, seg_loss,
                                               style_breakdown, table2, train_unet)
from ctxstyle.experiments.unet import UNet


def half_spine(n=2, size=8):
    m = np.zeros((n, size, size), np.uint8)
    m[:, :, : size // 2] = 1
    return m


# --------------------------------------------------------------------------- metrics


def test_perfect_prediction_scores_one():
    m = half_spine()
    s = segmentation_scores(m, m)
    assert s["pa"] == 1.0 and s["miou"] == 1.0 and s["dice"] == 1.0
    assert s["iou_bg"] == 1.0 and s["iou_spine"] == 1.0


def test_all_background_on_half_spine_image():
    m = half_spine()
    pred = np.zeros_like(m)
    s = segmentation_scores(pred, m)
    assert s["pa"] == pytest.approx(0.5)  # half the pixels are right
    assert s["iou_spine"] == 0.0
    assert s["iou_bg"] == pytest.approx(0.5)  # TN / (TN + FN) = 64 / 128
    assert s["miou"] == pytest.approx(0.25)
    assert s["dice"] == 0.0
    assert pixel_accuracy(pred, m) == pytest.approx(0.5)
    assert mean_iou(pred, m) == pytest.approx(0.25)
    assert dice_score(pred, m) == 0.0


def test_counts_are_pooled_over_images_not_averaged():
    # image 0: perfect on 1 spine pixel; image 1: misses all 3 spine pixels
    t = np.zeros((2, 2, 2), np.uint8)
    t[0, 0, 0] = 1
    t[1, 0, :] = 1
    t[1, 1, 0] = 1
    p = np.zeros_like(t)
    p[0, 0, 0] = 1
    c = confusion_counts(p, t)
    assert c == {"tp": 1, "fp": 0, "fn": 3, "tn": 4}
    s = scores_from_counts(**c)
    assert s["dice"] == pytest.approx(2 / 5)  # per-image mean would be (1 + 0) / 2
    assert s["iou_spine"] == pytest.approx(1 / 4)
    assert s["iou_bg"] == pytest.approx(4 / 7)


def test_probabilities_threshold_at_half_and_nan_for_absent_class():
    t = np.zeros((4, 4), np.uint8)
    s = segmentation_scores(np.full((4, 4), 0.4, np.float32), t)
    assert s["pa"] == 1.0 and math.isnan(s["iou_spine"]) and math.isnan(s["dice"])
    assert s["miou"] == 1.0  # mean over the classes that are defined
    with pytest.raises(ValueError):
        confusion_counts(np.zeros((2, 2)), np.zeros((2, 3)))


def test_paired_comparison():
    a = np.array([0.8, 0.7, 0.9, 0.6, 0.75])
    b = a - 0.1
    r = paired_comparison(a, b, n_boot=2000)
    assert r["mean_diff"] == pytest.approx(0.1)
    assert r["ci_low"] == pytest.approx(0.1) and r["ci_high"] == pytest.approx(0.1)
    assert r["wins"] == 5 and r["losses"] == 0 and r["n"] == 5
    assert r["wilcoxon_p"] < 0.1
    r0 = paired_comparison(a, a)
    assert r0["mean_diff"] == 0 and math.isnan(r0["wilcoxon_p"])


def test_paired_comparison_resamples_the_pairs_and_drops_unmeasured_ones():
    rng = np.random.default_rng(3)
    a = rng.uniform(0.5, 0.9, 40)
    d = rng.normal(0.05, 0.1, 40)
    b = a - d
    b[[4, 17]] = np.nan  # a crashed measurement: that pair is dropped, not counted as a loss
    r = paired_comparison(a, b, n_boot=4000, seed=1)
    kept = np.delete(d, [4, 17])
    assert r["n"] == 38 and r["mean_diff"] == pytest.approx(kept.mean())
    assert r["wins"] == int((kept > 0).sum()) and r["losses"] == int((kept < 0).sum())
    half = 1.96 * kept.std(ddof=1) / np.sqrt(len(kept))  # the normal approximation of the 95 % CI
    assert r["ci_low"] < r["mean_diff"] < r["ci_high"]
    assert (r["ci_high"] - r["ci_low"]) == pytest.approx(2 * half, rel=0.2)
    assert paired_comparison(a, b, n_boot=4000, seed=1) == r  # seeded: the same interval again
    assert 0 < r["wilcoxon_p"] < 1
    with pytest.raises(ValueError, match="differ in shape"):
        paired_comparison(a, b[:-1])
    empty = paired_comparison([np.nan], [0.5])
    assert empty["n"] == 0 and math.isnan(empty["mean_diff"]) and math.isnan(empty["ci_low"])


# --------------------------------------------------------------------------- U-Net


@pytest.mark.parametrize("size,depth,base", [(32, 3, 4), (64, 3, 8), (48, 4, 2), (16, 1, 4)])
def test_unet_output_shape(size, depth, base):
    net = UNet(base_channels=base, depth=depth).eval()
    with torch.no_grad():
        y = net(torch.rand(2, 1, size, size))
    assert y.shape == (2, 1, size, size)


def test_unet_rejects_bad_sizes():
    with pytest.raises(InputError):
        UNet(depth=3)(torch.rand(1, 1, 20, 20))
    with pytest.raises(InputError):
        SegConfig(image_size=36, depth=3)


def test_a_few_training_steps_lower_the_loss(tmp_path, square_masks):
    torch.manual_seed(0)
    images, masks = square_masks(16)
    data = TrainingSet("toy", images, masks)
    cfg = SegConfig(image_size=16, base_channels=4, depth=2, steps=30, batch_size=8, lr=0.01, threads=1)
    trained = train_unet(cfg, data, checkpoints_dir=tmp_path, progress=False)
    losses = [h["loss"] for h in trained.history]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    # cached: the second call loads the same weights without training
    again = train_unet(cfg, data, checkpoints_dir=tmp_path, progress=False)
    assert again.cached
    for p, q in zip(trained.net.parameters(), again.net.parameters()):
        assert torch.equal(p, q)
    # deterministic: a fresh run with the same seed gives the same weights
    fresh = train_unet(cfg, data, checkpoints_dir=None, progress=False)
    for p, q in zip(trained.net.parameters(), fresh.net.parameters()):
        assert torch.equal(p, q)  # bit-for-bit on CPU with a fixed thread count
    rows = evaluate(trained.net, {"bone": (images, masks, np.array(["p"] * 16))})
    assert rows[0]["tp"] + rows[0]["fp"] + rows[0]["fn"] + rows[0]["tn"] == masks.size


def test_seg_loss_and_run_key():
    t = torch.zeros(1, 1, 4, 4)
    t[..., :2, :] = 1
    good = seg_loss(torch.where(t > 0, 10.0, -10.0), t)
    bad = seg_loss(torch.where(t > 0, -10.0, 10.0), t)
    assert good["total"] < 0.01 < bad["total"]
    x = np.zeros((2, 8, 8), np.float32)
    m = np.zeros((2, 8, 8), np.uint8)
    cfg = SegConfig(image_size=8, depth=1)
    k = run_key(cfg, TrainingSet("a", x, m))
    assert k == run_key(SegConfig(image_size=8, depth=1, threads=2), TrainingSet("a", x, m))
    assert k != run_key(cfg, TrainingSet("a", x + 0.5, m))
    assert k != run_key(cfg, TrainingSet("a", x, m, IntensityAugment()))
    assert k != run_key(SegConfig(image_size=8, depth=1, seed=1), TrainingSet("a", x, m))


# --------------------------------------------------------------------------- augmentations


def test_intensity_augment_keeps_shape_range_and_is_seeded():
    x = torch.rand(8, 1, 16, 16)
    x0 = x.clone()
    aug = IntensityAugment(p_sample=1.0)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x) and torch.equal(x, x0)  # input untouched
    none = IntensityAugment(p_sample=0.0)(x, torch.Generator().manual_seed(0))
    assert torch.equal(none, x)


def test_copy_plan_is_balanced_and_seeded():
    styles = ["a", "b", "c"]
    p = copy_plan(10, styles, copies_per_slice=1, n_refs=4, seed=0)
    assert len(p) == 10 and sorted(p.counts().values()) == [3, 3, 4]
    assert np.array_equal(p.style, copy_plan(10, styles, 1, 4, 0).style)
    every = copy_plan(5, styles, copies_per_slice=3, n_refs=2, seed=1)
    for i in range(5):
        assert sorted(every.style[every.content == i]) == styles  # every slice in every style
    assert every.ref.max() < 2


def test_histogram_matching_and_copies_keep_shape_range():
    rng = np.random.default_rng(0)
    contents = rng.random((4, 8, 8)).astype(np.float32)
    refs = {"dark": (0.3 * rng.random((2, 8, 8))).astype(np.float32),
            "bright": (0.7 + 0.3 * rng.random((2, 8, 8))).astype(np.float32)}
    plan = copy_plan(4, list(refs), 1, 2, 0)
    hm = histogram_match_copies(contents, refs, plan)
    assert hm.shape == (4, 8, 8) and hm.min() >= 0 and hm.max() <= 1
    for k, s in enumerate(plan.style):
        assert hm[k].max() <= refs[s][plan.ref[k]].max() + 1e-6
        # rank order (anatomy) is kept
        assert np.corrcoef(np.argsort(np.argsort(hm[k].ravel())), np.argsort(np.argsort(contents[plan.content[k]].ravel())))[0, 1] > 0.99
    oracle = gather_copies({"dark": contents * 0.1, "bright": contents}, plan)
    assert oracle.shape == (4, 8, 8)

    class FakeStylizer:  # a Stylizer-shaped stand-in: shifts the content toward the style's mean
        def style_features(self, s):
            return [s.mean()]

        def __call__(self, content, style_feats, batch_size=8):
            return content * 0 + style_feats[0] + 2.0

    st = stylize_copies(FakeStylizer(), contents, refs, plan)
    assert st.shape == (4, 8, 8) and st.max() <= 1.0  # clipped
    sets = build_training_sets(contents, (contents > 0.5).astype(np.uint8), plan,
                               copies={"ours": st, "histmatch": hm}, classical=IntensityAugment())
    assert list(sets) == ["baseline", "ours", "histmatch", "classical"]
    assert len(sets["ours"]) == 8 and np.array_equal(sets["ours"].masks[4:], sets["ours"].masks[plan.content])


def test_even_subsample_and_table2():
    import pandas as pd

    pid = np.array(["a"] * 10 + ["b"] * 3)
    idx = even_subsample(pid, 4)
    assert list(idx) == [0, 3, 6, 9, 10, 11, 12]
    rows = []
    for name, tp in (("baseline", 5), ("ours", 8)):
        for sd in (0, 1):
            for style in ("bone", "t1", "t2"):
                for p in ("x", "y"):
                    tpv = 10 if style == "bone" else tp + sd
                    rows.append({"train_set": name, "seed": sd, "style": style, "patient": p,
                                 "tp": tpv, "fp": 1, "fn": 10 - min(tpv, 10) + 1, "tn": 88,
                                 **scores_from_counts(tpv, 1, 10 - min(tpv, 10) + 1, 88)})
    df = pd.DataFrame(rows)
    pooled = pooled_scores(df, ["train_set", "seed", "style"])
    assert len(pooled) == 12
    t = table2(df, "bone", ["t1", "t2"], n_boot=200)
    assert list(t["key"]) == ["baseline", "ours"]
    assert t.loc[1, "ΔDice target vs baseline (pp) [95% CI]"].startswith("+")


def test_held_out_plan_drops_one_style_keeps_the_budget_and_the_other_copies():
    styles = ["a", "b", "c", "d", "e"]
    plan = copy_plan(103, styles, copies_per_slice=1, n_refs=4, seed=3)
    for h in styles:
        ho = held_out_plan(plan, h)
        assert len(ho) == len(plan) and h not in ho.style and ho.styles == tuple(s for s in styles if s != h)
        assert np.array_equal(ho.content, plan.content)
        kept = plan.style != h
        assert np.array_equal(ho.style[kept], plan.style[kept]) and np.array_equal(ho.ref[kept], plan.ref[kept])
        counts = list(ho.counts().values())
        assert max(counts) - min(counts) <= 1 and ho.ref.max() < 4  # still balanced, valid references
        assert np.array_equal(ho.style, held_out_plan(plan, h).style)  # seeded
    with pytest.raises(InputError, match="not one of"):
        held_out_plan(plan, "z")


def test_remake_copies_recomputes_only_the_moved_copies():
    plan = copy_plan(20, ["a", "b", "c"], 1, 2, 0)
    ho = held_out_plan(plan, "b")
    seen = np.random.default_rng(0).random((20, 4, 4)).astype(np.float32)
    calls = []

    def make(p):
        calls.append(len(p))
        assert "b" not in p.style
        return np.full((len(p), 4, 4), -1.0, np.float32)

    out = remake_copies(seen, plan, ho, make)
    moved = plan.style == "b"
    assert calls == [int(moved.sum())]
    assert np.array_equal(out[~moved], seen[~moved]) and np.all(out[moved] == -1.0)
    assert not np.any(seen == -1.0)  # the seen copies are not modified


def _rows(sets_scores, styles, seeds=(0, 1), patients=("x", "y")):
    """Evaluation rows with a fixed true-positive count per (set, style): 100 pixels, 10 spine."""
    rows = []
    for name, by_style in sets_scores.items():
        for sd in seeds:
            for st in styles:
                for p in patients:
                    tp = by_style[st] if isinstance(by_style, dict) else by_style
                    c = {"tp": tp, "fp": 1, "fn": 10 - tp, "tn": 89}
                    rows.append({"train_set": name, "seed": sd, "style": st, "patient": p, **c, **scores_from_counts(**c)})
    import pandas as pd

    return pd.DataFrame(rows)


def test_held_out_frame_takes_each_style_from_the_models_that_did_not_see_it():
    import pandas as pd

    styles = ["src", "t1", "t2"]
    seen = _rows({"baseline": 3, "window_lut": 6, "ours": 9, "contextual": 9}, styles)
    retrained = {h: _rows({"ours": {"src": 8, h: 4}}, ["src", h]) for h in ("t1", "t2")}
    ho = held_out_frame(seen, retrained, "src")
    assert set(ho["train_set"]) == {"baseline", "window_lut", "ours"}  # contextual was not retrained: left out
    assert list(dict.fromkeys(ho["train_set"])) == ["baseline", "window_lut", "ours"]
    ours = ho[(ho["train_set"] == "ours") & (ho["style"] != "src")]
    assert set(ours["tp"]) == {4} and set(zip(ours["style"], ours["held_out"])) == {("t1", "t1"), ("t2", "t2")}
    free = ho[(ho["train_set"] == "window_lut") & (ho["style"] == "t1")]
    assert set(free["tp"]) == {6} and set(free["held_out"]) == {"t1"}
    t = table2(ho, "src", ["t1", "t2"], n_boot=200).set_index("key")
    dice = {tp: 100 * scores_from_counts(tp, 1, 10 - tp, 89)["dice"] for tp in (4, 6, 9)}
    assert t.loc["ours", "Dice target (%)"] == f"{dice[4]:.2f} ± 0.00" and t.loc["ours", "±"] == "SD over seeds"
    by_style = style_breakdown(ho[ho["style"] != "src"], "dice", {"ours": "ours (held out)"}).set_index("training set")
    assert list(by_style.columns) == ["±", "t1", "t2"] and set(by_style["±"]) == {"SD over seeds"}
    assert by_style.loc["ours (held out)", "t1"] == f"{dice[4]:.2f} ± 0.00"
    with pytest.raises(InputError, match="need no retraining"):
        held_out_frame(seen, {"t1": _rows({"window_lut": 5}, ["src", "t1"])}, "src")
    with pytest.raises(InputError, match="not on \\['t2'\\]"):  # t2 rows of a model that saw t2
        held_out_frame(seen, {"t1": _rows({"ours": 4}, ["src", "t1", "t2"])}, "src")
    with pytest.raises(InputError, match="same retrained"):
        held_out_frame(seen, {"t1": _rows({"ours": 4}, ["src", "t1"]), "t2": _rows({"ours": 4}, ["src", "t2"], seeds=(0,))}, "src")
    text = held_out_conclusion_markdown(seen, ho, "src", ["t1", "t2"], n_boot=200)
    assert "random window + monotone LUT" in text and "**no**" in text  # ours below window/LUT in every pair
    assert f"{dice[4] - dice[9]:+.1f} pp" in text  # ours: held out vs seen


def test_choose_unet_lr_picks_the_best_validation_dice(tmp_path, square_masks):
    images, masks = square_masks(16)
    data = TrainingSet("baseline", images, masks)
    cfg = SegConfig(image_size=16, base_channels=4, depth=2, steps=30, batch_size=8, threads=1)
    val = (images[:4], masks[:4], np.array(["v"] * 4))
    res = choose_unet_lr(cfg, data, val, [1e-6, 1e-2], checkpoints_dir=tmp_path, progress=False)
    assert set(res["dice"]) == {1e-6, 1e-2}
    assert res["lr"] == 1e-2 and res["dice"][1e-2] > res["dice"][1e-6]  # an lr that learns nothing in 30 steps loses


def test_a_diverging_unet_lr_is_never_cached_nor_chosen(tmp_path, square_masks):
    """An lr that blows the loss up stops its run (no cached U-Net whose NaN weights would score Dice
    0) and scores NaN in the lr choice, with a warning; all candidates diverging is an error."""
    from ctxstyle.errors import TrainingDiverged

    images, masks = square_masks(16)
    data = TrainingSet("baseline", images, masks)
    cfg = SegConfig(image_size=16, base_channels=4, depth=2, steps=30, batch_size=8, threads=1)
    with pytest.raises(TrainingDiverged, match=r"unet-baseline-.*: the U-Net loss is (nan|inf)"):
        train_unet(replace(cfg, lr=1e30), data, checkpoints_dir=tmp_path, progress=False)
    assert not list(tmp_path.rglob("unet.pt"))
    from ctxstyle.experiments import segmentation as sg

    plain = sg.seg_loss

    def nan_gradient(pred, *args):  # a finite loss whose gradient is NaN (sqrt at 0 times abs at 0)
        losses = plain(pred, *args)
        return {**losses, "total": losses["total"] + torch.sqrt((pred - pred.detach()).abs().sum())}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sg, "seg_loss", nan_gradient)
        with pytest.raises(TrainingDiverged, match="the U-Net's gradient is NaN or infinite at step 1"):
            train_unet(cfg, data, checkpoints_dir=tmp_path, progress=False)
    assert not list(tmp_path.rglob("unet.pt"))
    val = (images[:4], masks[:4], np.array(["v"] * 4))
    with pytest.warns(UserWarning, match="counted as a failed lr candidate"):
        res = choose_unet_lr(cfg, data, val, [1e30, 1e-2], checkpoints_dir=tmp_path, progress=False)
    assert res["lr"] == 1e-2 and np.isnan(res["dice"][1e30])
    with pytest.warns(UserWarning), pytest.raises(InputError, match="lrs: U-Net training diverged at every"):
        choose_unet_lr(cfg, data, val, [1e30], checkpoints_dir=tmp_path, progress=False)


def test_prediction_figure_takes_one_model_set_per_row(square_masks):
    import matplotlib

    matplotlib.use("Agg")
    from ctxstyle.experiments.segmentation import prediction_figure

    images, masks = square_masks(2)
    torch.manual_seed(0)
    a, b = UNet(1, 1, 4, 1), UNet(1, 1, 4, 1)
    rows = [("r0", images[0], masks[0]), ("r1", images[1], masks[1])]
    fig = prediction_figure([{"m": a}, {"m": b}], rows)
    assert len(fig.axes) == 2 * 3
    with pytest.raises(InputError, match="one per example row"):
        prediction_figure([{"m": a}, {"n": b}], rows)
    with pytest.raises(InputError, match="one per example row"):
        prediction_figure([{"m": a}], rows)
