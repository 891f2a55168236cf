"""`ctxstyle` never loses a user's data and never answers bad input with a wrong image or a
traceback (issue 17): every bad case below ends with one line naming the file (or option) and
the problem, exit status 2, and no input file changes (checked over the whole module)."""

import argparse
import hashlib
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from ctxstyle.cli import main
from ctxstyle.data import data_dir
from ctxstyle.errors import InputError
from ctxstyle.stylize import collect_inputs, plan_outputs
from ctxstyle.train import TrainConfig, load_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 1-step decoder trained on random 32 px images (the trainer's real checkpoint format)."""
    out = tmp_path_factory.mktemp("ckpt")
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(image_size=32, batch_size=2, iterations=1, device="cpu", output_dir=str(out / "run"))
    return train(cfg, images, images, progress=False)


def _dicom(path, **changes):
    """A copy of pydicom's CT_small.dcm (real CT, 128 x 128) with some tags changed or deleted."""
    ds = pydicom.dcmread(data_dir() / "pydicom" / "CT_small.dcm")
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


def _variant(checkpoint, path, change):
    state = load_checkpoint(checkpoint)
    change(state)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, checkpoint):
    """Every input of the module, good and bad; their sha256 must not change across the module."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    p = argparse.Namespace(root=root, checkpoint=checkpoint)
    for name in ("content", "style"):
        setattr(p, name, root / f"{name}.png")
        Image.fromarray((rng.random((40, 36)) * 255).astype(np.uint8)).save(getattr(p, name))
    p.tiny = root / "tiny.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(p.tiny)
    p.huge = root / "huge.png"
    Image.new("L", (8000, 8000)).save(p.huge)
    p.jpeg = root / "photo.jpg"
    Image.fromarray((rng.random((40, 36)) * 255).astype(np.uint8)).save(p.jpeg)
    p.png_named_dcm = root / "slice.dcm"
    shutil.copy(p.content, p.png_named_dcm)

    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    p.nifti = root / "ct.nii.gz"
    nib.save(nib.Nifti1Image((rng.random((24, 20, 3)) * 1500 - 500).astype(np.float32), affine), p.nifti)
    p.nifti_unit = root / "normalised.nii.gz"
    nib.save(nib.Nifti1Image((rng.random((24, 20, 3)) * 0.51 - 0.02).astype(np.float32), affine), p.nifti_unit)

    p.dicom = _dicom(root / "ct.dcm")
    p.no_rescale = _dicom(root / "stored.dcm", RescaleSlope=None, RescaleIntercept=None)
    ds = pydicom.dcmread(p.dicom)
    ds.PixelData = (ds.pixel_array.astype(np.int16) - 1024).tobytes()  # stored values = HU
    del ds.RescaleSlope, ds.RescaleIntercept
    p.hu_no_rescale = root / "hu.dcm"
    ds.save_as(p.hu_no_rescale)
    p.truncated = root / "truncated.dcm"
    p.truncated.write_bytes(p.dicom.read_bytes()[:-5000])

    # a PACS-like export: two series with equal file names, a DICOMDIR, a report, text, a thumbnail
    p.export = root / "export"
    for rel, series, number in (("s1/IM0001", "1.2.3.1", 1), ("s1/IM0002", "1.2.3.1", 2), ("s2/IM0001", "1.2.3.2", 1)):
        _dicom(p.export / rel, SeriesInstanceUID=series, InstanceNumber=number,
               ImagePositionPatient=[0.0, 0.0, 5.0 * number])
    _dicom(p.export / "SR0001", Modality="SR", PixelData=None)
    (p.export / "DICOMDIR").write_bytes(b"\0" * 200)
    (p.export / "README.TXT").write_text("export of 2 series\n")
    shutil.copy(p.jpeg, p.export / "thumb.jpg")
    (p.export / ".DS_Store").write_bytes(b"\0")

    p.mismatched = _variant(checkpoint, root / "mismatched.pt", lambda s: s["config"].update(adain_layer="relu3_1"))
    p.newer = _variant(checkpoint, root / "newer.pt",
                       lambda s: (s["config"].update(future_option=1), s.update(ctxstyle_version="9.0")))
    p.other_weights = _variant(checkpoint, root / "other-weights.pt",
                               lambda s: s["weights_provenance"].update(sha256="0" * 64))
    p.decoder_dcm = Path(shutil.copy(checkpoint, root / "decoder.dcm"))  # a checkpoint, oddly named
    p.code = root / "code.pt"
    torch.save({"format": "ctxstyle-decoder-v1", "config": argparse.Namespace(lr=1)}, p.code)
    p.junk_weights = root / "junk.pth"
    p.junk_weights.write_bytes(b"not a state dict")
    p.file = root / "a-file"
    p.file.write_text("not a folder")
    p.words = root / "words.pt"
    p.words.write_text("checkpoint\n")  # pickle protocol 0 would read 'c' as an opcode
    p.hello = root / "hello.pth"
    p.hello.write_text("hello world")
    p.thin = root / "thin.png"
    Image.fromarray((rng.random((64, 4)) * 255).astype(np.uint8)).save(p.thin)
    p.line = root / "line.png"
    Image.fromarray((rng.random((1, 64)) * 255).astype(np.uint8)).save(p.line)
    p.complex_nifti = root / "complex.nii.gz"
    nib.save(nib.Nifti1Image((rng.random((24, 20, 3)) * 1500).astype(np.complex64), affine), p.complex_nifti)
    p.nan_decoder = _variant(checkpoint, root / "diverged.pt",
                             lambda s: next(v for v in s["decoder"].values() if v.is_floating_point()).fill_(float("nan")))
    # a NIfTI data folder: a CT and its label map side by side (CTSpine1K / VerSe style)
    p.nifti_folder = root / "nifti-folder"
    p.nifti_folder.mkdir()
    shutil.copy(p.nifti, p.nifti_folder / "case1.nii.gz")
    nib.save(nib.Nifti1Image(rng.integers(0, 6, (24, 20, 3)).astype(np.uint8), affine), p.nifti_folder / "case1_seg.nii.gz")
    p.bad_layer = _variant(checkpoint, root / "bad-layer.pt", lambda s: s["config"].update(adain_layer="relu9_9"))
    p.bad_encoder = _variant(checkpoint, root / "bad-encoder.pt", lambda s: s["config"].update(encoder="vgg99"))

    before = {f: _sha256(f) for f in sorted(root.rglob("*")) + [checkpoint] if f.is_file()}
    yield p
    after = {f: _sha256(f) for f in sorted(root.rglob("*")) + [checkpoint] if f.is_file()}
    assert after == before  # no input written over, deleted or added to


def _run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _refused(capsys, *args, expect=()):
    """The command exits with 2 and one error line naming what it is told to name."""
    rc, _, err = _run(capsys, *args)
    lines = err.strip().splitlines()
    errors = [line for line in lines if ": error: " in line]
    # one error line, last; anything before it is a one-line note (a warning, the weights' source)
    assert rc == 2 and len(errors) == 1 and lines[-1] == errors[0], err
    assert all(line.startswith("ctxstyle") for line in lines), err
    for text in expect:
        assert str(text) in errors[0], errors[0]
    return errors[0]


def _stylize(p, content, output, *extra):
    return ["stylize", content, p.style, "-o", output, "--checkpoint", p.checkpoint, *extra]


# ----------------------------------------------------------------------- nothing is overwritten
@pytest.mark.parametrize("which", ["content", "nifti", "dicom"])
def test_output_naming_its_input_is_refused(inputs, capsys, which):
    source = getattr(inputs, which)
    _refused(capsys, *_stylize(inputs, source, source), expect=[source, "--overwrite"])


def test_output_naming_the_style_or_the_checkpoint_is_refused_even_with_overwrite(inputs, capsys):
    _refused(capsys, *_stylize(inputs, inputs.content, inputs.style, "--overwrite"), expect=[inputs.style])
    args = ["stylize", inputs.dicom, inputs.style, "-o", inputs.decoder_dcm, "--checkpoint", inputs.decoder_dcm,
            "--overwrite"]
    _refused(capsys, *args, expect=[f"is the input {inputs.decoder_dcm}"])


def test_output_in_or_as_an_input_folder_is_refused(inputs, capsys):
    _refused(capsys, *_stylize(inputs, inputs.export, inputs.export), expect=[inputs.export / "s1" / "IM0001"])
    _refused(capsys, *_stylize(inputs, inputs.export, inputs.export / "styled"), expect=["inside the input folder"])
    _refused(capsys, *_stylize(inputs, inputs.content, inputs.root), expect=["is the input"])


def test_existing_output_needs_overwrite(inputs, capsys, tmp_path):
    out = tmp_path / "out.png"
    out.write_bytes(b"the user's file")
    _refused(capsys, *_stylize(inputs, inputs.content, out), expect=[out, "exists"])
    assert out.read_bytes() == b"the user's file"
    rc, _, err = _run(capsys, *_stylize(inputs, inputs.content, out, "--overwrite"))
    assert rc == 0, err
    assert Image.open(out).size == (36, 40) and sorted(q.name for q in tmp_path.iterdir()) == ["out.png"]


def test_overwrite_may_replace_the_input_itself(inputs, capsys, tmp_path):
    own = Path(shutil.copy(inputs.content, tmp_path / "mine.png"))
    before = _sha256(own)
    rc, _, err = _run(capsys, *_stylize(inputs, own, own, "--overwrite"))
    assert rc == 0 and _sha256(own) != before, err


def test_a_failed_write_leaves_nothing_behind(inputs, capsys, tmp_path, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        open(fp, "wb").write(b"half a PNG")
        raise OSError(28, "No space left on device", str(fp))

    monkeypatch.setattr(Image.Image, "save", broken_save)
    _refused(capsys, *_stylize(inputs, inputs.content, tmp_path / "out.png"), expect=["No space left"])
    assert list(tmp_path.iterdir()) == []


def test_pacs_export_keeps_its_tree_and_its_series(inputs, capsys, tmp_path):
    out = tmp_path / "styled"
    rc, stdout, err = _run(capsys, *_stylize(inputs, inputs.export, out))
    assert rc == 0, err
    assert "skipped 4 file(s)" in err  # DICOMDIR, the report, the text and the thumbnail
    written = sorted(q.relative_to(out).as_posix() for q in out.rglob("*") if q.is_file())
    assert written == ["s1/IM0001", "s1/IM0002", "s2/IM0001"]  # mirrored, no collision, no temp file
    result = {rel: pydicom.dcmread(out / rel) for rel in written}
    source = {rel: pydicom.dcmread(inputs.export / rel) for rel in written}
    s1, s2 = result["s1/IM0001"].SeriesInstanceUID, result["s2/IM0001"].SeriesInstanceUID
    assert result["s1/IM0002"].SeriesInstanceUID == s1 != s2  # one new series per input series
    assert {s1, s2}.isdisjoint({"1.2.3.1", "1.2.3.2"})
    for rel in written:  # same study, order and geometry
        assert result[rel].StudyInstanceUID == source[rel].StudyInstanceUID
        assert result[rel].InstanceNumber == source[rel].InstanceNumber
        assert list(result[rel].ImagePositionPatient) == list(source[rel].ImagePositionPatient)

    rc, _, err = _run(capsys, *_stylize(inputs, inputs.export, tmp_path / "new-study", "--new-study"))
    studies = {pydicom.dcmread(q).StudyInstanceUID for q in (tmp_path / "new-study").rglob("IM*")}
    assert rc == 0 and len(studies) == 1 and studies != {source["s1/IM0001"].StudyInstanceUID}


def test_inputs_that_would_land_on_one_output_are_refused(inputs, tmp_path):
    files, _ = collect_inputs([inputs.export / "s1", inputs.export / "s2"])  # both hold IM0001
    with pytest.raises(InputError, match="two inputs would be written here"):
        plan_outputs(files, tmp_path / "out", single=False)


# ----------------------------------------------------------------------- no wrong image
@pytest.mark.parametrize("weights", [["nan", "1"], ["inf", "1"], ["-1", "2"], ["0", "0"], ["1"]])
def test_bad_style_weights(inputs, capsys, tmp_path, weights):
    args = ["stylize", inputs.content, inputs.style, inputs.style, "-o", tmp_path / "o.png",
            "--checkpoint", inputs.checkpoint, "--style-weights", *weights]
    _refused(capsys, *args, expect=["--style-weights"])


@pytest.mark.parametrize("option, values", [("--window", ["500", "0"]), ("--window", ["40", "-400"]),
                                            ("--window", ["nan", "400"]), ("--style-window", ["40", "0"]),
                                            ("--alpha", ["1.5"]), ("--alpha", ["nan"])])
def test_bad_window_and_alpha(inputs, capsys, tmp_path, option, values):
    _refused(capsys, *_stylize(inputs, inputs.dicom, tmp_path / "o.dcm", option, *values), expect=[option])


@pytest.mark.parametrize("source, name", [("dicom", "x.png"), ("dicom", "x.nii.gz"), ("content", "x.nii.gz"),
                                          ("content", "x.jpg"), ("nifti", "x.png"), ("content", "x.dcm")])
def test_output_suffix_must_fit_the_input_kind(inputs, capsys, tmp_path, source, name):
    _refused(capsys, *_stylize(inputs, getattr(inputs, source), tmp_path / name), expect=[name, "converts no format"])
    assert list(tmp_path.iterdir()) == []


def test_files_that_are_no_png_nifti_or_dicom(inputs, capsys, tmp_path):
    _refused(capsys, *_stylize(inputs, inputs.jpeg, tmp_path / "o.png"), expect=[inputs.jpeg, "JPEG"])
    _refused(capsys, *_stylize(inputs, inputs.png_named_dcm, tmp_path / "o.dcm"),
             expect=[inputs.png_named_dcm, "PNG data"])


def test_values_that_are_not_hu(inputs, capsys, tmp_path):
    _refused(capsys, *_stylize(inputs, inputs.nifti_unit, tmp_path / "o.nii.gz"),
             expect=[inputs.nifti_unit, "not CT in HU"])
    _refused(capsys, *_stylize(inputs, inputs.no_rescale, tmp_path / "o.dcm"),
             expect=[inputs.no_rescale, "RescaleSlope"])
    assert list(tmp_path.iterdir()) == []


def test_a_label_map_beside_its_ct_in_a_folder_is_skipped_with_a_warning(inputs, capsys, tmp_path):
    """As non-CT DICOM objects are: the CT is stylized, the label map left out (and named in one
    warning); the same label map named directly is refused."""
    rc, _, err = _run(capsys, *_stylize(inputs, inputs.nifti_folder, tmp_path / "out"))
    assert rc == 0, err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["case1.nii.gz"]
    assert "no CT in HU" in err and "case1_seg.nii.gz" in err
    _refused(capsys, *_stylize(inputs, inputs.nifti_folder / "case1_seg.nii.gz", tmp_path / "o.nii.gz"),
             expect=["case1_seg.nii.gz", "not CT in HU"])


def test_a_checkpoint_with_non_finite_weights_is_refused(inputs, capsys, tmp_path):
    """A diverged run's decoder would write NaN as black pixels or air: refused before any work."""
    _refused(capsys, "stylize", inputs.content, inputs.style, "-o", tmp_path / "o.png", "--checkpoint", inputs.nan_decoder,
             expect=[inputs.nan_decoder, "NaN or infinite"])
    assert list(tmp_path.iterdir()) == []


