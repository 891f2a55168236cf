"""The default spine CT data set: patients, data folder, checksums, fetching, discovery.

Data folder order (:func:`data_dir`): ``CTXSTYLE_DATA``; else ``<repo>/../shared/data/spine-ct``
when present (this workplace's layout); else ``<cache>/data/spine-ct`` (where :func:`fetch`
writes).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from ctxstyle import settings
from ctxstyle.checksums import file_sha256, read_sha256sums
from ctxstyle.errors import ChecksumError, CtxStyleError, InputError
from ctxstyle.store import atomic_write

from ctxstyle.data.io import CTVolume, LabelVolume, load_ct, load_labels

__all__ = [
    "PatientRecord",
    "PATIENTS",
    "DEFAULT_PATIENTS",
    "CHECKSUMS",
    "SOURCES",
    "data_dir",
    "data_version",
    "resolve_patient",
    "load_patient",
    "verify_checksums",
    "checksum_table",
    "file_sha256",
    "fetch",
    "discover_patients",
]

# ---------------------------------------------------------------- checksums (copy of SHA256SUMS)
_DCM_IDS = range(16573, 16593)
_DCM = "totalseg/dicom/CT.1.3.12.2.1107.5.1.4.60064.300000221208081134280000{}.dcm"
_DCM_SUMS = """
4c5633409fa4d3edf6871e5684e9e1b10325b4d0949997582f43b23a684d0dc4
9148f91127145497f4d6c6f0780f9452504cd7fe5088ec8f2bf2b21800c731ff
3edaccec892e0821440cbefe3d5465923bb5146c316cbaf58f578d962f120484
9b68685f0c5f9bfcfc2c397f4fadf431da288d7422ca72e7d9031d4e039418cd
c8d2c0dc05e414d47d3652c658d8fecc20c3cf7ce106c10d84ad033d39700bcc
0ee2c1d58e06cedd91483ca35c04da3c26fea0dbe88aaf1eaa950b57f38357d6
c76cf0818d4215b92883d109b8a0b62ae0a4d81637eed98738f9c62b6f49bb72
106e20514fd3ca66895e14dbfba96c01c1195e4ed890c035d4368dd71f3ee116
5804e6c4a50f4d5b20040ac82a1c6d79cba5f7267d71f10b0a1b49eda1bc13ff
bef219a16b22949224de4581a2d288863b2585d29556ac24021f03307378cb39
9de5a49e880417d5330fe299115fdb95831a98234216a31c5c0e9a0be9a6dcd3
fa00c8d81ec8aa0d0cfc4e05343782c3a75a4c60df8cccf9ff5db42ac454e61d
ebba0900b0f728db0c94c769db3e5ca38a0cd916386a727541eb3e56350770e5
f084ec95cfba25efb7cbe86e8b4966b051904037e8385f58fe398c5475693b89
20a9b88a30ea8a824ac65cb19c1ebf80964b41ff476497706ff2a286e5f27a25
2a515d3b60f3ff733aac1fc5414206c331e3ed2ccef8c2e0c30b844c538e3ed8
5880669f1bc36b09cad4bdf487992ec415da0afa014e927efc282e612f467574
7af4dd5b5766a87368939116b91f90d989820e7b2237fb9bcd10d47db0960875
671306f4462ae881976c18c6a2d8a1567279fb0166ef0e9e8a41271fac9c1cbb
fdb76ad5272f074e07cc81509604fd163f2f8a9903d34b16ba6f078250373c51
""".split()

#: sha256 of every file of the default data set, relative path -> hex digest.
CHECKSUMS: dict[str, str] = {
    "pydicom/CT_small.dcm": "3dd31e5cc835b3f2cdd46c9da1982f59251e78518fefa8163d914631c66437d6",
    **{_DCM.format(i): s for i, s in zip(_DCM_IDS, _DCM_SUMS)},
    "totalseg/dicom_vertebrae_pred.nii.gz": "98af7f6536c316ff9084054f20956cd3e28af376b81d582d269fbea2744878fc",
    "totalseg/example_ct.nii.gz": "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1",
    "totalseg/example_ct_vertebrae_pred.nii.gz": "1dee90b23f201480e42211527b1e3acefd99c22e21291ef319a95d0b460d7376",
    "tptbox/sub-ct_label-22_ct.nii.gz": "51e09da4b00f8a22c17bfc55f63b8c21d2a9f6f1d3e4044143f29e12744abec9",
    "tptbox/sub-ct_seg-subreg_label-22_msk.nii.gz": "afb7fdf9770ac460e7ca50b5d2b13aeb2d13e44d179424a48750049b177e93b5",
    "tptbox/sub-ct_seg-vert_label-22_msk.nii.gz": "e5529ffb420d83be69c5fc0fbac4b6990bcaa067a5c0939fc7d705c47527ea1d",
    "verse19/sub-verse005_ct.nii.gz": "655c9c8391c0e5906fbe46019982cd0f93fc7c16536bbe49252941fe0ace4aa2",
    "verse19/sub-verse005_seg-vert_msk.nii.gz": "943306e0ca8c5d12304cd78f5050bebfcc4927089d3cd7f53928da38e926486d",
    "verse19/sub-verse006_ct.nii.gz": "7d7b7c8632af535b045c45ddcd2af965baa1809e519ceef1d5da88c618e46ad5",
    "verse19/sub-verse006_seg-vert_msk.nii.gz": "c45ef3d52f4f9ab84da8d8d3495c17d1029011936baea8fcb228902ef49adb31",
    "verse19/sub-verse007_ct.nii.gz": "ef958ddfc44ceb529665a15113fa191d5c3f6575f26254622f900d3fe87eb947",
    "verse19/sub-verse007_seg-vert_msk.nii.gz": "781a1339773304cb72c800c0b5d2e387f097f9daf0cded189bc5c395f1acbddd",
    "verse19/sub-verse008_ct.nii.gz": "f6ec444e27c4d4ba0e1eced4ca5cbe8c782d1d5f3f2a3ae001d7d596587d3ae1",
    "verse19/sub-verse008_seg-vert_msk.nii.gz": "511cd2eb2e83a91aa7e134aec4acc36e7d9ce9bb49639202c2c064d9440e1687",
    "verse19/sub-verse014_ct.nii.gz": "ae6aed63efd53b29c96705fc5cb2921ed879b6f7e87c993b94541bfcc8f1fbed",
    "verse19/sub-verse014_seg-vb_ctd.json": "84a42d9fad45949386728b0b09e1157f7dce0ec0a89f7dadd270a84f1e200aec",
    "verse19/sub-verse014_seg-vert_msk.nii.gz": "748535fda46b2d1b684f67d0ddacfbe9bd5dc5a89669c554b3231b035eef5372",
}

# ---------------------------------------------------------------- public sources at fixed commits
_RAW = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
_ELK = ("elkhashabs/Spine-Navigation-System-Capstone", "2882986551f33dec9c21e1151478ace9dd614b56", "")
_JKO = ("juniorkowal/spine-segmentation", "0a68c85e73be5b27757f5c664dd56a2d3156d413", "verse_utils/test_images/")
_TPT = ("Hendrik-code/TPTBox", "f43f7fb51a158e9316f50988c2b0b04e01bc35b1", "TPTBox/tests/sample_ct/")
_TSG = ("wasserth/TotalSegmentator", "0e65a448d557382b1e925276212b3bec7f5aff83", "tests/reference_files/")


def _source_url(rel: str) -> str:
    folder, name = rel.split("/", 1)
    if rel == "pydicom/CT_small.dcm":
        return "pydicom:CT_small.dcm"
    if folder == "verse19":
        repo, commit, prefix = _JKO if "verse014" in name else _ELK
        return _RAW.format(repo=repo, commit=commit, path=prefix + name)
    if folder == "tptbox":
        repo, commit, prefix = _TPT
        return _RAW.format(repo=repo, commit=commit, path=prefix + name)
    repo, commit, prefix = _TSG
    renamed = {
        "example_ct_vertebrae_pred.nii.gz": "spine_report/example_ct_report/totalseg.nii.gz",
        "dicom_vertebrae_pred.nii.gz": "example_seg_dicom.nii.gz",
    }
    if name.startswith("dicom/"):
        path = "example_ct_dicom/" + name[len("dicom/"):].removesuffix(".dcm")
    else:
        path = renamed.get(name, name)
    return _RAW.format(repo=repo, commit=commit, path=prefix + path)


#: Where each file comes from: relative path -> raw.githubusercontent.com URL at a fixed commit,
#: or ``pydicom:<name>`` for a file of pydicom's bundled test data.
SOURCES: dict[str, str] = {rel: _source_url(rel) for rel in CHECKSUMS}


# ---------------------------------------------------------------- patients


@dataclass(frozen=True)
class PatientRecord:
    """One patient: CT (NIfTI file or DICOM folder) and vertebra label map."""

    id: str
    ct: str  # relative to the data folder, or absolute
    labels: str | None
    label_source: str = "manual"  # "manual" | "model (TotalSegmentator)"
    label_scheme: str = "verse"  # numbering stored in the file: "verse" | "totalseg"
    site: str = "VerSe"
    cropped: bool = False  # cropped to the mask's bounding box by the publisher
    description: str = ""

    def paths(self, root: str | Path | None = None) -> tuple[Path, Path | None]:
        """Absolute (ct, labels) paths."""
        base = Path(root) if root is not None else data_dir()
        ct = Path(self.ct) if Path(self.ct).is_absolute() else base / self.ct
        lab = None
        if self.labels is not None:
            lab = Path(self.labels) if Path(self.labels).is_absolute() else base / self.labels
        return ct, lab

    def files(self, root: str | Path | None = None) -> list[Path]:
        """Every file the record reads (each DICOM slice of a series folder)."""
        ct, lab = self.paths(root)
        out = sorted(p for p in ct.iterdir() if p.is_file()) if ct.is_dir() else [ct]
        return out + ([lab] if lab is not None else [])

    def to_dict(self) -> dict:
        return asdict(self)


def _verse(n: str, cropped: bool, desc: str) -> PatientRecord:
    return PatientRecord(f"verse{n}", f"verse19/sub-verse{n}_ct.nii.gz",
                         f"verse19/sub-verse{n}_seg-vert_msk.nii.gz", "manual", "verse", "VerSe'19",
                         cropped, desc)


#: The default data set (7 patients) plus ``totalseg_dicom`` (a DICOM series, not in the default).
PATIENTS: dict[str, PatientRecord] = {
    r.id: r
    for r in (
        _verse("005", True, "L1-L5, 1 mm isotropic, cropped to the mask"),
        _verse("006", True, "L4-L5, 1x1x3 mm, cropped to the mask"),
        _verse("007", True, "T9-L3, 1x1x3 mm, cropped to the mask"),
        _verse("008", True, "T12-L5, 1x1x2 mm, cropped to the mask"),
        _verse("014", False, "L1-L5, 1x1x2 mm, uncropped"),
        PatientRecord("tptbox", "tptbox/sub-ct_label-22_ct.nii.gz",
                      "tptbox/sub-ct_seg-vert_label-22_msk.nii.gz", "manual", "verse",
                      "TPTBox (likely VerSe)", True, "L2-L4 crop, 1.5 mm isotropic"),
        PatientRecord("totalseg", "totalseg/example_ct.nii.gz",
                      "totalseg/example_ct_vertebrae_pred.nii.gz", "model (TotalSegmentator)",
                      "totalseg", "TotalSegmentator example (second site)", False,
                      "abdomen/pelvis T11-S1, 3 mm isotropic"),
        PatientRecord("totalseg_dicom", "totalseg/dicom", "totalseg/dicom_vertebrae_pred.nii.gz",
                      "model (TotalSegmentator)", "totalseg", "Siemens Biograph40 mCT, Br38f",
                      False, "20-slice JPEG 2000 DICOM series, T11-T12, 0.98x0.98x2 mm"),
    )
}
DEFAULT_PATIENTS: tuple[str, ...] = ("verse005", "verse006", "verse007", "verse008", "verse014",
                                     "tptbox", "totalseg")


def data_dir() -> Path:
    """The spine CT data folder: ``CTXSTYLE_DATA``, else ``<repo>/../shared/data/spine-ct``
    when present, else ``<cache>/data/spine-ct`` (the :func:`fetch` target)."""
    env = settings.data_setting()
    if env:
        return env
    root = settings.repo_root()
    if root is not None:
        shared = (root / ".." / "shared" / "data" / "spine-ct").resolve()
        if shared.is_dir():
            return shared
    return settings.cache_dir() / "data" / "spine-ct"


def resolve_patient(patient: str | PatientRecord) -> PatientRecord:
    """A PatientRecord from an id of :data:`PATIENTS` (or the record itself)."""
    if isinstance(patient, PatientRecord):
        return patient
    try:
        return PATIENTS[patient]
    except KeyError:
        raise InputError(None, f"unknown patient {patient!r}; known: {sorted(PATIENTS)} "
                               "(use discover_patients(folder) for other data)") from None


# ---------------------------------------------------------------- checksums

def checksum_table(root: str | Path) -> tuple[str, dict[str, str]]:
    """The checksum table of a data folder: its ``SHA256SUMS`` when it has one, else the built-in
    table; returns (which table, {relative path: sha256})."""
    sums_file = Path(root) / "SHA256SUMS"
    if not sums_file.is_file():
        return "ctxstyle's built-in checksums", dict(CHECKSUMS)
    return str(sums_file), read_sha256sums(sums_file)


def verify_checksums(root: str | Path | None = None, files: Iterable[str | Path] | None = None
                     ) -> dict[str, str]:
    """Check files in the data folder against its SHA256SUMS (or the built-in table).

    ``files``: relative or absolute paths to check (default: every listed file). Returns
    {relative path: sha256}; raises ChecksumError naming the first missing/mismatching file.
    Files outside the table are skipped.
    """
    root = Path(root) if root is not None else data_dir()
    if not root.is_dir():
        raise InputError(root, "not a folder")
    _, sums = checksum_table(root)
    if not sums:
        raise ChecksumError(f"{root / 'SHA256SUMS'}: lists no files; nothing could be verified")
    if files is None:
        wanted = list(sums)
    else:
        wanted = []
        for f in files:
            f = Path(f)
            try:
                rel = f.resolve().relative_to(root.resolve()).as_posix() if f.is_absolute() else f.as_posix()
            except ValueError:
                continue
            if rel in sums:
                wanted.append(rel)
    out = {}
    for rel in wanted:
        path = root / rel
        if not path.is_file():
            raise ChecksumError(f"{path}: missing (expected sha256 {sums[rel][:12]}...)")
        digest = file_sha256(path)
        if digest != sums[rel]:
            raise ChecksumError(f"{path}: sha256 {digest} does not match the recorded {sums[rel]}")
        out[rel] = digest
    return out


def data_version(root: str | Path | None = None) -> str:
    """A short tag for records: ``spine-ct@sha256:<first 12 hex of the checksum table>``."""
    root = Path(root) if root is not None else data_dir()
    _, sums = checksum_table(root)
    table = "".join(f"{v}  {k}\n" for k, v in sorted(sums.items()))
    return "spine-ct@sha256:" + hashlib.sha256(table.encode()).hexdigest()[:12]


# ---------------------------------------------------------------- loading


def load_patient(patient: str | PatientRecord, *, root: str | Path | None = None,
                 verify: bool = True) -> tuple[CTVolume, LabelVolume]:
    """Load a patient's CT and labels on one RAS voxel grid (checksums verified when known)."""
    rec = resolve_patient(patient)
    base = Path(root) if root is not None else data_dir()
    ct_path, lab_path = rec.paths(base)
    if not ct_path.exists():
        raise InputError(ct_path, f"missing CT for patient {rec.id} (data folder {base}; "
                                  "set CTXSTYLE_DATA or run ctxstyle.data.fetch())")
    if verify:
        verify_checksums(base, rec.files(base))
    ct = load_ct(ct_path)
    if lab_path is None:
        raise InputError(ct_path, f"patient {rec.id} has no label map")
    labels = load_labels(lab_path, scheme=rec.label_scheme, reference=ct,
                         label_source=rec.label_source)
    return ct, labels


