"""Gray-scale augmentations for segmentation training: the copy plan, histogram matching,
stylized copies, and classical (nnU-Net-style) intensity augmentation.

**One budget for every augmentation.** A :class:`CopyPlan` fixes, once per experiment seed,
which training slice gets an augmented copy in which target style and with which unlabelled
style-bank reference image: copy ``j`` of slice ``i`` gets target style
``targets[(offset_i + j) % len(targets)]`` (``offset_i`` = a seeded random permutation of the
slices modulo the number of targets, so every target style gets the same number of copies, and
with ``copies_per_slice == len(targets)`` every slice is copied once into every target style)
and a reference drawn uniformly from that style's bank. Style transfer (any decoder) and histogram
matching turn the *same* (content, reference) pairs into copies; the oracle renders the same
(slice, style) pairs with the true style; classical augmentation augments a sample on the fly
with probability ``copies / (1 + copies)``, the share of augmented images in the other sets.
Masks are never changed: every augmentation here keeps the anatomy.

**Held-out styles.** :func:`held_out_plan` is the plan without one target style: the copies planned
in the other styles stay as they are (same content, style and reference), and each copy planned in
the held-out style moves to one of the others (balanced, seeded) with a fresh reference; so the
budget is unchanged and :func:`remake_copies` recomputes only the moved copies.

**In your own training.** :class:`StyleTransferAugment` is the on-the-fly counterpart for any
PyTorch (or MONAI) pipeline: a dict transform that stylizes the images of a sample with a trained
decoder and a random style from a bank, leaving labels and everything else untouched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import get_worker_info

from ctxstyle.errors import InputError
from ctxstyle.experiments import presets
from ctxstyle.images import as_image_batch

__all__ = ["CopyPlan", "copy_plan", "held_out_plan", "remake_copies", "gather_copies", "histogram_match_copies", "stylize_copies",
           "resize_copies", "IntensityAugment", "StyleTransferAugment"]


@dataclass(frozen=True)
class CopyPlan:
    """Which slice (``content``) is copied into which ``style`` with which reference (``ref``)."""

    content: np.ndarray  # (K,) int index into the training slices
    style: np.ndarray  # (K,) str target style name
    ref: np.ndarray  # (K,) int index into that style's reference bank
    styles: tuple[str, ...]
    n_refs: int
    seed: int

    def __len__(self) -> int:
        return int(len(self.content))

    def counts(self) -> dict[str, int]:
        """Copies per target style."""
        return {s: int(np.sum(self.style == s)) for s in self.styles}

    def take(self, index) -> CopyPlan:
        """The plan of the copies ``index`` (in that order)."""
        index = np.asarray(index, dtype=int)
        return CopyPlan(self.content[index], self.style[index], self.ref[index], self.styles, self.n_refs, self.seed)

    def to_dict(self) -> dict:
        return {"copies": len(self), "styles": list(self.styles), "n_refs": self.n_refs,
                "seed": self.seed, "per_style": self.counts()}


def copy_plan(n_slices: int, styles: Sequence[str], copies_per_slice: int = 1, n_refs: int = 16,
              seed: int = 0) -> CopyPlan:
    """The seeded copy plan (see the module docstring); ``n_slices * copies_per_slice`` copies."""
    styles = tuple(styles)
    if n_slices < 1 or not styles:
        raise InputError("copy_plan", "needs at least one slice and one target style")
    if copies_per_slice < 1 or n_refs < 1:
        raise InputError("copy_plan", "copies_per_slice and n_refs must be >= 1")
    rng = np.random.default_rng([int(seed), 4242])
    offset = rng.permutation(n_slices) % len(styles)  # balanced: styles differ by <= 1 copy
    content = np.repeat(np.arange(n_slices), copies_per_slice)
    j = np.tile(np.arange(copies_per_slice), n_slices)
    style_idx = (offset[content] + j) % len(styles)
    ref = rng.integers(0, n_refs, size=len(content))
    return CopyPlan(content, np.array(styles)[style_idx], ref, styles, int(n_refs), int(seed))


def held_out_plan(plan: CopyPlan, held_out: str) -> CopyPlan:
    """``plan`` without the style ``held_out`` (see the module docstring): same number of copies,
    no copy in ``held_out`` and no reference of it; seeded by the plan's seed and the style."""
    if held_out not in plan.styles:
        raise InputError("held_out", f"{held_out!r} is not one of the plan's styles {list(plan.styles)}")
    rest = tuple(s for s in plan.styles if s != held_out)
    if not rest:
        raise InputError("held_out", "the plan has no other style to move its copies to")
    rng = np.random.default_rng([int(plan.seed), 4243, plan.styles.index(held_out)])
    moved = np.flatnonzero(plan.style == held_out)
    style, ref = plan.style.copy(), plan.ref.copy()
    counts = np.array([np.sum(plan.style == s) for s in rest])
    # fill the styles with the fewest copies first, so the result stays balanced (counts differ by <= 1)
    order = np.lexsort((rng.permutation(len(rest)), counts))
    fill = np.array(rest)[order][np.arange(len(moved)) % len(rest)]
    style[moved] = fill[rng.permutation(len(moved))]
    ref[moved] = rng.integers(0, plan.n_refs, size=len(moved))
    return CopyPlan(plan.content.copy(), style, ref, rest, plan.n_refs, plan.seed)


