"""The training recipe (ctxstyle.experiments.recipe): warm start, per-method fine-tuning, the two gates."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxstyle.errors import InputError
from ctxstyle.experiments.presets import config_key
from ctxstyle.experiments import recipe as rc
from ctxstyle.experiments.recipe import (GATE_BONE_DICE, GATE_EDGE_SSIM, Recipe, method_config, plateaued, reconstruction_scores, warm_start_config)
from ctxstyle.train import TrainConfig, build_net, style_statistics, train, training_losses


def _images(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # some spatial structure


def test_plateau_criterion():
    falling = [{"total": 1.0 / (1 + 0.05 * i)} for i in range(100)]
    flat = [{"total": 0.5 + 0.01 * np.sin(i)} for i in range(100)]
    assert not plateaued(falling)["plateaued"]
    assert plateaued(flat)["plateaued"]
    assert not plateaued([{"total": 1.0}] * 3)["plateaued"]  # too short to judge
    rising = [{"total": 0.5 + 0.01 * i} for i in range(100)]  # rising by >5 %: diverging, not plateaued
    assert not plateaued(rising)["plateaued"] and plateaued(rising)["change"] < -0.05


class _Identity:
    """A stand-in decoder that returns its content: a perfect reconstruction."""

    def __call__(self, content, styles=None, *, alpha=1.0, **_):
        return content.clone()


class _Constant(_Identity):
    def __call__(self, content, styles=None, *, alpha=1.0, **_):
        return torch.full_like(content, 0.3)


class _Pairs:
    source_style = "bone"

    def __init__(self):
        rng = np.random.default_rng(0)
        img = np.zeros((4, 32, 32), np.float32)
        img[:, 8:20, 10:22] = 0.9  # "bone" above the source threshold
        self.content = np.clip(img + 0.05 * rng.random(img.shape, dtype=np.float32), 0, 1)

    def __len__(self):
        return len(self.content)


def test_gate_a_passes_a_perfect_reconstruction_and_fails_a_constant():
    good = reconstruction_scores(_Identity(), _Pairs())
    assert good["passed"] and good["edge_ssim"] >= GATE_EDGE_SSIM and good["bone_dice_rank"] >= GATE_BONE_DICE
    assert good["l1"] == 0
    bad = reconstruction_scores(_Constant(), _Pairs())
    assert not bad["passed"]


def test_recipe_configs_share_the_warm_start_and_name_it_by_folder(tmp_path):
    r = Recipe(image_size=64, crop_size=32, batch_size=2, warm_iterations=5, iterations=4, lrs=(1e-3,), seeds=(0,))
    warm = warm_start_config(r)
    assert warm.method == "reconstruction" and warm.lr_schedule == "cosine"
    assert warm.image_size == 32 and warm.data_kwargs == {"load_size": 64}
    a = method_config("ours", r, lr=1e-3, seed=0, init_decoder=str(tmp_path / "a" / "warm-x-123" / "checkpoint-last.pt"))
    b = method_config("ours", r, lr=1e-3, seed=0, init_decoder=str(tmp_path / "b" / "warm-x-123" / "checkpoint-last.pt"))
    assert config_key(a) == config_key(b)  # where the results folder lies does not rename decoders
    assert a.content_layers == (r.adain_layer,) and a.iterations == 4
    assert config_key(method_config("ours", r, lr=1e-3, seed=1, init_decoder=a.init_decoder)) != config_key(a)
    with pytest.raises(InputError, match="crop_size"):
        Recipe(image_size=32, crop_size=64)
    with pytest.raises(InputError, match="warmup_fraction"):
        Recipe(warmup_fraction=1.0)
    # every run of the recipe warms up over the same share of its own steps
    long = Recipe(warm_iterations=1000, iterations=100, warmup_fraction=0.05)
    assert warm_start_config(long).warmup_steps == 50
    assert method_config("adain", long, lr=1e-3, seed=0, init_decoder="w/warm-x/c.pt").warmup_steps == 5
    assert warm_start_config(replace(long, warmup_fraction=0.0)).warmup_steps == 0
    with pytest.raises(InputError, match="method"):
        method_config("nope", r, lr=1e-3, seed=0, init_decoder="x")


def test_bf16_units_are_off_where_onednn_is_capped_below_them(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 (or the older DNNL_MAX_CPU_ISA) keeps oneDNN off its bf16 kernels:
    "auto" must then mean float32, even on a CPU with bf16 units."""
    import torch

    from ctxstyle import cpu_isa
    from ctxstyle.experiments import recipe as rc

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # a CPU with bf16 units
    for name in cpu_isa.ONEDNN_ISA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    auto = Recipe(image_size=64, crop_size=32, device="cpu", precision="auto")
    assert rc.bf16_units() and rc.uses_bf16(auto) and cpu_isa.onednn_isa_cap() is None
    for name in cpu_isa.ONEDNN_ISA_VARIABLES:
        for cap in ("AVX2", "avx512_core", " AVX2_VNNI ", "AVX2_VNNI_2"):
            monkeypatch.setenv(name, cap)
            assert cpu_isa.bf16_capped() and not rc.bf16_units() and not rc.uses_bf16(auto), (name, cap)
        for cap in ("AVX512_CORE_BF16", "AVX10_1_512_AMX", "ALL"):
            monkeypatch.setenv(name, cap)
            assert not cpu_isa.bf16_capped() and rc.bf16_units(), (name, cap)
        monkeypatch.delenv(name)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")  # the first set variable wins, as in oneDNN
    assert cpu_isa.onednn_isa_cap() == "ALL" and not cpu_isa.bf16_capped()


