"""The experiment protocol: fixed patient-level splits, source and target gray-scale styles.

* labelled source domain: the ``train`` patients rendered in ``source_style`` (with masks);
* target domains: every style in ``target_styles`` (unlabelled; the style bank draws reference
  slices from ``style_bank_patients`` without their masks);
* validation: the ``val`` patients in every style (model selection);
* test: the held-out ``test`` patients in every style. No patient is in two splits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ctxstyle.errors import InputError

from ctxstyle.data.slices import load_slice_set
from ctxstyle.data.styles import SOURCE_STYLE, STYLES, TARGET_STYLES, GrayStyle, apply_style

__all__ = ["Protocol", "default_protocol", "scaled_protocol", "PROTOCOL", "protocol_slices", "protocol_slice_set",
           "SPLITS", "style_bank"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Protocol:
    """Patient splits, styles and slice parameters of one experiment (immutable)."""

    name: str = "ctxstyle-spine-v1"
    train: tuple[str, ...] = ("verse005", "verse007", "verse008", "tptbox")
    val: tuple[str, ...] = ("verse006",)
    test: tuple[str, ...] = ("verse014", "totalseg")
    source_style: str = SOURCE_STYLE
    target_styles: tuple[str, ...] = TARGET_STYLES
    style_bank_patients: tuple[str, ...] = ("verse005", "verse007", "verse008", "tptbox")
    size: int = 128
    plane: str = "axial"
    spacing_mm: float = 1.0
    seed: int = 0
    notes: str = field(default=(
        "Train: three cropped VerSe'19 lumbar/thoracolumbar scans + the TPTBox crop (manual "
        "labels). Val: verse006 (L4-L5). Test: verse014 (uncropped VerSe scan) and totalseg "
        "(second site/scanner, 3 mm; labels are TotalSegmentator predictions, not manual)."),
        compare=False)

    def __post_init__(self):
        for split in SPLITS:
            object.__setattr__(self, split, tuple(getattr(self, split)))
        object.__setattr__(self, "target_styles", tuple(self.target_styles))
        object.__setattr__(self, "style_bank_patients", tuple(self.style_bank_patients))
        seen: dict[str, str] = {}
        for split in SPLITS:
            for p in getattr(self, split):
                if p in seen:
                    raise InputError(None, f"patient {p!r} is in both {seen[p]} and {split}")
                seen[p] = split
        leak = set(self.style_bank_patients) & set(self.val + self.test)
        if leak:
            raise InputError(None, f"style-bank patients {sorted(leak)} are val/test patients")
        for s in (self.source_style, *self.target_styles):
            if s not in STYLES:
                raise InputError(None, f"unknown style {s!r}")
        if self.source_style in self.target_styles:
            raise InputError(None, "the source style cannot also be a target style")

    @property
    def styles(self) -> tuple[str, ...]:
        """Source style first, then the targets."""
        return (self.source_style, *self.target_styles)

    def patients(self, split: str) -> tuple[str, ...]:
        if split not in SPLITS:
            raise InputError(None, f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, split)

    def split_seed(self, split: str, style: str) -> int:
        """Deterministic noise seed for (split, style)."""
        idx = self.styles.index(style) if style in self.styles else 99
        return int(self.seed * 1000 + SPLITS.index(split) * 100 + idx)

    def render(self, hu: np.ndarray, split: str, style: str, seed: int | None = None) -> np.ndarray:
        """HU slices of ``split`` in ``style``, with the noise seed of (split, style) unless ``seed``
        is given: the images of :func:`protocol_slices`, for callers that hold the slice set."""
        return apply_style(hu, style, seed=self.split_seed(split, style) if seed is None else seed,
                           spacing_mm=self.spacing_mm)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["styles"] = {s: STYLES[s].to_dict() for s in self.styles}
        return d


def scaled_protocol(size: int, protocol: Protocol | None = None) -> Protocol:
    """The protocol at another image size with the same field of view (size x spacing, 128 mm).

    Profiles change the resolution (64 px at 2 mm for a CPU, 256 px at 0.5 mm on a GPU), never
    the anatomy that a slice covers.
    """
    from dataclasses import replace

    p = protocol or PROTOCOL
    if size < 8:
        raise InputError("size", f"must be at least 8 pixels, got {size}")
    return replace(p, size=int(size), spacing_mm=p.size * p.spacing_mm / int(size))


def default_protocol() -> Protocol:
    """The project's one protocol (see docs/DATA.md for the reasons behind the splits)."""
    return Protocol()


PROTOCOL = default_protocol()


def protocol_slice_set(split: str, *, protocol: Protocol | None = None, size: int | None = None,
                       plane: str | None = None, keep_empty: bool = False):
    """The :class:`~ctxstyle.data.slices.SliceSet` (HU) of a split."""
    p = protocol or PROTOCOL
    return load_slice_set(p.patients(split), size=size or p.size, plane=plane or p.plane,
                          spacing_mm=p.spacing_mm, keep_empty=keep_empty)


def protocol_slices(split: str, style: str | None = None, size: int | None = None,
                    plane: str | None = None, seed: int | None = None, *,
                    protocol: Protocol | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images float32 [0,1] (N,H,W), masks uint8 (N,H,W), patient ids (N,)) of a split in a style.

    ``style`` defaults to the source style; ``seed`` (noise) defaults to
    ``protocol.split_seed(split, style)``.
    """
    p = protocol or PROTOCOL
    style = style or p.source_style
    ss = protocol_slice_set(split, protocol=p, size=size, plane=plane)
    return p.render(ss.hu, split, style, seed), ss.mask, ss.patient


def style_bank(style: str | GrayStyle, patients=None, n: int = 64, size: int = 128,
               seed: int = 0, *, plane: str = "axial", spacing_mm: float = 1.0) -> np.ndarray:
    """``n`` unlabelled reference slices (n, size, size) in a style, float32 [0, 1].

    Slices are drawn without replacement (with replacement only when ``n`` exceeds the pool)
    from ``patients`` (default: the protocol's style-bank patients, i.e. the training
    patients; their masks are not used).
    """
    if patients is None:
        patients = PROTOCOL.style_bank_patients
    pool = load_slice_set(patients, size=size, plane=plane, spacing_mm=spacing_mm)
    rng = np.random.default_rng([int(seed), 7919])
    pick = rng.choice(len(pool), size=n, replace=n > len(pool))
    return apply_style(pool.hu[np.sort(pick)], style, seed=seed, spacing_mm=spacing_mm)
