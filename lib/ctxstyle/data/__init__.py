"""Spine CT data: readers, canonical RAS volumes, 2-D slices with masks, gray-scale styles,
the experiment protocol, cached slice sets, checksums and fetching. See docs/DATA.md.

Quick start::

    from ctxstyle.data import PROTOCOL, protocol_slices, apply_style, load_slice_set
    x, m, pid = protocol_slices("train")                 # source style, (N,128,128) in [0, 1]
    xt, mt, _ = protocol_slices("test", "soft_tissue")   # a target domain
"""

from ctxstyle.data.io import (VERTEBRA_LABELS, CTVolume, LabelVolume, canonicalize, check_alignment, load_ct, load_dicom_file, load_dicom_series, load_labels, load_nifti_ct, read_png, spine_mask, to_verse_labels)
from ctxstyle.data.protocol import (PROTOCOL, SPLITS, Protocol, default_protocol, protocol_slice_set, protocol_slices, scaled_protocol, style_bank)
from ctxstyle.data.registry import (CHECKSUMS, DEFAULT_PATIENTS, PATIENTS, SOURCES, PatientRecord, checksum_table, data_dir, data_version, discover_patients, fetch, file_sha256, load_patient, resolve_patient, verify_checksums)
from ctxstyle.data.slices import PLANES, SliceSet, extract_slices, load_slice_set, resample_inplane, slice_cache_dir
from ctxstyle.data.styles import (SOURCE_STYLE, STYLES, TARGET_STYLES, GrayStyle, apply_style, get_style, list_styles, window)

__all__ = [
    # readers
    "CTVolume", "LabelVolume", "VERTEBRA_LABELS", "canonicalize", "check_alignment", "load_ct",
    "load_nifti_ct", "load_dicom_file", "load_dicom_series", "load_labels", "read_png",
    "spine_mask", "to_verse_labels",
    # data set
    "PatientRecord", "PATIENTS", "DEFAULT_PATIENTS", "CHECKSUMS", "SOURCES", "data_dir",
    "data_version", "resolve_patient", "load_patient", "verify_checksums", "checksum_table", "file_sha256", "fetch",
    "discover_patients",
    # slices
    "PLANES", "SliceSet", "extract_slices", "resample_inplane", "load_slice_set",
    "slice_cache_dir",
    # styles
    "GrayStyle", "STYLES", "SOURCE_STYLE", "TARGET_STYLES", "list_styles", "get_style",
    "apply_style", "style_bank", "window",
    # protocol
    "Protocol", "PROTOCOL", "SPLITS", "default_protocol", "protocol_slices", "protocol_slice_set", "scaled_protocol",
]
