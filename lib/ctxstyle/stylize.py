"""Inference: stylize tensors, and PNG / NIfTI / DICOM files, with a trained decoder.

Files in HU (NIfTI, DICOM) are mapped to [0, 1] with a display window (default: the protocol's
source window, the gray scale the decoder's content images had), stylized, and mapped back to HU
through the inverse of the same window, so that a viewer showing the output with that window
shows the stylized gray scale. DICOM in gives DICOM out: the original header is kept (new
SOP/Series UIDs, a derived-image description) and the stored values use the original
RescaleSlope/Intercept. NIfTI in gives NIfTI out with the original affine and header, every
slice along the axial (inferior-superior) axis stylized.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError
from .images import as_image_batch
from .model import StyleTransferNet

PNG_SUFFIXES = (".png",)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", "")


def default_window() -> tuple[float, float]:
    """(level, width) of the protocol's source style."""
    from .data import PROTOCOL, get_style

    style = get_style(PROTOCOL.source_style)
    return float(style.level), float(style.width)


class Stylizer:
    """A trained decoder ready for inference; reuses each style's features across contents."""

    def __init__(self, net: StyleTransferNet, config: dict | None = None, checkpoint: str | None = None,
                 history: list[dict] | None = None):
        self.net = net.eval()
        self.config = config or {}
        self.checkpoint = checkpoint
        self.history = history  # per-step training losses and times, when loaded from a checkpoint
        self.stride = net.decoder.stride

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> Stylizer:
        from .train import load_checkpoint, net_from_checkpoint, resolve_device

        state = load_checkpoint(path)
        net, cfg = net_from_checkpoint(state, resolve_device(device))
        return cls(net, cfg.to_dict(), str(path), state["history"])

    @property
    def device(self) -> torch.device:
        return self.net.decoder.input_scale.device

    @property
    def weights_provenance(self) -> dict | None:
        return self.net.encoder.provenance

    def _check(self, images: Tensor, name: str) -> Tensor:
        return as_image_batch(images, name).to(self.device)

    def _pad(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        h, w = images.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            images = F.pad(images, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        return images, (h, w)

    def style_features(self, styles: Tensor) -> list[Tensor]:
        """AdaIN-layer features of each style image (N, 1, H, W): a list of (1, C, h, w)."""
        feats = self.net.style_features(self._pad(self._check(styles, "style"))[0])
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
        content = self._check(content, "content")
        if style_feats is None:
            if styles is None:
                raise InputError("styles", "give style images or precomputed style_feats")
            style_feats = self.style_features(styles)
        out = []
        for chunk in content.split(batch_size):
            padded, (h, w) = self._pad(chunk)
            out.append(self.net.stylize(padded, style_feats, weights, alpha)[..., :h, :w])
        return torch.cat(out).cpu()


# --------------------------------------------------------------------------- file I/O


@dataclass
class FileImage:
    """One input file's pixels in [0, 1] plus what is needed to write a result like it."""

    path: Path
    kind: str  # "png" | "nifti" | "dicom"
    images: np.ndarray  # (N, H, W) float32 in [0, 1]
    context: object = None


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(PNG_SUFFIXES):
        return "png"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    return "dicom"


def _window_to_unit(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    from .data import window as apply_window

    return apply_window(hu, *window)


def _unit_to_hu(images: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    level, width = window
    return level - width / 2.0 + images.astype(np.float64) * width


def _axial_axis(affine: np.ndarray) -> int:
    import nibabel as nib

    codes = nib.aff2axcodes(affine)
    return next(i for i, c in enumerate(codes) if c in ("S", "I"))


def read_image_file(path: str | Path, window: tuple[float, float]) -> FileImage:
    """Read a PNG (already [0, 1]), a NIfTI volume (all axial slices) or a DICOM slice."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    kind = _kind(path)
    if kind == "png":
        from .data import read_png

        return FileImage(path, kind, read_png(path)[None])
    if kind == "nifti":
        from .data.io import read_nifti_hu  # validates: readable, 3-D, finite, plausible HU

        hu, img = read_nifti_hu(path)
        axis = _axial_axis(img.affine)
        return FileImage(path, kind, _window_to_unit(np.moveaxis(hu, axis, 0), window), (img, axis))
    from .data.io import dicom_read_hu  # validates modality, pixel data, decoding

    ds, hu = dicom_read_hu(path)
    return FileImage(path, kind, _window_to_unit(hu, window)[None], ds)


def write_like(source: FileImage, images: np.ndarray, out: Path, window: tuple[float, float],
               series_uid: str | None = None, description: str = "ctxstyle stylized") -> Path:
    """Write stylized images (N, H, W) in [0, 1] in the source file's format."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if source.kind == "png":
        from PIL import Image

        Image.fromarray(np.round(images[0] * 65535).astype(np.uint16)).save(out)
        return out
    hu = _unit_to_hu(images, window)
    if source.kind == "nifti":
        import nibabel as nib

        img, axis = source.context
        data = np.moveaxis(hu, 0, axis).astype(np.float32)
        header = img.header.copy()
        header.set_data_dtype(np.float32)
        header["descrip"] = description[:79].encode()
        nib.save(nib.Nifti1Image(data, img.affine, header), str(out))
        return out
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = source.context
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    dtype = ds.pixel_array.dtype
    info = np.iinfo(dtype)
    stored = np.clip(np.round((hu[0] - intercept) / slope), info.min, info.max).astype(dtype)
    ds.PixelData = stored.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesDescription = (str(ds.get("SeriesDescription", "")) + " " + description).strip()[:64]
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = f"{description}; HU = inverse of window L{window[0]:g}/W{window[1]:g}"[:1024]
    ds.save_as(str(out), enforce_file_format=True)
    return out


def _expand(paths: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))
            if not inside:
                raise InputError(p, "folder holds no files")
            files.extend(inside)
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(p, "file or folder not found")
    return files


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
) -> list[Path]:
    """Stylize files or folders of files; returns the written paths.

    A single content file may be written to ``output`` directly when ``output`` has a suffix;
    otherwise ``output`` is a folder and each result keeps its input's name. Style files may be
    PNG, NIfTI (its middle axial slice) or DICOM; every style image is one style, blended by
    ``style_weights``.
    """
    window = window or default_window()
    style_window = style_window or window
    stylizer = Stylizer.from_checkpoint(checkpoint)
    style_images = []
    for path in _expand(styles):
        img = read_image_file(path, style_window).images
        style_images.append(torch.from_numpy(img[len(img) // 2])[None, None])
    feats = [stylizer.style_features(s)[0] for s in style_images]
    files = _expand(contents)
    output = Path(output)
    single_file = len(files) == 1 and output.suffix != "" and not output.is_dir()
    series_uid = None
    written = []
    for path in files:
        src = read_image_file(path, window)
        result = stylizer(torch.from_numpy(src.images), style_feats=feats, weights=style_weights, alpha=alpha)
        target = output if single_file else output / path.name
        if src.kind == "dicom" and series_uid is None:
            from pydicom.uid import generate_uid

            series_uid = generate_uid()
        written.append(write_like(src, result[:, 0].numpy(), target, window, series_uid))
    return written
