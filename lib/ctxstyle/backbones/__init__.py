"""Encoders for the extractor comparison (VGG19/16, AlexNet, ResNet-50/101, DenseNet-121/169/201),
their decoders, and where their ImageNet weights come from (:mod:`.weights`, format converters in
:mod:`.convert`). :func:`build_encoder` and :func:`build_decoder` are the one way to make them."""

from .encoders import (AlexNetEncoder, DenseNetEncoder, ENCODER_LAYERS, ENCODER_LAYERS_BY_STRIDE,
                       ENCODER_LAYERS_STRIDE_4, ENCODER_LAYER_NOTES, ENCODER_LAYER_NOTES_BY_STRIDE,
                       ENCODER_LAYER_NOTES_STRIDE_4, RANDOM_INIT_SOURCE, RANDOM_INIT_SUFFIX, ResNetEncoder,
                       build_decoder, build_encoder, encoder_layer_note, encoder_layers, encoder_layers_at,
                       encoder_train_kwargs, random_init_provenance, split_arch,
                       upsampling_decoder, vgg_layer_stride)

__all__ = ["AlexNetEncoder", "DenseNetEncoder", "ENCODER_LAYERS", "ENCODER_LAYERS_BY_STRIDE",
           "ENCODER_LAYERS_STRIDE_4", "ENCODER_LAYER_NOTES", "ENCODER_LAYER_NOTES_BY_STRIDE",
           "ENCODER_LAYER_NOTES_STRIDE_4", "RANDOM_INIT_SOURCE", "RANDOM_INIT_SUFFIX", "ResNetEncoder",
           "build_decoder", "build_encoder", "encoder_layer_note", "encoder_layers", "encoder_layers_at",
           "encoder_train_kwargs", "random_init_provenance", "split_arch",
           "upsampling_decoder", "vgg_layer_stride"]
