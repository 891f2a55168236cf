"""Encoders: named layers, channels, strides, input conventions, decoders, pretrained wiring."""

import pytest
import torch
import torchvision
from torch import nn

from ctxstyle.backbones import build_decoder
from ctxstyle.method.net import CAFFE_MEAN_RGB, IMAGENET_MEAN, IMAGENET_STD, InputNormalization
from ctxstyle.backbones import (ENCODER_LAYER_NOTES_BY_STRIDE, ENCODER_LAYERS, ENCODER_LAYERS_BY_STRIDE, RANDOM_INIT_SOURCE, build_encoder, encoder_layer_note, encoder_layers_at, encoder_train_kwargs, split_arch, vgg_layer_stride)
from ctxstyle.errors import InputError, WeightsNotFoundError

SIZE = 64  # a multiple of 32: every map is exactly SIZE / stride

VGG19_LAYERS = {  # name: (channels, stride)
    "relu1_1": (64, 1), "relu1_2": (64, 1), "pool1": (64, 2),
    "relu2_1": (128, 2), "relu2_2": (128, 2), "pool2": (128, 4),
    "relu3_1": (256, 4), "relu3_2": (256, 4), "relu3_3": (256, 4), "relu3_4": (256, 4), "pool3": (256, 8),
    "relu4_1": (512, 8), "relu4_2": (512, 8), "relu4_3": (512, 8), "relu4_4": (512, 8), "pool4": (512, 16),
    "relu5_1": (512, 16), "relu5_2": (512, 16), "relu5_3": (512, 16), "relu5_4": (512, 16), "pool5": (512, 32),
}

DECLARED = {  # arch: {layer: (channels, stride)} for the layers of ENCODER_LAYERS and a few more
    "alexnet": {"relu1": (64, 4), "pool1": (64, 8), "relu2": (192, 8), "pool2": (192, 16), "relu3": (384, 16),
                "relu4": (256, 16), "relu5": (256, 16), "pool5": (256, 32)},
    "resnet50": {"relu": (64, 2), "maxpool": (64, 4), "layer1": (256, 4), "layer2": (512, 8),
                 "layer3": (1024, 16), "layer4": (2048, 32)},
    "resnet101": {"relu": (64, 2), "layer1": (256, 4), "layer2": (512, 8), "layer3": (1024, 16),
                  "layer4": (2048, 32)},
    "densenet121": {"relu0": (64, 2), "pool0": (64, 4), "denseblock1": (256, 4), "transition1": (128, 8),
                    "denseblock2": (512, 8), "transition2": (256, 16), "denseblock3": (1024, 16),
                    "transition3": (512, 32), "denseblock4": (1024, 32), "norm5": (1024, 32)},
    "densenet169": {"denseblock2": (512, 8), "denseblock3": (1280, 16), "denseblock4": (1664, 32)},
    "densenet201": {"denseblock2": (512, 8), "denseblock3": (1792, 16), "denseblock4": (1920, 32)},
}


@pytest.fixture(scope="module")
def vgg19_random():
    return build_encoder("vgg19", pretrained=False)


