"""`ctxstyle` command line: train and stylize round trips for PNG, NIfTI and DICOM (issue 2, item 8)."""

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from ctxstyle.cli import main
from ctxstyle.data import data_dir, read_png
from ctxstyle.stylize import Stylizer, default_window
from ctxstyle.train import load_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    config = out / "train.yaml"
    config.write_text(
        "image_size: 32\nbatch_size: 2\niterations: 2\ndevice: cpu\n"
        f"output_dir: {out / 'run'}\n"
    )
    assert main(["train", "--config", str(config), "--quiet"]) == 0
    return out / "run" / "checkpoint-last.pt"


@pytest.fixture()
def png_pair(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name in ("content.png", "style.png"):
        img = (rng.random((40, 36)) * 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / name)
        paths.append(tmp_path / name)
    return paths


def test_png_round_trip_keeps_size(tmp_path, checkpoint, png_pair):
    out = tmp_path / "out.png"
    assert main(["stylize", str(png_pair[0]), str(png_pair[1]), "-o", str(out), "--checkpoint", str(checkpoint)]) == 0
    result = read_png(out)
    assert result.shape == (40, 36) and 0.0 <= result.min() and result.max() <= 1.0


def test_two_styles_with_weights_and_alpha(tmp_path, checkpoint, png_pair):
    out = tmp_path / "blend.png"
    args = ["stylize", str(png_pair[0]), str(png_pair[1]), str(png_pair[0]), "-o", str(out),
            "--checkpoint", str(checkpoint), "--style-weights", "0.7", "0.3", "--alpha", "0.5"]
    assert main(args) == 0 and out.is_file()


def test_stylizer_matches_cli_output(tmp_path, checkpoint, png_pair):
    out = tmp_path / "out.png"
    main(["stylize", str(png_pair[0]), str(png_pair[1]), "-o", str(out), "--checkpoint", str(checkpoint)])
    stylizer = Stylizer.from_checkpoint(checkpoint, device="cpu")
    direct = stylizer(torch.from_numpy(read_png(png_pair[0])), torch.from_numpy(read_png(png_pair[1])))
    np.testing.assert_allclose(read_png(out), direct[0, 0].numpy(), atol=1 / 65535 + 1e-6)


def test_dicom_in_gives_dicom_out_with_header_and_hu_scaling(tmp_path, checkpoint, png_pair):
    source = data_dir() / "pydicom" / "CT_small.dcm"
    out = tmp_path / "styled.dcm"
    assert main(["stylize", str(source), str(png_pair[1]), "-o", str(out), "--checkpoint", str(checkpoint)]) == 0
    a, b = pydicom.dcmread(source), pydicom.dcmread(out)
    assert b.PatientID == a.PatientID and b.StudyInstanceUID == a.StudyInstanceUID
    assert b.SOPInstanceUID != a.SOPInstanceUID and b.SeriesInstanceUID != a.SeriesInstanceUID
    assert (b.Rows, b.Columns) == (a.Rows, a.Columns)
    assert float(b.RescaleSlope) == float(a.RescaleSlope) and float(b.RescaleIntercept) == float(a.RescaleIntercept)
    assert "DERIVED" in list(b.ImageType)
    level, width = default_window()
    hu = b.pixel_array * float(b.RescaleSlope) + float(b.RescaleIntercept)
    assert hu.min() >= level - width / 2 - 1 and hu.max() <= level + width / 2 + 1
    assert (float(b.WindowCenter), float(b.WindowWidth)) == (level, width)  # viewers show the gray scale made
    assert "VOILUTSequence" not in b


def test_nifti_volume_round_trip(tmp_path, checkpoint, png_pair):
    import nibabel as nib

    rng = np.random.default_rng(1)
    hu = (rng.random((24, 20, 3)) * 1500 - 500).astype(np.float32)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    src = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, affine), str(src))
    out = tmp_path / "ct_styled.nii.gz"
    assert main(["stylize", str(src), str(png_pair[1]), "-o", str(out), "--checkpoint", str(checkpoint)]) == 0
    img = nib.load(str(out))
    assert img.shape == hu.shape and np.allclose(img.affine, affine)
    assert np.isfinite(img.get_fdata()).all()
    level, width = default_window()
    assert (float(img.header["cal_min"]), float(img.header["cal_max"])) == (level - width / 2, level + width / 2)


