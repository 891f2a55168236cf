"""Notebook 05's helpers (ctxstyle.experiments.extractors) on the shared recipe: each backbone's
recipe, the gate tables, the labels of a backbone that fails gate A. No training here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctxstyle.experiments import extractors as xx
from ctxstyle.method.net import VGG_STYLE_LAYERS
from ctxstyle.experiments.presets import config_key
from ctxstyle.experiments.recipe import Recipe, method_config, plateaued, warm_start_config


def test_backbone_recipe_puts_every_adain_layer_at_vggs_stride():
    cpu = Recipe(adain_layer="relu3_1", lrs=(1e-3,), seeds=(0,))
    paper = Recipe(adain_layer="relu4_1", lrs=(1e-3,), seeds=(0,))
    assert xx.adain_stride(cpu) == 4 and xx.adain_stride(paper) == 8
    expected = {("resnet50", 4): "layer1", ("resnet50", 8): "layer2", ("densenet121", 4): "denseblock1",
                ("densenet121", 8): "denseblock2", ("alexnet", 4): "relu1", ("alexnet", 8): "relu2",
                ("vgg16", 4): "relu3_1", ("vgg19:random", 8): "relu4_1"}
    for (arch, stride), layer in expected.items():
        r = xx.backbone_recipe(arch, cpu if stride == 4 else paper)
        assert (r.encoder, r.adain_layer) == (arch, layer)
    r = xx.backbone_recipe("resnet50", cpu)
    assert r.style_layers == ("relu", "layer1", "layer2") and r.cx_style_layers == ("layer1", "layer2")
    # everything else is the same recipe
    assert {k: v for k, v in r.to_dict().items() if k not in ("encoder", "adain_layer", "style_layers",
                                                              "cx_style_layers")} == \
           {k: v for k, v in cpu.to_dict().items() if k not in ("encoder", "adain_layer", "style_layers",
                                                                "cx_style_layers")}
    cfg = method_config("ours", r, lr=1e-3, seed=0, init_decoder="x/warm/checkpoint-last.pt")
    assert cfg.content_layers == ("layer1",) and cfg.style_layers == ("relu", "layer1", "layer2")


def test_vgg19_backbone_recipe_shares_the_other_notebooks_checkpoints():
    """VGG19 through notebook 05 is the same run as VGG19 through the plain recipe (same hashes)."""
    r = Recipe(adain_layer="relu3_1", lrs=(1e-3,), seeds=(0,))
    v = xx.backbone_recipe("vgg19", r)
    assert v.style_layers == VGG_STYLE_LAYERS
    assert config_key(warm_start_config(v)) == config_key(warm_start_config(r))
    for method in ("ours", "adain"):
        a = method_config(method, v, lr=1e-3, seed=0, init_decoder="c/warm-vgg19-relu3_1-abc/checkpoint-last.pt")
        b = method_config(method, r, lr=1e-3, seed=0, init_decoder="c/warm-vgg19-relu3_1-abc/checkpoint-last.pt")
        assert config_key(a) == config_key(b)


def test_decoder_family():
    assert xx.decoder_family("vgg19").startswith("VGG mirror")
    assert xx.decoder_family("vgg19:random").startswith("VGG mirror")
    for arch in ("alexnet", "resnet50", "densenet121"):
        assert xx.decoder_family(arch).startswith("generic upsampling")


# ----------------------------------------------------------------------------- gates and labels
class _FakeStylizer:
    def __init__(self, history, lr=1e-3):
        self.history = history
        self.checkpoint = "/nonexistent/checkpoint-last.pt"
        self.config = {"lr": lr}


def _history(n, falling):
    return [{"step": i + 1, "total": (1.0 / (1 + 0.1 * i)) if falling else 0.5, "content": 0.3, "style": 0.2,
             "seconds": 0.1} for i in range(n)]


def _run(arch, passed, recipe):
    r = xx.backbone_recipe(arch, recipe)
    gate = {"edge_ssim": 0.7 if passed else 0.1, "bone_dice_rank": 0.9 if passed else 0.2, "l1": 0.02,
            "passed": passed, "n": 4}
    run = xx.BackboneRun(arch, r, _FakeStylizer(_history(20, True)), gate, 2.0, 0.0)
    for loss, falling in (("mse", False), ("contextual", True)):
        h = _history(20, falling)
        run.decoders[(loss, 0)] = xx.TrainedDecoder(arch, loss, 0, _FakeStylizer(h), {"lr": 1e-3}, 2.0,
                                                    gate_b=plateaued(h))
    return run


def _per_pair(archs, n_pairs=6, worse=()):
    rows = []
    for arch in archs:
        for loss in ("mse", "contextual"):
            for pair in range(n_pairs):
                for style in ("s1", "s2"):
                    base = 0.5 + 0.01 * pair - (0.2 if arch in worse else 0.0)
                    rows.append({"method": xx.run_key(arch, loss), "pair": pair, "style": style,
                                 "bone_dice_rank": base, "edge_ssim": base, "lpips_content": 1 - base,
                                 "lpips_truth": 0.3})
    return xx.split_key(pd.DataFrame(rows))


def test_gate_tables_and_the_comparison_table_label_a_failed_backbone():
    recipe = Recipe(adain_layer="relu3_1", lrs=(1e-3,), seeds=(0,))
    runs = [_run("vgg19", True, recipe), _run("resnet50", False, recipe)]
    a = xx.gate_a_table(runs)
    assert list(a["gate A"]) == [xx.GATE_A_PASSED, xx.GATE_A_FAILED]
    assert list(a["AdaIN layer"]) == ["relu3_1", "layer1"] and list(a["warm-start steps"]) == [20, 20]
    b = xx.gate_b_table(runs)
    assert len(b) == 4
    assert b.set_index(["backbone", "content loss"])["gate B (plateaued)"].to_dict() == {
        ("VGG19", "mse"): True, ("VGG19", "contextual"): False, ("ResNet-50", "mse"): True,
        ("ResNet-50", "contextual"): False}
    assert b["val LPIPS to ideal output"].isna().all()  # no lr choice ran: nothing stored

    status = [xx.Backbone("vgg19", "VGG19", "pretrained", "w19", stride=4),
              xx.Backbone("resnet50", "ResNet-50", "pretrained", "w50", stride=4)]
    per_pair = _per_pair(["vgg19", "resnet50"])
    table = xx.annotate(xx.summarize(per_pair), status, runs)
    rows = table.set_index(["backbone", "content loss"])
    assert rows.loc[("ResNet-50", "mse"), "gate A (warm start)"] == xx.GATE_A_FAILED
    assert rows.loc[("VGG19", "contextual"), "gate A (warm start)"] == xx.GATE_A_PASSED
    assert rows.loc[("ResNet-50", "mse"), "decoder"].startswith("generic upsampling")
    assert rows.loc[("VGG19", "mse"), "AdaIN layer"] == "relu3_1"
    assert rows.loc[("VGG19", "mse"), "weights"] == "w19"


def test_claims_say_when_a_comparison_involves_a_failed_gate_a():
    status = [xx.Backbone("vgg19", "VGG19", "pretrained", "w19", stride=4),
              xx.Backbone("resnet50", "ResNet-50", "pretrained", "w50", stride=4)]
    per_pair = _per_pair(["vgg19", "resnet50"], worse=("resnet50",))
    ok = xx.claims_table(per_pair, status, ["mse", "contextual"], gate_a={"vgg19": True, "resnet50": True})
    assert not ok["verdict"].str.startswith("NOT A PROPERTY").any()
    resnet = ok[ok["compared"] == "ResNet-50 vs VGG19"]
    assert resnet["verdict"].str.startswith("supported").all()
    labelled = xx.claims_table(per_pair, status, ["mse", "contextual"], gate_a={"vgg19": True, "resnet50": False})
    vgg_claim = (labelled["compared"] == "VGG19") & labelled["content loss"].isin(["mse", "contextual"])
    involved = labelled["compared"].str.contains("ResNet-50") | vgg_claim  # the VGG19 claim counts ResNet-50
    assert labelled.loc[involved, "verdict"].str.startswith("NOT A PROPERTY OF THE FEATURES (ResNet-50").all()
    vgg_only = labelled[(labelled["compared"] == "VGG19") & labelled["content loss"].str.contains("vs")]
    assert not vgg_only["verdict"].str.startswith("NOT A PROPERTY").any()  # contextual vs MSE within VGG19


def test_backbone_outputs_take_the_decoder_of_each_seed():
    class _Pairs:
        styles = ("s1",)
        content = np.zeros((2, 8, 8), np.float32)
        refs = {"s1": np.zeros((2, 8, 8), np.float32)}
        truth = {"s1": np.ones((2, 8, 8), np.float32)}

    recipe = Recipe(adain_layer="relu3_1", lrs=(1e-3,), seeds=(0, 1))
    run = _run("alexnet", True, recipe)

    class _Const:
        def __init__(self, v):
            self.v = v

    import ctxstyle.experiments.style_transfer as sx

    run.decoders[("mse", 0)].stylizer = _Const(0.25)
    run.decoders[("mse", 1)] = xx.TrainedDecoder("alexnet", "mse", 1, _Const(0.75), {"lr": 1e-3}, 0.0)
    orig = sx.stylize_pairs
    sx.stylize_pairs = lambda st, c, s: np.full(c.shape, st.v, np.float32)
    try:
        for seed, v in ((0, 0.25), (1, 0.75)):
            out = xx.backbone_outputs(_Pairs(), [run], ["mse"], seed)
            assert float(out[xx.run_key("alexnet", "mse")]["s1"].mean()) == pytest.approx(v)
            assert xx.REFERENCE_ROWS["truth"] in out
        out = xx.backbone_outputs(_Pairs(), [run], ["mse"], 1, references=False)
        assert list(out) == [xx.run_key("alexnet", "mse")]
    finally:
        sx.stylize_pairs = orig