def remake_copies(copies: np.ndarray, plan: CopyPlan, new_plan: CopyPlan, make) -> np.ndarray:
    """The copies of ``new_plan`` from those of ``plan``: a copy whose (content, style, reference)
    is unchanged is kept, the others are made by ``make(sub_plan) -> (k, H, W)`` (e.g.
    ``lambda p: stylize_copies(stylizer, contents, refs, p)``). ``copies`` is not modified."""
    if len(copies) != len(plan) or len(new_plan) != len(plan):
        raise InputError("copies", f"{len(copies)} copies, plans of {len(plan)} and {len(new_plan)}")
    changed = np.flatnonzero((plan.content != new_plan.content) | (plan.style != new_plan.style)
                             | (plan.ref != new_plan.ref))
    out = np.array(copies, dtype=np.float32, copy=True)
    if len(changed):
        out[changed] = make(new_plan.take(changed))
    return out


def _check_bank(refs_by_style: Mapping[str, np.ndarray], plan: CopyPlan) -> None:
    for s in plan.styles:
        if s not in refs_by_style:
            raise InputError("references", f"no reference bank for style {s!r}")
        if len(refs_by_style[s]) < plan.n_refs:
            raise InputError("references", f"style {s!r} has {len(refs_by_style[s])} references, plan needs {plan.n_refs}")


def gather_copies(images_by_style: Mapping[str, np.ndarray], plan: CopyPlan) -> np.ndarray:
    """Copies taken from images already rendered per style (the oracle): ``images_by_style[s][i]``."""
    out = [images_by_style[s][i] for i, s in zip(plan.content, plan.style)]
    return np.stack(out).astype(np.float32, copy=False)


def histogram_match_copies(contents: np.ndarray, refs_by_style: Mapping[str, np.ndarray],
                           plan: CopyPlan) -> np.ndarray:
    """Each planned copy: the content slice's gray values mapped so that its histogram matches its
    reference's (``skimage.exposure.match_histograms``, whole slice). (K, H, W) float32 in [0, 1]."""
    from skimage.exposure import match_histograms

    _check_bank(refs_by_style, plan)
    out = np.empty((len(plan), *contents.shape[1:]), np.float32)
    for k, (i, s, r) in enumerate(zip(plan.content, plan.style, plan.ref)):
        out[k] = match_histograms(contents[i], refs_by_style[s][r])
    return np.clip(out, 0.0, 1.0)


def resize_copies(copies: np.ndarray, size: int) -> np.ndarray:
    """(K, H, W) copies at ``size`` x ``size`` by area averaging (made at the decoders' size, used at
    the U-Net's; unchanged values when the size is already ``size``). float32."""
    x = torch.from_numpy(np.ascontiguousarray(copies, np.float32))[:, None]
    return F.interpolate(x, size=(int(size), int(size)), mode="area")[:, 0].numpy()