def test_volume_in_small_batches_gives_the_same_volume_and_reports_its_time(tmp_path, checkpoint, png_pair, capsys):
    """A memory budget that fits two slices at a time stylizes the volume in batches: the same
    voxels as one batch, a progress bar and a timing line on stderr (none with --quiet)."""
    import nibabel as nib

    hu = (np.random.default_rng(2).random((24, 20, 5)) * 1500 - 500).astype(np.float32)
    src = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.eye(4)), str(src))
    base = ["stylize", str(src), str(png_pair[1]), "--checkpoint", str(checkpoint)]
    capsys.readouterr()
    assert main([*base, "-o", str(tmp_path / "small.nii.gz"), "--max-memory", "0.003"]) == 0
    err = capsys.readouterr().err
    assert "5 slice(s)" in err and "batches of 2" in err and "s per slice" in err
    assert main([*base, "-o", str(tmp_path / "whole.nii.gz"), "--quiet"]) == 0
    assert "per slice" not in capsys.readouterr().err
    small = nib.load(str(tmp_path / "small.nii.gz")).get_fdata()
    whole = nib.load(str(tmp_path / "whole.nii.gz")).get_fdata()
    np.testing.assert_array_equal(small, whole)


def test_folder_batch(tmp_path, checkpoint, png_pair):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(np.full((32, 32), 40 * k, np.uint8)).save(folder / f"s{k}.png")
    out = tmp_path / "out"
    assert main(["stylize", str(folder), str(png_pair[1]), "-o", str(out), "--checkpoint", str(checkpoint)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["s0.png", "s1.png", "s2.png"]


def test_errors_name_the_file(tmp_path, checkpoint, png_pair, capsys):
    assert main(["stylize", str(tmp_path / "missing.png"), str(png_pair[1]), "-o", str(tmp_path / "o.png"),
                 "--checkpoint", str(checkpoint)]) == 2
    assert "missing.png" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    assert main(["stylize", str(broken), str(png_pair[1]), "-o", str(tmp_path / "o.png"),
                 "--checkpoint", str(checkpoint)]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main(["stylize", str(png_pair[0]), str(png_pair[1]), "-o", str(tmp_path / "o.png"),
                 "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_plain_goes_with_a_config_not_the_recipe(tmp_path, capsys):
    assert main(["train", "--method", "ours", "--plain", "--checkpoints", str(tmp_path)]) == 2
    assert "--plain: goes with --config" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_train_a_method_with_the_recipe(tmp_path, capsys, monkeypatch):
    """`ctxstyle train --method` runs the recipe: a warm start, gate A on it, then the method from it."""
    from ctxstyle.experiments import recipe as rc

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("image_size: 32\ncrop_size: 32\nbatch_size: 2\nwarm_iterations: 2\niterations: 2\n"
                      "lrs: [0.001]\nseeds: [0]\nval_pairs: 1\ndevice: cpu\n")
    ckpts = tmp_path / "ckpts"
    # two steps of warm start cannot carry the anatomy: gate A refuses to train a method from it
    assert main(["train", "--method", "ours", "--recipe", str(recipe), "--checkpoints", str(ckpts), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "recipe.yaml: gate A failed" in err.strip().splitlines()[-1]  # one line (after the weights notice)
    assert not any(p.name.startswith("ours-") for p in ckpts.iterdir())
    monkeypatch.setattr(rc, "GATE_EDGE_SSIM", -1.0)  # the gate's thresholds lowered: the method trains
    monkeypatch.setattr(rc, "GATE_BONE_DICE", -1.0)
    assert main(["train", "--method", "ours", "--recipe", str(recipe), "--checkpoints", str(ckpts), "--quiet"]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    state = load_checkpoint(path)  # as data: weights_only
    assert state["config"]["method"] == "ours" and state["config"]["lr_schedule"] == "cosine"
    assert "warm-vgg19-relu3_1-" in state["config"]["init_decoder"]  # started from the shared warm start
    assert any(p.name.startswith("warm-vgg19-relu3_1-") for p in ckpts.iterdir())
    assert main(["train", "--method", "ours", "--recipe", str(recipe), "--checkpoints", str(ckpts), "--no-resume"]) == 2
    assert "--config" in capsys.readouterr().err  # --no-resume belongs to --config runs: refused, not ignored
    assert main(["train", "--config", str(recipe), "--seed", "3"]) == 2
    assert "--seed, --recipe and --checkpoints go with --method" in capsys.readouterr().err  # refused, not ignored
    bad = tmp_path / "bad.yaml"
    bad.write_text("warm_iters: 3\n")
    assert main(["train", "--method", "ours", "--recipe", str(bad), "--checkpoints", str(ckpts)]) == 2
    assert "bad.yaml" in capsys.readouterr().err
