"""CT readers: NIfTI, DICOM (single files and series, JPEG 2000 included) and PNG slices.

Every volume is returned in one canonical frame, **RAS+ voxel order**: array axis 0 runs to the
patient's Right, axis 1 to Anterior, axis 2 to Superior (nibabel's ``as_closest_canonical``
convention: axes are only permuted and flipped, never interpolated). ``spacing`` is in mm along
the array axes. Label maps are put on the CT's voxel grid by each file's *own* axis codes; the
affine's origin is never used to align CT and mask (VerSe crops kept a stale origin), so the
pair must have equal shapes after reorientation.

Label maps are converted to VerSe numbering (1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum/S1,
28 T13); the binary spine mask is the pre-sacral vertebrae (VerSe 1-25 and 28).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctxstyle.errors import InputError, NotCTError

__all__ = [
    "VERTEBRA_LABELS",
    "CTVolume",
    "LabelVolume",
    "canonicalize",
    "check_alignment",
    "load_ct",
    "load_dicom_file",
    "load_dicom_series",
    "load_labels",
    "load_nifti_ct",
    "dicom_read_hu",
    "dicom_rescale",
    "hu_problem",
    "read_dicom_header",
    "read_nifti_hu",
    "read_png",
    "sniff_format",
    "spine_mask",
    "to_verse_labels",
]

#: VerSe vertebra labels counted in the binary spine mask (C1-L6 and T13; sacrum 26 excluded
#: because the VerSe training labels never contain it).
VERTEBRA_LABELS = tuple(range(1, 26)) + (28,)

_VERSE_NAMES = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{7 + i: f"T{i}" for i in range(1, 13)},
    **{19 + i: f"L{i}" for i in range(1, 7)},
    26: "S1",
    27: "Cocc",
    28: "T13",
}

_CANONICAL = "RAS"


@dataclass
class CTVolume:
    """A CT volume in HU on the canonical RAS voxel grid."""

    hu: np.ndarray  # float32 (X, Y, Z)
    spacing: tuple[float, float, float]  # mm along array axes
    affine: np.ndarray  # 4x4 voxel -> RAS mm (origin unreliable for cropped VerSe cases)
    source: Path
    orientation: str = _CANONICAL  # axis codes of the file as stored (e.g. "PIR", "LPS")
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)


@dataclass
class LabelVolume:
    """A vertebra label map (VerSe numbering) on the canonical RAS voxel grid."""

    labels: np.ndarray  # int16 (X, Y, Z)
    spacing: tuple[float, float, float]
    affine: np.ndarray
    source: Path
    orientation: str = _CANONICAL
    scheme: str = "verse"  # numbering of the file as stored; ``labels`` is always VerSe
    label_source: str = "manual"  # "manual" or "model (TotalSegmentator)"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.labels.shape)

    @property
    def mask(self) -> np.ndarray:
        """Binary spine mask (uint8): any pre-sacral vertebra."""
        return spine_mask(self.labels)

    def vertebrae(self) -> list[str]:
        """Names of the vertebrae present, cranial to caudal."""
        present = [int(v) for v in np.unique(self.labels) if v > 0]
        order = sorted(present, key=lambda v: (v if v != 28 else 19.5))
        return [_VERSE_NAMES.get(v, str(v)) for v in order]


def spine_mask(labels: np.ndarray) -> np.ndarray:
    """uint8 mask of pre-sacral vertebra voxels in a VerSe-numbered label array."""
    return np.isin(labels, VERTEBRA_LABELS).astype(np.uint8)


def to_verse_labels(labels: np.ndarray, scheme: str) -> np.ndarray:
    """Convert a label array to VerSe numbering; non-vertebra labels become 0.

    ``scheme``: ``"verse"`` (kept; values outside 1-28 dropped) or ``"totalseg"``
    (TotalSegmentator v2 ``total`` task: 26 = S1, 27-31 = L5-L1, 32-43 = T12-T1, 44-50 = C7-C1;
    sacrum 25 and organs are dropped).
    """
    lab = np.asarray(labels)
    if scheme == "verse":
        out = np.where((lab >= 1) & (lab <= 28), lab, 0)
    elif scheme == "totalseg":
        out = np.zeros(lab.shape, dtype=np.int16)
        vert = (lab >= 27) & (lab <= 50)
        out[vert] = 51 - lab[vert]
        out[lab == 26] = 26
    else:
        raise InputError(None, f"unknown label scheme {scheme!r} (use 'verse' or 'totalseg')")
    return out.astype(np.int16)


# --------------------------------------------------------------------------- orientation


def canonicalize(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Permute/flip ``data`` to RAS voxel order; return (data, new affine, original axis codes)."""
    from nibabel import orientations as nio

    ornt = nio.io_orientation(affine)
    codes = "".join(nio.ornt2axcodes(ornt))
    transform = nio.ornt_transform(ornt, nio.axcodes2ornt(tuple(_CANONICAL)))
    out = nio.apply_orientation(data, transform)
    new_affine = affine @ nio.inv_ornt_aff(transform, data.shape)
    return np.ascontiguousarray(out), new_affine, codes


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))