def test_dicom_without_rescale_tags_holding_plausible_hu_is_read_as_hu(inputs, capsys, tmp_path):
    out = tmp_path / "o.dcm"
    rc, _, err = _run(capsys, *_stylize(inputs, inputs.hu_no_rescale, out))
    assert rc == 0, err
    ds = pydicom.dcmread(out)
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)  # written as what it was read as


def test_checkpoint_trained_with_other_encoder_weights(inputs, capsys, tmp_path):
    args = ["stylize", inputs.content, inputs.style, "-o", tmp_path / "o.png", "--checkpoint", inputs.other_weights]
    _refused(capsys, *args, expect=[inputs.other_weights, "CTXSTYLE_WEIGHTS"])


def test_weights_setting_naming_an_empty_folder_or_a_corrupt_file(inputs, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CTXSTYLE_WEIGHTS", str(tmp_path))
    _refused(capsys, "weights", "vgg19", expect=[tmp_path, "CTXSTYLE_WEIGHTS"])
    monkeypatch.setenv("CTXSTYLE_WEIGHTS", str(inputs.junk_weights))
    line = _refused(capsys, "weights", "vgg19", expect=[inputs.junk_weights])
    assert "weights_only" not in line


# ----------------------------------------------------------------------- no traceback
def test_output_location_that_cannot_be_written(inputs, capsys):
    _refused(capsys, *_stylize(inputs, inputs.content, inputs.file / "o.png"), expect=[inputs.file, "is a file"])


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_output_folder(inputs, capsys, tmp_path):
    tmp_path.chmod(0o500)
    try:
        _refused(capsys, *_stylize(inputs, inputs.content, tmp_path / "o.png"), expect=[tmp_path, "not writable"])
    finally:
        tmp_path.chmod(0o700)


def test_image_sizes(inputs, capsys, tmp_path):
    _refused(capsys, *_stylize(inputs, inputs.tiny, tmp_path / "o.png"), expect=[inputs.tiny, "8x8", "too small"])
    _refused(capsys, *_stylize(inputs, inputs.huge, tmp_path / "o.png"), expect=[inputs.huge, "8000x8000", "GiB"])
    _refused(capsys, *_stylize(inputs, inputs.content, tmp_path / "o.png", "--max-memory", "0.001"),
             expect=["40x36", "--max-memory"])


def test_checkpoints_that_do_not_fit(inputs, capsys, tmp_path):
    for ckpt, problem in ((inputs.mismatched, "do not fit"), (inputs.newer, "future_option"),
                          (inputs.code, "argparse.Namespace")):
        args = ["stylize", inputs.content, inputs.style, "-o", tmp_path / "o.png", "--checkpoint", ckpt]
        line = _refused(capsys, *args, expect=[ckpt, problem])
        assert "weights_only" not in line  # never advise loading a file as code
    assert list(tmp_path.iterdir()) == []


def test_files_that_are_no_pytorch_files(inputs, capsys, tmp_path, monkeypatch):
    for junk in (inputs.words, inputs.hello):
        args = ["stylize", inputs.content, inputs.style, "-o", tmp_path / "o.png", "--checkpoint", junk]
        line = _refused(capsys, *args, expect=[junk, "not a PyTorch file"])
        assert "Python object" not in line
    monkeypatch.setenv("CTXSTYLE_WEIGHTS", str(inputs.hello))
    _refused(capsys, "weights", "vgg19", expect=[inputs.hello, "not a PyTorch file"])
    assert list(tmp_path.iterdir()) == []


def test_images_too_thin_for_the_decoder(inputs, capsys, tmp_path):
    """The decoder's reflection padding needs 2 feature positions along each side, not 2 in all."""
    for thin in (inputs.thin, inputs.line):
        _refused(capsys, *_stylize(inputs, thin, tmp_path / "o.png"), expect=[thin, "too small", "each side"])
    args = ["stylize", inputs.content, inputs.thin, "-o", tmp_path / "o.png", "--checkpoint", inputs.checkpoint]
    _refused(capsys, *args, expect=[inputs.thin, "too small"])  # as a style image too
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_naming_an_unknown_encoder_or_layer(inputs, capsys, tmp_path):
    for ckpt, what in ((inputs.bad_layer, "relu9_9"), (inputs.bad_encoder, "vgg99")):
        args = ["stylize", inputs.content, inputs.style, "-o", tmp_path / "o.png", "--checkpoint", ckpt]
        _refused(capsys, *args, expect=[ckpt, what])


def test_training_never_replaces_a_users_files(capsys, tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "config.json").write_text('{"my": "settings"}')
    config = tmp_path / "train.yaml"
    config.write_text(f"image_size: 32\noutput_dir: {run}\n")
    _refused(capsys, "train", "--config", config, "--quiet", expect=[run / "config.json", "not a ctxstyle training config"])
    assert (run / "config.json").read_text() == '{"my": "settings"}'
    (run / "config.json").unlink()
    (run / "checkpoint-last.pt").write_text("my notes")
    _refused(capsys, "train", "--config", config, "--quiet", "--no-resume", expect=[run / "checkpoint-last.pt"])
    _refused(capsys, "train", "--config", config, "--quiet", expect=[run / "checkpoint-last.pt"])
    assert (run / "checkpoint-last.pt").read_text() == "my notes" and sorted(run.iterdir()) == [run / "checkpoint-last.pt"]


def test_training_continues_in_its_own_folders_of_every_version(tmp_path):
    """A run folder written by an older ctxstyle (``content_loss`` where newer ones say ``method``)
    is the project's own: training goes on there (cached runs must load, not be refused)."""
    import json

    run = tmp_path / "old-run"
    run.mkdir()
    cfg = TrainConfig(image_size=32, batch_size=2, iterations=1, device="cpu", output_dir=str(run))
    legacy = {k: v for k, v in cfg.to_dict().items() if k != "method"} | {"content_loss": "contextual"}
    (run / "config.json").write_text(json.dumps(legacy))
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert train(cfg, images, images, progress=False) == run / "checkpoint-last.pt"
    assert json.loads((run / "config.json").read_text())["method"] == cfg.method


def test_data_commands_never_replace_a_users_files(capsys, tmp_path):
    from ctxstyle.data import fetch

    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "styles.png").write_text("mine")
    _refused(capsys, "data", "figures", "--dest", figs, expect=[figs / "styles.png", "--force"])
    assert sorted(figs.iterdir()) == [figs / "styles.png"] and (figs / "styles.png").read_text() == "mine"
    dest = tmp_path / "fetched"
    mine = dest / "pydicom" / "CT_small.dcm"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    with pytest.raises(InputError, match="force=True") as refused:
        fetch(dest, files=["pydicom/CT_small.dcm"])
    assert refused.value.source == str(mine) and mine.read_text() == "mine"
    with pytest.raises(InputError, match="CT_small.dcm"):  # refused before anything is downloaded
        fetch(dest, downloader=lambda url, target: pytest.fail(f"downloaded {url}"))
    assert sorted(p.name for p in dest.rglob("*")) == ["CT_small.dcm", "pydicom"]
    fetch(dest, files=["pydicom/CT_small.dcm"], force=True)  # told to: replaced by the verified file
    assert mine.read_bytes() == (data_dir() / "pydicom" / "CT_small.dcm").read_bytes()


