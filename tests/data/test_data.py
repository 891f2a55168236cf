"""Tests of ctxstyle.data on the real embedded spine CT data (checksums verified) and on small
synthetic bad files generated in tmp_path."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctxstyle import data as D
from ctxstyle.errors import ChecksumError, InputError

ROOT = D.data_dir()
pytestmark = pytest.mark.skipif(
    not (ROOT / "SHA256SUMS").is_file(),
    reason=f"spine CT data not found at {ROOT} (set CTXSTYLE_DATA or run ctxstyle.data.fetch())",
)


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """A private cache folder so the cold/cached slice-set path is exercised."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CTXSTYLE_CACHE", str(tmp_path_factory.mktemp("ctxcache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def volumes():
    return {pid: D.load_patient(pid) for pid in D.DEFAULT_PATIENTS}


@pytest.fixture(scope="module")
def axial(cache_env):
    """The axial set loaded cold, then warm with every volume read refused: the warm load must come
    from the slice cache alone."""
    from ctxstyle.data import slices

    cold = D.load_slice_set(size=128, plane="axial")

    def no_volume_read(rec, **kw):
        raise AssertionError(f"cached load read the volume of {rec.id}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slices, "load_patient", no_volume_read)
        warm = D.load_slice_set(size=128, plane="axial")
    return cold, warm


# ---------------------------------------------------------------- data set and checksums


def test_checksums_verified():
    sums = D.verify_checksums()
    assert len(sums) == len(D.CHECKSUMS) == 38  # every line of SHA256SUMS
    assert sums == D.CHECKSUMS
    assert D.data_version().startswith("spine-ct@sha256:")


def test_checksum_mismatch_names_file(tmp_path):
    rel = "verse19/sub-verse014_seg-vb_ctd.json"
    (tmp_path / "verse19").mkdir()
    (tmp_path / rel).write_bytes((ROOT / rel).read_bytes() + b" ")
    (tmp_path / "SHA256SUMS").write_text(f"{D.CHECKSUMS[rel]}  ./{rel}\n")
    with pytest.raises(ChecksumError, match="sub-verse014_seg-vb_ctd.json"):
        D.verify_checksums(tmp_path)
    (tmp_path / rel).unlink()
    with pytest.raises(ChecksumError, match="missing"):
        D.verify_checksums(tmp_path)


def test_data_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("CTXSTYLE_DATA", str(tmp_path))
    assert D.data_dir() == tmp_path
    monkeypatch.delenv("CTXSTYLE_DATA")
    from ctxstyle import settings

    if settings.repo_root() is not None and (settings.repo_root().parent / "shared/data/spine-ct").is_dir():
        assert D.data_dir() == (settings.repo_root().parent / "shared/data/spine-ct").resolve()
    monkeypatch.setenv("CTXSTYLE_CACHE", str(tmp_path / "c"))
    monkeypatch.setattr(settings, "repo_root", lambda: None)
    assert D.data_dir() == tmp_path / "c" / "data" / "spine-ct"


def test_fetch_writes_where_the_data_is_read(monkeypatch, tmp_path):
    """Without a destination, fetch fills the folder data_dir() reads: CTXSTYLE_DATA when set."""
    def fake(url, target):
        shutil.copyfile(ROOT / {u: r for r, u in D.SOURCES.items()}[url], target)

    monkeypatch.setenv("CTXSTYLE_DATA", str(tmp_path / "mine"))
    rel = "verse19/sub-verse006_ct.nii.gz"
    assert D.fetch(files=[rel], downloader=fake) == D.data_dir() == tmp_path / "mine"
    assert D.verify_checksums(files=[rel]).keys() == {rel}


def test_registry():
    assert len(D.DEFAULT_PATIENTS) == 7
    assert set(D.DEFAULT_PATIENTS) <= set(D.PATIENTS)
    assert D.PATIENTS["totalseg"].label_source.startswith("model")
    assert all(D.PATIENTS[p].label_source == "manual" for p in D.DEFAULT_PATIENTS if p != "totalseg")
    for rec in D.PATIENTS.values():
        for f in rec.files(ROOT):
            assert f.relative_to(ROOT).as_posix() in D.CHECKSUMS
    with pytest.raises(InputError, match="unknown patient"):
        D.load_patient("verse999")


# ---------------------------------------------------------------- fetch (downloader monkeypatched)


def test_fetch_sources_and_downloader(tmp_path):
    for rel, url in D.SOURCES.items():
        assert url.startswith(("https://raw.githubusercontent.com/", "pydicom:")), rel
    assert "2882986551f33dec9c21e1151478ace9dd614b56/sub-verse005_ct.nii.gz" in D.SOURCES["verse19/sub-verse005_ct.nii.gz"]
    assert D.SOURCES[next(k for k in D.SOURCES if k.endswith("16573.dcm"))].endswith(
        "tests/reference_files/example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016573")
    by_url = {url: rel for rel, url in D.SOURCES.items()}
    calls = []

    def fake(url, target):  # serve the embedded copy instead of the network
        calls.append(url)
        shutil.copyfile(ROOT / by_url[url], target)

    files = ["verse19/sub-verse006_ct.nii.gz", "totalseg/dicom_vertebrae_pred.nii.gz",
             "pydicom/CT_small.dcm"]
    dest = D.fetch(tmp_path / "d", files=files, downloader=fake)
    assert len(calls) == 2  # the pydicom file is copied from the installed package, for real
    assert D.verify_checksums(dest, files).keys() == set(files)
    D.fetch(dest, files=files, downloader=fake)
    assert len(calls) == 2  # present and valid: not downloaded again

    def corrupt(url, target):
        Path(target).write_bytes(b"not the file")

    with pytest.raises(ChecksumError, match="sub-verse007_ct.nii.gz"):
        D.fetch(dest, files=["verse19/sub-verse007_ct.nii.gz"], downloader=corrupt)
    assert not (dest / "verse19/sub-verse007_ct.nii.gz").exists()
    assert not list((dest / "verse19").glob(".part-*"))


# ---------------------------------------------------------------- loading the real data


@pytest.mark.parametrize("pid", D.DEFAULT_PATIENTS)
def test_all_seven_load(volumes, pid):
    ct, lab = volumes[pid]
    assert ct.hu.dtype == np.float32 and lab.labels.dtype == np.int16
    assert ct.shape == lab.shape and ct.hu.ndim == 3
    assert nib.aff2axcodes(ct.affine) == ("R", "A", "S") == nib.aff2axcodes(lab.affine)
    assert np.allclose(ct.spacing, lab.spacing)
    m = lab.mask.astype(bool)
    assert m.sum() > 1000
    assert -1400 < ct.hu.min() < -500 and 1000 < ct.hu.max() < 3500
    assert 120 < np.median(ct.hu[m]) < 400  # vertebra HU: mask lines up with bone
    assert np.median(ct.hu[~m]) < np.median(ct.hu[m]) - 100


def test_canonical_orientation_anatomy(volumes):
    ct, lab = volumes["verse005"]
    assert ct.orientation == "PIR" and ct.shape == (106, 103, 180)  # stored 103 x 180 x 106 PIR
    for pid in ("verse005", "verse008", "verse014", "totalseg"):
        _, lab = volumes[pid]
        z = {v: np.argwhere(lab.labels == v)[:, 2].mean() for v in (20, 22)}
        assert z[20] > z[22], pid  # L1 superior of L3: axis 2 runs to S
    sub = nib.load(ROOT / "tptbox/sub-ct_seg-subreg_label-22_msk.nii.gz")
    arr, aff, codes = D.canonicalize(np.asanyarray(sub.dataobj), sub.affine)
    c = {v: np.argwhere(arr == v).mean(axis=0) for v in (42, 43, 44, 50)}
    assert codes == "PIR"
    assert c[42][1] < c[50][1]  # spinous process posterior of the body: axis 1 runs to A
    assert c[43][0] < c[44][0]  # left costal process left of the right one: axis 0 runs to R


def test_verse014_centroids(volumes):
    """Vertebral-body centroids published with 014 (voxel PIR) fall inside their vertebra."""
    ctd = json.loads((ROOT / "verse19/sub-verse014_seg-vb_ctd.json").read_text())
    raw = np.asanyarray(nib.load(ROOT / "verse19/sub-verse014_seg-vert_msk.nii.gz").dataobj)
    for c in ctd[1:]:
        idx = tuple(int(round(c[k])) for k in ("X", "Y", "Z"))
        assert raw[idx] == c["label"]


def test_dicom_series_jpeg2000_to_hu():
    ct = D.load_ct(ROOT / "totalseg/dicom")
    assert ct.meta["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    assert ct.shape == (512, 512, 20) and ct.orientation == "LPS"
    assert np.allclose(ct.spacing, (0.9765625, 0.9765625, 2.0))
    assert ct.hu.min() == -1024 and 1000 < ct.hu.max() < 3000
    assert -1100 < np.median(ct.hu) < 100
    lab = D.load_labels(ROOT / "totalseg/dicom_vertebrae_pred.nii.gz", scheme="totalseg",
                        reference=ct)
    assert lab.orientation == "LAS" and lab.vertebrae() == ["T11", "T12"]
    m = lab.mask.astype(bool)
    assert np.median(ct.hu[m]) > 150  # flipped front-to-back would land in soft tissue/air
    assert np.median(ct.hu[m[:, ::-1, :]]) < 0
    ct2, lab2 = D.load_patient("totalseg_dicom")
    assert np.array_equal(lab2.labels, lab.labels)


def test_single_dicom_file():
    ct = D.load_ct(ROOT / "pydicom/CT_small.dcm")
    assert ct.shape == (128, 128, 1) and ct.meta["Modality"] == "CT"
    assert -1100 < ct.hu.min() < -500 and 500 < ct.hu.max() < 2500


def test_resample_inplane(volumes):
    ct, lab = volumes["verse006"]  # 1 x 1 x 3 mm, 3 mm along R
    hu, labels, spacing = D.resample_inplane(ct, lab, plane="axial", spacing_mm=1.0)
    assert spacing == (1.0, 1.0, ct.spacing[2])
    assert hu.shape == (round(ct.shape[0] * 3), ct.shape[1], ct.shape[2]) == labels.shape


# ---------------------------------------------------------------- slice sets


def test_slice_set_axial(axial):
    cold, warm = axial
    assert cold.patients() == list(D.DEFAULT_PATIENTS)
    assert cold.hu.shape[1:] == (128, 128) and cold.hu.dtype == np.float32
    assert cold.mask.dtype == np.uint8 and cold.labels.dtype == np.int16
    assert len(cold) == len(cold.patient) == len(cold.index) > 500
    assert cold.mask.reshape(len(cold), -1).sum(1).min() > 0  # empty slices excluded
    assert np.array_equal(cold.mask, D.spine_mask(cold.labels))
    counts = cold.counts()
    # cropped VerSe cases: every axial slice holds spine
    assert {p: counts[p] for p in ("verse005", "verse006", "verse007", "verse008")} == {
        "verse005": 180, "verse006": 86, "verse007": 217, "verse008": 221}  # = inferior axis length
    assert counts["verse014"] < 186 and counts["totalseg"] < 112
    for a, b in zip((cold.hu, cold.mask, cold.labels, cold.index), (warm.hu, warm.mask, warm.labels, warm.index)):
        assert np.array_equal(a, b)
    assert len(list(D.slice_cache_dir().glob("*.npz"))) == 7
    # bone under the mask: the mask lines up with the slice
    assert np.median(cold.hu[cold.mask.astype(bool)]) > 120


def test_slice_set_sagittal_and_empty(cache_env):
    s = D.load_slice_set(["verse014", "tptbox"], size=64, plane="sagittal", spacing_mm=2.0)
    assert s.hu.shape[1:] == (64, 64) and s.patients() == ["verse014", "tptbox"]
    s_all = D.load_slice_set(["verse014"], size=64, plane="axial", spacing_mm=2.0, keep_empty=True)
    assert len(s_all) == 186  # all axial positions of the uncropped scan
    assert (s_all.mask.reshape(len(s_all), -1).sum(1) == 0).any()


def test_discover_patients(tmp_path):
    verse = tmp_path / "verse20"
    (verse / "rawdata/sub-verse006").mkdir(parents=True)
    (verse / "derivatives/sub-verse006").mkdir(parents=True)
    os.symlink(ROOT / "verse19/sub-verse006_ct.nii.gz", verse / "rawdata/sub-verse006/sub-verse006_ct.nii.gz")
    os.symlink(ROOT / "verse19/sub-verse006_seg-vert_msk.nii.gz",
               verse / "derivatives/sub-verse006/sub-verse006_seg-vert_msk.nii.gz")
    for name in ("sub-ct_label-22_ct.nii.gz", "sub-ct_seg-vert_label-22_msk.nii.gz",
                 "sub-ct_seg-subreg_label-22_msk.nii.gz"):
        os.symlink(ROOT / "tptbox" / name, verse / name)
    os.symlink(ROOT / "verse19/sub-verse014_ct.nii.gz", verse / "case014.nii.gz")  # CTSpine1K style
    os.symlink(ROOT / "verse19/sub-verse014_seg-vert_msk.nii.gz", verse / "case014_seg.nii.gz")
    found = D.discover_patients(verse)
    assert set(found) == {"verse006", "ct_label-22", "case014"}
    assert found["ct_label-22"].labels.endswith("sub-ct_seg-vert_label-22_msk.nii.gz")
    s = D.load_slice_set(list(found.values()), size=64, spacing_mm=2.0, cache=False)
    assert s.patients() == ["case014", "ct_label-22", "verse006"]
    # never one of two silently: a second CT of a subject, or a second label map of a CT
    os.symlink(ROOT / "verse19/sub-verse014_ct.nii.gz", verse / "case014.nii")
    with pytest.raises(InputError, match=r"case014.nii.*second CT for 'case014'"):
        D.discover_patients(verse)
    (verse / "case014.nii").unlink()
    os.symlink(ROOT / "verse19/sub-verse014_seg-vert_msk.nii.gz", verse / "rawdata" / "case014_seg.nii.gz")
    with pytest.raises(InputError, match="case014.nii.gz: 2 label maps match it"):
        D.discover_patients(verse)


# ---------------------------------------------------------------- styles


def test_styles_deterministic_and_distinct(axial):
    s = axial[0].select(["verse005", "totalseg"])
    hu = s.hu[::10]
    assert D.SOURCE_STYLE == "bone" and len(D.TARGET_STYLES) >= 4
    assert D.list_styles()[0] == "bone"
    outs = {}
    for name in D.list_styles():
        assert D.STYLES[name].description
        a = D.apply_style(hu, name, seed=3, spacing_mm=1.0)
        assert a.dtype == np.float32 and a.shape == hu.shape
        assert a.min() >= 0 and a.max() <= 1
        assert np.array_equal(a, D.apply_style(hu, name, seed=3, spacing_mm=1.0))
        assert np.array_equal(a[0], D.apply_style(hu[0], name, seed=3, spacing_mm=1.0)) or D.STYLES[name].noise_hu > 0
        outs[name] = a
    names = list(outs)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            assert np.abs(outs[x] - outs[y]).mean() > 0.02, (x, y)
    for t in D.TARGET_STYLES:  # every target differs clearly from the source
        assert np.abs(outs[t] - outs["bone"]).mean() > 0.05, t
    noisy = D.apply_style(hu, "sharp_noisy", seed=4, spacing_mm=1.0)
    assert not np.array_equal(noisy, outs["sharp_noisy"])


def test_style_errors_and_bank(cache_env):
    with pytest.raises(InputError, match="unknown style"):
        D.apply_style(np.zeros((4, 4)), "nope", spacing_mm=1.0)
    with pytest.raises(InputError, match="NaN"):
        D.apply_style(np.full((4, 4), np.nan), "bone", spacing_mm=1.0)
    with pytest.raises(InputError, match="shape"):
        D.apply_style(np.zeros(4), "bone", spacing_mm=1.0)
    b1 = D.style_bank("soft_tissue", ["tptbox"], n=8, size=64, seed=1)
    assert b1.shape == (8, 64, 64) and b1.dtype == np.float32
    assert np.array_equal(b1, D.style_bank("soft_tissue", ["tptbox"], n=8, size=64, seed=1))
    custom = D.STYLES["bone"].replace(name="bone_w1500", width=1500)
    assert D.apply_style(np.zeros((2, 2)), custom, spacing_mm=1.0).shape == (2, 2)
    with pytest.raises(InputError, match="spacing_mm"):
        D.apply_style(np.zeros((4, 4)), "bone", spacing_mm=0)


def test_style_lengths_are_millimetres():
    """A style is the same physical change at every resolution: the soft kernel of site_shift
    blurs a 2 mm image by half the pixels it blurs a 1 mm image (same mm), so an edge's width in
    mm matches."""
    edge = np.where(np.arange(64) < 32, -500.0, 1000.0).astype(np.float32)[None, :].repeat(8, 0)
    fine = D.apply_style(np.repeat(edge, 2, axis=1), "site_shift", spacing_mm=1.0)[4]
    coarse = D.apply_style(edge, "site_shift", spacing_mm=2.0)[4]
    def width_mm(row, spacing):  # 10-90 % rise width
        lo, hi = row.min(), row.max()
        return np.count_nonzero((row > lo + 0.1 * (hi - lo)) & (row < lo + 0.9 * (hi - lo))) * spacing
    assert width_mm(fine, 1.0) > 0 and abs(width_mm(fine, 1.0) - width_mm(coarse, 2.0)) <= 2.0
    px = D.apply_style(edge, "site_shift", spacing_mm=1.0)[4]  # the same pixels read as 1 mm: twice the width
    assert width_mm(px, 1.0) < width_mm(coarse, 2.0) / 2 + 1.0


# ---------------------------------------------------------------- protocol


def test_protocol_splits():
    p = D.PROTOCOL
    sets = [set(p.train), set(p.val), set(p.test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(D.DEFAULT_PATIENTS)
    assert p.source_style not in p.target_styles and set(p.style_bank_patients) <= set(p.train)
    d = p.to_dict()
    json.dumps(d)
    assert tuple(d["train"]) == p.train and d["source_style"] == "bone" and "styles" in d
    with pytest.raises(InputError, match="both"):
        D.Protocol(train=("verse005",), val=("verse005",), test=("verse014",))
    with pytest.raises(InputError, match="style"):
        D.Protocol(target_styles=("bone",))


def test_protocol_slices(cache_env):
    x, m, pid = D.protocol_slices("val")
    assert x.shape == m.shape and x.shape[1:] == (128, 128) and set(pid) == {"verse006"}
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    xt, mt, _ = D.protocol_slices("val", "sharp_noisy")
    assert np.array_equal(mt, m) and not np.allclose(xt, x)
    assert np.array_equal(xt, D.protocol_slices("val", "sharp_noisy")[0])


# ---------------------------------------------------------------- bad input (synthetic files)

PIR = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1.0]])


def _ct(shape=(10, 12, 14), affine=PIR, dtype=np.int16):
    rng = np.random.default_rng(0)
    return nib.Nifti1Image(rng.integers(-1000, 1500, shape).astype(dtype), affine)


def _mask(shape=(10, 12, 14), affine=PIR, value=20):
    m = np.zeros(shape, np.uint8)
    m[3:7, 4:8, 5:9] = value
    return nib.Nifti1Image(m, affine)


def test_bad_truncated_and_corrupt_nifti(tmp_path):
    src = (ROOT / "verse19/sub-verse006_ct.nii.gz").read_bytes()
    trunc = tmp_path / "trunc_ct.nii.gz"
    trunc.write_bytes(src[: len(src) // 2])
    with pytest.raises(InputError, match="trunc_ct.nii.gz") as e:
        D.load_ct(trunc)
    assert e.value.source == str(trunc)
    junk = tmp_path / "junk_ct.nii.gz"
    junk.write_bytes(os.urandom(2000))
    with pytest.raises(InputError, match="junk_ct.nii.gz"):
        D.load_ct(junk)
    raw = tmp_path / "raw.nii"
    nib.save(_ct(), raw)
    raw.write_bytes(raw.read_bytes()[:-500])
    with pytest.raises(InputError, match="raw.nii"):
        D.load_ct(raw)
    with pytest.raises(InputError, match="not found"):
        D.load_ct(tmp_path / "absent.nii.gz")


def test_bad_nan_and_non_hu(tmp_path):
    arr = np.asarray(_ct().dataobj).astype(np.float32)
    arr[1, 2, 3] = np.nan
    p = tmp_path / "nan_ct.nii.gz"
    nib.save(nib.Nifti1Image(arr, PIR), p)
    with pytest.raises(InputError, match="NaN"):
        D.load_ct(p)
    p2 = tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32) * 900, PIR), p2)
    with pytest.raises(InputError, match="not CT in HU"):
        D.load_ct(p2)
    assert D.load_nifti_ct(p2, check_hu=False).shape == (8, 8, 8)


def _dicom(path: Path, **changes):
    import pydicom

    ds = pydicom.dcmread(ROOT / "pydicom/CT_small.dcm")
    for k, v in changes.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    ds.save_as(path)
    return path


def test_bad_dicom(tmp_path):
    with pytest.raises(InputError, match="no pixel data"):
        D.load_ct(_dicom(tmp_path / "nopix.dcm", PixelData=None))
    with pytest.raises(InputError, match="modality is 'MR'"):
        D.load_ct(_dicom(tmp_path / "mr.dcm", Modality="MR"))
    (tmp_path / "notdicom.dcm").write_bytes(b"hello")
    with pytest.raises(InputError, match="notdicom.dcm"):
        D.load_ct(tmp_path / "notdicom.dcm")
    series = tmp_path / "series"
    series.mkdir()
    _dicom(series / "a.dcm")
    _dicom(series / "b.dcm")  # same position twice
    with pytest.raises(InputError, match="same position"):
        D.load_dicom_series(series)


def test_bad_mask_pairs(tmp_path):
    ct_p = tmp_path / "x_ct.nii.gz"
    nib.save(_ct(), ct_p)
    ct = D.load_ct(ct_p)
    cases = {
        "shape": _mask(shape=(10, 12, 13)),
        "orientation": _mask(affine=np.eye(4)),  # RAS-stored with the PIR image's shape
        "spacing": _mask(affine=PIR @ np.diag([2.0, 1, 1, 1])),
    }
    for problem, img in cases.items():
        p = tmp_path / f"{problem}_msk.nii.gz"
        nib.save(img, p)
        with pytest.raises(InputError, match=problem) as e:
            D.load_labels(p, reference=ct)
        assert e.value.source == str(p)
    empty = tmp_path / "empty_msk.nii.gz"
    nib.save(_mask(value=0), empty)
    with pytest.raises(InputError, match="empty mask"):
        D.load_labels(empty, reference=ct)
    assert D.load_labels(empty, reference=ct, allow_empty=True).mask.sum() == 0
    good = tmp_path / "x_msk.nii.gz"
    nib.save(_mask(), good)
    rec = D.PatientRecord("synthetic", str(ct_p), str(empty))
    with pytest.raises(InputError, match="empty_msk.nii.gz"):
        D.load_patient(rec, verify=False)
    rec = D.PatientRecord("synthetic", str(ct_p), str(good))
    ct2, lab2 = D.load_patient(rec, verify=False)
    assert ct2.shape == lab2.shape == (14, 10, 12)


def test_png(tmp_path):
    from PIL import Image

    img = (np.linspace(0, 255, 64 * 64).reshape(64, 64)).astype(np.uint8)
    p = tmp_path / "slice.png"
    Image.fromarray(img).save(p)
    x = D.read_png(p)
    assert x.shape == (64, 64) and x.dtype == np.float32 and np.isclose(x.max(), 1.0)
    hu = D.read_png(p, window=(500, 2000))
    assert np.isclose(hu.min(), -500) and np.isclose(hu.max(), 1500)
    with pytest.raises(InputError, match="holds no HU"):
        D.load_ct(p)
    (tmp_path / "bad.png").write_bytes(b"xx")
    with pytest.raises(InputError, match="bad.png"):
        D.read_png(tmp_path / "bad.png")


# ----------------------------------------------------------------------------- styles beyond a LUT
def _phantom(size=128):
    """A body-like HU slice at 1 mm: air, a fat ring, water, muscle blocks, a vertebra (cancellous
    bone in a cortical ring) and a smooth HU ramp, so that every tissue the styles treat is present."""
    yy, xx = np.mgrid[:size, :size] - size / 2
    r = np.hypot(yy / 0.8, xx)
    hu = np.full((size, size), -1000.0, np.float32)
    hu[r < 60] = -100.0  # subcutaneous fat
    hu[r < 52] = 0.0  # water / organs
    hu[(np.abs(yy) < 10) & (np.abs(xx - 25) < 12)] = 50.0  # muscle
    bone = np.hypot(yy - 12, xx)
    hu[bone < 14] = 1200.0  # cortex
    hu[bone < 11] = 250.0  # cancellous bone
    ramp = (np.abs(yy + 25) < 6) & (np.abs(xx) < 40)
    hu[ramp] = np.broadcast_to(np.linspace(-200, 400, size, dtype=np.float32), (size, size))[ramp]
    return hu


def test_lookup_table_styles_are_monotone_maps_and_hard_styles_are_not():
    from ctxstyle.data.styles import HARD_STYLES, SOURCE_STYLE, TARGET_STYLES, apply_style, monotone_lut_rmse

    hu = _phantom()
    src = apply_style(hu, SOURCE_STYLE, spacing_mm=1.0)
    lut = {s: monotone_lut_rmse(src, apply_style(hu, s, spacing_mm=1.0)) for s in ("soft_tissue", "wide_gamma",
                                                                                  "dark_lowcontrast", "spine")}
    assert max(lut.values()) < 1e-6, lut  # a window or display curve of the source: exactly a LUT
    assert monotone_lut_rmse(src, 1.0 - src) < 1e-9  # an inverted display is a (decreasing) LUT too
    hard = {s: monotone_lut_rmse(src, apply_style(hu, s, spacing_mm=1.0)) for s in HARD_STYLES}
    assert set(HARD_STYLES) == {"lowdose_bias", "tissue_swap"} and not set(HARD_STYLES) & set(TARGET_STYLES)
    assert min(hard.values()) > 0.02, hard  # the best monotone LUT misses by >= 2 % of the gray range


def test_tissue_swap_reverses_fat_and_water_and_the_bias_field_moves_one_tissue_across_the_slice():
    from ctxstyle.data.styles import apply_style, window

    hu = _phantom()
    fat, water = (hu == -100.0), (hu == 0.0)
    src = apply_style(hu, "bone", spacing_mm=1.0)
    swap = apply_style(hu, "tissue_swap", spacing_mm=1.0)
    assert src[fat].mean() < src[water].mean() and swap[fat].mean() > swap[water].mean()
    assert np.allclose(swap[water], window(np.zeros(1), 150, 1000)[0], atol=1e-6)  # water untouched
    a, b = apply_style(hu, "lowdose_bias", seed=0, spacing_mm=1.0), apply_style(hu, "lowdose_bias", seed=0, spacing_mm=1.0)
    assert np.array_equal(a, b)  # reproducible from the name and the seed
    quarters = [a[:64, :64][water[:64, :64]].mean(), a[64:, 64:][water[64:, 64:]].mean(),
                a[:64, 64:][water[:64, 64:]].mean(), a[64:, :64][water[64:, :64]].mean()]
    assert max(quarters) - min(quarters) > 30 / 1500  # water's gray value moves by > 30 HU across the slice
    with pytest.raises(InputError):
        from ctxstyle.data.styles import monotone_lut_rmse
        monotone_lut_rmse(np.zeros(4), np.zeros(5))
