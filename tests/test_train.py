"""Decoder, training loop, checkpoints and resume (issue 2, items 5 and 7)."""

import pytest
import torch
from ctxstyle.backbones import build_decoder, upsampling_decoder
from ctxstyle.backbones import build_encoder
from ctxstyle.errors import InputError
from ctxstyle.image_sources import load_images
from ctxstyle.train import TrainConfig, load_checkpoint, train


@pytest.fixture(scope="module")
def ct_images():
    """Real CT slices at 32 px (source style) and target-style references."""
    content = load_images("protocol:train:source", 32)[::40][:8]
    style = load_images("protocol:train:targets", 32)[::200][:8]
    return content, style


def _cfg(tmp_path, **kw):
    base = dict(image_size=32, batch_size=2, iterations=6, checkpoint_every=3, lr=1e-3,
                output_dir=str(tmp_path / "run"), device="cpu")
    return TrainConfig(**{**base, **kw})


def test_vgg_decoder_mirrors_encoder_and_restores_size():
    enc = build_encoder("vgg19", pretrained=False, last_layer="relu4_1")
    dec = build_decoder(enc, "relu4_1")
    convs = [m for m in dec.net if isinstance(m, torch.nn.Conv2d)]
    assert [c.in_channels for c in convs] == [512, 256, 256, 256, 256, 128, 128, 64, 64]
    assert convs[-1].out_channels == 1 and not isinstance(dec.net[-1], torch.nn.ReLU)
    for size in (32, 48, 64):
        feats = enc(torch.rand(1, 1, size, size), ["relu4_1"])["relu4_1"]
        assert dec(feats).shape == (1, 1, size, size)


def test_generic_decoder_restores_stride():
    dec = upsampling_decoder(1024, 16)
    assert dec(torch.rand(1, 1024, 4, 4)).shape == (1, 1, 64, 64)
    with pytest.raises(InputError, match="power of two"):
        upsampling_decoder(64, 6)


def test_short_training_lowers_the_loss(tmp_path, ct_images):
    content, style = ct_images
    history = []
    cfg = _cfg(tmp_path, iterations=40, checkpoint_every=40, batch_size=4)
    train(cfg, content, style, progress=False, on_step=lambda s, r: history.append(r["total"]))
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_checkpoint_carries_config_provenance_and_step(tmp_path, ct_images):
    path = train(_cfg(tmp_path), *ct_images, progress=False)
    state = load_checkpoint(path)
    assert state["step"] == 6 and len(state["history"]) == 6
    assert state["config"]["method"] == "ours"
    assert state["weights_provenance"]["arch"] == "vgg19"
    assert state["weights_provenance"]["sha256"]


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, ct_images):
    full = load_checkpoint(train(_cfg(tmp_path / "a"), *ct_images, progress=False))

    def interrupt(step, record):
        if step == 4:
            raise KeyboardInterrupt

    cfg = _cfg(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, *ct_images, progress=False, on_step=interrupt)
    assert load_checkpoint(tmp_path / "b" / "run" / "checkpoint-last.pt")["step"] == 3
    resumed = load_checkpoint(train(cfg, *ct_images, progress=False))
    assert resumed["step"] == 6
    for key, value in full["decoder"].items():
        torch.testing.assert_close(resumed["decoder"][key], value, rtol=0, atol=0)
    assert [r["total"] for r in resumed["history"]] == [r["total"] for r in full["history"]]


def test_resume_refuses_the_other_loss_implementation(tmp_path, ct_images):
    """Fast and plain contextual losses are one loss with other rounding: a run continues only with
    the one it started with (checkpoints from before the record count as fast)."""
    cfg = _cfg(tmp_path, iterations=2)
    path = train(cfg, *ct_images, progress=False, fast=False)
    assert load_checkpoint(path)["fast_paths"] is False
    with pytest.raises(InputError, match="without ctxstyle.fast"):
        train(_cfg(tmp_path, iterations=3), *ct_images, progress=False, fast=True)
    assert load_checkpoint(train(_cfg(tmp_path, iterations=3), *ct_images, progress=False))["step"] == 3


def test_resume_refuses_a_different_config(tmp_path, ct_images):
    train(_cfg(tmp_path, iterations=1), *ct_images, progress=False)
    with pytest.raises(InputError, match="different config"):
        train(_cfg(tmp_path, iterations=2, style_weight=3.0), *ct_images, progress=False)


@pytest.mark.parametrize("loss", ["adain", "contextual"])
def test_baseline_losses_train(tmp_path, ct_images, loss):
    path = train(_cfg(tmp_path, method=loss, iterations=2), *ct_images, progress=False)
    assert torch.isfinite(torch.tensor(load_checkpoint(path)["history"][-1]["total"]))


