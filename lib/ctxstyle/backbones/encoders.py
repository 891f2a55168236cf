"""The backbones of the extractor comparison (Figs 8-9) and the one way to build an encoder and its decoder.

The paper's encoder E is VGG19 up to relu4_1 (AdaIN layer) with relu1_1..relu4_1 for the style
loss (eq 12). Every encoder takes CT images in [0, 1] shaped (N, 1, H, W) (or (N, 3, H, W)),
repeats a single channel to RGB and applies the input convention of its weights:

- ``"caffe"``: RGB in 0..255 minus the ImageNet mean (the original Oxford VGG19 release);
- ``"imagenet"``: torchvision's mean/std normalisation of [0, 1] RGB.

Backbones (one interface, :func:`build_encoder`): VGG19, VGG16, AlexNet, ResNet-50/101 and
DenseNet-121/169/201. :data:`ENCODER_LAYERS` names, per backbone, the layer that plays relu4_1
(AdaIN) and those that play relu1_1..relu3_1 (losses); :func:`encoder_train_kwargs` turns them
into ``TrainConfig`` fields. :data:`ENCODER_LAYERS_STRIDE_4` does the same one stride finer (the
roles of relu3_1, the cpu profile's AdaIN layer); :func:`encoder_layers_at` gives a backbone's roles
for an AdaIN stride (:func:`vgg_layer_stride` reads it off a VGG layer name). Batch norms are frozen
(the encoder is always in eval mode).
"""

from __future__ import annotations

import re

import torch
import torchvision
from torch import nn

from ..errors import InputError
from ..method.net import (VGG_ADAIN_LAYER, VGG_STYLE_LAYERS, Decoder, FeatureEncoder, VGGEncoder, conv3x3,
                          vgg_mirror_decoder)

#: Suffix of an encoder name for a randomly initialised control (``"vgg19:random"``): never
#: reported as pretrained; its provenance ``source`` says so.
RANDOM_INIT_SUFFIX = ":random"
RANDOM_INIT_SOURCE = "random-init (control, not pretrained)"


def random_init_provenance(base: str) -> dict:
    """The provenance record of a randomly initialised (control) encoder of architecture ``base``."""
    return {"arch": base, "source": RANDOM_INIT_SOURCE}


class AlexNetEncoder(FeatureEncoder):
    """torchvision AlexNet ``features`` split at every ReLU and pool (relu1, pool1, relu2, ...).

    Geometry: AlexNet's 11x11 stride-4 conv1 (padding 2) and its 3x3 stride-2 pools give odd map
    sizes (64 px in: 15, 7, 7, 3 ...), which no x2 upsampling decoder can map back to 64 px.
    Here conv1 gets 3 more pixels of the network's own zero padding at the bottom/right and the
    pools use ``ceil_mode``, so maps are exactly H/4, H/8, H/16, H/32 for H a multiple of 32
    (16, 8, 8, 4 ... at 64 px). Same weights; each map gains one bottom row / right column.
    conv1 and pool1 keep every value of the original network; later layers differ only along
    the bottom/right border, where the original saw zero padding and this one the extra row.
    """

    EXTRA_PAD = 3

    def __init__(self, arch: str, features: nn.Sequential, convention: str, provenance: dict | None):
        super().__init__(convention, provenance)
        self.arch = arch
        conv, channels, stride = 0, 3, 1
        pending: list[nn.Module] = []
        for module in features:
            if isinstance(module, nn.ReLU):
                module = nn.ReLU(inplace=False)
            elif isinstance(module, nn.MaxPool2d):
                module = nn.MaxPool2d(module.kernel_size, module.stride, module.padding, ceil_mode=True)
            elif isinstance(module, nn.Conv2d):
                if conv == 0:
                    pending.append(nn.ZeroPad2d((0, self.EXTRA_PAD, 0, self.EXTRA_PAD)))
                conv += 1
                channels, stride = module.out_channels, stride * module.stride[0]
            pending.append(module)
            if isinstance(module, nn.ReLU):
                name = f"relu{conv}"
            elif isinstance(module, nn.MaxPool2d):
                name, stride = f"pool{conv}", stride * 2
            else:
                continue
            self.stages[name] = nn.Sequential(*pending)
            self.channels[name], self.strides[name] = channels, stride
            pending = []


