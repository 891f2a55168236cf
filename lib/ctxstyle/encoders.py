"""Frozen ImageNet feature extractors that return named layers.

The paper's encoder E is VGG19 up to relu4_1 (AdaIN layer) with relu1_1..relu4_1 for the style
loss (eq 12). Every encoder takes CT images in [0, 1] shaped (N, 1, H, W) (or (N, 3, H, W)),
repeats a single channel to RGB and applies the input convention of its weights:

- ``"caffe"``: RGB in 0..255 minus the ImageNet mean (the original Oxford VGG19 release);
- ``"imagenet"``: torchvision's mean/std normalisation of [0, 1] RGB.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torchvision
from torch import Tensor, nn

from .errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)

#: The VGG layers of the paper: AdaIN at relu4_1, style loss over relu1_1..relu4_1 (eq 12).
VGG_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
VGG_ADAIN_LAYER = "relu4_1"


class InputNormalization(nn.Module):
    """Maps [0, 1] images with 1 or 3 channels to the network's expected input."""

    def __init__(self, convention: str):
        super().__init__()
        if convention == "caffe":
            mean, scale = torch.tensor(CAFFE_MEAN_RGB), torch.full((3,), 255.0)
        elif convention == "imagenet":
            mean, scale = torch.tensor(IMAGENET_MEAN), 1.0 / torch.tensor(IMAGENET_STD)
        else:
            raise ValueError(f"unknown input convention {convention!r} (expected 'caffe' or 'imagenet')")
        self.convention = convention
        # x_net = x * scale - offset, per channel
        offset = mean if convention == "caffe" else mean * scale
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("offset", offset.view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise InputError("images", f"expected shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
        return x.expand(-1, 3, -1, -1) * self.scale - self.offset


class FeatureEncoder(nn.Module):
    """A frozen backbone cut into named stages; ``forward(x, layers)`` returns those layers.

    Subclasses fill ``self.stages`` (an ordered ``nn.ModuleDict`` name -> module applied in
    sequence) and ``self.channels`` / ``self.strides`` (per layer name).
    """

    arch: str = ""

    def __init__(self, convention: str, provenance: dict | None):
        super().__init__()
        self.normalize = InputNormalization(convention)
        self.stages = nn.ModuleDict()
        self.channels: dict[str, int] = {}
        self.strides: dict[str, int] = {}
        self.provenance = provenance  # WeightsProvenance.to_dict(), or a labelled random-init note

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(self.stages.keys())

    def freeze(self) -> "FeatureEncoder":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "FeatureEncoder":
        # Frozen: batch norms (ResNet, DenseNet) always use their running statistics.
        return super().train(False)

    def truncate(self, last_layer: str) -> "FeatureEncoder":
        """Drop every stage after ``last_layer`` (saves time and memory)."""
        names = self._check_layers([last_layer])
        keep = self.layer_names[: self.layer_names.index(names[0]) + 1]
        for name in self.layer_names[len(keep):]:
            del self.stages[name]
        return self

    def _check_layers(self, layers: Iterable[str]) -> list[str]:
        layers = list(layers)
        unknown = [n for n in layers if n not in self.stages]
        if unknown:
            raise InputError("layers", f"{unknown} not in {self.arch} layers {list(self.layer_names)}")
        return layers

    def forward(self, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        wanted = set(self._check_layers(layers))
        last = max(self.layer_names.index(n) for n in wanted)
        h = self.normalize(x)
        out: dict[str, Tensor] = {}
        for name in self.layer_names[: last + 1]:
            h = self.stages[name](h)
            if name in wanted:
                out[name] = h
        return out


class VGGEncoder(FeatureEncoder):
    """torchvision VGG ``features`` split at every ReLU and pool (relu1_1, relu1_2, pool1, ...)."""

    def __init__(self, arch: str, features: nn.Sequential, convention: str, provenance: dict | None):
        super().__init__(convention, provenance)
        self.arch = arch
        block, conv, channels, stride = 1, 0, 3, 1
        pending: list[nn.Module] = []
        for module in features:
            if isinstance(module, nn.ReLU):
                module = nn.ReLU(inplace=False)  # the returned activations must stay intact
            pending.append(module)
            if isinstance(module, nn.Conv2d):
                conv += 1
                channels = module.out_channels
                continue
            if isinstance(module, nn.ReLU):
                name = f"relu{block}_{conv}"
            elif isinstance(module, nn.MaxPool2d):
                name, stride = f"pool{block}", stride * 2
                block, conv = block + 1, 0
            else:
                continue
            self.stages[name] = nn.Sequential(*pending)
            self.channels[name], self.strides[name] = channels, stride
            pending = []


_VGG_BUILDERS = {
    "vgg19": torchvision.models.vgg19,
    "vgg16": torchvision.models.vgg16,
}


def build_encoder(
    arch: str = "vgg19",
    *,
    pretrained: bool = True,
    last_layer: str | None = None,
) -> FeatureEncoder:
    """A frozen encoder with ImageNet weights resolved by :mod:`ctxstyle.weights`.

    ``pretrained=False`` gives a randomly initialised network whose provenance says so; it is
    only for clearly labelled controls, never for reported pretrained results.
    ``last_layer`` truncates the network after that layer.
    """
    if arch not in _VGG_BUILDERS:
        raise InputError("arch", f"unknown encoder {arch!r}; available: {sorted(_VGG_BUILDERS)}")
    if pretrained:
        from .weights import build_torchvision_model, resolve_weights

        state, provenance = resolve_weights(arch)
        model = build_torchvision_model(arch, state, provenance)
        convention, prov = provenance.input_convention, provenance.to_dict()
    else:
        torch.manual_seed(0)
        model = _VGG_BUILDERS[arch](weights=None)
        convention, prov = "imagenet", {"arch": arch, "source": "random-init (control, not pretrained)"}
    encoder = VGGEncoder(arch, model.features, convention, prov)
    if last_layer is not None:
        encoder.truncate(last_layer)
    return encoder.freeze()