def test_config_from_yaml_and_errors(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("method: adain\nstyle_weight: 2.5\nstyle_layers: [relu1_1, relu2_1]\n")
    cfg = TrainConfig.from_yaml(good)
    assert cfg.method == "adain" and cfg.style_layers == ("relu1_1", "relu2_1")
    bad = tmp_path / "bad.yaml"
    bad.write_text("content_los: mse\n")
    with pytest.raises(InputError, match="bad.yaml.*unknown option"):
        TrainConfig.from_yaml(bad)
    with pytest.raises(InputError, match="method"):
        TrainConfig(method="l1")


def test_bad_training_images_are_refused(tmp_path, ct_images):
    content, style = ct_images
    nan = content.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="content images.*NaN"):
        train(_cfg(tmp_path), nan, style, progress=False)
    with pytest.raises(InputError, match="smaller than image_size"):
        train(_cfg(tmp_path, image_size=64), content, style, progress=False)


def test_a_diverging_run_stops_before_its_weights_turn_non_finite(tmp_path, ct_images):
    """An absurd lr blows the loss up within a few steps: TrainingDiverged names the folder and the
    step, and every checkpoint written holds finite weights (none of a non-finite loss's step)."""
    from ctxstyle.errors import TrainingDiverged

    cfg = _cfg(tmp_path, iterations=20, checkpoint_every=1, lr=1e30, lr_decay=0.0)
    with pytest.raises(TrainingDiverged, match=r"run: the (training loss is|generated image's).* at step \d+ \(lr 1e\+30\)") as err:
        train(cfg, *ct_images, progress=False)
    state = load_checkpoint(tmp_path / "run" / "checkpoint-last.pt")
    assert state["step"] == err.value.step - 1
    assert all(torch.isfinite(v).all() for v in state["decoder"].values() if v.is_floating_point())
    steps = []  # the same run again: the recorded divergence, without a step trained up to it again
    with pytest.raises(TrainingDiverged, match=rf"at step {err.value.step} .*\(recorded in diverged.json"):
        train(cfg, *ct_images, progress=False, on_step=lambda s, r: steps.append(s))
    assert steps == []
    with pytest.raises(TrainingDiverged):  # resume=False trains it again (and it diverges again)
        train(cfg, *ct_images, progress=False, resume=False, on_step=lambda s, r: steps.append(s))
    assert steps and steps[0] == 1
    # its finite last checkpoint may start another run; one with non-finite weights may not
    state["decoder"][next(iter(state["decoder"]))].fill_(float("nan"))
    from ctxstyle.store import write_checkpoint

    write_checkpoint(tmp_path / "nan.pt", state)
    with pytest.raises(InputError, match="nan.pt: its decoder weights hold NaN"):
        train(_cfg(tmp_path / "w", iterations=1, init_decoder=str(tmp_path / "nan.pt")), *ct_images, progress=False)


def test_each_kind_of_divergence_stops_the_run_and_a_record_blocks_only_its_own_run(tmp_path, ct_images, monkeypatch):
    """A loss that overflows (ours at lr 10) and a finite loss with a NaN gradient (injected) both stop
    the run before the step; the record blocks neither another config nor a shorter run of the same."""
    import ctxstyle.train as tr
    from ctxstyle.errors import TrainingDiverged

    cfg = _cfg(tmp_path / "loss", iterations=20, checkpoint_every=1, lr=10.0, lr_decay=0.0)
    with pytest.raises(TrainingDiverged, match=r"the training loss is (inf|nan) at step (\d+)") as err:
        train(cfg, *ct_images, progress=False)
    assert err.value.step >= 2
    with pytest.raises(InputError, match="different config"):  # another lr: the record does not speak for it
        train(_cfg(tmp_path / "loss", iterations=20, checkpoint_every=1, lr=9.0, lr_decay=0.0), *ct_images, progress=False)
    shorter = _cfg(tmp_path / "loss", iterations=err.value.step - 1, checkpoint_every=1, lr=10.0, lr_decay=0.0)
    assert load_checkpoint(train(shorter, *ct_images, progress=False))["step"] == err.value.step - 1  # ends before it

    plain = tr.training_losses

    def nan_gradient(net, *args, **kwargs):  # a finite loss whose gradient is NaN: sqrt at 0 times abs at 0
        losses = plain(net, *args, **kwargs)
        w = next(net.decoder.parameters())
        return {**losses, "total": losses["total"] + torch.sqrt((w - w.detach()).abs().sum())}
    monkeypatch.setattr(tr, "training_losses", nan_gradient)
    with pytest.raises(TrainingDiverged, match="run: the decoder's gradient is NaN or infinite at step 1"):
        train(_cfg(tmp_path, iterations=3, checkpoint_every=1), *ct_images, progress=False)
    assert not (tmp_path / "run" / "checkpoint-last.pt").exists()  # no step was taken, nothing saved