# ---------------------------------------------------------------- fetching


def _urllib_download(url: str, target: Path) -> None:
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as resp, open(target, "wb") as fh:  # noqa: S310
        shutil.copyfileobj(resp, fh)


def _pydicom_copy(name: str, target: Path) -> None:
    from pydicom.data import get_testdata_file

    src = get_testdata_file(name)
    if src is None:
        raise CtxStyleError(f"pydicom test file {name} not available in this pydicom install")
    shutil.copyfile(src, target)


def fetch(dest: str | Path | None = None, *, files: Iterable[str] | None = None,
          downloader: Callable[[str, Path], None] | None = None, force: bool = False) -> Path:
    """Download the default data set into ``dest`` (default: ``CTXSTYLE_DATA`` when set, else
    ``<cache>/data/spine-ct``; the folders :func:`data_dir` reads).

    Each file comes from its public source at a fixed commit (:data:`SOURCES`) and must match
    :data:`CHECKSUMS` (ChecksumError names the file otherwise; nothing bad is left in place).
    Files already present with the right checksum are kept; a file present with another checksum
    is refused (InputError naming it) unless ``force``, which replaces it (and downloads matching
    files again). ``downloader(url, target_path)``
    replaces the urllib download (tests); ``pydicom:`` sources copy pydicom's bundled file.
    Honours ``CTXSTYLE_OFFLINE=1`` (network files then raise CtxStyleError).
    """
    dest = Path(dest) if dest is not None else settings.data_setting() or settings.cache_dir() / "data" / "spine-ct"
    wanted = list(CHECKSUMS) if files is None else [str(f) for f in files]
    unknown = [f for f in wanted if f not in CHECKSUMS]
    if unknown:
        raise InputError(None, f"unknown data files {unknown}")
    download = downloader or _urllib_download
    present = {rel for rel in wanted if (dest / rel).exists()}
    matching = {rel for rel in present if (dest / rel).is_file() and file_sha256(dest / rel) == CHECKSUMS[rel]}
    if not force and present - matching:  # checked before anything is downloaded
        others = sorted(present - matching)
        raise InputError(dest / others[0], "exists and is not the data file this folder expects (another checksum)"
                         + (f", as are {len(others) - 1} more" if len(others) > 1 else "")
                         + "; fetching never replaces them unless forced (--force, force=True)")
    for rel in wanted:
        target = dest / rel
        if rel in matching and not force:
            continue
        url = SOURCES[rel]

        def fetch_verified(tmp: Path, rel=rel, url=url, target=target) -> None:
            if url.startswith("pydicom:"):
                _pydicom_copy(url.split(":", 1)[1], tmp)
            else:
                if settings.offline() and downloader is None:
                    raise CtxStyleError(f"{rel}: CTXSTYLE_OFFLINE is set; cannot download {url}")
                try:
                    download(url, tmp)
                except OSError as exc:  # the network, not the target folder: say so
                    raise CtxStyleError(f"{rel}: download from {url} failed ({exc})") from exc
            digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
            if digest != CHECKSUMS[rel]:
                raise ChecksumError(f"{target}: downloaded from {url}, sha256 {digest} does not "
                                    f"match the recorded {CHECKSUMS[rel]}")

        atomic_write(target, fetch_verified)  # nothing unverified is left in place
    sums = dest / "SHA256SUMS"
    if not sums.exists():
        sums.write_text("".join(f"{v}  ./{k}\n" for k, v in sorted(CHECKSUMS.items())))
    return dest