def test_precision_auto_is_bf16_only_on_cpus_with_bf16_units(monkeypatch):
    from ctxstyle.experiments import recipe as rc

    r = Recipe(image_size=64, crop_size=32, device="cpu")
    fp32 = config_key(warm_start_config(r))
    assert not warm_start_config(r).bf16
    assert warm_start_config(replace(r, precision="bf16")).bf16
    assert config_key(warm_start_config(replace(r, precision="bf16"))) != fp32  # other arithmetic, other run
    monkeypatch.setattr(rc, "bf16_units", lambda: False)
    assert config_key(warm_start_config(replace(r, precision="auto"))) == fp32  # the same run as fp32 there
    monkeypatch.setattr(rc, "bf16_units", lambda: True)
    auto = replace(r, precision="auto")
    assert warm_start_config(auto).bf16 and method_config("ours", auto, lr=1e-3, seed=0, init_decoder="w/c.pt").bf16
    with pytest.raises(InputError, match="precision"):
        Recipe(precision="fp16")


def test_cosine_schedule_decays_to_zero_and_reconstruction_learns(tmp_path):
    imgs = _images(6, 32)
    cfg = TrainConfig(method="reconstruction", adain_layer="relu2_1", image_size=32, batch_size=4,
                      iterations=30, lr=2e-3, lr_schedule="cosine", output_dir=str(tmp_path / "r"), device="cpu")
    state = torch.load(train(cfg, imgs, progress=False), weights_only=False)
    lrs = [h["lr"] for h in state["history"]]
    assert lrs[0] == pytest.approx(2e-3) and lrs[-1] < 2e-5 and all(a >= b for a, b in zip(lrs, lrs[1:]))
    losses = [h["content"] for h in state["history"]]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])  # pixel L1 to the content falls
    assert all(h["style"] == 0 for h in state["history"])


def test_cosine_runs_of_other_lengths_are_other_runs(tmp_path):
    imgs = _images(4, 32)
    cfg = TrainConfig(method="reconstruction", adain_layer="relu2_1", image_size=32, batch_size=2,
                      iterations=3, lr_schedule="cosine", output_dir=str(tmp_path / "r"), device="cpu")
    train(cfg, imgs, progress=False)
    cfg.iterations = 5  # a longer cosine run has another schedule: it cannot continue the short one
    with pytest.raises(InputError, match="different config"):
        train(cfg, imgs, progress=False)


def test_style_statistics_once_equal_encoding_the_style_images():
    """Eq 11 with the style images' statistics computed once equals encoding them in the step."""
    cfg = TrainConfig(method="ours", adain_layer="relu3_1", content_layers=("relu3_1",), device="cpu")
    torch.manual_seed(0)
    net = build_net(cfg)
    content, style = _images(2, 32), _images(2, 32, seed=1)
    stats = style_statistics(net, style, (cfg.adain_layer, *cfg.style_layers))
    a = training_losses(net, content, style, cfg)
    b = training_losses(net, content, stats, cfg)
    for k in ("total", "content", "style"):
        assert float(a[k].detach()) == pytest.approx(float(b[k].detach()), rel=1e-5)