def test_integer_fields_read_as_integers(tmp_path):
    """8.0 and YAML's "1e4" are whole numbers: ints, so that the run and its config hash are the int's."""
    from ctxstyle.train import config_key

    cfg = TrainConfig.from_dict({"batch_size": 8.0, "iterations": "1e4"})
    assert type(cfg.batch_size) is int and type(cfg.iterations) is int and cfg.iterations == 10000
    assert config_key(cfg) == config_key(TrainConfig(batch_size=8, iterations=10000))
    binary = tmp_path / "checkpoint.yaml"
    binary.write_bytes(b"\x80\x02\xff\xfe not text")
    with pytest.raises(InputError, match="checkpoint.yaml: cannot read"):
        TrainConfig.from_yaml(binary)


def test_resume_and_warm_start_refuse_other_encoder_weights(tmp_path, ct_images):
    """A run continues, and a warm start starts, only on the encoder weights its decoder was trained
    with (they may resolve otherwise online and offline)."""
    from ctxstyle.store import write_checkpoint

    path = train(_cfg(tmp_path, iterations=1), *ct_images, progress=False)
    state = load_checkpoint(path)
    state["weights_provenance"] = {**state["weights_provenance"], "sha256": "0" * 64}
    write_checkpoint(path, state)
    with pytest.raises(InputError, match="checkpoint-last.pt: was trained with vgg19 weights"):
        train(_cfg(tmp_path, iterations=2), *ct_images, progress=False)
    with pytest.raises(InputError, match="checkpoint-last.pt: was trained with vgg19 weights"):
        train(_cfg(tmp_path / "b", iterations=1, init_decoder=str(path)), *ct_images, progress=False)


def test_data_kwargs_are_checked_with_the_config_and_reach_only_protocol_specs(tmp_path, ct_images):
    import numpy as np

    bad = tmp_path / "bad.yaml"
    bad.write_text("data_kwargs: {load_sise: 64}\n")
    with pytest.raises(InputError, match=r"bad.yaml.*data_kwargs: unknown \['load_sise'\]"):
        TrainConfig.from_yaml(bad)
    np.save(tmp_path / "styles.npy", ct_images[1][:, 0].numpy())
    # protocol content at load_size 64 (random 32 px crops), styles from a .npy file: the kwargs reach the protocol only
    path = train(_cfg(tmp_path, iterations=1, style_data=str(tmp_path / "styles.npy"), data_kwargs={"load_size": 64}),
                 progress=False)
    assert load_checkpoint(path)["step"] == 1


def test_image_sources_refuse_what_they_cannot_use_and_keep_the_aspect_ratio(tmp_path):
    import numpy as np
    from PIL import Image

    with pytest.raises(InputError, match=r"data_kwargs: unknown \['load_sise'\]"):
        load_images("protocol:train:source", 32, load_sise=64)
    np.save(tmp_path / "ok.npy", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(InputError, match="go with 'protocol:...' specs only"):
        load_images(str(tmp_path / "ok.npy"), 8, load_size=16)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="objects.npy: not a readable array"):
        load_images(str(tmp_path / "objects.npy"), 8)
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.npy: not a readable array"):
        load_images(str(tmp_path / "junk.npy"), 8)
    folder = tmp_path / "pngs"
    folder.mkdir()
    Image.fromarray(np.full((10, 30), 128, np.uint8)).save(folder / "wide.png")  # shorter side below 16
    assert load_images(str(folder), 16).shape == (1, 1, 16, 48)  # scaled up, not squashed to a square