# --------------------------------------------------------------------------- NIfTI


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, object]:
    """Raw (scaled) 3-D data, affine and the nibabel image; InputError on unreadable/truncated files."""
    import nibabel as nib

    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # ImageFileError, gzip/zlib errors, struct errors
        raise InputError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # EOFError / zlib.error / mmap errors for truncated files
        raise InputError(
            path, f"truncated or corrupt NIfTI voxel data ({type(exc).__name__}: {exc})"
        ) from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3-D volume, got shape {data.shape}")
    if 0 in data.shape:
        raise InputError(path, f"empty volume, shape {data.shape}")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)
            or data.dtype == np.bool_):
        raise InputError(path, f"holds {data.dtype} voxels (complex or structured), not CT intensities")
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(path, "invalid (singular or non-finite) affine in header")
    return data, np.asarray(affine, dtype=np.float64), img


def _check_finite(path, arr: np.ndarray) -> None:
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise InputError(path, f"{bad} NaN/inf voxels")


#: CT in HU spans at least this much (air -1000, soft tissue 0..100, bone > 300); less is a
#: normalised picture or a rescaled copy, not HU.
MIN_HU_SPAN = 100.0


def hu_problem(hu: np.ndarray) -> str | None:
    """Why ``hu`` cannot be CT in HU (MR, 0..1 or 0..255 pictures, raw unsigned stored values,
    rescaled copies), or None when its range is plausible."""
    lo, hi = float(hu.min()), float(hu.max())
    if hi <= 1.0 and lo >= 0.0:
        return f"values in [{lo:g}, {hi:g}]: a normalised image, not CT in HU"
    if lo >= 0.0:
        return (f"no negative values (range {lo:g}..{hi:g}): not CT in HU (MR, or stored values "
                "without RescaleSlope/Intercept?)")
    if hi - lo < MIN_HU_SPAN:
        return (f"values span only {lo:g}..{hi:g}: a normalised or rescaled image, not CT in HU "
                "(air -1000, bone above 300)")
    return None


def _check_hu(path, hu: np.ndarray) -> None:
    """Reject data that is not HU-calibrated CT (see :func:`hu_problem`)."""
    problem = hu_problem(hu)
    if problem:
        raise NotCTError(path, f"{problem} (from Python, check_hu=False reads it anyway)")


def read_nifti_hu(path: str | Path, *, check_hu: bool = True) -> tuple[np.ndarray, object]:
    """Validated HU voxels of a NIfTI CT as stored (3-D float32, no reorientation) and the
    nibabel image (affine, header), e.g. to write a result back in the same orientation."""
    path = Path(path)
    data, _, img = _read_nifti(path)
    hu = np.asarray(data, dtype=np.float32)
    _check_finite(path, hu)
    if check_hu:
        _check_hu(path, hu)
    return hu, img


def load_nifti_ct(path: str | Path, *, check_hu: bool = True) -> CTVolume:
    """Read a NIfTI CT (HU) and reorient it to RAS."""
    path = Path(path)
    hu, img = read_nifti_hu(path, check_hu=check_hu)
    hu, affine, codes = canonicalize(hu, np.asarray(img.affine, dtype=np.float64))
    return CTVolume(hu, _spacing(affine), affine, path, codes, {"format": "nifti"})


# --------------------------------------------------------------------------- DICOM