def test_a_finished_run_loads_through_another_path_to_its_warm_start(tmp_path):
    """The warm start is named by its folder: a moved or differently spelled checkpoints path
    still finds and loads a finished fine-tuning run (no 'different config')."""
    from ctxstyle.experiments.presets import train_or_load

    imgs = _images(4, 32)
    warm_cfg = TrainConfig(method="reconstruction", adain_layer="relu2_1", image_size=32, batch_size=2,
                           iterations=2, lr_schedule="cosine", device="cpu")
    warm = train_or_load(warm_cfg, tmp_path / "ck", "warm", progress=False).checkpoint
    def cfg(init):
        return TrainConfig(method="adain", adain_layer="relu2_1", style_layers=("relu1_1", "relu2_1"),
                           image_size=32, batch_size=2, iterations=2, lr_schedule="cosine", device="cpu",
                           init_decoder=init, output_dir=str(tmp_path / "run"))
    first = train(cfg(warm), imgs, imgs, progress=False)
    moved = str(tmp_path / "elsewhere" / ".." / "ck" / Path(warm).parent.name / "checkpoint-last.pt")
    assert train(cfg(moved), imgs, imgs, progress=False) == first  # loaded, not "written with a different config"
    assert config_key(cfg(warm)) == config_key(cfg(moved))


def test_paired_over_seeds_and_the_seed_spread():
    import pandas as pd

    from ctxstyle.experiments.style_transfer import paired_over_seeds, summarize_seeds

    rows = []
    for seed, shift in zip((0, 1, 2), (0.00, 0.01, -0.01)):
        rows += [{"method": "a", "seed": seed, "pair": i, "lpips_truth": 0.20 + shift + 0.001 * i} for i in range(4)]
        rows += [{"method": "b", "seed": seed, "pair": i, "lpips_truth": 0.30 + shift + 0.001 * i} for i in range(4)]
    rows += [{"method": "base", "seed": np.nan, "pair": i, "lpips_truth": 0.25 + 0.1 * i} for i in range(4)]
    df = pd.DataFrame(rows)
    ab = paired_over_seeds(df, "a", "b", "lpips_truth", lower_is_better=True)
    assert ab["verdict"] == "a better" and ab["mean_difference"] == pytest.approx(-0.1) and ab["a_better_in"] == "3/3"
    ba = paired_over_seeds(df, "b", "a", "lpips_truth", lower_is_better=True)
    assert ba["verdict"] == "b worse" and ba["ci_low"] == pytest.approx(-ab["ci_high"])
    # a one-output-set row on either side is a constant paired with each seed: symmetric
    x = paired_over_seeds(df, "a", "base", "lpips_truth", lower_is_better=True)
    y = paired_over_seeds(df, "base", "a", "lpips_truth", lower_is_better=True)
    assert x["seeds"] == y["seeds"] == 3 and x["mean_difference"] == pytest.approx(-y["mean_difference"])
    s = summarize_seeds(df, metrics=("lpips_truth",)).set_index("method")
    assert s.loc["a", "spread_over"] == "3 decoder seeds" and s.loc["base", "spread_over"] == "4 pairs"
    assert s.loc["a", "lpips_truth_std"] == pytest.approx(0.01)  # std of the per-seed means, not of the pairs


@pytest.mark.parametrize("bad, field", [(dict(lrs=[0]), "lrs"), (dict(seeds=[-1]), "seeds"), (dict(seeds=[0.5]), "seeds"),
                                        (dict(image_size=0), "image_size"), (dict(style_layers=[1]), "style_layers"),
                                        (dict(warm_lr="fast"), "warm_lr")])
def test_recipe_fields_go_through_the_config_validator(bad, field):
    with pytest.raises(InputError) as err:
        Recipe(**bad)
    assert err.value.source == field
    r = Recipe(lrs=["3e-4", 1], seeds=[0, 2.0])  # YAML text numbers and whole floats become the field's type
    assert r.lrs == (3e-4, 1.0) and all(isinstance(v, float) for v in r.lrs) and r.seeds == (0, 2)


def test_target_styles_narrow_what_the_decoders_see_and_keep_the_full_recipes_names():
    full = Recipe()
    assert warm_start_config(full).content_data == "protocol:train:all"
    mcfg = method_config("ours", full, lr=1e-3, seed=0, init_decoder="w/warm-x/c.pt")
    assert mcfg.style_data == TrainConfig.style_data  # the default: configs (and hashes) of earlier runs are unchanged
    assert warm_start_config(full).style_data == TrainConfig.style_data
    blind = replace(full, target_styles=("site_shift", "soft_tissue"))
    assert blind.target_styles == ("soft_tissue", "site_shift")  # the protocol's order: one name per run
    left_out = "wide_gamma-sharp_noisy-dark_lowcontrast"
    assert warm_start_config(blind).content_data == f"protocol:train:all-{left_out}"
    assert warm_start_config(blind).style_data == f"protocol:train:targets-{left_out}"
    bcfg = method_config("ours", blind, lr=1e-3, seed=0, init_decoder="w/warm-x/c.pt")
    assert bcfg.style_data == f"protocol:train:targets-{left_out}"
    every = replace(full, target_styles=("site_shift", "soft_tissue", "wide_gamma", "sharp_noisy", "dark_lowcontrast"))
    assert every.target_styles is None and config_key(warm_start_config(every)) == config_key(warm_start_config(full))
    assert config_key(warm_start_config(blind)) != config_key(warm_start_config(full)) and config_key(bcfg) != config_key(mcfg)
    assert blind.to_dict()["target_styles"] == ["soft_tissue", "site_shift"]
    for bad in (("bone",), ("soft_tissue", "soft_tissue"), ()):
        with pytest.raises(InputError) as err:
            Recipe(target_styles=bad)
        assert err.value.source == "target_styles"


