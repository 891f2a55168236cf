"""Encoder + AdaIN + decoder as one module (paper Fig 2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .adain import adain, adain_blend
from .decoder import Decoder, build_decoder
from .encoders import FeatureEncoder


class StyleTransferNet(nn.Module):
    """G = D(AdaIN(E(X), E(Y))) with a frozen encoder E and a trainable decoder D."""

    def __init__(self, encoder: FeatureEncoder, adain_layer: str, decoder: Decoder | None = None):
        super().__init__()
        self.encoder = encoder.freeze()
        self.adain_layer = adain_layer
        self.decoder = decoder if decoder is not None else build_decoder(encoder, adain_layer)

    def encode(self, images: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        return self.encoder(images, layers)

    def decode(self, features: Tensor) -> Tensor:
        return self.decoder(features)

    @torch.inference_mode()
    def style_features(self, styles: Tensor) -> Tensor:
        """AdaIN-layer features of style images; compute once, reuse for many contents."""
        return self.encoder(styles, [self.adain_layer])[self.adain_layer]

    @torch.inference_mode()
    def stylize(
        self,
        content: Tensor,
        style_feats: Sequence[Tensor],
        weights: Sequence[float] | None = None,
        alpha: float = 1.0,
    ) -> Tensor:
        """Inference: stylized images in [0, 1] for content (N, 1, H, W) and per-style features."""
        feat = self.encoder(content, [self.adain_layer])[self.adain_layer]
        t = adain_blend(feat, list(style_feats), weights, alpha)
        return self.decoder(t).clamp_(0.0, 1.0)

    def forward(self, content: Tensor, style: Tensor, alpha: float = 1.0) -> Tensor:
        """Training path: raw decoder output for paired content/style batches."""
        with torch.no_grad():
            c = self.encoder(content, [self.adain_layer])[self.adain_layer]
            s = self.encoder(style, [self.adain_layer])[self.adain_layer]
            t = adain(c, s)
            if alpha < 1.0:
                t = alpha * t + (1 - alpha) * c
        return self.decoder(t)