def test_verify_checks_the_folder_it_is_given_and_something(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "SHA256SUMS").write_text("")
    _refused(capsys, "data", "verify", "--dest", empty, expect=[empty / "SHA256SUMS", "lists no files"])
    _refused(capsys, "data", "verify", "--dest", tmp_path / "nowhere", expect=[tmp_path / "nowhere", "not a folder"])
    _refused(capsys, "data", "verify", "--dest", tmp_path, expect=[tmp_path, "missing"])  # the built-in table
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.bin").write_bytes(b"ct")
    (mine / "SHA256SUMS").write_text(f"{_sha256(mine / 'a.bin')}  a.bin\n")
    assert main(["data", "verify", "--dest", str(mine)]) in (0, None)
    out = capsys.readouterr().out  # says which table it checked against, and how many files
    assert f"all 1 files match {mine / 'SHA256SUMS'}" in out


def test_complex_volumes_and_folders_as_checkpoints(inputs, capsys, tmp_path):
    _refused(capsys, *_stylize(inputs, inputs.complex_nifti, tmp_path / "o.nii.gz"),
             expect=[inputs.complex_nifti, "complex"])
    args = ["stylize", inputs.content, inputs.style, "-o", tmp_path / "o.png", "--checkpoint", inputs.root]
    _refused(capsys, *args, expect=[inputs.root, "is a folder"])