def _image(n=2, size=SIZE, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- VGG19
def test_vgg19_layer_names_channels_strides(vgg19_random):
    enc = vgg19_random
    assert enc.layer_names == tuple(VGG19_LAYERS)
    assert {n: (enc.channels[n], enc.strides[n]) for n in enc.layer_names} == VGG19_LAYERS
    feats = enc(_image(1), list(VGG19_LAYERS))
    for name, (ch, stride) in VGG19_LAYERS.items():
        assert feats[name].shape == (1, ch, SIZE // stride, SIZE // stride), name


def test_vgg19_relu_outputs_match_torchvision_features(vgg19_random):
    enc = vgg19_random
    tv = torchvision.models.vgg19(weights=None).features.eval()
    convs = [m for stage in enc.stages.values() for m in stage if isinstance(m, nn.Conv2d)]
    tv_convs = [m for m in tv if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(tv_convs) == 16
    with torch.no_grad():
        for a, b in zip(convs, tv_convs):
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)
    x = _image(2)
    names = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_4"]
    with torch.no_grad():
        ours = enc(x, names)
        h = (x.expand(-1, 3, -1, -1) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
            IMAGENET_STD).view(1, 3, 1, 1)
        ref, relu_count = {}, {}
        block = 1
        for m in tv:
            h = m(h.clone())
            if isinstance(m, nn.ReLU):
                relu_count[block] = relu_count.get(block, 0) + 1
                ref[f"relu{block}_{relu_count[block]}"] = h
            elif isinstance(m, nn.MaxPool2d):
                block += 1
    for name in names:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-4, atol=1e-4)


def test_vgg19_random_control_is_labelled(vgg19_random):
    assert vgg19_random.provenance["source"] == RANDOM_INIT_SOURCE
    suffixed = build_encoder("vgg19:random", last_layer="relu1_1")
    assert suffixed.provenance["source"] == RANDOM_INIT_SOURCE
    torch.testing.assert_close(suffixed.stages["relu1_1"][0].weight, vgg19_random.stages["relu1_1"][0].weight)
    assert split_arch("vgg19:random") == ("vgg19", True) and split_arch("resnet50") == ("resnet50", False)


def test_random_init_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_encoder("alexnet", pretrained=False)
    torch.testing.assert_close(torch.rand(3), expected)


# ----------------------------------------------------------------------------- other backbones
@pytest.mark.parametrize("arch", sorted(DECLARED))
def test_backbone_layers_channels_strides_and_decoder(arch):
    enc = build_encoder(arch, pretrained=False)
    roles = ENCODER_LAYERS[arch]
    for name, (ch, stride) in DECLARED[arch].items():
        assert (enc.channels[name], enc.strides[name]) == (ch, stride), name
    assert all(n in enc.layer_names for n in (roles["adain"], *roles["style"], *roles["content"], *roles["cx_style"]))
    assert enc.strides[roles["adain"]] == 8  # relu4_1's stride, by design
    x = _image(2)
    with torch.no_grad():
        feats = enc(x, enc.layer_names)
        for name in enc.layer_names:
            s = enc.strides[name]
            assert feats[name].shape == (2, enc.channels[name], SIZE // s, SIZE // s), name
        out = build_decoder(enc, roles["adain"])(feats[roles["adain"]])
    assert out.shape == x.shape


@pytest.mark.parametrize("arch", sorted(ENCODER_LAYERS))
def test_stride_4_roles_channels_strides_and_decoder(arch):
    """The relu3_1 roles (cpu profile): the AdaIN layer at stride 4, every layer present, the
    decoder back to the input size at the crop and at the whole-slice size."""
    enc = build_encoder(arch, pretrained=False)
    roles = encoder_layers_at(arch, 4)
    layers = (roles["adain"], *roles["style"], *roles["content"], *roles["cx_style"])
    assert all(n in enc.layer_names for n in layers)
    assert enc.strides[roles["adain"]] == 4 and roles["content"] == (roles["adain"],)
    assert roles["style"] == ENCODER_LAYERS[arch]["style"]  # eq 12 keeps the stride-8 roles' layers
    assert max(enc.strides[n] for n in roles["style"]) == 8
    decoder = build_decoder(enc, roles["adain"])
    assert decoder.stride == 4
    for size in (SIZE, 2 * SIZE):
        x = _image(1, size)
        with torch.no_grad():
            f = enc(x, [roles["adain"]])[roles["adain"]]
            assert f.shape[-2:] == (size // 4, size // 4)
            assert decoder(f).shape == x.shape


def test_layer_roles_by_stride():
    assert vgg_layer_stride("relu3_1") == 4 and vgg_layer_stride("relu4_1") == 8
    assert vgg_layer_stride("relu1_2") == 1 and vgg_layer_stride("pool2") == 4
    enc = build_encoder("vgg19", pretrained=False)
    assert all(vgg_layer_stride(n) == enc.strides[n] for n in enc.layer_names)
    with pytest.raises(InputError, match="not a VGG layer"):
        vgg_layer_stride("layer2")
    for arch in ENCODER_LAYERS:
        assert encoder_layers_at(arch, 8) == ENCODER_LAYERS[arch]
        assert encoder_layers_at(f"{arch}:random", 4) == ENCODER_LAYERS_BY_STRIDE[4][arch]
        for stride in ENCODER_LAYERS_BY_STRIDE:
            assert encoder_layer_note(arch, stride) == ENCODER_LAYER_NOTES_BY_STRIDE[stride][arch]
    assert encoder_layers_at("vgg19", 4)["adain"] == "relu3_1"
    assert encoder_train_kwargs("resnet50", 4)["adain_layer"] == "layer1"
    assert encoder_train_kwargs("resnet50") == encoder_train_kwargs("resnet50", 8)
    with pytest.raises(InputError, match="no layer roles"):
        encoder_layers_at("vgg19", 16)
    with pytest.raises(InputError, match="unknown encoder"):
        encoder_layers_at("vgg11", 4)


def test_vgg16_decoder_maps_back_to_the_input_size():
    """(VGG19's mirror decoder: tests/test_train.py, layer by layer and at several sizes.)"""
    enc = build_encoder("vgg16", pretrained=False, last_layer="relu4_1")
    x = _image(1)
    with torch.no_grad():
        assert build_decoder(enc, "relu4_1")(enc(x, ["relu4_1"])["relu4_1"]).shape == x.shape


def test_alexnet_keeps_the_original_values_away_from_the_bottom_right_border():
    """The extra bottom/right padding and ceil-mode pools add one row/column per map; conv1 and
    pool1 keep every original value; later maps differ within a border (2 px for the 5x5 conv2)
    where the original network saw zero padding and this one sees the extra row/column."""
    enc = build_encoder("alexnet", pretrained=False)
    tv = torchvision.models.alexnet(weights=None).features.eval()
    convs = [m for stage in enc.stages.values() for m in stage if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for a, b in zip(convs, [m for m in tv if isinstance(m, nn.Conv2d)]):
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)
        x = _image(1)
        ours = enc(x, ["relu1", "pool1", "relu2"])
        h = enc.normalize(x)
        relu1 = tv[1](tv[0](h))
        pool1 = tv[2](relu1)
        relu2 = tv[4](tv[3](pool1))
    for name, ref, border in (("relu1", relu1, 0), ("pool1", pool1, 0), ("relu2", relu2, 2)):
        assert ref.shape[-1] < ours[name].shape[-1]  # torchvision: 15, 7, 7 at 64 px; here 16, 8, 8
        h, w = ref.shape[-2] - border, ref.shape[-1] - border
        torch.testing.assert_close(ours[name][..., :h, :w], ref[..., :h, :w])


def test_frozen_batch_norm_stays_in_eval_mode():
    enc = build_encoder("resnet50", pretrained=False, last_layer="layer1")
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    bn = enc.stages["relu"][1]
    before = bn.running_mean.clone()
    enc(_image(2), ["layer1"])
    torch.testing.assert_close(bn.running_mean, before)
    assert not any(p.requires_grad for p in enc.parameters())


def test_unknown_arch_and_layer():
    with pytest.raises(InputError, match="unknown encoder"):
        build_encoder("vgg11", pretrained=False)
    enc = build_encoder("alexnet", pretrained=False)
    with pytest.raises(InputError, match="not in alexnet layers"):
        enc(_image(1), ["relu4_1"])


# ----------------------------------------------------------------------------- input conventions
def test_input_normalisation_math():
    x = torch.tensor([0.0, 0.25, 1.0]).view(1, 1, 1, 3)
    caffe = InputNormalization("caffe")(x)
    imnet = InputNormalization("imagenet")(x)
    for c in range(3):
        torch.testing.assert_close(caffe[0, c, 0], x[0, 0, 0] * 255.0 - CAFFE_MEAN_RGB[c])
        torch.testing.assert_close(imnet[0, c, 0], (x[0, 0, 0] - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
    rgb = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(InputNormalization("imagenet")(rgb),
                               (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
                               / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    with pytest.raises(ValueError):
        InputNormalization("bgr")
    with pytest.raises(InputError):
        InputNormalization("caffe")(torch.rand(1, 2, 4, 4))


# ----------------------------------------------------------------------------- training configs
@pytest.mark.parametrize("method", ["adain", "ours"])
def test_non_vgg_train_config_builds_and_steps(method):
    from ctxstyle.train import TrainConfig, build_net, training_losses

    cfg = TrainConfig(method=method, image_size=32, batch_size=2,
                      **encoder_train_kwargs("densenet121:random"))
    net = build_net(cfg)
    assert net.encoder.layer_names[-1] == "denseblock2"  # truncated at the deepest layer used
    losses = training_losses(net, _image(2, 32), _image(2, 32, seed=1), cfg)
    assert torch.isfinite(losses["total"])
    losses["total"].backward()
    assert all(p.grad is not None for p in net.decoder.parameters())


# ----------------------------------------------------------------------------- pretrained weights
def test_pretrained_resnet50_encoder_loads_with_provenance():
    from ctxstyle.backbones.weights import build_torchvision_model, resolve_weights

    try:
        state, prov = resolve_weights("resnet50", allow_download=False)
    except WeightsNotFoundError as exc:
        pytest.skip(f"ResNet-50 weights not available here: {exc}")
    enc = build_encoder("resnet50", last_layer="layer2")
    assert enc.provenance == prov.to_dict()
    assert enc.normalize.convention == prov.input_convention
    if prov.variant == "resnet-v1-strides":  # the Keras ResNet-50: stride 2 in the 1x1 conv
        block = enc.stages["layer2"][0]
        assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    model = build_torchvision_model("resnet50", state, prov)
    x = _image(1)
    with torch.no_grad():
        h = enc.normalize(x)
        h = model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(h))))))
        ours = enc(x, ["layer2"])["layer2"]
    torch.testing.assert_close(ours, h)


# ----------------------------------------------------------------------------- extractor analysis helpers
def _per_pair(delta, n_pairs=6):
    import pandas as pd

    rows = []
    for method, shift in (("A | mse", delta), ("B | mse", 0.0)):
        for pair in range(n_pairs):
            for style in ("s1", "s2"):
                base = 0.3 + 0.01 * pair + (0.005 if style == "s2" else 0.0)
                rows.append({"method": method, "pair": pair, "style": style, "bone_dice_rank": base + shift,
                             "edge_ssim": base + shift, "lpips_content": 0.5 - base - shift})
    return pd.DataFrame(rows)


def test_compare_runs_verdicts():
    from ctxstyle.experiments import extractors as xx

    assert xx.compare_runs(_per_pair(0.1), "A | mse", "B | mse")[0] == "better"
    assert xx.compare_runs(_per_pair(-0.1), "A | mse", "B | mse")[0] == "worse"
    assert xx.compare_runs(_per_pair(0.0), "A | mse", "B | mse")[0] == "no clear difference"
    assert xx.compare_runs(_per_pair(0.1, n_pairs=2), "A | mse", "B | mse")[0].startswith("too few")


def test_check_backbones_lists_missing_weights_and_labels_controls(monkeypatch):
    from ctxstyle.experiments import extractors as xx
    from ctxstyle.backbones import weights

    def missing(arch, **kwargs):
        raise WeightsNotFoundError(f"no {arch}")

    monkeypatch.setattr(weights, "resolve_weights", missing)
    status = xx.check_backbones(["densenet121"], ["vgg19:random"], profile="cpu")
    assert [b.status for b in status] == ["weights not available here", "control (random init)"]
    assert not status[0].runnable and "densenet121-a639ec97.pth" in status[0].detail
    assert "--profile cpu --only 05 --update-reference --force" in status[0].detail
    assert status[1].runnable and status[1].provenance["source"] == RANDOM_INIT_SOURCE
    assert xx.backbone_label("vgg19:random") == "VGG19 (random init, control)"