class ResNetEncoder(FeatureEncoder):
    """torchvision ResNet: ``relu`` (conv1+bn1+relu, stride 2), ``maxpool`` (4), ``layer1`` (4),
    ``layer2`` (8), ``layer3`` (16), ``layer4`` (32); block outputs are post-ReLU."""

    def __init__(self, arch: str, model: nn.Module, convention: str, provenance: dict | None):
        super().__init__(convention, provenance)
        self.arch = arch
        self.stages["relu"] = nn.Sequential(model.conv1, model.bn1, nn.ReLU())
        self.stages["maxpool"] = model.maxpool
        self.channels.update(relu=model.conv1.out_channels, maxpool=model.conv1.out_channels)
        self.strides.update(relu=2, maxpool=4)
        for i, stride in zip(range(1, 5), (4, 8, 16, 32)):
            layer = getattr(model, f"layer{i}")
            last = layer[-1]
            self.stages[f"layer{i}"] = layer
            self.channels[f"layer{i}"] = (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels
            self.strides[f"layer{i}"] = stride


class DenseNetEncoder(FeatureEncoder):
    """torchvision DenseNet ``features``: ``relu0`` (conv0+norm0+relu0, stride 2), ``pool0`` (4),
    ``denseblock1`` (4), ``transition1`` (8), ``denseblock2`` (8), ... ``denseblock4`` (32),
    ``norm5``. Dense blocks are pre-activation (BN-ReLU-conv inside), so a block's output is the
    concatenation of raw conv outputs and its input: it can be negative, unlike VGG's relu4_1."""

    def __init__(self, arch: str, model: nn.Module, convention: str, provenance: dict | None):
        super().__init__(convention, provenance)
        self.arch = arch
        f = model.features
        self.stages["relu0"] = nn.Sequential(f.conv0, f.norm0, nn.ReLU())
        self.stages["pool0"] = f.pool0
        channels, stride = f.conv0.out_channels, 4
        self.channels.update(relu0=channels, pool0=channels)
        self.strides.update(relu0=2, pool0=4)
        for name, module in f.named_children():
            if name.startswith("denseblock"):
                layers = list(module.children())
                channels = layers[0].norm1.num_features + len(layers) * layers[-1].conv2.out_channels
            elif name.startswith("transition"):
                channels, stride = module.conv.out_channels, stride * 2
            elif name == "norm5":
                channels = module.num_features
            else:
                continue
            self.stages[name] = module
            self.channels[name], self.strides[name] = channels, stride


_VGG_LAYERS = {"adain": VGG_ADAIN_LAYER, "style": VGG_STYLE_LAYERS, "content": ("relu4_1",),
               "cx_style": ("relu3_1", "relu4_1")}
_RESNET_LAYERS = {"adain": "layer2", "style": ("relu", "layer1", "layer2"), "content": ("layer2",),
                  "cx_style": ("layer1", "layer2")}
_DENSENET_LAYERS = {"adain": "denseblock2", "style": ("relu0", "denseblock1", "denseblock2"),
                    "content": ("denseblock2",), "cx_style": ("denseblock1", "denseblock2")}

#: Per backbone: the AdaIN layer (relu4_1's role), the style-loss layers (eq 12; relu1_1..relu4_1's
#: role), the contextual content layers and the contextual-style layers (``cx_style``).
#: Rule: the AdaIN layer sits at **stride 8**, the resolution of VGG's relu4_1 (the paper's), so
#: every backbone hands the decoder the same spatial grid (8x8 at 64 px, 32x32 at 256 px) and the
#: comparison is about what the features encode, not their resolution: the output of the stride-8
#: stage for ResNet (``layer2``) and DenseNet (``denseblock2``), AlexNet's only stride-8
#: activation (``relu2``). Style layers: one per shallower stride down to the network's first
#: activation. See :data:`ENCODER_LAYER_NOTES` for each choice.
ENCODER_LAYERS: dict[str, dict] = {
    "vgg19": _VGG_LAYERS,
    "vgg16": _VGG_LAYERS,
    "alexnet": {"adain": "relu2", "style": ("relu1", "relu2"), "content": ("relu2",),
                "cx_style": ("relu1", "relu2")},
    "resnet50": _RESNET_LAYERS,
    "resnet101": _RESNET_LAYERS,
    "densenet121": _DENSENET_LAYERS,
    "densenet169": _DENSENET_LAYERS,
    "densenet201": _DENSENET_LAYERS,
}

ENCODER_LAYER_NOTES: dict[str, str] = {
    "vgg19": "the paper's layers: AdaIN at relu4_1 (stride 8, 512 ch), style loss over relu1_1..relu4_1 "
             "(eq 12), contextual content loss at relu4_1",
    "vgg16": "same names and strides as VGG19 (one conv fewer per deep block)",
    "alexnet": "relu2 (conv2, stride 8, 192 ch) is AlexNet's only stride-8 activation; relu3..relu5 sit "
               "at stride 16 (4x4 maps at 64 px). conv1 is 11x11 stride 4, so no stride-1/2 layer exists "
               "for the style loss: relu1 (stride 4, 64 ch) + relu2",
    "resnet50": "layer2 (stride 8, 512 ch, post-ReLU bottleneck output) plays relu4_1; layer3 (stride 16, "
                "1024 ch) would give 4x4 maps at 64 px. Style: stem relu (stride 2), layer1 (4), layer2 (8)",
    "resnet101": "as ResNet-50 (layer2 is identical in depth; ResNet-101 adds blocks to layer3 only)",
    "densenet121": "denseblock2 (stride 8, 512 ch in DenseNet-121/169/201) plays relu4_1; block outputs are "
                   "concatenated raw conv outputs (pre-activation design). Style: relu0 (2), denseblock1 (4), "
                   "denseblock2 (8)",
    "densenet169": "as DenseNet-121 (denseblock1-2 are identical; the variants differ in blocks 3-4)",
    "densenet201": "as DenseNet-121 (denseblock1-2 are identical; the variants differ in blocks 3-4)",
}


def split_arch(arch: str) -> tuple[str, bool]:
    """``("vgg19", True)`` for ``"vgg19:random"``; ``(arch, False)`` otherwise."""
    if arch.endswith(RANDOM_INIT_SUFFIX):
        return arch[: -len(RANDOM_INIT_SUFFIX)], True
    return arch, False


def encoder_layers(arch: str) -> dict:
    """The layer roles of a backbone (:data:`ENCODER_LAYERS`), also for ``"<arch>:random"``."""
    base = split_arch(arch)[0]
    if base not in ENCODER_LAYERS:
        raise InputError("arch", f"unknown encoder {arch!r}; available: {sorted(ENCODER_LAYERS)}")
    return ENCODER_LAYERS[base]


def encoder_train_kwargs(arch: str, stride: int | None = None) -> dict:
    """``TrainConfig`` fields for a backbone: ``encoder``, ``adain_layer``, ``style_layers``,
    ``content_layers`` and ``cx_style_layers`` (all four layer fields are needed: ``build_net``
    checks every one against the encoder). ``stride``: the AdaIN layer's stride
    (:func:`encoder_layers_at`; None: :data:`ENCODER_LAYERS`, stride 8)."""
    roles = encoder_layers(arch) if stride is None else encoder_layers_at(arch, stride)
    return {"encoder": arch, "adain_layer": roles["adain"], "style_layers": tuple(roles["style"]),
            "content_layers": tuple(roles["content"]), "cx_style_layers": tuple(roles["cx_style"])}


# ----------------------------------------------------------------------------- roles per stride
_VGG_LAYERS_S4 = {"adain": "relu3_1", "style": VGG_STYLE_LAYERS, "content": ("relu3_1",),
                  "cx_style": ("relu3_1", "relu4_1")}
_RESNET_LAYERS_S4 = {"adain": "layer1", "style": ("relu", "layer1", "layer2"), "content": ("layer1",),
                     "cx_style": ("layer1", "layer2")}
_DENSENET_LAYERS_S4 = {"adain": "denseblock1", "style": ("relu0", "denseblock1", "denseblock2"),
                       "content": ("denseblock1",), "cx_style": ("denseblock1", "denseblock2")}

#: The layer roles with the AdaIN layer at **stride 4**, the resolution of VGG's relu3_1 (the cpu
#: profile's AdaIN layer: a 16x16 grid at 64 px, 32x32 at 128 px). Same rule as
#: :data:`ENCODER_LAYERS`, one stride finer: the AdaIN layer (and the contextual content layer, which
#: sits where the decoder's input lives) is the backbone's stride-4 output (``relu3_1``, ResNet's
#: ``layer1``, DenseNet's ``denseblock1``, AlexNet's ``relu1``); the style-loss layers (eq 12) and the
#: contextual-style layers stay those of the stride-8 roles, as VGG keeps relu1_1..relu4_1 and
#: relu3_1 + relu4_1 whatever its AdaIN layer: the style term then looks one stride deeper than the
#: AdaIN layer for every backbone alike. See :data:`ENCODER_LAYER_NOTES_STRIDE_4`.
ENCODER_LAYERS_STRIDE_4: dict[str, dict] = {
    "vgg19": _VGG_LAYERS_S4,
    "vgg16": _VGG_LAYERS_S4,
    "alexnet": {"adain": "relu1", "style": ("relu1", "relu2"), "content": ("relu1",),
                "cx_style": ("relu1", "relu2")},
    "resnet50": _RESNET_LAYERS_S4,
    "resnet101": _RESNET_LAYERS_S4,
    "densenet121": _DENSENET_LAYERS_S4,
    "densenet169": _DENSENET_LAYERS_S4,
    "densenet201": _DENSENET_LAYERS_S4,
}

ENCODER_LAYER_NOTES_STRIDE_4: dict[str, str] = {
    "vgg19": "AdaIN at relu3_1 (stride 4, 256 ch; the cpu profile's deviation from the paper's relu4_1), "
             "style loss over the paper's relu1_1..relu4_1 (eq 12), contextual content loss at relu3_1 "
             "(the AdaIN layer), contextual style relu3_1 + relu4_1",
    "vgg16": "same names and strides as VGG19 (relu3_1 is the first conv of block 3 in both)",
    "alexnet": "relu1 (conv1: 11x11, stride 4, 64 ch) is AlexNet's only stride-4 activation: one conv "
               "deep, against VGG's five convs to relu3_1. Style: relu1 (4) + relu2 (8); no finer layer exists",
    "resnet50": "layer1 (stride 4, 256 ch, output of the first bottleneck stage, after the stem's "
                "max pool) plays relu3_1. Style: stem relu (2), layer1 (4), layer2 (8)",
    "resnet101": "as ResNet-50 (layer1-2 are identical; ResNet-101 adds blocks to layer3 only)",
    "densenet121": "denseblock1 (stride 4, 256 ch in DenseNet-121/169/201: 64 stem channels + 6 x 32) "
                   "plays relu3_1; block outputs are concatenated raw conv outputs (pre-activation). "
                   "Style: relu0 (2), denseblock1 (4), denseblock2 (8)",
    "densenet169": "as DenseNet-121 (denseblock1-2 are identical; the variants differ in blocks 3-4)",
    "densenet201": "as DenseNet-121 (denseblock1-2 are identical; the variants differ in blocks 3-4)",
}

#: AdaIN-layer stride -> the per-backbone layer roles and their notes.
ENCODER_LAYERS_BY_STRIDE: dict[int, dict[str, dict]] = {4: ENCODER_LAYERS_STRIDE_4, 8: ENCODER_LAYERS}
ENCODER_LAYER_NOTES_BY_STRIDE: dict[int, dict[str, str]] = {4: ENCODER_LAYER_NOTES_STRIDE_4,
                                                            8: ENCODER_LAYER_NOTES}


def vgg_layer_stride(layer: str) -> int:
    """The stride of a VGG layer name without building a network: ``relu<b>_<i>`` is at
    2^(b-1) (relu3_1: 4, relu4_1: 8), ``pool<b>`` at 2^b."""
    m = re.fullmatch(r"relu(\d)_(\d)|pool(\d)", layer)
    if m is None:
        raise InputError("adain_layer", f"{layer!r} is not a VGG layer name (relu<block>_<conv> or pool<block>)")
    return 2 ** (int(m.group(1)) - 1) if m.group(1) else 2 ** int(m.group(3))


def encoder_layers_at(arch: str, stride: int) -> dict:
    """The layer roles of a backbone (also ``"<arch>:random"``) with its AdaIN layer at ``stride``
    (4 or 8, :data:`ENCODER_LAYERS_BY_STRIDE`): ``{"adain", "style", "content", "cx_style"}``.

    To compare backbones at the stride of VGG19's AdaIN layer ``layer``:
    ``encoder_layers_at(arch, vgg_layer_stride(layer))``.
    """
    if int(stride) not in ENCODER_LAYERS_BY_STRIDE:
        raise InputError("stride", f"no layer roles for AdaIN stride {stride}; available: "
                                   f"{sorted(ENCODER_LAYERS_BY_STRIDE)}")
    base = split_arch(arch)[0]
    table = ENCODER_LAYERS_BY_STRIDE[int(stride)]
    if base not in table:
        raise InputError("arch", f"unknown encoder {arch!r}; available: {sorted(table)}")
    return table[base]


def encoder_layer_note(arch: str, stride: int) -> str:
    """Why :func:`encoder_layers_at` picks those layers for ``arch`` at ``stride``."""
    encoder_layers_at(arch, stride)  # the same checks
    return ENCODER_LAYER_NOTES_BY_STRIDE[int(stride)][split_arch(arch)[0]]


_ENCODER_CLASSES = {
    "vgg19": lambda arch, model, conv, prov: VGGEncoder(arch, model.features, conv, prov),
    "vgg16": lambda arch, model, conv, prov: VGGEncoder(arch, model.features, conv, prov),
    "alexnet": lambda arch, model, conv, prov: AlexNetEncoder(arch, model.features, conv, prov),
    "resnet50": ResNetEncoder,
    "resnet101": ResNetEncoder,
    "densenet121": DenseNetEncoder,
    "densenet169": DenseNetEncoder,
    "densenet201": DenseNetEncoder,
}


def build_encoder(
    arch: str = "vgg19",
    *,
    pretrained: bool = True,
    last_layer: str | None = None,
) -> FeatureEncoder:
    """A frozen encoder with ImageNet weights resolved by :mod:`ctxstyle.backbones.weights`.

    ``arch``: one of :data:`ENCODER_LAYERS` (vgg19, vgg16, alexnet, resnet50, resnet101,
    densenet121/169/201); ``"<arch>:random"`` is the same as ``pretrained=False`` (so a
    ``TrainConfig(encoder="vgg19:random")`` trains a labelled control).
    ``pretrained=False`` gives a randomly initialised network whose provenance says so; it is
    only for clearly labelled controls, never for reported pretrained results.
    ``last_layer`` truncates the network after that layer.
    """
    base, random_init = split_arch(arch)
    if base not in _ENCODER_CLASSES:
        raise InputError("arch", f"unknown encoder {arch!r}; available: {sorted(_ENCODER_CLASSES)}")
    if pretrained and not random_init:
        from .weights import build_torchvision_model, resolve_weights

        state, provenance = resolve_weights(base)
        model = build_torchvision_model(base, state, provenance, init_heads=False)  # encoders drop the heads
        convention, prov = provenance.input_convention, provenance.to_dict()
    else:
        with torch.random.fork_rng(devices=[]):  # seed 0 for the weights, caller's RNG untouched
            torch.manual_seed(0)
            model = getattr(torchvision.models, base)(weights=None)
        convention, prov = "imagenet", random_init_provenance(base)
    encoder = _ENCODER_CLASSES[base](base, model, convention, prov)
    if last_layer is not None:
        encoder.truncate(last_layer)
    return encoder.freeze()


# ----------------------------------------------------------------------------- decoders
def upsampling_decoder(in_channels: int, stride: int, min_channels: int = 64) -> Decoder:
    """Generic decoder for non-VGG backbones: per x2 upsampling one stage of two 3x3 convs.

    Channels halve at each stage (not below ``min_channels``); the last convolution maps to 1.
    Output size = input map size x ``stride``, so it matches the image only when the encoder's map
    is exactly H / stride: every encoder of :mod:`ctxstyle.backbones` guarantees that for H a
    multiple of its stride at the AdaIN layer (8 or 4, see :func:`ctxstyle.backbones.encoder_layers_at`;
    AlexNet gets extra conv1 padding and ceil-mode pools for it), and
    :class:`ctxstyle.stylize.Stylizer` pads inputs to that multiple. Used for AlexNet, ResNet and
    DenseNet: at stride 8 ``relu2`` / ``layer2`` / ``denseblock2``, at stride 4 ``relu1`` / ``layer1`` /
    ``denseblock1``.
    """
    if stride < 1 or stride & (stride - 1):
        raise InputError("stride", f"must be a power of two, got {stride}")
    ch = max(min_channels, in_channels // 2)
    layers = conv3x3(in_channels, ch)
    for _ in range(stride.bit_length() - 1):
        out = max(min_channels, ch // 2)
        layers += [nn.Upsample(scale_factor=2, mode="nearest")] + conv3x3(ch, out) + conv3x3(out, out)
        ch = out
    layers += conv3x3(ch, 1, relu=False)
    return Decoder(layers, in_channels, stride, f"upsampling decoder from {in_channels} channels")


def build_decoder(encoder: FeatureEncoder, layer: str) -> Decoder:
    """The decoder that matches ``encoder`` at ``layer``."""
    if layer not in encoder.channels:
        raise InputError("layer", f"{layer!r} is not a layer of {encoder.arch}")
    if isinstance(encoder, VGGEncoder):
        return vgg_mirror_decoder(encoder, layer)
    return upsampling_decoder(encoder.channels[layer], encoder.strides[layer])
