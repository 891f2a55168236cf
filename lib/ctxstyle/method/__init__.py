"""The paper's method: ``function.py`` (eqs 1-12 as functions) and ``net.py`` (encoder, decoder,
G = D(AdaIN(E(X), E(Y))) and eq 11). Nothing here imports :mod:`ctxstyle.fast`."""

from .function import adain, adain_blend, adain_from_statistics, content_mse, contextual_loss, mean_std, \
    style_loss, style_loss_from_statistics
from .net import METHODS, VGG_ADAIN_LAYER, VGG_STYLE_LAYERS, Decoder, FeatureEncoder, StyleTransferNet, \
    VGGEncoder, vgg_mirror_decoder

__all__ = ["adain", "adain_blend", "adain_from_statistics", "content_mse", "contextual_loss", "mean_std",
           "style_loss", "style_loss_from_statistics", "METHODS", "VGG_ADAIN_LAYER", "VGG_STYLE_LAYERS", "Decoder",
           "FeatureEncoder", "StyleTransferNet", "VGGEncoder", "vgg_mirror_decoder"]