def test_unreadable_checkpoint_is_named(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pt"):
        load_checkpoint(junk)


def test_resume_with_more_iterations_continues_the_same_run(tmp_path, ct_images):
    """The lr schedule depends on the step only: 3 steps, then resumed to 6, equals 6 at once."""
    full = load_checkpoint(train(_cfg(tmp_path / "a"), *ct_images, progress=False))
    train(_cfg(tmp_path / "b", iterations=3), *ct_images, progress=False)
    longer = load_checkpoint(train(_cfg(tmp_path / "b"), *ct_images, progress=False))
    assert longer["step"] == 6
    for key, value in full["decoder"].items():
        torch.testing.assert_close(longer["decoder"][key], value, rtol=0, atol=0)
    with pytest.raises(InputError, match="already trained 6 steps"):
        train(_cfg(tmp_path / "b", iterations=4), *ct_images, progress=False)


def test_warm_start_loads_the_other_decoder(tmp_path, ct_images):
    first = train(_cfg(tmp_path / "a", method="adain", iterations=2), *ct_images, progress=False)
    cfg = _cfg(tmp_path / "b", iterations=1, lr=1e-12, lr_decay=0.0, init_decoder=str(first))
    warm = load_checkpoint(train(cfg, *ct_images, progress=False))
    start = load_checkpoint(first)["decoder"]
    for key, value in start.items():  # one step at a negligible lr: still the warm-start weights
        torch.testing.assert_close(warm["decoder"][key], value, rtol=1e-6, atol=1e-9)
    other = load_checkpoint(train(_cfg(tmp_path / "c", iterations=1), *ct_images, progress=False))
    assert not torch.equal(other["decoder"]["net.1.weight"], start["net.1.weight"])
    with pytest.raises(InputError, match="cannot start"):
        train(_cfg(tmp_path / "d", iterations=1, adain_layer="relu3_1", init_decoder=str(first)),
              *ct_images, progress=False)


def test_config_key_ignores_later_fields_at_their_default():
    from ctxstyle.experiments.presets import config_key

    assert config_key(TrainConfig(init_decoder=None)) == config_key(TrainConfig())
    assert config_key(TrainConfig(init_decoder="x.pt")) != config_key(TrainConfig())


def test_protocol_images_load_larger_for_random_crops():
    large = load_images("protocol:val:source", 32, load_size=64)  # same 128 mm field of view
    assert large.shape[1:] == (1, 64, 64) and len(large) > 50
    with pytest.raises(InputError, match="load_size"):
        load_images("protocol:val:source", 64, load_size=32)


def test_leaving_styles_out_renders_every_other_style_as_the_full_set_does():
    full = load_images("protocol:val:all", 32)  # source, then the five target styles, equal blocks
    blocks = full.reshape(6, -1, *full.shape[1:])
    part = load_images("protocol:val:all-soft_tissue-site_shift", 32)
    assert torch.equal(part, blocks[[0, 2, 3, 4]].flatten(0, 1))  # same slices, same noise
    targets = load_images("protocol:val:targets", 32).reshape(5, -1, *full.shape[1:])
    assert torch.equal(load_images("protocol:val:targets-sharp_noisy", 32), targets[[0, 1, 3, 4]].flatten(0, 1))
    for bad in ("all-nope", "bone-soft_tissue", "targets-soft_tissue-wide_gamma-sharp_noisy-dark_lowcontrast-site_shift"):
        with pytest.raises(InputError) as err:
            load_images(f"protocol:val:{bad}", 32)
        assert err.value.source == f"protocol:val:{bad}"


def test_a_finished_run_is_returned_without_loading_data_or_building(tmp_path, ct_images, monkeypatch):
    import ctxstyle.image_sources
    import ctxstyle.train

    cfg = _cfg(tmp_path, iterations=2)
    path = train(cfg, *ct_images, progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run must not load images or build the network")

    monkeypatch.setattr(ctxstyle.image_sources, "load_images", refuse)
    monkeypatch.setattr(ctxstyle.train, "build_net", refuse)
    torch.manual_seed(123)
    assert train(cfg, progress=False) == path
    assert torch.equal(torch.get_rng_state(), load_checkpoint(path)["torch_rng"])  # as after the run


def test_warmup_ramps_the_lr_linearly_then_follows_the_schedule(tmp_path, ct_images):
    """The lr the run used (its history): (t + 1) / W of the schedule for the first W steps, then
    the cosine decay itself; the config hash is unchanged at the default of 0 (no warm-up)."""
    import math

    from ctxstyle.experiments.presets import config_key

    cfg = _cfg(tmp_path, method="reconstruction", lr_schedule="cosine", warmup_steps=3)
    history = load_checkpoint(train(cfg, *ct_images, progress=False))["history"]
    cosine = [1e-3 * 0.5 * (1 + math.cos(math.pi * t / 6)) for t in range(6)]
    expected = [c * min(1.0, (t + 1) / 3) for t, c in enumerate(cosine)]
    assert [h["lr"] for h in history] == pytest.approx(expected, rel=1e-12)
    assert history[0]["lr"] < history[2]["lr"]
    assert config_key(_cfg(tmp_path)) == config_key(_cfg(tmp_path, warmup_steps=0))
    assert config_key(_cfg(tmp_path)) != config_key(_cfg(tmp_path, warmup_steps=2))
    with pytest.raises(InputError, match="warmup_steps"):
        _cfg(tmp_path, warmup_steps=-1)