def test_empty_configs_and_negative_seeds(capsys, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    _refused(capsys, "train", "--config", empty, "--quiet", expect=[empty, "empty"])
    _refused(capsys, "train", "--method", "ours", "--recipe", empty, "--checkpoints", tmp_path / "ck", "--quiet",
             expect=[empty, "empty"])
    seed = tmp_path / "seed.yaml"
    seed.write_text(f"seed: -1\noutput_dir: {tmp_path / 'run'}\n")
    _refused(capsys, "train", "--config", seed, "--quiet", expect=[seed, "seed"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.yaml", "seed.yaml"]


def test_trainer_checkpoints_load_as_data(checkpoint):
    state = torch.load(checkpoint, weights_only=True)
    assert isinstance(state["generator"], torch.Tensor) and state["decoder"] and state["history"]


def test_truncated_uncompressed_dicom(inputs, capsys, tmp_path):
    line = _refused(capsys, *_stylize(inputs, inputs.truncated, tmp_path / "o.dcm"), expect=[inputs.truncated])
    assert "JPEG 2000" not in line


def test_unknown_architecture_and_malformed_checksums(capsys, tmp_path, monkeypatch):
    _refused(capsys, "weights", "nosucharch", expect=["nosucharch"])
    (tmp_path / "SHA256SUMS").write_text("0123  ./a.nii.gz\n")
    monkeypatch.setenv("CTXSTYLE_DATA", str(tmp_path))
    _refused(capsys, "data", "verify", expect=[tmp_path / "SHA256SUMS", "malformed"])


@pytest.mark.parametrize("line, problem", [("iterations: ten", "iterations"), ("lr: -0.001", "lr"),
                                           ("lr: abc", "lr"), ("device: tpu", "device"),
                                           ("style_layers: 3", "style_layers"), ("bf16: maybe", "bf16"),
                                           ("encoder: vgg99", "vgg99"), ("adain_layer: relu9_9", "relu9_9"),
                                           ("image_size: 8", "image_size")])
def test_bad_training_configs(capsys, tmp_path, line, problem):
    config = tmp_path / "train.yaml"
    config.write_text(f"image_size: 32\n{line}\noutput_dir: {tmp_path / 'run'}\n")
    _refused(capsys, "train", "--config", config, "--quiet", expect=[config, problem])
    assert not (tmp_path / "run").exists()


def test_training_output_under_a_file(inputs, capsys, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(f"image_size: 32\noutput_dir: {inputs.file / 'run'}\n")
    _refused(capsys, "train", "--config", config, "--quiet", expect=[inputs.file, "is a file"])


def test_config_numbers_written_as_text_are_read_as_numbers():
    cfg = TrainConfig.from_dict({"lr": "1e-4", "iterations": "10", "style_weight": 3})
    assert cfg.lr == 1e-4 and cfg.iterations == 10 and cfg.style_weight == 3 and isinstance(cfg.style_weight, int)


def test_debug_keeps_the_traceback(inputs, capsys, tmp_path):
    rc, _, err = _run(capsys, "stylize", "--debug", inputs.content, inputs.style, "-o", tmp_path / "o.png",
                      "--checkpoint", tmp_path / "missing.pt")
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].endswith("checkpoint file does not exist")