def _dcmread(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(str(path))
    except Exception as exc:
        raise InputError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc


def _dicom_pixels_hu(ds, path: Path, *, check_modality: bool = True) -> np.ndarray:
    """Decoded pixels of one DICOM slice as float32 HU (rows, cols)."""
    modality = str(ds.get("Modality", "")).upper()
    if check_modality:
        if not modality:
            warnings.warn(f"{path}: no Modality tag; assuming CT", stacklevel=3)
        elif modality != "CT":
            raise InputError(path, f"modality is {modality!r}, not CT")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InputError(path, "DICOM file has no pixel data")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError(path, "multi-frame (enhanced) DICOM is not supported; export single slices")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        first = str(exc).splitlines()[0] if str(exc) else ""
        try:
            compressed = tsuid is not None and tsuid.is_compressed
        except ValueError:  # not a transfer syntax pydicom knows
            compressed = True
        if compressed:
            hint = "; JPEG 2000 needs pylibjpeg + pylibjpeg-openjpeg" if "JPEG 2000" in tsuid.name else ""
            problem = f"cannot decode the {tsuid.name} pixel data{hint} ({type(exc).__name__}: {first})"
        else:
            problem = f"pixel data truncated or corrupt ({type(exc).__name__}: {first})"
        raise InputError(path, problem) from exc
    if pixels.ndim != 2:
        raise InputError(path, f"expected a 2-D grayscale slice, got pixel array {pixels.shape}")
    slope, intercept = dicom_rescale(ds, path)
    hu = pixels.astype(np.float32) * np.float32(1.0 if slope is None else slope)
    hu += np.float32(0.0 if intercept is None else intercept)
    _check_finite(path, hu)
    missing = [tag for tag, v in (("RescaleSlope", slope), ("RescaleIntercept", intercept)) if v is None]
    if missing and modality in ("CT", ""):
        problem = hu_problem(hu)
        if problem:
            raise InputError(path, f"missing {' and '.join(missing)}, and the values read without "
                                   f"{'them' if len(missing) > 1 else 'it'} are not plausible HU: {problem}")
    return hu


def dicom_rescale(ds, path: Path) -> tuple[float | None, float | None]:
    """(RescaleSlope, RescaleIntercept) of a DICOM slice, None for a missing tag (1 and 0 are
    then assumed, and the values must be plausible HU); InputError for an unreadable, zero or
    non-finite one."""
    values = []
    for tag in ("RescaleSlope", "RescaleIntercept"):
        raw = ds.get(tag)
        if raw is None or str(raw).strip() == "":
            values.append(None)
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise InputError(path, f"unreadable {tag} {raw!r}") from None
        if not np.isfinite(value) or (tag == "RescaleSlope" and value == 0):
            raise InputError(path, f"invalid {tag} {value:g}")
        values.append(value)
    return values[0], values[1]


def _dicom_geometry(ds, path: Path):
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        warnings.warn(f"{path}: no ImageOrientationPatient; assuming axial", stacklevel=3)
        iop = [1, 0, 0, 0, 1, 0]
    iop = np.asarray([float(v) for v in iop])
    ipp = ds.get("ImagePositionPatient")
    ipp = np.asarray([float(v) for v in ipp]) if ipp is not None else np.zeros(3)
    ps = ds.get("PixelSpacing")
    if ps is None:
        warnings.warn(f"{path}: no PixelSpacing; assuming 1 mm", stacklevel=3)
        ps = [1.0, 1.0]
    row_sp, col_sp = (float(v) for v in ps)
    return iop[:3], iop[3:], ipp, row_sp, col_sp


def _dicom_meta(ds) -> dict:
    keys = ("Modality", "Manufacturer", "ManufacturerModelName", "ConvolutionKernel", "KVP",
            "SliceThickness", "SeriesInstanceUID", "SeriesDescription")
    meta = {"format": "dicom"}
    for key in keys:
        if key in ds:
            value = ds.get(key)
            meta[key] = str(value) if not isinstance(value, (int, float)) else value
    fm = getattr(ds, "file_meta", None)
    if fm is not None and "TransferSyntaxUID" in fm:
        meta["TransferSyntaxUID"] = str(fm.TransferSyntaxUID)
    return meta


def _build_volume(slices_hu: list[np.ndarray], row_cos, col_cos, step_lps, origin_lps,
                  row_sp, col_sp, source: Path, meta: dict) -> CTVolume:
    # pixel[k][j, i]: i = column index (along row_cos), j = row index (along col_cos)
    vol = np.stack(slices_hu, axis=0).transpose(2, 1, 0)  # (i, j, k)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_sp
    lps[:3, 1] = col_cos * row_sp
    lps[:3, 2] = step_lps
    lps[:3, 3] = origin_lps
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS
    hu, affine, codes = canonicalize(np.ascontiguousarray(vol, dtype=np.float32), affine)
    return CTVolume(hu, _spacing(affine), affine, source, codes, meta)


def read_dicom_header(path: str | Path):
    """The DICOM dataset of ``path`` without its pixel data (fast); InputError when unreadable."""
    import pydicom

    path = Path(path)
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:
        raise InputError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
          (b"\x1f\x8b", "gzip"), (b"BM", "bmp"), (b"GIF8", "gif"))