# ---------------------------------------------------------------- discovery of other data sets

_NII = re.compile(r"\.nii(\.gz)?$")


def _stem(path: Path) -> str:
    return _NII.sub("", path.name)


def discover_patients(folder: str | Path, *, scheme: str = "verse",
                      label_source: str = "manual") -> dict[str, PatientRecord]:
    """Find CT/label-map pairs under ``folder`` (searched recursively).

    Layouts: VerSe / BIDS-like ``<entities>_ct.nii.gz`` with ``<entities>_seg-vert_msk.nii.gz``
    (the ``seg-*`` entity may sit anywhere, e.g. TPTBox ``sub-ct_seg-vert_label-22_msk``; masks
    may live in another sub-folder such as ``derivatives/``); CTSpine1K ``<name>.nii.gz`` with
    ``<name>_seg.nii.gz``. Ids drop ``sub-`` and ``_ct``. CTs without a mask are skipped with a
    warning; a second CT of one subject or a second label map of one CT is an InputError naming it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    nii = sorted(p for p in folder.rglob("*") if p.is_file() and _NII.search(p.name))
    masks: dict[str, list[Path]] = {}
    cts: dict[str, Path] = {}
    for p in nii:
        stem = _stem(p)
        parts = stem.split("_")
        if parts[-1] == "msk":
            seg = [e for e in parts[:-1] if e.startswith("seg-")]
            if seg and seg[0] not in ("seg-vert", "seg-vertebrae"):
                continue  # sub-region / other masks
            key = "_".join(e for e in parts[:-1] if not e.startswith("seg-"))
            masks.setdefault(key, []).append(p)
        elif parts[-1] == "seg" and len(parts) > 1:
            masks.setdefault("_".join(parts[:-1]), []).append(p)
        else:  # a *_ct file, or a CTSpine1K-style plain name
            key = "_".join(parts[:-1]) if parts[-1] == "ct" else stem
            if key in cts:  # the same subject twice (two folders, .nii and .nii.gz): never one silently
                raise InputError(p, f"a second CT for {key!r} beside {cts[key]}; keep one")
            cts[key] = p
    out: dict[str, PatientRecord] = {}
    for key, ct in sorted(cts.items()):
        cands = masks.get(key)
        if not cands:
            if ct.name.endswith(("_ct.nii.gz", "_ct.nii")):
                warnings.warn(f"{ct}: no matching *_msk.nii.gz label map; skipped", stacklevel=2)
            continue
        if len(cands) > 1:
            raise InputError(ct, f"{len(cands)} label maps match it ({', '.join(sorted(c.name for c in cands))}); keep one")
        pid = key.removeprefix("sub-")
        if pid in out:
            raise InputError(ct, f"two CTs map to patient id {pid!r}")
        out[pid] = PatientRecord(pid, str(ct.resolve()), str(sorted(cands)[0].resolve()),
                                 label_source, scheme, str(folder.name), False,
                                 f"discovered under {folder}")
    return out
