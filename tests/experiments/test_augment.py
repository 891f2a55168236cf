"""StyleTransferAugment: the style-transfer augmentation for a user's own training (issue 18, item 5).

Fast and CPU-only: a randomly initialised VGG19 to relu4_1 with a calibrated, untrained decoder
(and a 2-step checkpoint of ``ctxstyle.train.train`` for the checkpoint path), 32 px images
(64 px in the DataLoader test, the size from which inference takes the NNPACK path).
"""

from __future__ import annotations

import abc
import importlib.util
import pickle
import sys
import types

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import ctxstyle.experiments.augment
from ctxstyle.experiments.augment import StyleTransferAugment, resize_copies
from ctxstyle.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _image(size=32, seed=0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    return np.clip(ndimage.gaussian_filter(rng.random((size, size)), 2) * 3 - 1, 0, 1).astype(np.float32)


def _volume(depth=3, size=32, seed=0):
    return np.stack([_image(size, seed + d) for d in range(depth)])


def _bank(size=32):
    """Four clearly different styles: dark and smooth, bright, full range, mid-gray and noisy."""
    noisy = np.clip(0.5 + 0.2 * np.random.default_rng(9).standard_normal((size, size)), 0, 1)
    return np.stack([0.3 * _image(size, 10), 0.6 + 0.4 * _image(size, 11), _image(size, 12),
                     noisy.astype(np.float32)])


@torch.no_grad()
def _spread_output(net, size=32):
    """An untrained decoder's output is nearly constant (about -0.012, std 2e-4: every stylized
    image clamps to 0); rescale its last convolution so that stylized images spread over [0, 1]
    (mean ~0.5, std ~0.15) and differ between styles, as a trained decoder's do."""
    from ctxstyle.method.function import adain

    layer = net.adain_layer
    last = [m for m in net.decoder.net if isinstance(m, torch.nn.Conv2d)][-1]
    x = torch.from_numpy(np.stack([_image(size, s) for s in range(3)]))[:, None]
    bank = torch.from_numpy(_bank(size))[:, None]
    c, s = net.encode(x, [layer])[layer], net.encode(bank, [layer])[layer]
    raw = torch.cat([net.decoder(adain(c, s[i:i + 1])) for i in range(len(s))]) - last.bias
    k = 0.15 / raw.std()
    last.weight.mul_(k)
    last.bias.copy_(0.5 - k * raw.mean())


@pytest.fixture(scope="module")
def stylizer(make_random_net):
    from ctxstyle.stylize import Stylizer

    net = make_random_net(_image(32))
    _spread_output(net)
    return Stylizer(net)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 2-step decoder checkpoint (the trainer's real format) on random 32 px images, its
    output spread over [0, 1] (:func:`_spread_output`)."""
    from ctxstyle.stylize import Stylizer
    from ctxstyle.train import TrainConfig, load_checkpoint, train

    out = tmp_path_factory.mktemp("ckpt")
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(encoder="vgg19:random", image_size=32, batch_size=2, iterations=2, checkpoint_every=2,
                      device="cpu", output_dir=str(out / "run"))
    path = train(cfg, images, images, progress=False)
    net = Stylizer.from_checkpoint(path, device="cpu").net
    _spread_output(net)
    state = load_checkpoint(path)
    state["decoder"] = net.decoder.state_dict()
    torch.save(state, out / "decoder.pt")
    return out / "decoder.pt"


def _aug(st, **kw):
    base = dict(keys="image", stylizer=st, style_bank=_bank(), prob=1.0, seed=0)
    return StyleTransferAugment(**{**base, **kw})


# --------------------------------------------------------------------------- what it leaves alone


def test_labels_metadata_and_input_untouched(stylizer):
    img, mask, meta = _image(), (_image(seed=5) > 0.5).astype(np.uint8), {"patient": "p1", "spacing": (1.0, 1.0)}
    before = img.copy()
    data = {"image": img, "label": mask, "meta": meta, "name": "slice-7"}
    out = _aug(stylizer)(data)
    assert out is not data and set(out) == set(data)
    assert out["label"] is mask and out["meta"] is meta and out["name"] is data["name"]
    assert data["image"] is img and np.array_equal(img, before)  # the input dict and image unchanged
    assert out["image"] is not img and not np.allclose(out["image"], img, atol=1e-3)  # it did stylize


@pytest.mark.parametrize("make, kw", [
    (lambda: _image(), {}),                                                   # (H, W) numpy float32
    (lambda: _image()[None].astype(np.float64), {}),                          # (1, H, W) numpy float64
    (lambda: _volume(3), {}),                                                 # (D, H, W) numpy
    (lambda: torch.from_numpy(_image()), {}),                                 # (H, W) torch
    (lambda: torch.from_numpy(_volume(3))[None].half(), {}),                  # (1, D, H, W) torch float16
    (lambda: np.moveaxis(_volume(3), 0, -1)[None].copy(), {"slice_axis": -1}),  # MONAI (1, H, W, D)
])
def test_type_dtype_shape_and_range_are_kept(stylizer, make, kw):
    img = make()
    out = _aug(stylizer, **kw)({"image": img})["image"]
    assert type(out) is type(img) and out.dtype == img.dtype and tuple(out.shape) == tuple(img.shape)
    values = torch.as_tensor(np.asarray(out) if isinstance(out, np.ndarray) else out).float()
    assert 0.0 <= float(values.min()) and float(values.max()) <= 1.0
    if isinstance(out, torch.Tensor):  # an ordinary tensor, usable in a training graph
        assert not out.is_inference() and not out.requires_grad
        torch.nn.Conv2d(1, 1, 3)(out.reshape(-1, 1, *out.shape[-2:]).float()).sum().backward()


def test_prob_zero_returns_the_image_unchanged(stylizer):
    img = torch.from_numpy(_volume(2))
    aug = _aug(stylizer, prob=0.0)
    for _ in range(3):
        out = aug({"image": img, "label": 1})
        assert out["image"] is img and not aug.do_transform


def test_alpha_zero_is_the_decoders_reconstruction(stylizer):
    content = _image(seed=1)
    out = _aug(stylizer, alpha_range=(0.0, 0.0))({"image": content})["image"]
    with torch.inference_mode():
        x = torch.from_numpy(content)[None, None]
        recon = stylizer.net.decode(stylizer.net.encode(x, ["relu4_1"])["relu4_1"]).clamp(0, 1)[0, 0].numpy()
    np.testing.assert_allclose(out, recon, atol=1e-5)


def test_alpha_and_blend_draws(stylizer):
    aug = _aug(stylizer, alpha_range=(0.2, 0.6), blend=3, concentration=1.0)
    for _ in range(5):
        aug.randomize(None)
        assert 0.2 <= aug.alpha <= 0.6
        assert len(set(aug.style_indices)) == 3 and all(0 <= i < 4 for i in aug.style_indices)
        assert all(w > 0 for w in aug.style_weights) and sum(aug.style_weights) == pytest.approx(1.0)
    # the drawn blend is what the image gets: apply() with the recorded draw repeats it
    img = _image(seed=2)
    out = aug({"image": img})["image"]
    np.testing.assert_allclose(out, aug.apply(img, aug.style_indices, aug.style_weights, aug.alpha), atol=1e-6)
    assert np.abs(out - aug.apply(img, aug.style_indices, None, aug.alpha)).max() > 1e-4  # the weights matter
    a, b, c = aug.style_indices
    np.testing.assert_allclose(aug.apply(img, (a, b, c), (1.0, 0.0, 0.0), 1.0), aug.apply(img, (a,), alpha=1.0),
                               atol=1e-5)


# --------------------------------------------------------------------------- seeds and volumes


def test_same_seed_same_output_different_seed_different_styles(stylizer):
    img = _image(seed=3)

    def run(seed, **kw):
        aug = _aug(stylizer, seed=seed, alpha_range=(0.5, 1.0), **kw)
        outs, picks = [], []
        for _ in range(6):
            outs.append(aug({"image": img})["image"])
            picks.append(aug.style_indices)
        return outs, picks

    a, picks = run(7)
    b, again = run(7)
    assert picks == again and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert run(0, prob=0.0)[1] != run(1, prob=0.0)[1]  # another seed, other styles
    # set_random_state(seed) restarts the stream, as in MONAI
    aug = _aug(stylizer, seed=0, prob=0.0)
    first = [aug.randomize(None) or (aug.style_indices, aug.alpha) for _ in range(3)]
    assert aug.set_random_state(seed=0) is aug
    assert [aug.randomize(None) or (aug.style_indices, aug.alpha) for _ in range(3)] == first
    aug.set_random_state(state=np.random.RandomState(0))
    assert [aug.randomize(None) or (aug.style_indices, aug.alpha) for _ in range(3)] == first
    with pytest.raises(TypeError):
        aug.set_random_state(state=np.random.default_rng(0))


def test_per_item_seed_ignores_call_order(stylizer):
    aug = _aug(stylizer, seed_key="index", prob=0.5, alpha_range=(0.0, 1.0))
    draws = {}
    for i in (0, 1, 2, 3, 2, 0):
        aug.randomize({"index": i})
        draw = (aug.do_transform, aug.style_indices, aug.alpha)
        assert draws.setdefault(i, draw) == draw
    assert len(set(draws.values())) == 4
    other = _aug(stylizer, seed_key="index", seed=1, prob=0.5, alpha_range=(0.0, 1.0))
    other.randomize({"index": 0})
    assert other.alpha != draws[0][2]  # the base seed matters too


@pytest.mark.parametrize("layout", ["DHW", "1DHW", "HWD"])
def test_one_style_and_alpha_per_volume(stylizer, layout):
    vol = _volume(4, seed=20)  # (D, H, W)
    if layout == "1DHW":
        img, kw, slice_of = vol[None], {}, lambda v, d: v[0, d]
    elif layout == "HWD":
        img, kw, slice_of = np.moveaxis(vol, 0, -1).copy(), {"slice_axis": -1}, lambda v, d: v[..., d]
    else:
        img, kw, slice_of = vol, {}, lambda v, d: v[d]
    aug = _aug(stylizer, alpha_range=(0.7, 1.0), **kw)
    out = aug({"image": img})["image"]
    (chosen,) = aug.style_indices
    for d in range(vol.shape[0]):
        same = aug.apply(vol[d], (chosen,), alpha=aug.alpha)
        np.testing.assert_allclose(slice_of(out, d), same, atol=1e-4)  # batched vs one slice
        for other in set(range(4)) - {chosen}:  # any other style would have shown
            assert np.abs(slice_of(out, d) - aug.apply(vol[d], (other,), alpha=aug.alpha)).max() > 1e-3


# --------------------------------------------------------------------------- checkpoints, pickling, workers


def test_checkpoint_is_loaded_lazily_and_not_pickled(checkpoint):
    aug = StyleTransferAugment("image", checkpoint, _bank(), prob=1.0, seed=0)
    assert not aug.loaded
    copy = pickle.loads(pickle.dumps(aug))
    out = aug({"image": _image()})["image"]
    assert aug.loaded and aug.stylizer.checkpoint == str(checkpoint) and not aug.stylizer.net.training
    assert out.shape == (32, 32) and 0 <= out.min() and out.max() <= 1
    blob = pickle.dumps(aug)
    assert not pickle.loads(blob).loaded and len(blob) < 200_000  # the network stays out of the pickle
    again = copy({"image": _image()})["image"]  # the copy loads its own and draws the same
    assert copy.loaded and np.array_equal(again, out)


class _Slices(Dataset):
    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        out = self.transform({"image": self.images[i], "label": i, "index": i})
        t = self.transform
        return {"image": torch.as_tensor(out["image"]), "label": out["label"], "loaded": t.loaded,
                "styles": torch.tensor(t.style_indices), "alpha": t.alpha, "applied": t.do_transform}


def _collect(dataset, **kw):
    return list(DataLoader(dataset, batch_size=None, **kw))


def test_dataloader_workers_give_the_same_results_as_one_process(checkpoint):
    images = [_image(64, seed=30 + i) for i in range(4)]
    aug = StyleTransferAugment("image", checkpoint, _bank(64), prob=0.75, alpha_range=(0.5, 1.0), blend=2,
                               seed=3, seed_key="index")
    workers = _collect(_Slices(images, aug), num_workers=2, timeout=300)
    assert not aug.loaded  # each worker loaded its own decoder, the main process none
    assert all(item["loaded"] for item in workers if item["applied"])
    single = _collect(_Slices(images, aug), num_workers=0)
    assert [item["label"] for item in workers] == [0, 1, 2, 3]
    assert any(item["applied"] for item in single) and not all(item["applied"] for item in single)
    for a, b in zip(workers, single):
        assert a["applied"] == b["applied"] and a["alpha"] == b["alpha"] and torch.equal(a["styles"], b["styles"])
        torch.testing.assert_close(a["image"], b["image"], atol=1e-6, rtol=0)
        if not a["applied"]:
            assert torch.equal(a["image"], torch.from_numpy(images[a["label"]]))


def test_stream_mode_workers_draw_apart_and_repeat_with_a_seeded_loader(stylizer):
    images = [_image(seed=40 + i) for i in range(4)]
    aug = _aug(stylizer, prob=0.0, alpha_range=(0.0, 1.0), seed=5)  # draws only: no network work

    def alphas(loader_seed):
        items = _collect(_Slices(images, aug), num_workers=2, timeout=120,
                         generator=torch.Generator().manual_seed(loader_seed))
        return [item["alpha"] for item in items]

    a = alphas(0)
    assert len(set(a)) == 4  # items 0 and 1 are the first draws of workers 0 and 1: re-seeded apart
    assert alphas(0) == a and alphas(1) != a


# --------------------------------------------------------------------------- style banks from files


def test_style_bank_from_a_folder_of_pngs(tmp_path, stylizer):
    from PIL import Image

    from ctxstyle.data import read_png

    for i, seed in enumerate((50, 51)):
        Image.fromarray((_image(seed=seed) * 255).round().astype(np.uint8)).save(tmp_path / f"style{i}.png")
    aug = _aug(stylizer, style_bank=tmp_path)
    assert len(aug.style_bank) == 2
    for i, bank_image in enumerate(aug.style_bank):
        np.testing.assert_array_equal(bank_image, read_png(tmp_path / f"style{i}.png"))
    assert len(_aug(stylizer, style_bank=[tmp_path / "style1.png", _image(seed=52)]).style_bank) == 2
    out = aug({"image": _image()})["image"]
    assert out.shape == (32, 32) and 0 <= out.min() and out.max() <= 1


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("data, problem", [
    ({"img": _image()}, "image: key not in the data"),
    ({"image": np.linspace(-1000, 1000, 1024, dtype=np.float32).reshape(32, 32)},  # HU
     "image: values must lie in [0, 1], found [-1000, 1000]; this transform does not rescale"),
    ({"image": np.where(_image() > 0.5, np.nan, _image())}, "image: contains NaN"),
    ({"image": (_image() * 255).astype(np.uint8)}, "image: dtype uint8"),
    ({"image": torch.rand(2, 3, 32, 32)}, "image: shape (2, 3, 32, 32) has 2 channels"),
    ({"image": np.zeros((0, 32, 32), np.float32)}, "image: is empty"),
    ({"image": [[0.5]]}, "image: expected a numpy array or a torch tensor"),
    ([_image()], "data: expected a dict"),
])
def test_bad_images_raise_one_line_input_error(stylizer, data, problem):
    with pytest.raises(InputError) as exc:
        _aug(stylizer)(data)
    assert str(exc.value).startswith(problem) and "\n" not in str(exc.value)


@pytest.mark.parametrize("changes, problem", [
    ({"style_bank": np.zeros((0, 32, 32), np.float32)}, "style_bank: is empty"),
    ({"style_bank": []}, "style_bank: is empty"),
    ({"style_bank": np.full((2, 32, 32), 2.0, np.float32)}, "style_bank[0]: values must lie in [0, 1]"),
    ({"style_bank": np.zeros((32, 32), np.float32)}, "style_bank: expected an array (N, H, W)"),
    ({"style_bank": "/nonexistent/styles"}, "/nonexistent/styles: file or folder not found"),
    ({"stylizer": "/nonexistent/checkpoint.pt"}, "/nonexistent/checkpoint.pt: checkpoint file does not exist"),
    ({"stylizer": 3}, "stylizer: expected a checkpoint path"),
    ({"blend": 5}, "blend: must be an integer from 1 to the bank size 4"),
    ({"prob": 1.5}, "prob: must lie in [0, 1]"),
    ({"alpha_range": (0.8, 0.2)}, "alpha_range: needs 0 <= low <= high <= 1"),
    ({"keys": ()}, "keys: expected one key or a non-empty sequence"),
    ({"slice_axis": 3}, "slice_axis: must be an axis"),
    ({"seed": -1}, "seed: must be a non-negative integer"),
])
def test_bad_arguments_raise_one_line_input_error(stylizer, changes, problem):
    with pytest.raises(InputError) as exc:
        _aug(stylizer, **changes)
    assert str(exc.value).startswith(problem) and "\n" not in str(exc.value)


@pytest.mark.parametrize("seed_value, problem", [
    (None, "index: seed_key is not in the data"),
    (-1, "index: seed must be a non-negative integer, got -1"),
    (1.5, "index: seed must be a non-negative integer, got float"),
    (torch.tensor([1, 2]), "index: seed must be one integer"),
])
def test_bad_item_seeds_raise_one_line_input_error(stylizer, seed_value, problem):
    data = {"image": _image()} if seed_value is None else {"image": _image(), "index": seed_value}
    with pytest.raises(InputError) as exc:
        _aug(stylizer, seed_key="index")(data)
    assert str(exc.value).startswith(problem) and "\n" not in str(exc.value)
    _aug(stylizer, seed_key="index")({"image": _image(), "index": torch.tensor(3)})  # a collated index works


# --------------------------------------------------------------------------- MONAI


def test_with_a_stand_in_for_monai_it_derives_from_its_randomizable_and_maptransform(monkeypatch, stylizer):
    """With a stand-in for MONAI importable (MONAI itself, in the test environment: the next test), the
    class derives from MONAI's Randomizable and MapTransform, so Compose.set_random_state (an
    isinstance check) seeds it."""

    class Randomizable:
        R = np.random.RandomState()

    class MapTransform(abc.ABC):
        @abc.abstractmethod
        def __call__(self, data): ...

    monai = types.ModuleType("monai")
    monai.transforms = types.SimpleNamespace(Randomizable=Randomizable, MapTransform=MapTransform)
    monkeypatch.setitem(sys.modules, "monai", monai)
    monkeypatch.setitem(sys.modules, "monai.transforms", monai.transforms)
    name = "ctxstyle._augment_with_monai"
    spec = importlib.util.spec_from_file_location(name, ctxstyle.experiments.augment.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)

    aug = module.StyleTransferAugment("image", stylizer, _bank(), prob=1.0)
    assert isinstance(aug, Randomizable) and isinstance(aug, MapTransform)
    assert aug.keys == ("image",) and aug.allow_missing_keys is False
    for transform in [aug]:  # what monai.transforms.Compose.set_random_state does
        if isinstance(transform, Randomizable):
            transform.set_random_state(seed=11)
    plain = _aug(stylizer, seed=11)
    img = _image(seed=4)
    np.testing.assert_array_equal(aug({"image": img})["image"], plain({"image": img})["image"])
    assert aug.style_indices == plain.style_indices
    assert not issubclass(StyleTransferAugment, (Randomizable, MapTransform))  # MONAI absent here


def test_resize_copies_keeps_copies_at_their_size_and_averages_blocks_when_smaller():
    rng = np.random.default_rng(0)
    copies = rng.random((3, 8, 8), dtype=np.float32)
    assert np.array_equal(resize_copies(copies, 8), copies)  # the decoders' size is the U-Net's: unchanged
    small = resize_copies(copies, 4)
    assert small.shape == (3, 4, 4) and small.dtype == np.float32
    np.testing.assert_allclose(small, copies.reshape(3, 4, 2, 4, 2).mean(axis=(2, 4)), rtol=1e-6)


def test_in_a_real_monai_compose_after_scaleintensityranged(stylizer):
    """MONAI itself (the ``test`` extra installs it): a MONAI Randomizable MapTransform that
    Compose seeds, after ScaleIntensityRanged maps HU to [0, 1]; on MONAI's (C, H, W) arrays."""
    pytest.importorskip("monai", reason="MONAI is not installed (the test extra installs it)")
    from monai.transforms import Compose, MapTransform, Randomizable, ScaleIntensityRanged

    aug = _aug(stylizer, seed=None)
    assert isinstance(aug, Randomizable) and isinstance(aug, MapTransform)
    hu = (_image(seed=5) * 2000.0 - 500.0)[None]  # (1, H, W) in HU, a bone window's range
    pipeline = Compose([ScaleIntensityRanged(keys="image", a_min=-500.0, a_max=1500.0, b_min=0.0, b_max=1.0,
                                             clip=True), aug])
    outs = []
    for _ in range(2):
        pipeline.set_random_state(seed=7)
        outs.append(np.asarray(pipeline({"image": hu, "label": np.ones_like(hu)})["image"]))
    assert outs[0].shape == hu.shape and 0.0 <= outs[0].min() and outs[0].max() <= 1.0
    np.testing.assert_array_equal(outs[0], outs[1])  # Compose's seed reached the transform
    assert not np.allclose(outs[0], np.clip((hu + 500.0) / 2000.0, 0, 1), atol=1e-3)  # it did stylize
