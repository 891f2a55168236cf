"""Inference: stylize tensors, and PNG / NIfTI / DICOM files, with a trained decoder.

Files in HU (NIfTI, DICOM) are mapped to [0, 1] with a display window (default: the protocol's
source window, the gray scale the decoder's content images had), stylized, and mapped back to HU
through the inverse of the same window, so that a viewer showing the output with that window
shows the stylized gray scale. DICOM in gives DICOM out: the original header is kept (a new
SOPInstanceUID, one new SeriesInstanceUID per input series, a derived-image description) and
the stored values use the original RescaleSlope/Intercept. NIfTI in gives NIfTI out with the
original affine and header, every slice along the axial (inferior-superior) axis stylized.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ctxstyle.errors import InputError, NotCTError
from ctxstyle.images import as_image_batch
from ctxstyle.store import atomic_write
from ctxstyle.method.net import StyleTransferNet

def default_window() -> tuple[float, float]:
    """(level, width) of the protocol's source style."""
    from ctxstyle.data import PROTOCOL, get_style

    style = get_style(PROTOCOL.source_style)
    return float(style.level), float(style.width)


class Stylizer:
    """A trained decoder ready for inference; reuses each style's features across contents."""

    def __init__(self, net: StyleTransferNet, config: dict | None = None, checkpoint: str | None = None,
                 history: list[dict] | None = None, *, fast: bool = False):
        if fast:  # opt-in: NNPACK inference on CPU (ctxstyle.fast.inference), the same outputs to ~1e-5
            from ctxstyle.fast.inference import accelerate

            net = accelerate(net)
        self.net = net.eval()
        self.config = config or {}
        self.checkpoint = checkpoint
        self.history = history  # per-step training losses and times, when loaded from a checkpoint
        self.stride = net.decoder.stride

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", *, fast: bool = False) -> Stylizer:
        from ctxstyle.train import load_checkpoint, net_from_checkpoint, resolve_device

        state = load_checkpoint(path)
        net, cfg = net_from_checkpoint(state, resolve_device(device), source=path)
        return cls(net, cfg.to_dict(), str(path), state["history"], fast=fast)

    @property
    def device(self) -> torch.device:
        return self.net.decoder.input_scale.device

    @property
    def weights_provenance(self) -> dict | None:
        return self.net.encoder.provenance

    def image_batch(self, images, name: str) -> Tensor:
        """``images`` ((H, W), (N, H, W) or (N, 1, H, W); tensor or array) as an (N, 1, H, W) batch on
        the decoder's device; an :class:`InputError` naming ``name`` when they are not gray images."""
        return as_image_batch(images, name).to(self.device)

    def pad_to_stride(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``images`` padded at the bottom and right to a multiple of the decoder's stride
        (reflected, or replicated when too small to reflect), and their original (H, W)."""
        h, w = images.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            images = F.pad(images, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        return images, (h, w)

    def style_features(self, styles: Tensor) -> list[Tensor]:
        """AdaIN-layer features of each style image (N, 1, H, W): a list of (1, C, h, w)."""
        feats = self.net.style_features(self.pad_to_stride(self.image_batch(styles, "style"))[0])
        return [f[None] for f in feats]

    def __call__(
        self,
        content: Tensor,
        styles: Tensor | None = None,
        *,
        style_feats: Sequence[Tensor] | None = None,
        weights: Sequence[float] | None = None,
        alpha: float = 1.0,
        batch_size: int = 8,
    ) -> Tensor:
        """Stylize content (N, 1, H, W) in [0, 1] with one or more styles (blended by ``weights``)."""
        content = self.image_batch(content, "content")
        if style_feats is None:
            if styles is None:
                raise InputError("styles", "give style images or precomputed style_feats")
            style_feats = self.style_features(styles)
        out = []
        for chunk in content.split(batch_size):
            padded, (h, w) = self.pad_to_stride(chunk)
            out.append(self.net.stylize(padded, style_feats, weights, alpha)[..., :h, :w])
        return torch.cat(out).cpu()


# --------------------------------------------------------------------------- file I/O
#
# ``stylize_files`` validates everything it can before any work (options, every input's kind and
# size, every output's kind and location, the checkpoint), never writes over an input or an
# existing file unless asked (``overwrite``), and writes each result through a temporary file
# renamed into place, so that an interrupted run leaves no half-written file.

#: What each input kind is written as (results keep their input's format).
OUTPUT_SUFFIXES = {"png": (".png",), "nifti": (".nii", ".nii.gz"), "dicom": (".dcm", ".dicom")}
KIND_NAMES = {"png": "PNG", "nifti": "NIfTI", "dicom": "DICOM", "jpeg": "JPEG", "tiff": "TIFF", "gzip": "gzip",
              "bmp": "BMP", "gif": "GIF"}
#: Pictures and volumes ctxstyle neither reads nor writes (skipped inside folders, refused as outputs).
OTHER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".npy", ".npz", ".mha", ".mhd",
                        ".nrrd", ".gz", ".zip")
#: Memory one image takes to stylize, per pixel: about four 64-channel float32 maps at full
#: resolution (the encoder's relu1_x, the decoder's last block, padded copies).
BYTES_PER_PIXEL = 4 * 64 * 4
#: Default memory budget of one stylization batch (``--max-memory``); 4 GiB is a 2048 x 2048 slice.
DEFAULT_MAX_MEMORY_GIB = 4.0


@dataclass
class FileImage:
    """One input file's pixels in [0, 1] plus what is needed to write a result like it."""

    path: Path
    kind: str  # "png" | "nifti" | "dicom"
    images: np.ndarray  # (N, H, W) float32 in [0, 1]
    context: object = None


@dataclass(frozen=True)
class InputFile:
    """An input found by :func:`collect_inputs`, checked from its header only (no pixels read)."""

    path: Path
    kind: str  # "png" | "nifti" | "dicom"
    rel: Path  # its path below the folder it was found in (its name when given directly)
    shape: tuple[int, int]  # (H, W) of its slices
    series: str | None = None  # DICOM SeriesInstanceUID
    study: str | None = None  # DICOM StudyInstanceUID
    in_folder: bool = False  # found in a folder (not named directly)


def _suffix_kind(path: Path) -> str | None:
    name = path.name.lower()
    for kind, suffixes in OUTPUT_SUFFIXES.items():
        if name.endswith(suffixes):
            return kind
    return "other" if name.endswith(OTHER_IMAGE_SUFFIXES) else None


def file_kind(path: str | Path) -> str:
    """``"png"``, ``"nifti"`` or ``"dicom"``: from the name, checked against the first bytes
    (a DICOM file may have any name without a picture suffix); InputError for anything else."""
    from ctxstyle.data.io import sniff_format

    path = Path(path)
    named, found = _suffix_kind(path), sniff_format(path)
    if named in OUTPUT_SUFFIXES:
        if found not in (None, named):
            raise InputError(path, f"named like a {KIND_NAMES[named]} file but holds {KIND_NAMES[found]} data")
        return named  # unknown content: the reader says what is wrong with it
    if found == "dicom" and named is None:
        return "dicom"
    if found in OUTPUT_SUFFIXES:
        raise InputError(path, f"holds {KIND_NAMES[found]} data, but its name does not end in "
                               f"{' or '.join(OUTPUT_SUFFIXES[found])}; rename it (its result gets the same name)")
    held = f" (it holds {KIND_NAMES[found]} data)" if found else ""
    raise InputError(path, f"not a PNG, NIfTI or DICOM file{held}; ctxstyle reads PNG (.png), NIfTI "
                           "(.nii, .nii.gz) and DICOM")


def _axial_axis(affine: np.ndarray) -> int:
    import nibabel as nib

    codes = nib.aff2axcodes(affine)
    return next(i for i, c in enumerate(codes) if c in ("S", "I"))


def _probe(path: Path, rel: Path, in_folder: bool) -> InputFile | None:
    """An :class:`InputFile` from the header of ``path``; None for a file inside a folder that
    is no CT image (DICOMDIR, text, JPEG thumbnails, DICOM reports or other modalities)."""
    from ctxstyle.data.io import read_dicom_header, sniff_format

    if in_folder and (path.name.upper() == "DICOMDIR"
                      or (_suffix_kind(path) in (None, "other") and sniff_format(path) != "dicom")):
        return None
    kind = file_kind(path)
    if kind == "png":
        from PIL import Image

        try:
            with Image.open(path) as im:
                w, h = im.size
        except Exception as exc:
            raise InputError(path, f"not a readable picture ({type(exc).__name__}: {exc})") from exc
        return InputFile(path, kind, rel, (h, w), in_folder=in_folder)
    if kind == "nifti":
        import nibabel as nib

        try:
            img = nib.load(str(path))
            dims = (list(img.shape[:3]) + [1, 1])[:3]
            axis = _axial_axis(img.affine)
        except Exception as exc:
            raise InputError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
        h, w = (d for i, d in enumerate(dims) if i != axis)
        return InputFile(path, kind, rel, (h, w), in_folder=in_folder)
    ds = read_dicom_header(path)
    modality = str(ds.get("Modality", "")).upper()
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if in_folder and (modality not in ("", "CT") or not rows or int(ds.get("SamplesPerPixel", 1) or 1) != 1):
        return None  # a report, a presentation state, a colour screen capture, another modality
    if not rows or not cols:
        raise InputError(path, f"DICOM file holds no image (modality {modality or '?'}, no Rows/Columns)")
    series, study = (str(ds.get(tag, "")) or None for tag in ("SeriesInstanceUID", "StudyInstanceUID"))
    return InputFile(path, kind, rel, (rows, cols), series, study, in_folder)


def collect_inputs(paths: Sequence[str | Path], what: str = "inputs") -> tuple[list[InputFile], list[Path]]:
    """The image files of ``paths`` (files, or folders searched recursively) and the folders.

    A file named directly must be a PNG, NIfTI or DICOM image. In a folder (say a PACS export),
    hidden files and folders are left out; DICOMDIR, files that are neither (text, JPEG thumbnails)
    and DICOM objects that are no CT image (reports, other modalities) are skipped with one warning
    (NIfTI files whose values are no CT, such as label maps, when they are read: :func:`read_ct_files`).
    """
    files: list[InputFile] = []
    folders: list[Path] = []
    skipped: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            folders.append(p)
            before = len(files)
            for q in sorted(p.rglob("*")):
                rel = q.relative_to(p)
                if q.is_file() and not any(part.startswith(".") for part in rel.parts):
                    found = _probe(q, rel, in_folder=True)
                    if found is None:
                        skipped.append(q)
                    else:
                        files.append(found)
            if len(files) == before:
                raise InputError(p, "folder holds no PNG, NIfTI or DICOM CT image")
        elif p.is_file():
            files.append(_probe(p, Path(p.name), in_folder=False))
        else:
            raise InputError(p, "file or folder not found")
    if skipped:
        warnings.warn(f"{what}: skipped {len(skipped)} file(s) that are no PNG, NIfTI or DICOM CT image, "
                      f"e.g. {skipped[0]}", stacklevel=2)
    return files, folders


def check_window(window: Sequence[float], option: str = "--window") -> tuple[float, float]:
    """(level, width) as floats: both finite, width > 0."""
    if len(window) != 2:
        raise InputError(option, f"needs LEVEL and WIDTH, got {list(window)}")
    level, width = (float(v) for v in window)
    if not (math.isfinite(level) and math.isfinite(width) and width > 0):
        raise InputError(option, f"needs a finite LEVEL and a WIDTH > 0, got {level:g} {width:g}")
    return level, width


def check_style_weights(weights: Sequence[float] | None, n_styles: int) -> list[float] | None:
    """One finite, non-negative weight per style image, not all zero (or None: equal weights)."""
    if weights is None:
        return None
    weights = [float(w) for w in weights]
    if len(weights) != n_styles:
        raise InputError("--style-weights", f"{len(weights)} weight(s) for {n_styles} style image(s)")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise InputError("--style-weights", f"must be finite, >= 0 and not all zero, got {weights}")
    return weights


def check_writable(path: str | Path) -> None:
    """InputError unless a file or folder ``path`` can be created: its nearest existing parent
    must be a folder this process may write in."""
    path = Path(path).absolute()
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(parent, f"is a file, so {path} cannot be created below it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(parent, f"is not writable, so {path} cannot be written")


def plan_outputs(files: Sequence[InputFile], output: str | Path, single: bool) -> list[Path]:
    """Where each input's result goes. ``single`` (one input file named directly): ``output`` is
    that file, or a folder when it is one or has no suffix. Otherwise ``output`` is a folder and
    each result keeps its input's path below the folder it was found in."""
    as_folder = str(output).endswith(("/", os.sep))  # "out.v2/" names a folder
    output = Path(output)
    if single and not as_folder and not output.is_dir() and output.suffix:
        (f,) = files
        if not output.name.lower().endswith(OUTPUT_SUFFIXES[f.kind]):
            raise InputError(output, f"a {KIND_NAMES[f.kind]} input is written as {KIND_NAMES[f.kind]} "
                                     f"({' or '.join(OUTPUT_SUFFIXES[f.kind])}); ctxstyle converts no format into "
                                     "another (PNG -> .png, NIfTI -> .nii/.nii.gz, DICOM -> .dcm or a folder)")
        return [output]
    if output.exists() and not output.is_dir():
        raise InputError(output, "is a file; the results need an output folder")
    if not output.exists() and not as_folder and _suffix_kind(output) is not None:
        raise InputError(output, "names a file; the results of a folder need an output folder")
    targets = [output / f.rel for f in files]
    seen: dict[Path, Path] = {}
    for f, target in zip(files, targets):
        if target in seen:
            raise InputError(target, f"two inputs would be written here: {seen[target]} and {f.path}")
        seen[target] = f.path
    return targets


def _file_id(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def check_outputs(targets: Sequence[Path], sources: Sequence[Path], protected: Sequence[Path],
                  folders: Sequence[Path], overwrite: bool = False) -> None:
    """Refuse, before any work, a target that is an input (``protected``: every file the run
    reads; with ``overwrite`` only its own ``source`` may be replaced), lies inside an input
    folder or exists (both allowed with ``overwrite``), is a folder, or cannot be written."""
    inputs = {_file_id(p): p for p in protected if p.exists()}
    roots = [d.resolve() for d in folders]
    hint = "choose another output, or pass --overwrite to replace it"
    for target, source in zip(targets, sources):
        if target.is_dir():
            raise InputError(target, "is a folder; cannot write a result over it")
        if target.exists():
            hit = inputs.get(_file_id(target))
            if hit is not None and not (overwrite and hit == source):
                raise InputError(target, f"is the input {hit}; it would be overwritten: "
                                         + (hint if hit == source else "choose another output"))
            if not overwrite:
                raise InputError(target, f"exists; {hint}")
        inside = next((d for d in roots if d in target.resolve().parents), None)
        if inside is not None and not overwrite:
            raise InputError(target, f"lies inside the input folder {inside}; choose an output outside it "
                                     "(or pass --overwrite)")
        check_writable(target)


def check_sizes(files: Sequence[InputFile], stride: int, max_memory_gib: float) -> int:
    """Refuse images too small for the decoder's layer (fewer than 2 feature positions along a
    side: its reflection padding needs 2) or too large for the memory budget; returns how many
    slices of the largest fit one batch (<= 8)."""
    budget = max_memory_gib * 2**30
    largest = 1
    for f in files:
        h, w = f.shape
        if min(math.ceil(h / stride), math.ceil(w / stride)) < 2:
            raise InputError(f.path, f"{h}x{w} pixels is too small: the decoder's layer (stride {stride}) needs "
                                     f"more than {stride} pixels along each side")
        need = h * w * BYTES_PER_PIXEL
        if need > budget:
            raise InputError(f.path, f"{h}x{w} pixels need about {need / 2**30:.1f} GiB to stylize, more than the "
                                     f"memory budget of {max_memory_gib:g} GiB (--max-memory); crop or "
                                     "downsample it")
        largest = max(largest, h * w)
    return int(max(1, min(8, budget // (largest * BYTES_PER_PIXEL))))


def _window_to_unit(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    from ctxstyle.data import window as apply_window

    return apply_window(hu, *window)


def _unit_to_hu(images: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    level, width = window
    return level - width / 2.0 + images.astype(np.float64) * width


def read_ct_files(files: Sequence[InputFile], window: tuple[float, float], what: str = "inputs"
                  ) -> tuple[list[InputFile], list[int]]:
    """The files whose pixels decode to plausible values, and their slice counts (each file read
    once). A NIfTI found in a folder whose values are no CT in HU (a label map or mask beside its
    CT) is left out with one warning, as other non-CT files in folders are; any other problem, or
    such a file named directly, is an InputError naming it."""
    kept, counts, left_out = [], [], []
    for f in files:
        try:
            counts.append(len(read_image_file(f.path, window, f.kind).images))
        except NotCTError:
            if not (f.in_folder and f.kind == "nifti"):
                raise
            left_out.append(f.path)
            continue
        kept.append(f)
    if left_out:
        warnings.warn(f"{what}: skipped {len(left_out)} NIfTI file(s) whose values are no CT in HU (label maps?), "
                      f"e.g. {left_out[0]}", stacklevel=2)
    if files and not kept:
        raise InputError(files[0].path.parent, f"{what}: no CT image among {len(files)} file(s); "
                                               f"e.g. {left_out[0]} is no CT in HU")
    return kept, counts


def read_image_file(path: str | Path, window: tuple[float, float], kind: str | None = None) -> FileImage:
    """Read a PNG (already [0, 1]), a NIfTI volume (all axial slices) or a DICOM slice."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    kind = kind or file_kind(path)
    if kind == "png":
        from ctxstyle.data import read_png

        return FileImage(path, kind, read_png(path)[None])
    if kind == "nifti":
        from ctxstyle.data.io import read_nifti_hu  # validates: readable, 3-D, finite, plausible HU

        hu, img = read_nifti_hu(path)
        axis = _axial_axis(img.affine)
        return FileImage(path, kind, _window_to_unit(np.moveaxis(hu, axis, 0), window), (img, axis))
    from ctxstyle.data.io import dicom_read_hu  # validates modality, pixel data, decoding, rescale tags

    ds, hu = dicom_read_hu(path)
    if "PixelData" not in ds:  # FloatPixelData: no stored integers to write the result back as
        raise InputError(path, "float pixel data is not supported (results are written as integer pixel data)")
    return FileImage(path, kind, _window_to_unit(hu, window)[None], ds)


def write_like(source: FileImage, images: np.ndarray, out: Path, window: tuple[float, float],
               series_uid: str | None = None, description: str = "ctxstyle stylized", *,
               study_uid: str | None = None, overwrite: bool = False) -> Path:
    """Write stylized images (N, H, W) in [0, 1] in the source file's format, atomically (an
    existing ``out`` only with ``overwrite``). DICOM: new SOPInstanceUID, ``series_uid`` (new
    if None) and, when given, ``study_uid``; position, orientation and instance number kept."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(out, "exists; pass overwrite=True (--overwrite) to replace it")
    if source.kind == "png":
        from PIL import Image

        pixels = Image.fromarray(np.round(images[0] * 65535).astype(np.uint16))
        return atomic_write(out, lambda tmp: pixels.save(tmp, format="PNG"), overwrite=overwrite)
    hu = _unit_to_hu(images, window)
    if source.kind == "nifti":
        import nibabel as nib

        img, axis = source.context
        data = np.moveaxis(hu, 0, axis).astype(np.float32)
        header = img.header.copy()
        header.set_data_dtype(np.float32)
        header["descrip"] = description[:79].encode()
        header["cal_min"], header["cal_max"] = window[0] - window[1] / 2, window[0] + window[1] / 2  # display it as made
        result = nib.Nifti1Image(data, img.affine, header)
        return atomic_write(out, lambda tmp: nib.save(result, str(tmp)), overwrite=overwrite)
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from ctxstyle.data.io import dicom_rescale

    ds = source.context
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    slope, intercept = dicom_rescale(ds, source.path)
    if slope is None:  # read as 1 (plausible HU): say so in the result
        slope = 1.0
        ds.RescaleSlope = "1"
    if intercept is None:
        intercept = 0.0
        ds.RescaleIntercept = "0"
    dtype = ds.pixel_array.dtype
    bits = int(ds.get("BitsStored", np.iinfo(dtype).bits) or np.iinfo(dtype).bits)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if np.iinfo(dtype).min < 0 else (0, 2**bits - 1)
    stored = np.clip(np.round((hu[0] - intercept) / slope), lo, hi).astype(dtype.newbyteorder("<"))
    ds.PixelData = stored.tobytes()
    for tag in ("SmallestImagePixelValue", "LargestImagePixelValue",  # the input's, no longer true
                "VOILUTSequence", "VOILUTFunction", "WindowCenterWidthExplanation"):
        if tag in ds:
            delattr(ds, tag)
    ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"  # a viewer shows the gray scale made
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = series_uid or generate_uid()
    if study_uid:
        ds.StudyInstanceUID = study_uid
    ds.SeriesDescription = (str(ds.get("SeriesDescription", "")) + " " + description).strip()[:64]
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = f"{description}; HU = inverse of window L{window[0]:g}/W{window[1]:g}"[:1024]
    return atomic_write(out, lambda tmp: ds.save_as(str(tmp), enforce_file_format=True), overwrite=overwrite)


def stylize_files(
    contents: Sequence[str | Path],
    styles: Sequence[str | Path],
    output: str | Path,
    checkpoint: str | Path,
    *,
    alpha: float = 1.0,
    style_weights: Sequence[float] | None = None,
    window: tuple[float, float] | None = None,
    style_window: tuple[float, float] | None = None,
    overwrite: bool = False,
    new_study: bool = False,
    max_memory_gib: float | None = None,
    fast: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Stylize files or folders of files; returns the written paths.

    A single content file is written to ``output`` when ``output`` has its format's suffix
    (``.png``, ``.nii``/``.nii.gz``, ``.dcm``); otherwise ``output`` is a folder and each result
    keeps its input's path below the content folder. Style files may be PNG, NIfTI (its middle
    axial slice) or DICOM; every style image is one style, blended by ``style_weights``.

    Everything is checked before any work (see :func:`check_outputs`, :func:`check_sizes`). An
    input is never written over, nor an existing file, unless ``overwrite``. Each input DICOM
    series gets one new SeriesInstanceUID (and each study a new StudyInstanceUID with
    ``new_study``); positions and instance numbers are kept.

    A volume is stylized in batches that fit ``max_memory_gib`` into one preallocated output, so
    that memory stays at the input, the output and one batch. With ``progress`` a bar counts the
    slices (on stderr, when it is a terminal) and a last line gives the time per file and per slice.
    """
    import time

    from tqdm.auto import tqdm

    window = check_window(window, "--window") if window is not None else default_window()
    style_window = check_window(style_window, "--style-window") if style_window is not None else window
    if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise InputError("--alpha", f"must be in [0, 1], got {alpha}")
    max_memory_gib = DEFAULT_MAX_MEMORY_GIB if max_memory_gib is None else float(max_memory_gib)
    if not (math.isfinite(max_memory_gib) and max_memory_gib > 0):
        raise InputError("--max-memory", f"must be > 0 GiB, got {max_memory_gib}")
    style_files, style_folders = collect_inputs(styles, "styles")
    files, folders = collect_inputs(contents, "contents")
    single = len(contents) == 1 and not folders
    targets = plan_outputs(files, output, single)
    protected = [f.path for f in files + style_files] + [Path(checkpoint)]
    check_outputs(targets, [f.path for f in files], protected, folders + style_folders, overwrite)

    stylizer = Stylizer.from_checkpoint(checkpoint, fast=fast)
    batch_size = check_sizes(style_files + files, stylizer.stride, max_memory_gib)
    # every input decodes to plausible values (a small cost next to stylizing it); label maps in folders are left out
    style_files, _ = read_ct_files(style_files, style_window, "styles")
    kept, n_slices = read_ct_files(files, window, "contents")
    kept_paths = {f.path for f in kept}
    targets = [t for f, t in zip(files, targets) if f.path in kept_paths]
    files = kept
    weights = check_style_weights(style_weights, len(style_files))  # one per style image kept

    feats = []
    for f in style_files:
        img = read_image_file(f.path, style_window, f.kind).images
        feats.append(stylizer.style_features(torch.from_numpy(img[len(img) // 2])[None, None])[0])
    t0 = time.perf_counter()
    # The bar only on a terminal (in a log it is noise, and an error must stay one line).
    bar = tqdm(total=sum(n_slices), unit="slice", desc="stylize", disable=not (progress and sys.stderr.isatty()))
    try:
        written = _stylize_each(files, targets, stylizer, feats, weights, alpha, batch_size, window, overwrite,
                                new_study, bar)
    except BaseException:
        bar.leave = False  # an error is one line: the bar is erased, not left above it
        bar.close()
        raise
    bar.close()
    if progress:
        seconds, total = time.perf_counter() - t0, sum(n_slices)
        tqdm.write(f"stylized {len(files)} file(s), {total} slice(s) in {seconds:.1f} s "
                   f"({seconds / max(total, 1):.3f} s per slice, batches of {batch_size})", file=sys.stderr)
    return written


def _stylize_each(files, targets, stylizer, feats, weights, alpha, batch_size, window, overwrite, new_study,
                  bar) -> list[Path]:
    """Stylize and write every checked input (the loop of :func:`stylize_files`)."""
    from pydicom.uid import generate_uid

    new_uids: dict[tuple[str, str], str] = {}
    written = []
    for f, target in zip(files, targets):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said in the check above
            src = read_image_file(f.path, window, f.kind)
        result = np.empty_like(src.images)
        for start in range(0, len(src.images), batch_size):
            chunk = torch.from_numpy(src.images[start : start + batch_size, None])
            result[start : start + len(chunk)] = stylizer(chunk, style_feats=feats, weights=weights, alpha=alpha,
                                                          batch_size=batch_size)[:, 0].numpy()
            bar.update(len(chunk))
        if not np.isfinite(result).all():  # never written as black pixels or air
            raise InputError(stylizer.checkpoint, f"gave NaN or infinite values for {f.path}; nothing was written for it")
        uids = {}
        if f.kind == "dicom":
            uids["series_uid"] = new_uids.setdefault(("series", f.series or str(f.path.parent)), generate_uid())
            if new_study:
                uids["study_uid"] = new_uids.setdefault(("study", f.study or ""), generate_uid())
        written.append(write_like(src, result, target, window, overwrite=overwrite, **uids))
    return written