def test_a_recorded_recipe_reads_back_as_the_same_runs_and_is_refused_in_the_other_arithmetic():
    recipe = Recipe(image_size=64, crop_size=32, lrs=(1e-3,), seeds=(0, 2), target_styles=("site_shift",),
                    precision="fp32")
    recorded = json.loads(json.dumps(recipe.to_dict()))  # as a record stores it: lists, and the resolved bf16
    again = Recipe.from_record(recorded, "records/x.json")
    assert again == recipe and rc.decoder_key(again) == rc.decoder_key(recipe)
    with pytest.raises(InputError, match=r"records/x\.json: its decoders trained in bf16; this machine would "
                                         r"train them in float32"):
        Recipe.from_record({**recorded, "bf16": True}, "records/x.json")  # precision fp32 resolves to float32 anywhere
    with pytest.raises(InputError, match=r"records/x\.json: unknown recipe field\(s\) \['colour'\]"):
        Recipe.from_record({**recorded, "colour": 1}, "records/x.json")


def test_best_lr_takes_the_best_finite_score_and_the_lower_lr_on_ties():
    scores = {1e-3: 0.2, 3e-4: 0.2, 1e-2: float("nan"), 3e-3: 0.5}
    assert rc.best_lr(scores) == 3e-4  # lowest; tie between 3e-4 and 1e-3: the lower lr
    assert rc.best_lr(scores, higher_is_better=True) == 3e-3  # highest; NaN never wins either way
    assert rc.best_lr({1e-3: 0.9, 3e-4: 0.9}, higher_is_better=True) == 3e-4
    assert rc.best_lr({1e-3: float("inf"), 3e-4: float("nan")}) == 3e-4  # nothing finite: the lower lr


def test_a_diverging_lr_candidate_loses_the_choice_with_a_warning(tmp_path):
    """The lr choice trains every candidate; one whose run blows up scores NaN (and warns) instead
    of ending the choice, and none of its weights are used."""
    recipe = Recipe(image_size=32, crop_size=32, batch_size=2, warm_iterations=2, iterations=4, lrs=(1e30, 1e-3),
                    seeds=(0,), val_pairs=1, device="cpu")
    with pytest.warns(UserWarning, match=r"diverged.*counted as a failed lr candidate"):
        choice = rc.choose_lr("adain", recipe, tmp_path, progress=False)
    assert choice["lr"] == 1e-3 and np.isnan(choice["scores"][1e30]) and np.isfinite(choice["scores"][1e-3])
    assert set(choice["stylizers"]) == {1e-3}
    with pytest.warns(UserWarning), pytest.raises(InputError, match=r"lrs: training adain diverged at every candidate"):
        rc.choose_lr("adain", replace(recipe, lrs=(1e30,)), tmp_path, progress=False)


def test_every_committed_run_record_reads_back_as_a_recipe_and_a_bad_one_names_its_file():
    records = sorted((Path(__file__).resolve().parents[2] / "results").glob("*/records/*.json"))
    recorded = [(p, json.loads(p.read_text()).get("parameters", {}).get("recipe")) for p in records]
    recorded = [(p, r) for p, r in recorded if r is not None]
    assert recorded, "no committed record holds a recipe"
    for path, r in recorded:  # the arithmetic is this machine's question, not the record's
        back = Recipe.from_record(r, path, check_arithmetic=False).to_dict()  # older records lack newer fields
        assert {k: back[k] for k in r if k != "bf16"} == {k: v for k, v in r.items() if k != "bf16"}, path
    with pytest.raises(InputError, match=r"x\.json: invalid recorded recipe: .*crop_size"):
        Recipe.from_record({**recorded[0][1], "crop_size": 10_000}, "x.json", check_arithmetic=False)
    with pytest.raises(InputError, match=r"x\.json: the recorded recipe is a NoneType"):
        Recipe.from_record(None, "x.json")
