"""2-D slices with spine masks, fixed size S x S, and the cached preprocessed slice set.

Slice extraction (``extract_slices``), from a canonical RAS volume:

1. Axial slices are taken along the S axis, sagittal along the R axis, at the native
   through-plane positions (no through-plane interpolation).
2. Each slice is sampled directly onto an S x S grid of ``spacing_mm`` pixels (field of view
   S * spacing_mm) centred on the spine: HU with linear interpolation (Gaussian anti-aliasing
   when the output is coarser than the source), labels with nearest neighbour, both through the
   same coordinates. Outside the volume HU = -1000 (air), labels = 0. ``center="volume"``
   (default) uses one in-plane centre per volume, the mask centroid; ``"slice"`` re-centres
   every slice on its own mask (label-dependent, avoid for test sets).
3. Display orientation: axial rows run anterior -> posterior and columns patient right -> left
   (radiological view, as a DICOM axial image); sagittal rows run superior -> inferior and
   columns anterior -> posterior.
4. Slices whose mask has fewer than ``min_mask_px`` pixels are dropped unless ``keep_empty``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctxstyle import settings
from ctxstyle.errors import InputError
from ctxstyle.store import atomic_write, content_hash

from ctxstyle.data.io import CTVolume, LabelVolume, spine_mask
from ctxstyle.data.registry import PatientRecord, data_dir, file_sha256, load_patient, resolve_patient

__all__ = ["PLANES", "SliceSet", "extract_slices", "resample_inplane", "load_slice_set",
           "slice_cache_dir"]

PLANES = ("axial", "sagittal")
AIR_HU = -1000.0
CACHE_FORMAT = 1


def _inplane_axes(plane: str) -> tuple[int, int, int]:
    """(row axis, column axis, through-plane axis) of the RAS array for a plane."""
    if plane == "axial":
        return 1, 0, 2  # rows along A-P (y), columns along R-L (x)
    if plane == "sagittal":
        return 2, 1, 0  # rows along S-I (z), columns along A-P (y)
    raise InputError(None, f"plane must be one of {PLANES}, got {plane!r}")


def resample_inplane(ct: CTVolume, labels: LabelVolume | None = None, *, plane: str = "axial",
                     spacing_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray | None, tuple]:
    """Resample a volume in-plane to isotropic ``spacing_mm`` (through-plane untouched).

    Returns (hu, labels or None, new spacing) on the RAS axes; HU linear, labels nearest.
    """
    from scipy import ndimage

    r_ax, c_ax, _ = _inplane_axes(plane)
    zoom = [1.0, 1.0, 1.0]
    for ax in (r_ax, c_ax):
        zoom[ax] = ct.spacing[ax] / spacing_mm
    hu = ndimage.zoom(ct.hu, zoom, order=1, mode="nearest", grid_mode=True)
    lab = None
    if labels is not None:
        lab = ndimage.zoom(labels.labels, zoom, order=0, mode="nearest", grid_mode=True)
    spacing = tuple(spacing_mm if ax in (r_ax, c_ax) else ct.spacing[ax] for ax in range(3))
    return hu.astype(np.float32), lab, spacing


def extract_slices(ct: CTVolume, labels: LabelVolume, *, plane: str = "axial", size: int = 128,
                   spacing_mm: float = 1.0, center: str = "volume", keep_empty: bool = False,
                   min_mask_px: int = 1) -> dict[str, np.ndarray]:
    """Fixed-size 2-D slices: dict with ``hu`` (N,S,S) float32, ``mask`` uint8, ``labels``
    int16 (VerSe numbering) and ``index`` (slice index along the through-plane RAS axis)."""
    from scipy import ndimage

    if ct.shape != labels.shape:
        raise InputError(labels.source, f"shape mismatch: mask {labels.shape} vs image {ct.shape}")
    if center not in ("volume", "slice"):
        raise InputError(None, f"center must be 'volume' or 'slice', got {center!r}")
    r_ax, c_ax, t_ax = _inplane_axes(plane)
    # put axes in order (through, row, col)
    hu = np.moveaxis(ct.hu, (t_ax, r_ax, c_ax), (0, 1, 2))
    lab = np.moveaxis(labels.labels, (t_ax, r_ax, c_ax), (0, 1, 2))
    sr, sc = ct.spacing[r_ax], ct.spacing[c_ax]
    # anti-alias when the output grid is coarser than the source
    sig = [0.0, max(0.0, (spacing_mm / sr - 1) / 2), max(0.0, (spacing_mm / sc - 1) / 2)]
    if sig[1] > 0 or sig[2] > 0:
        hu = ndimage.gaussian_filter(hu, sig, mode="nearest")
    mask3 = spine_mask(lab)
    n_slices = hu.shape[0]
    counts = mask3.reshape(n_slices, -1).sum(axis=1)
    if not counts.any():
        raise InputError(labels.source, "label map has no vertebra voxels (empty mask)")
    coords = np.argwhere(mask3)
    vol_centre = coords[:, 1:].mean(axis=0)
    keep = np.arange(n_slices) if keep_empty else np.flatnonzero(counts >= max(1, min_mask_px))

    half = (size - 1) / 2.0
    offs = (np.arange(size) - half) * spacing_mm  # mm from centre, increasing down/right
    out_hu = np.empty((len(keep), size, size), np.float32)
    out_lab = np.empty((len(keep), size, size), np.int16)
    for n, k in enumerate(keep):
        if center == "slice" and counts[k]:
            cr, cc = np.argwhere(mask3[k]).mean(axis=0)
        else:
            cr, cc = vol_centre
        # display rows/cols run towards decreasing RAS index (A->P, R->L, S->I)
        rows = cr - offs / sr
        cols = cc - offs / sc
        rr, cc_ = np.meshgrid(rows, cols, indexing="ij")
        grid = np.stack([rr.ravel(), cc_.ravel()])
        out_hu[n] = ndimage.map_coordinates(hu[k], grid, order=1, mode="constant",
                                            cval=AIR_HU).reshape(size, size)
        out_lab[n] = ndimage.map_coordinates(lab[k], grid, order=0, mode="constant",
                                             cval=0).reshape(size, size)
    mask = spine_mask(out_lab)
    if not keep_empty and len(keep):
        ok = mask.reshape(len(keep), -1).sum(axis=1) >= max(1, min_mask_px)
        out_hu, out_lab, mask, keep = out_hu[ok], out_lab[ok], mask[ok], keep[ok]
    return {"hu": out_hu, "mask": mask, "labels": out_lab, "index": keep.astype(np.int32)}


@dataclass
class SliceSet:
    """Preprocessed 2-D slices of one or more patients (HU, masks, labels)."""

    hu: np.ndarray  # (N, S, S) float32 HU
    mask: np.ndarray  # (N, S, S) uint8 spine mask
    labels: np.ndarray  # (N, S, S) int16 VerSe labels
    patient: np.ndarray  # (N,) str
    index: np.ndarray  # (N,) int32 slice index along the through-plane RAS axis
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.hu.shape[0])

    def patients(self) -> list[str]:
        """Patient ids in order of appearance."""
        return list(dict.fromkeys(self.patient.tolist()))

    def counts(self) -> dict[str, int]:
        """Number of slices per patient."""
        return {p: int(np.sum(self.patient == p)) for p in self.patients()}

    def select(self, patients: Iterable[str] | str) -> "SliceSet":
        """The slices of the given patients (in this set's order)."""
        patients = [patients] if isinstance(patients, str) else list(patients)
        keep = np.isin(self.patient, patients)
        return SliceSet(self.hu[keep], self.mask[keep], self.labels[keep], self.patient[keep],
                        self.index[keep], dict(self.params))

    @staticmethod
    def concat(sets: Sequence["SliceSet"], params: dict | None = None) -> "SliceSet":
        if not sets:
            raise InputError(None, "no slice sets to concatenate")
        return SliceSet(*(np.concatenate([getattr(s, k) for s in sets]) for k in
                          ("hu", "mask", "labels", "patient", "index")),
                        params=dict(params or sets[0].params))

    def save(self, path: str | Path) -> Path:
        """Write to ``.npz`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, lambda tmp: np.savez(
            tmp, hu=self.hu, mask=self.mask, labels=self.labels, patient=self.patient.astype(str), index=self.index,
            params=np.array(json.dumps(self.params))))

    @classmethod
    def load(cls, path: str | Path) -> "SliceSet":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["hu"], z["mask"], z["labels"], z["patient"].astype(str), z["index"],
                           json.loads(str(z["params"])))
        except Exception as exc:
            raise InputError(path, f"unreadable slice cache ({type(exc).__name__}: {exc})") from exc


def slice_cache_dir() -> Path:
    """``<cache>/slices``: one ``.npz`` per patient and parameter set."""
    path = settings.cache_dir() / "slices"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _code_version() -> str:
    """Hash of the source of the modules that produce slices (invalidates stale caches)."""
    from ctxstyle.data import io, registry

    h = hashlib.sha256(str(CACHE_FORMAT).encode())
    for mod in (io, registry, sys.modules[__name__]):
        h.update(inspect.getsource(mod).encode())
    return h.hexdigest()[:16]


def _patient_key(rec: PatientRecord, root: Path, params: dict) -> str:
    files = {p.name: file_sha256(p) for p in rec.files(root)}
    payload = {"record": {k: v for k, v in rec.to_dict().items() if k in
                          ("id", "label_scheme")}, "files": files, "params": params,
               "code": _code_version()}
    return content_hash(payload, 20)


def load_slice_set(patients: Iterable[str | PatientRecord] | None = None, *, size: int = 128,
                   plane: str = "axial", spacing_mm: float = 1.0, center: str = "volume",
                   keep_empty: bool = False, min_mask_px: int = 1,
                   root: str | Path | None = None, cache: bool = True,
                   verify: bool = True) -> SliceSet:
    """Slices of the given patients (default: the 7 default patients), cached per patient.

    The cache file name holds a hash of the parameters, the source files' sha256 and the
    slicing code, so a change in any of them re-reads the volumes. ``verify`` checks the files
    against SHA256SUMS on a cold load.
    """
    from ctxstyle.data.registry import DEFAULT_PATIENTS

    if size < 8:
        raise InputError(None, f"size must be >= 8, got {size}")
    _inplane_axes(plane)
    base = Path(root) if root is not None else data_dir()
    recs = [resolve_patient(p) for p in (DEFAULT_PATIENTS if patients is None else patients)]
    params = {"size": int(size), "plane": plane, "spacing_mm": float(spacing_mm),
              "center": center, "keep_empty": bool(keep_empty), "min_mask_px": int(min_mask_px)}
    sets = []
    for rec in recs:
        ct_path, _ = rec.paths(base)
        if not ct_path.exists():
            raise InputError(ct_path, f"missing CT for patient {rec.id} (data folder {base})")
        path = None
        if cache:
            key = _patient_key(rec, base, params)
            path = slice_cache_dir() / f"{rec.id}-{plane}-{size}-{key}.npz"
            if path.is_file():
                try:
                    sets.append(SliceSet.load(path))
                    continue
                except InputError:
                    path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        ct, lab = load_patient(rec, root=base, verify=verify)
        d = extract_slices(ct, lab, plane=plane, size=size, spacing_mm=spacing_mm, center=center,
                           keep_empty=keep_empty, min_mask_px=min_mask_px)
        n = len(d["index"])
        meta = dict(params, patient=rec.id, label_source=rec.label_source,
                    source_spacing=list(ct.spacing), source_orientation=ct.orientation,
                    seconds=round(time.perf_counter() - t0, 3))
        s = SliceSet(d["hu"], d["mask"], d["labels"], np.array([rec.id] * n, dtype="<U64"),
                     d["index"], meta)
        if path is not None:
            s.save(path)
        sets.append(s)
    params["patients"] = [r.id for r in recs]
    params["label_source"] = {r.id: r.label_source for r in recs}
    return SliceSet.concat(sets, params)