def sniff_format(path: str | Path) -> str | None:
    """What a file holds, from its first bytes: ``"png"``, ``"nifti"`` (a ``.nii`` or, gzip
    compressed, ``.nii.gz``), ``"dicom"`` (the ``DICM`` preamble pydicom requires), ``"jpeg"``,
    ``"tiff"``, ``"gzip"``, ``"bmp"``, ``"gif"``, or None when none of these."""
    with open(path, "rb") as fh:
        head = fh.read(348)
    if head[128:132] == b"DICM":
        return "dicom"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return "nifti" if kind == "gzip" and str(path).lower().endswith(".nii.gz") else kind
    nifti1 = head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c") and head[344:347] in (b"n+1", b"ni1")
    nifti2 = head[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") and head[4:7] in (b"n+2", b"ni2")
    return "nifti" if nifti1 or nifti2 else None


def dicom_read_hu(path: str | Path, *, check_modality: bool = True):
    """(dataset, HU pixels (rows, cols) float32) of one DICOM CT slice, as stored (not reoriented).

    For tools that write a derived slice back with the original header (``ctxstyle stylize``).
    """
    path = Path(path)
    ds = _dcmread(path)
    return ds, _dicom_pixels_hu(ds, path, check_modality=check_modality)


def load_dicom_file(path: str | Path, *, check_modality: bool = True) -> CTVolume:
    """Read one DICOM CT slice as a 1-slice volume (thickness = SliceThickness or 1 mm)."""
    path = Path(path)
    ds = _dcmread(path)
    hu = _dicom_pixels_hu(ds, path, check_modality=check_modality)
    row_cos, col_cos, ipp, row_sp, col_sp = _dicom_geometry(ds, path)
    normal = np.cross(row_cos, col_cos)
    thickness = float(ds.get("SliceThickness", 1.0) or 1.0)
    return _build_volume([hu], row_cos, col_cos, normal * thickness, ipp, row_sp, col_sp, path,
                         _dicom_meta(ds))


def load_dicom_series(folder: str | Path, *, series_uid: str | None = None,
                      check_modality: bool = True) -> CTVolume:
    """Read a folder holding one DICOM CT series (any transfer syntax pydicom can decode).

    Slices are sorted by position along the slice normal; missing or duplicate slices
    (non-uniform spacing) raise InputError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder of DICOM files")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != "DICOMDIR"
                   and not p.name.startswith("."))
    if not files:
        raise InputError(folder, "no files in DICOM folder")
    datasets = [(p, _dcmread(p)) for p in files]
    series: dict[str, list] = {}
    for p, ds in datasets:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((p, ds))
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(folder, f"series {series_uid} not found; present: {sorted(series)}")
        chosen = series[series_uid]
    elif len(series) > 1:
        raise InputError(folder, f"{len(series)} series in one folder; pass series_uid= one of {sorted(series)}")
    else:
        chosen = next(iter(series.values()))

    geoms = [(p, ds, *_dicom_geometry(ds, p)) for p, ds in chosen]
    p0, ds0, row_cos, col_cos, _, row_sp, col_sp = geoms[0]
    normal = np.cross(row_cos, col_cos)
    for p, ds, rc, cc, _, rs, cs in geoms[1:]:
        if not (np.allclose(rc, row_cos, atol=1e-3) and np.allclose(cc, col_cos, atol=1e-3)):
            raise InputError(p, "ImageOrientationPatient differs from the rest of the series")
        if (int(ds.Rows), int(ds.Columns)) != (int(ds0.Rows), int(ds0.Columns)):
            raise InputError(p, "image size differs from the rest of the series")
    geoms.sort(key=lambda g: float(np.dot(g[4], normal)))
    positions = np.array([g[4] for g in geoms])
    if len(geoms) > 1:
        dist = np.diff(positions @ normal)
        if np.any(dist < 1e-3):
            raise InputError(folder, "two slices at the same position (duplicate slices?)")
        med = float(np.median(dist))
        if np.max(np.abs(dist - med)) > 0.1 * med:
            raise InputError(folder, f"non-uniform slice spacing {np.unique(np.round(dist, 2))} mm (missing slices?)")
        step = (positions[-1] - positions[0]) / (len(geoms) - 1)
    else:
        step = normal * float(ds0.get("SliceThickness", 1.0) or 1.0)
    slices = [_dicom_pixels_hu(ds, p, check_modality=check_modality) for p, ds, *_ in geoms]
    meta = _dicom_meta(ds0)
    meta["n_files"] = len(geoms)
    return _build_volume(slices, row_cos, col_cos, step, positions[0], row_sp, col_sp, folder, meta)


# --------------------------------------------------------------------------- dispatch


def load_ct(path: str | Path, *, check_hu: bool = True) -> CTVolume:
    """Read a CT from a NIfTI file, a DICOM file or a folder holding a DICOM series."""
    path = Path(path)
    if path.is_dir():
        return load_dicom_series(path)
    if not path.exists():
        raise InputError(path, "file not found")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz", ".img", ".hdr")):
        return load_nifti_ct(path, check_hu=check_hu)
    if name.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff")):
        raise InputError(path, "a 2-D picture holds no HU; use read_png(path, window=(level, width))")
    return load_dicom_file(path)


def load_labels(path: str | Path, *, scheme: str = "verse", reference: CTVolume | None = None,
                label_source: str = "manual", allow_empty: bool = False) -> LabelVolume:
    """Read a NIfTI label map, reorient to RAS, convert to VerSe numbering.

    With ``reference``, the label map must lie on the CT's voxel grid after reorientation
    (see :func:`check_alignment`). A map without any vertebra voxel raises InputError unless
    ``allow_empty``.
    """
    path = Path(path)
    data, affine, _ = _read_nifti(path)
    if np.issubdtype(data.dtype, np.floating):
        _check_finite(path, data)
        rounded = np.rint(data)
        if np.max(np.abs(rounded - data)) > 1e-3:
            raise InputError(path, "label map holds non-integer values")
        data = rounded
    if data.min() < 0:
        raise InputError(path, f"negative label values (min {data.min()})")
    labels = to_verse_labels(data.astype(np.int32), scheme)
    labels, affine, codes = canonicalize(labels, affine)
    lab = LabelVolume(labels, _spacing(affine), affine, path, codes, scheme, label_source)
    if reference is not None:
        check_alignment(reference, lab)
    if not allow_empty and not lab.mask.any():
        raise InputError(path, "label map has no vertebra voxels (empty mask)")
    return lab


def check_alignment(ct: CTVolume, labels: LabelVolume, *, rtol: float = 0.02) -> None:
    """Raise InputError unless CT and label map share one voxel grid (shape, spacing, axes).

    Origins are only compared for a warning: VerSe crops kept the uncropped origin.
    """
    if labels.shape != ct.shape:
        if labels.orientation != ct.orientation:
            problem = (f"orientation mismatch: mask stored as {labels.orientation}, image as "
                       f"{ct.orientation}; after reorientation to RAS shapes differ "
                       f"({labels.shape} vs {ct.shape})")
        else:
            problem = f"shape mismatch: mask {labels.shape} vs image {ct.shape} ({ct.source.name})"
        raise InputError(labels.source, problem)
    if not np.allclose(labels.spacing, ct.spacing, rtol=rtol):
        raise InputError(labels.source, f"spacing mismatch: mask {labels.spacing} vs image {ct.spacing}")
    dirs_l = labels.affine[:3, :3] / np.asarray(labels.spacing)
    dirs_c = ct.affine[:3, :3] / np.asarray(ct.spacing)
    if np.max(np.abs(dirs_l - dirs_c)) > 0.05:
        raise InputError(labels.source, f"orientation mismatch: direction cosines differ from {ct.source.name}")
    shift = np.abs(labels.affine[:3, 3] - ct.affine[:3, 3])
    if np.any(shift > max(ct.spacing)):
        warnings.warn(f"{labels.source}: origin differs from {ct.source.name} by {shift.round(1)} mm; "
                      "aligned on the voxel grid", stacklevel=2)


# --------------------------------------------------------------------------- PNG


def read_png(path: str | Path, *, window: tuple[float, float] | None = None) -> np.ndarray:
    """Read a grayscale picture (8/16-bit PNG, RGB collapsed to gray) as float32 (H, W).

    Returns values in [0, 1]; with ``window=(level, width)``, maps them back to HU
    (``level - width/2 + v * width``, lossy outside the window).
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                scale = 65535.0 if arr.max() > 255 or im.mode.startswith("I;16") else 255.0
                arr = arr / scale
            elif im.mode == "F":
                arr = np.asarray(im, dtype=np.float32)
            else:
                if im.mode not in ("L", "LA"):
                    rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
                    if not (np.allclose(rgb[..., 0], rgb[..., 1]) and np.allclose(rgb[..., 1], rgb[..., 2])):
                        warnings.warn(f"{path}: colour picture converted to gray", stacklevel=2)
                arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"not a readable picture ({type(exc).__name__}: {exc})") from exc
    _check_finite(path, arr)
    arr = np.clip(arr, 0.0, 1.0).astype(np.float32)
    if window is not None:
        level, width = window
        arr = (level - width / 2.0 + arr * width).astype(np.float32)
    return arr