@torch.no_grad()
def stylize_copies(stylizer, contents: np.ndarray, refs_by_style: Mapping[str, np.ndarray],
                   plan: CopyPlan, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Each planned copy: the content slice stylized by ``stylizer`` (a
    :class:`ctxstyle.stylize.Stylizer`) with its reference's style features (paper eqs 1-3 at
    inference: AdaIN of the content features to the reference's statistics, then the decoder).
    Output clipped to [0, 1]; (K, H, W) float32. Contents sharing a reference are batched."""
    from tqdm.auto import tqdm

    _check_bank(refs_by_style, plan)
    out = np.empty((len(plan), *contents.shape[1:]), np.float32)
    groups: dict[tuple[str, int], list[int]] = {}
    for k, (s, r) in enumerate(zip(plan.style, plan.ref)):
        groups.setdefault((str(s), int(r)), []).append(k)
    for (s, r), ks in tqdm(sorted(groups.items()), disable=not progress, desc="stylize copies"):
        feats = stylizer.style_features(torch.from_numpy(refs_by_style[s][r][None, None].copy()))
        content = torch.from_numpy(contents[plan.content[ks]][:, None].copy())
        res = stylizer(content, style_feats=feats, batch_size=batch_size)
        out[ks] = res[:, 0].clamp(0.0, 1.0).cpu().numpy()
    return out


def _gaussian_kernel(x: Tensor, sigma: float) -> tuple[Tensor, int]:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < radius:
        k = k[radius - pad: radius + pad + 1]
        k = k / k.sum()
    return k, pad


def gaussian_blur(x: Tensor, sigma: float, sigma_y: float | None = None) -> Tensor:
    """Separable Gaussian blur of (1, 1, H, W) with reflect padding (``sigma_y``: another sigma
    along H; default ``sigma``)."""
    k, pad = _gaussian_kernel(x, sigma)
    ky, pady = (k, pad) if sigma_y is None else _gaussian_kernel(x, sigma_y)
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, pady, pady), mode="reflect"), ky.view(1, 1, -1, 1))


@dataclass(frozen=True)
class IntensityAugment:
    """Classical on-the-fly intensity augmentation with nnU-Net's default transforms and ranges
    (Isensee et al., Nature Methods 2021; batchgenerators), for images in [0, 1].

    A sample is augmented with probability ``p_sample``; an augmented sample gets each transform
    below independently with probability ``p_each`` (at least one), in nnU-Net's order:

    1. Gaussian noise, SD ~ U(0, 0.1) in units of the image's own SD (nnU-Net draws it on
       z-scored images; batchgenerators' "noise_variance" range is used as the SD);
    2. Gaussian blur, sigma ~ U(0.5, 1.0) px;
    3. multiplicative brightness, factor ~ U(0.75, 1.25);
    4. contrast around the image mean, factor ~ U(0.75, 1.25), clipped to the image's range;
    5. gamma ~ U(0.7, 1.5) (``x ** gamma``), on the inverted image ``1 - (1 - x) ** gamma`` with
       probability ``p_invert``;

    then the result is clipped to [0, 1]. Randomness comes only from the ``torch.Generator``.
    """

    p_sample: float = 0.5
    p_each: float = 0.5
    noise_var: tuple[float, float] = (0.0, 0.1)
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    brightness: tuple[float, float] = (0.75, 1.25)
    contrast: tuple[float, float] = (0.75, 1.25)
    gamma: tuple[float, float] = (0.7, 1.5)
    p_invert: float = 0.15

    TRANSFORMS = ("noise", "blur", "brightness", "contrast", "gamma")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def _u(self, lo_hi: tuple[float, float], gen: torch.Generator) -> float:
        lo, hi = lo_hi
        return float(lo + (hi - lo) * torch.rand((), generator=gen))

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Augment a batch (N, 1, H, W) in [0, 1]; returns a new tensor of the same shape."""
        if images.dim() != 4 or images.shape[1] != 1:
            raise InputError("images", f"expected (N, 1, H, W), got {tuple(images.shape)}")
        out = images.clone()
        n = images.shape[0]
        chosen = torch.rand(n, generator=generator) < self.p_sample
        for i in torch.nonzero(chosen).flatten().tolist():
            which = torch.rand(len(self.TRANSFORMS), generator=generator) < self.p_each
            if not which.any():
                which[int(torch.randint(len(self.TRANSFORMS), (), generator=generator))] = True
            x = out[i: i + 1]
            if which[0]:
                sd = self._u(self.noise_var, generator) * float(x.std())
                x = x + sd * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            if which[1]:
                x = gaussian_blur(x, self._u(self.blur_sigma, generator))
            if which[2]:
                x = x * self._u(self.brightness, generator)
            if which[3]:
                lo, hi, m = x.min(), x.max(), x.mean()
                x = ((x - m) * self._u(self.contrast, generator) + m).clamp(lo, hi)
            if which[4]:
                g = self._u(self.gamma, generator)
                x = x.clamp(0.0, 1.0)
                if float(torch.rand((), generator=generator)) < self.p_invert:
                    x = 1.0 - (1.0 - x) ** g
                else:
                    x = x ** g
            out[i: i + 1] = x.clamp(0.0, 1.0)
        return out


# --------------------------------------------------------------------------- on-the-fly style transfer

#: Seeds of :meth:`StyleTransferAugment.set_random_state` are taken modulo this (as MONAI does).
MAX_SEED = 2**32

# Where MONAI is installed the transform *is* a MONAI ``Randomizable`` ``MapTransform`` (so that
# ``Compose.set_random_state`` and ``CacheDataset`` treat it as one); otherwise it only has their
# interface. No hard dependency: any failure to import MONAI leaves the plain class.
try:  # MONAI is optional for users; the test environment installs it
    from monai.transforms import MapTransform as _MonaiMapTransform
    from monai.transforms import Randomizable as _MonaiRandomizable

    _MONAI_BASES: tuple[type, ...] = (_MonaiRandomizable, _MonaiMapTransform)
except Exception:  # ImportError, or a MONAI that does not import with this torch
    _MONAI_BASES = ()


def _random_state(*entropy: int) -> np.random.RandomState:
    """A ``np.random.RandomState`` (MONAI's type) seeded from non-negative integers of any size."""
    return np.random.RandomState(np.random.MT19937(np.random.SeedSequence([int(e) for e in entropy])))


def _check_unit_range(x: Tensor, name: str) -> None:
    as_image_batch(x, name, channels=None, dtype=x.dtype, unit_range=True)


def _read_style_files(paths: Sequence[str | os.PathLike], window: Sequence[float] | None) -> list[np.ndarray]:
    """Style images from PNG / NIfTI / DICOM files or folders, read as ``ctxstyle stylize`` reads
    its styles (:func:`ctxstyle.stylize.collect_inputs`, :func:`ctxstyle.stylize.read_ct_files`,
    :func:`ctxstyle.stylize.read_image_file`): HU mapped to [0, 1] with ``window`` (default: the
    protocol's source window), one image per file (a NIfTI volume's middle axial slice); label maps
    in folders left out with a warning."""
    from ctxstyle.stylize import check_window, collect_inputs, default_window, read_ct_files, read_image_file

    win = check_window(window, "style_window") if window is not None else default_window()
    files, _ = collect_inputs(list(paths), "style bank")
    files, _ = read_ct_files(files, win, "style bank")
    out = []
    for f in files:
        images = read_image_file(f.path, win, f.kind).images
        out.append(np.asarray(images[len(images) // 2], dtype=np.float32))
    return out


def _style_bank(bank: Any, window: Sequence[float] | None) -> list[np.ndarray]:
    """The style bank as a list of float32 (H, W) arrays in [0, 1] (checked)."""
    if isinstance(bank, (str, os.PathLike)):
        images = _read_style_files([bank], window)
    elif isinstance(bank, (np.ndarray, Tensor)):
        arr = bank.detach().cpu().float().numpy() if isinstance(bank, Tensor) else np.asarray(bank, dtype=np.float32)
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 3:
            raise InputError("style_bank", f"expected an array (N, H, W) or (N, 1, H, W), got shape {arr.shape}")
        images = list(arr)
    elif isinstance(bank, Sequence):
        images = []
        for i, item in enumerate(bank):
            if isinstance(item, (str, os.PathLike)):
                images.extend(_read_style_files([item], window))
                continue
            arr = item.detach().cpu().float().numpy() if isinstance(item, Tensor) else np.asarray(item, np.float32)
            if arr.ndim == 3 and arr.shape[0] == 1:
                arr = arr[0]
            if arr.ndim != 2:
                raise InputError(f"style_bank[{i}]", f"expected an image (H, W) or (1, H, W), got shape {arr.shape}")
            images.append(arr)
    else:
        raise InputError("style_bank", f"expected an array (N, H, W), a sequence of images, or a file or folder of "
                                       f"PNG / NIfTI / DICOM images, got {type(bank).__name__}")
    if not images:
        raise InputError("style_bank", "is empty: give at least one style image")
    checked = []
    for i, img in enumerate(images):
        img = np.array(img, dtype=np.float32)  # an own, writable, contiguous copy
        _check_unit_range(torch.from_numpy(img), f"style_bank[{i}]")
        checked.append(np.clip(img, 0.0, 1.0, out=img))
    return checked


class StyleTransferAugment(*_MONAI_BASES):
    """Dictionary-based style-transfer augmentation: stylize the gray-scale images of a sample
    with a trained decoder (:class:`ctxstyle.stylize.Stylizer`) and random style images from a
    bank, leaving labels, masks and metadata untouched.

    Follows MONAI's ``MapTransform`` + ``Randomizable`` conventions (``keys``,
    ``allow_missing_keys``, ``prob``, a ``np.random.RandomState`` ``R``,
    ``set_random_state(seed=None, state=None)``, ``randomize(data)``, ``__call__(data)`` returning
    a new dict) so it drops into ``monai.transforms.Compose``; where MONAI is installed it is a
    subclass of MONAI's ``Randomizable`` and ``MapTransform``, without MONAI it needs neither.

    Each call draws, once for the whole sample (every key, every slice of a volume):

    - whether to augment (probability ``prob``),
    - ``alpha`` ~ U(``alpha_range``): the content/style trade-off (0: the decoder's reconstruction,
      1: full style),
    - ``blend`` distinct style images of the bank and their weights ~ Dirichlet(``concentration``)
      (concentration 1: uniform on the simplex), blended as in :func:`ctxstyle.method.function.adain_blend`.

    The draw is kept in the attributes ``do_transform``, ``style_indices``, ``style_weights`` and
    ``alpha`` (as MONAI transforms keep theirs), and :meth:`apply` repeats it on any image.

    Images: floating-point numpy arrays or torch tensors with values in [0, 1] (a window already
    applied): a slice (H, W) or (1, H, W), or a volume (D, H, W) or (1, D, H, W), stylized slice
    by slice along ``slice_axis`` of its spatial dims, all slices with the same styles and alpha.
    The result has the input's type, dtype, shape and device, values in [0, 1]; the input is never
    changed. Other values (HU, z-scores, [0, 255]) are refused with an :class:`InputError` naming
    the key, never silently rescaled: apply a window or ``ScaleIntensityRanged`` first. Integer
    and boolean images, several channels, NaN / inf and missing keys are refused the same way.

    **Seeding.** Two modes:

    - *stream* (default): draws come from ``R``, seeded by ``seed`` or
      :meth:`set_random_state`. In a ``torch.utils.data.DataLoader`` worker (``num_workers > 0``),
      ``R`` is re-seeded at the worker's first call from (a draw of the ``R`` it inherited, the
      worker's ``torch.utils.data.get_worker_info().seed``) unless ``set_random_state`` was called
      in that worker (MONAI's ``DataLoader`` does, via its ``worker_init_fn``): workers never repeat each
      other's draws, each epoch's fresh workers draw anew, and a DataLoader given a seeded
      ``generator`` repeats its run. Results then depend on ``num_workers``.
    - *per item* (``seed_key`` set): each sample's draw comes from (``seed``, ``data[seed_key]``),
      a non-negative integer the dataset puts in the sample (e.g. its index, or
      ``epoch * len(dataset) + index`` for new draws each epoch). Results are then the same
      whatever ``num_workers``, worker order or shuffling; ``R`` and ``set_random_state`` are
      not used.

    **Workers.** The transform pickles without the network: given a checkpoint path, each process
    loads the decoder at its first call (on ``device``, CPU by default; CUDA does not survive a
    forked worker) and computes each style's features once, on first use. Inside a DataLoader
    worker it sets ``torch.set_num_threads(worker_threads)``; it never changes the threads of
    the main process. The network runs in inference mode; outputs are ordinary tensors.

    Args:
        keys: key(s) of the images to stylize, e.g. ``("image",)``; every key gets the same draw.
        stylizer: a decoder checkpoint path (loaded lazily with
            :meth:`ctxstyle.stylize.Stylizer.from_checkpoint`) or a ready ``Stylizer``.
        style_bank: the style images: an array or tensor (N, H, W) or (N, 1, H, W) in [0, 1], a
            sequence of (H, W) images, or a PNG / NIfTI / DICOM file or folder (or a sequence of
            them) read as ``ctxstyle stylize`` reads its styles (HU mapped to [0, 1] with
            ``style_window``; a NIfTI volume gives its middle axial slice).
        prob: probability of stylizing a sample. Defaults to 0.5.
        alpha_range: ``(low, high)`` in [0, 1] of the uniform alpha, or one float (fixed).
            Defaults to ``(1.0, 1.0)``.
        blend: number of distinct style images blended per sample (<= the bank size). Defaults to 1.
        concentration: Dirichlet concentration of the blend weights. Defaults to 1.0.
        seed: seed of ``R`` (stream mode) and base seed of the per-item mode; None: unseeded.
        seed_key: key of a per-sample integer seed (per-item mode, see above); None: stream mode.
        slice_axis: axis of a volume's spatial dims (D, H, W) along which slices are taken;
            ``-1`` for MONAI's channel-first (1, H, W, D) layout. Defaults to 0.
        style_window: ``(level, width)`` in HU for style files in HU; default: the protocol's
            source window (:func:`ctxstyle.stylize.default_window`).
        device: device of a decoder loaded from a checkpoint. Defaults to ``"cpu"``.
        batch_size: slices stylized per forward pass. Defaults to 4.
        worker_threads: torch threads inside a DataLoader worker. Defaults to 1.
        allow_missing_keys: skip keys missing from a sample instead of raising. Defaults to False.

    Raises:
        InputError: one line naming the argument, key or style image and the problem.

    Example::

        from ctxstyle.experiments.augment import StyleTransferAugment

        aug = StyleTransferAugment(keys="image", stylizer="checkpoint-last.pt", style_bank=styles,  # (N, H, W)
                                   prob=0.5, alpha_range=(0.6, 1.0), blend=2, seed=0, seed_key="index")
        sample = aug({"image": ct_slice, "label": mask, "index": 7})  # ct_slice in [0, 1], mask untouched
        aug.style_indices, aug.style_weights, aug.alpha               # what this call drew

        # MONAI: Compose([LoadImaged(...), EnsureChannelFirstd(...), ScaleIntensityRanged(..., b_min=0, b_max=1,
        #         clip=True), StyleTransferAugment("image", ckpt, bank, slice_axis=-1)])
    """

    backend = ["torch", "numpy"]  # MONAI's Transform.backend: both types in, the same type out

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable],
        stylizer: Any,
        style_bank: Any,
        prob: float = 0.5,
        alpha_range: float | Sequence[float] = (1.0, 1.0),
        blend: int = 1,
        concentration: float = 1.0,
        seed: int | None = None,
        seed_key: Hashable | None = None,
        slice_axis: int = 0,
        style_window: Sequence[float] | None = None,
        device: str = "cpu",
        batch_size: int = 4,
        worker_threads: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        self.keys: tuple[Hashable, ...] = (keys,) if isinstance(keys, (str, bytes)) or not isinstance(
            keys, Sequence) else tuple(keys)
        if not self.keys or not all(isinstance(k, Hashable) for k in self.keys):
            raise InputError("keys", f"expected one key or a non-empty sequence of keys, got {keys!r}")
        self.allow_missing_keys = bool(allow_missing_keys)
        prob = float(prob)
        if not (math.isfinite(prob) and 0.0 <= prob <= 1.0):
            raise InputError("prob", f"must lie in [0, 1], got {prob}")
        self.prob = prob
        lo_hi = (alpha_range, alpha_range) if isinstance(alpha_range, (int, float)) else tuple(alpha_range)
        if len(lo_hi) != 2 or not all(isinstance(v, (int, float, np.floating)) and math.isfinite(v) for v in lo_hi) \
                or not 0.0 <= lo_hi[0] <= lo_hi[1] <= 1.0:
            raise InputError("alpha_range", f"needs 0 <= low <= high <= 1, got {alpha_range!r}")
        self.alpha_range = (float(lo_hi[0]), float(lo_hi[1]))
        self.style_bank = _style_bank(style_bank, style_window)
        if not isinstance(blend, (int, np.integer)) or not 1 <= blend <= len(self.style_bank):
            raise InputError("blend", f"must be an integer from 1 to the bank size {len(self.style_bank)}, got {blend!r}")
        self.blend = int(blend)
        if not (math.isfinite(float(concentration)) and float(concentration) > 0):
            raise InputError("concentration", f"must be > 0, got {concentration!r}")
        self.concentration = float(concentration)
        if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
            raise InputError("seed", f"must be a non-negative integer or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self.seed_key = seed_key
        if slice_axis not in (-3, -2, -1, 0, 1, 2):
            raise InputError("slice_axis", f"must be an axis of the spatial dims (D, H, W): -3..2, got {slice_axis!r}")
        self.slice_axis = int(slice_axis)
        for name, value in (("batch_size", batch_size), ("worker_threads", worker_threads)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(name, f"must be an integer >= 1, got {value!r}")
        self.batch_size, self.worker_threads = int(batch_size), int(worker_threads)
        self.device = device

        if isinstance(stylizer, (str, os.PathLike)):
            if not Path(stylizer).is_file():
                raise InputError(stylizer, "checkpoint file does not exist")
            self.checkpoint: str | None = str(stylizer)
            self._stylizer = None
        elif callable(stylizer) and hasattr(stylizer, "style_features") and hasattr(stylizer, "stride"):
            self.checkpoint, self._stylizer = None, stylizer
        else:
            raise InputError("stylizer", f"expected a checkpoint path or a ctxstyle.stylize.Stylizer, "
                                         f"got {type(stylizer).__name__}")
        self._features: dict[int, Tensor] = {}
        self._threads_pid: int | None = None
        self.set_random_state(seed=self.seed)
        self._do_transform = False
        self.style_indices: tuple[int, ...] = ()
        self.style_weights: tuple[float, ...] = ()
        self.alpha: float = self.alpha_range[1]

    # ------------------------------------------------------------------ randomness (MONAI's API)

    def set_random_state(self, seed: int | None = None,
                         state: np.random.RandomState | None = None) -> StyleTransferAugment:
        """Seed ``R`` (MONAI's ``Randomizable.set_random_state``): with ``seed`` (taken modulo
        2**32; a non-integer is replaced by its ``id``), else with the given ``state``, else
        unseeded. Called inside a DataLoader worker, it stops that worker's automatic re-seeding."""
        if seed is not None:
            seed = seed if isinstance(seed, (int, np.integer)) else id(seed)
            self.R = np.random.RandomState(int(seed) % MAX_SEED)
        elif state is not None:
            if not isinstance(state, np.random.RandomState):
                raise TypeError(f"state must be None or a np.random.RandomState but is {type(state).__name__}.")
            self.R = state
        else:
            self.R = np.random.RandomState()
        self._rng_pid = os.getpid()
        return self

    def _stream(self) -> np.random.RandomState:
        """``R``, re-seeded at a DataLoader worker's first draw (see the class docstring)."""
        info = get_worker_info()
        if info is not None and self._rng_pid != os.getpid():
            self.R = _random_state(self.R.randint(MAX_SEED), info.seed)  # the inherited stream + the worker's seed
            self._rng_pid = os.getpid()
        return self.R

    def _item_rng(self, data: Mapping) -> np.random.RandomState:
        if self.seed_key not in data:
            raise InputError(self.seed_key, "seed_key is not in the data: give every sample its integer seed "
                                            f"(keys found: {list(data)})")
        value = data[self.seed_key]
        if isinstance(value, Tensor):
            if value.numel() != 1 or value.dtype.is_floating_point or value.dtype == torch.bool:
                raise InputError(self.seed_key, f"seed must be one integer, got a {value.dtype} tensor of shape "
                                                f"{tuple(value.shape)}")
            value = int(value.item())
        elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            value = int(value)
        else:
            raise InputError(self.seed_key, f"seed must be a non-negative integer, got {type(value).__name__}")
        if value < 0:
            raise InputError(self.seed_key, f"seed must be a non-negative integer, got {value}")
        return _random_state(0 if self.seed is None else self.seed, value)

    def randomize(self, data: Any = None) -> None:
        """Draw whether to augment, alpha, the style indices and their weights (see the class
        docstring); from ``data[seed_key]`` in per-item mode, else from ``R``. Every value is
        drawn on every call, so the stream does not depend on earlier outcomes."""
        rng = self._item_rng(data) if self.seed_key is not None and data is not None else self._stream()
        self._do_transform = bool(rng.rand() < self.prob)
        self.alpha = float(rng.uniform(*self.alpha_range))
        self.style_indices = tuple(int(i) for i in rng.choice(len(self.style_bank), self.blend, replace=False))
        weights = rng.dirichlet([self.concentration] * self.blend) if self.blend > 1 else np.ones(1)
        self.style_weights = tuple(float(w) for w in weights)

    @property
    def do_transform(self) -> bool:
        """Whether the last call stylized (MONAI's ``_do_transform``)."""
        return self._do_transform

    # ------------------------------------------------------------------ the network, per process

    @property
    def loaded(self) -> bool:
        """Whether this process holds the decoder (False before a checkpoint's first use)."""
        return self._stylizer is not None

    @property
    def stylizer(self):
        """The :class:`ctxstyle.stylize.Stylizer`, loaded from ``checkpoint`` at first use."""
        if get_worker_info() is not None and self._threads_pid != os.getpid():
            torch.set_num_threads(self.worker_threads)
            self._threads_pid = os.getpid()
        if self._stylizer is None:
            from ctxstyle.stylize import Stylizer

            self._stylizer = Stylizer.from_checkpoint(self.checkpoint, device=self.device, fast=presets.FAST)
            self._features = {}
        return self._stylizer

    def _style_features(self, i: int) -> Tensor:
        if i not in self._features:
            with torch.inference_mode():
                self._features[i] = self.stylizer.style_features(torch.from_numpy(self.style_bank[i])[None, None])[0]
        return self._features[i]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_features"] = {}  # recomputed in each process
        if self.checkpoint is not None:
            state["_stylizer"] = None  # each process loads its own
        return state

    # ------------------------------------------------------------------ images

    def _slices(self, image: Any, name: str) -> tuple[Tensor, Any]:
        """``image`` as float32 CPU slices (S, 1, H, W), checked, and how to put results back."""
        if isinstance(image, Tensor):
            if not image.dtype.is_floating_point:
                raise InputError(name, f"dtype {image.dtype}: expected floating-point values in [0, 1]")
            x = image.detach().to("cpu", torch.float32).as_subclass(Tensor)  # a MetaTensor's pixels only
        elif isinstance(image, np.ndarray):
            if not np.issubdtype(image.dtype, np.floating):
                raise InputError(name, f"dtype {image.dtype}: expected floating-point values in [0, 1]")
            arr = np.ascontiguousarray(image, dtype=np.float32)
            x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # read only here, never written
        else:
            raise InputError(name, f"expected a numpy array or a torch tensor, got {type(image).__name__}")
        shape = tuple(x.shape)
        if x.dim() == 2:  # (H, W)
            vol, axis, squeeze, channel = x[None], 0, True, False
        elif x.dim() == 3 and x.shape[0] == 1:  # (1, H, W): one slice with its channel
            vol, axis, squeeze, channel = x, 0, False, False
        elif x.dim() == 3:  # (D, H, W)
            vol, axis, squeeze, channel = x, self.slice_axis, False, False
        elif x.dim() == 4 and x.shape[0] == 1:  # (1, D, H, W)
            vol, axis, squeeze, channel = x[0], self.slice_axis, False, True
        elif x.dim() == 4:
            raise InputError(name, f"shape {shape} has {shape[0]} channels; expected one gray channel (1, D, H, W)")
        else:
            raise InputError(name, f"shape {shape}: expected a slice (H, W) or (1, H, W), or a volume (D, H, W) "
                                   "or (1, D, H, W)")
        _check_unit_range(x, name)
        slices = torch.movedim(vol, axis, 0)

        def restore(out: Tensor) -> Tensor:  # (S, 1, H, W) -> the input's layout
            out = torch.movedim(out[:, 0], 0, axis)
            return out[0] if squeeze else out[None] if channel else out

        return slices[:, None], restore

    def apply(self, image: Any, style_indices: Sequence[int] | None = None,
              style_weights: Sequence[float] | None = None, alpha: float | None = None, name: str = "image"):
        """Stylize one image (any accepted layout) with the given style indices, weights and alpha
        (default: the last draw); returns a new image of the input's type, dtype and shape."""
        indices = self.style_indices if style_indices is None else tuple(int(i) for i in style_indices)
        weights = (self.style_weights if style_indices is None else None) if style_weights is None else style_weights
        alpha = self.alpha if alpha is None else float(alpha)
        if not indices or not all(0 <= i < len(self.style_bank) for i in indices):
            raise InputError("style_indices", f"need indices into the bank of {len(self.style_bank)}, got {indices!r}")
        if not 0.0 <= alpha <= 1.0:
            raise InputError("alpha", f"must lie in [0, 1], got {alpha}")
        return self._stylize(image, *self._slices(image, name), name, indices, weights, alpha)

    def _stylize(self, image: Any, slices: Tensor, restore, name: str, indices: Sequence[int],
                 weights: Sequence[float] | None, alpha: float):
        stylizer = self.stylizer
        h, w = slices.shape[-2:]
        if math.ceil(h / stylizer.stride) * math.ceil(w / stylizer.stride) < 2:
            raise InputError(name, f"slices of {h}x{w} pixels are too small for the decoder's layer (stride "
                                   f"{stylizer.stride})")
        feats = [self._style_features(i) for i in indices]
        with torch.inference_mode():
            out = restore(stylizer(slices, style_feats=feats, weights=None if weights is None else list(weights),
                                   alpha=alpha, batch_size=self.batch_size).clamp_(0.0, 1.0))
        if isinstance(image, Tensor):
            result = image.detach().clone()  # keeps a subclass (MONAI's MetaTensor), device and layout
            result.copy_(out)  # outside inference mode: an ordinary tensor
            return result
        return np.ascontiguousarray(out.numpy(), dtype=image.dtype)

    def __call__(self, data: Mapping) -> dict:
        """A new dict: the images under ``keys`` stylized (with probability ``prob``), every other
        entry the same object as in ``data``."""
        if not isinstance(data, Mapping):
            raise InputError("data", f"expected a dict of images and labels, got {type(data).__name__}")
        d = dict(data)
        keys = []
        for key in self.keys:
            if key in d:
                keys.append(key)
            elif not self.allow_missing_keys:
                raise InputError(key, f"key not in the data (keys found: {list(d)}); pass allow_missing_keys=True "
                                      "to skip it")
        prepared = {key: self._slices(d[key], str(key)) for key in keys}  # checked also when not stylizing
        self.randomize(d)
        if self._do_transform:
            for key, (slices, restore) in prepared.items():
                d[key] = self._stylize(d[key], slices, restore, str(key), self.style_indices, self.style_weights,
                                       self.alpha)
        return d
