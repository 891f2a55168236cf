"""The headless runner (`python -m reproduce`) on tiny fixture notebooks, and ctxstyle.experiments.records."""

import json
import shutil
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ctxstyle.experiments.records import record_run, save_table  # noqa: E402
from reproduce import runner  # noqa: E402
from reproduce.__main__ import main  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "notebooks"
PROFILES = """
cpu:
  common: {seed: 3, device: cpu, image_size: 24}
  notebooks:
    01_record: {batch_size: 4}
"""


def _setup(tmp_path, **notebooks):
    """Copy fixtures into tmp_path/nb under NN_ names; write a profiles file."""
    folder = tmp_path / "nb"
    folder.mkdir()
    for name, fixture in notebooks.items():
        shutil.copy(FIXTURES / f"{fixture}.ipynb", folder / f"{name}.ipynb")
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(PROFILES)
    return dict(notebooks_dir=folder, results_root=tmp_path / "results", profiles_path=profiles,
                progress=False)


def _injected(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    return cells[0].source if cells else ""


def test_auto_profile_resolves_to_cpu_without_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: auto resolves to paper")
    assert runner.resolve_profile("auto") == "cpu"
    assert runner.resolve_profile("smoke") == "smoke"


def test_only_declared_parameters_are_passed(tmp_path):
    config = runner.load_profiles(runner.PROFILES_PATH)
    assert {"smoke", "cpu", "paper"} <= set(config)
    params, warnings = runner.notebook_parameters(
        {"common": {"seed": 1, "device": "cpu"}, "notebooks": {"03_x": {"iterations": 5, "lr": 1}}},
        "03_x", {"profile", "results_dir", "seed", "iterations"}, "cpu", tmp_path)
    assert params == {"profile": "cpu", "results_dir": str(tmp_path), "seed": 1, "iterations": 5}
    assert len(warnings) == 1 and "'lr'" in warnings[0]


def test_run_writes_results_report_and_reuses_manifest(tmp_path, capsys):
    kw = _setup(tmp_path, **{"01_record": "record", "02_plain": "plain"})
    assert runner.run("auto", **kw) == 0
    out = capsys.readouterr().out
    assert "01_record: start" in out and "02_plain: done in" in out
    assert "'batch_size'" in out  # override for a parameter 01_record does not declare

    res = tmp_path / "results" / "cpu"
    injected = _injected(res / "notebooks" / "01_record.ipynb")
    assert 'profile = "cpu"' in injected and "image_size = 24" in injected and "seed = 3" in injected
    assert f'results_dir = "{res}"' in injected
    assert "device" not in injected and "batch_size" not in injected
    assert _injected(res / "notebooks" / "02_plain.ipynb") == ""  # no parameters cell: nothing injected

    record = json.loads((res / "records" / "01_record.json").read_text())
    assert record["parameters"] == {"profile": "cpu", "image_size": 24} and record["seeds"] == [3]
    assert record["tables"]["scores"] == ["tables/scores.csv", "tables/scores.md"]
    assert record["notes"] == f"kernel python: {sys.executable}"  # the kernel runs this interpreter
    assert (res / record["figures"][0]).is_file()
    report = (res / "REPORT.md").read_text()
    for text in ("profile: **cpu**", "## 01_record", "### scores", "| dice", "Paper vs measured",
                 "![curve](figures/curve.png)", "## 02_plain", "fixture-v1"):
        assert text in report

    manifest = json.loads((res / "runs.json").read_text())
    assert [manifest["notebooks"][s]["status"] for s in ("01_record", "02_plain")] == ["ok", "ok"]
    started = {s: e["started"] for s, e in manifest["notebooks"].items()}
    (res / "REPORT.md").unlink()
    assert runner.run("cpu", **kw) == 0
    out = capsys.readouterr().out
    assert out.count("unchanged, skipped") == 2 and "start" not in out.replace("started", "")
    assert (res / "REPORT.md").is_file()  # regenerated even when everything was skipped
    assert {s: e["started"] for s, e in json.loads((res / "runs.json").read_text())["notebooks"].items()} == started

    # a changed parameter re-runs its notebook and, through the hash chain, every later one
    kw["profiles_path"].write_text(PROFILES.replace("image_size: 24", "image_size: 32"))
    assert runner.run("cpu", **kw) == 0
    out = capsys.readouterr().out
    assert "01_record: start" in out and "02_plain: start" in out
    assert "image_size = 32" in _injected(res / "notebooks" / "01_record.ipynb")

    assert runner.run("cpu", force=True, only=["02"], **kw) == 0
    out = capsys.readouterr().out
    assert "02_plain: start" in out and "01_record" not in out


def test_failure_stops_the_run_and_shows_the_cell(tmp_path, capsys):
    kw = _setup(tmp_path, **{"01_fail": "fail", "02_plain": "plain"})
    assert runner.run("cpu", **kw) == 1
    captured = capsys.readouterr()
    assert "01_fail: FAILED" in captured.err
    assert "raised ValueError: fixture failure 42" in captured.err
    assert 'raise ValueError("fixture failure 42")\n\nexplode()' in captured.err  # the cell's source
    assert "Traceback" in captured.err and "\x1b[" not in captured.err
    assert "02_plain" not in captured.out
    res = tmp_path / "results" / "cpu"
    assert not (res / "notebooks" / "02_plain.ipynb").exists()
    assert json.loads((res / "runs.json").read_text())["notebooks"]["01_fail"]["status"] == "failed"
    assert "| 01_fail | failed |" in (res / "REPORT.md").read_text()


def test_cli_dry_run_and_exit_codes(tmp_path, capsys):
    folder = _setup(tmp_path, **{"01_record": "record", "02_plain": "plain"})["notebooks_dir"]
    args = ["--notebooks", str(folder), "--results-dir", str(tmp_path / "r")]
    assert main(["--profile", "smoke", "--dry-run", "--only", "01,09"] + args) == 0
    out = capsys.readouterr().out
    assert '01_record: parameters {"profile": "smoke"' in out and "02_plain" not in out.split("\n", 1)[1]
    assert main(["--profile", "smoke", "--only", "77"] + args) == 2
    assert main(["--profile", "nope"] + args) == 2


def test_ensure_kernel_shadows_a_foreign_python3_kernelspec(tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager

    spec = tmp_path / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps(
        {"argv": ["/opt/other/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
         "display_name": "other", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == "/opt/other/python"
    assert runner.ensure_kernel("python3") == "python3"
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable


def test_records_helpers_write_relative_paths(tmp_path):
    import numpy as np
    import pandas as pd

    csv, md = save_table(pd.DataFrame({"a": [1.23456, 2.0]}), tmp_path, "t")
    assert csv.read_text().startswith("a\n") and md.read_text().startswith("|")

    class Prov:
        def to_dict(self):
            return {"source": "hub", "sha256": "ab"}

    path = record_run(tmp_path, "07_x", seeds=np.int64(4), weights_provenance=Prov(),
                      parameters={"lr": np.float32(0.5), "p": tmp_path / "z", "bad": float("nan")},
                      tables={"t": csv}, figures=["/elsewhere/f.png"])
    rec = json.loads(path.read_text())
    assert path == tmp_path / "records" / "07_x.json"
    assert rec["seeds"] == [4] and rec["weights_provenance"]["source"] == "hub"
    assert rec["parameters"] == {"lr": 0.5, "p": str(tmp_path / "z"), "bad": None}
    assert rec["tables"] == {"t": ["tables/t.csv"]} and rec["figures"] == ["/elsewhere/f.png"]


def test_interactive_notebook_runs_write_to_scratch_and_reuse_the_committed_checkpoints(tmp_path, capsys):
    from ctxstyle.experiments.records import results_folder

    root = tmp_path / "results"
    (root / "cpu" / "checkpoints" / "ours-abc").mkdir(parents=True)
    (root / "cpu" / "tables").mkdir()
    given = results_folder(tmp_path / "run", "cpu", root)  # the runner's folder is used as given
    assert given == (tmp_path / "run").resolve()
    folder = results_folder(None, "cpu", root)
    assert folder == (root / "scratch" / "cpu").resolve() and "interactive run" in capsys.readouterr().out
    assert (folder / "checkpoints" / "ours-abc").is_dir()  # the committed run's decoders, not retrained
    save_table(pd.DataFrame({"a": [1]}), folder, "t")
    assert not any((root / "cpu" / "tables").iterdir())  # the committed tables untouched
    assert results_folder(None, "cpu", root) == folder  # a second run finds the same folder and link
    assert results_folder(None, "smoke", root) == (root / "scratch" / "smoke").resolve()
    assert not (root / "scratch" / "smoke" / "checkpoints").exists()  # nothing to link to: trained there


def test_notebooks_never_default_to_the_committed_results():
    for nb in sorted((REPO / "notebooks").glob("0*.ipynb")):
        params = next(c for c in nbformat.read(nb, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
        assert "results_dir = None" in params.source, nb.name


def test_showcase_smoke_writes_figures_table_and_record(tmp_path):
    """`python -m reproduce.showcase` end to end at 2 training steps per config."""
    import pandas as pd

    from reproduce.showcase.__main__ import main as showcase

    out = tmp_path / "showcase"
    assert showcase(["--configs", "ours_relu3_1", "adain_relu3_1", "--n", "2", "--iterations", "2", "--out", str(out),
                     "--no-progress"]) == 0
    table = pd.read_csv(out / "tables" / "showcase_metrics.csv")
    assert {"ours_relu3_1", "adain_relu3_1", "histmatch", "identity", "truth"} <= set(table["method"])
    for name in ("showcase", "showcase_zoom", "showcase_training"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    record = json.loads((out / "records" / "showcase.json").read_text())
    configs = record["parameters"]["configs"]
    assert configs["ours_relu3_1"]["adain_layer"] == "relu3_1" and configs["ours_relu3_1"]["iterations"] == 2
    assert record["weights_provenance"]["arch"] == "vgg19"


def test_fresh_run_writes_a_new_folder_and_checks_it(tmp_path, capfd):
    """`python -m reproduce` without --update-reference: a new run folder, the reference only read,
    the check's verdict in the exit status; progress lines name the cells and show tqdm bars."""
    folder = tmp_path / "nb"
    folder.mkdir()
    shutil.copy(FIXTURES / "headline.ipynb", folder / "04_segmentation.ipynb")
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("cpu:\n  common: {dice: 50.5}\n")
    root = tmp_path / "results"
    reference = root / "cpu"
    (reference / "tables").mkdir(parents=True)
    (reference / "checkpoints").mkdir()
    ref_table = reference / "tables" / "table2_segmentation.csv"
    ref_table.write_text("key,Dice target (%)\nours,50.00 ± 1.00\n")
    kw = dict(notebooks_dir=folder, results_root=root, profiles_path=profiles)

    assert runner.fresh_run("cpu", stamp="A", reuse=True, progress=True, **kw) == 0
    out, err = capfd.readouterr()
    run_dir = root / "runs" / "cpu-A"
    assert (run_dir / "checkpoints").is_symlink() and (run_dir / "checkpoints").resolve() == reference / "checkpoints"
    assert "04 cell 1/1 · Fixture · writes a Table 2 row from its parameter · from pathlib import Path" in out  # the cell, under its section
    assert "    04 | fixture wrote 50.5" in out  # the cell's output
    assert "fixture loop: 100%" in out and "3/3" in out  # the tqdm widget, as text
    assert "reproduction check: PASSED" in out and "Table 2 (segmentation): 1/1 numbers within" in out
    assert "without encryption" not in err  # the kernels' TCP warning is silenced
    assert (run_dir / "reproduction_check.md").read_text().startswith("# Reproduction check: PASSED")
    assert "Reproduction check: PASSED" in (run_dir / "REPORT.md").read_text()
    assert ref_table.read_text() == "key,Dice target (%)\nours,50.00 ± 1.00\n"  # the reference is never written
    assert sorted(p.name for p in reference.iterdir()) == ["checkpoints", "tables"]

    profiles.write_text("cpu:\n  common: {dice: 60.0}\n")
    assert runner.fresh_run("cpu", stamp="B", progress=False, **kw) == 3
    out = capfd.readouterr().out
    assert "reproduction check: FAILED" in out and "OUTSIDE: Table 2 (segmentation) | ours | Dice target (%)" in out
    assert "04 cell" not in out  # no progress lines
    assert not (root / "runs" / "cpu-B" / "checkpoints").exists()  # nothing reused unless asked
    rows = pd.read_csv(root / "runs" / "cpu-B" / "reproduction_check.csv").set_index("table")
    dice = rows.loc["Table 2 (segmentation)"]
    assert (dice["committed"], dice["now"], dice["status"]) == (50.0, 60.0, "OUTSIDE")
    assert (rows.loc["Table 1 (style transfer)", "status"]) == "no reference"  # the reference has no Table 1


def test_cli_paths_and_help(tmp_path, capsys):
    folder = _setup(tmp_path, **{"01_record": "record"})["notebooks_dir"]
    root = tmp_path / "results"
    assert main(["--profile", "smoke", "--dry-run", "--reuse", "--notebooks", str(folder),
                 "--results-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"fresh run of profile smoke into {root.resolve() / 'runs'}/smoke-" in out
    assert "would reuse trained checkpoints" in out and not root.exists()  # a dry run creates nothing
    assert main(["--profile", "smoke", "--dry-run", "--force", "--notebooks", str(folder),
                 "--results-root", str(root)]) == 0
    assert "--update-reference --force re-runs" in capsys.readouterr().out  # --force belongs to the in-place path
    with pytest.raises(SystemExit):
        main(["--update-reference", "--reuse", "--notebooks", str(folder)])
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--update-reference" in text and "results/runs/<profile>-<UTC time>/" in text and "exit status" in text
    assert "CTXSTYLE_IDLE_KERNEL_S (default 600; 0 turns it off)" in " ".join(text.split())


def test_a_kernel_idle_with_a_cell_running_is_killed_and_the_notebook_run_once_more(tmp_path, capsys, monkeypatch):
    """The lost-reply hang (every process idle, the client waiting): the watchdog kills the kernel
    after the idle window, the runner says so and runs the notebook again, which finishes."""
    monkeypatch.setenv("CTXSTYLE_IDLE_KERNEL_S", "4")
    kw = _setup(tmp_path, **{"01_idle": "idle_once", "02_plain": "plain"})
    assert runner.run("cpu", **kw) == 0
    err = capsys.readouterr().err
    assert "01_idle: StuckKernelError: the kernel and its processes used no CPU for 4 s" in err
    assert "watchdog: the kernel's processes used no CPU for 4 s with a cell running; a new connection's" in err
    assert "running it once more" in err
    entry = json.loads((tmp_path / "results" / "cpu" / "runs.json").read_text())["notebooks"]["01_idle"]
    assert entry["status"] == "ok" and entry["retried_after"].startswith("StuckKernelError")
