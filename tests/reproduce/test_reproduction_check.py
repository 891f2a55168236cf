"""The reproduction check (reproduce.check), the runner's progress lines (reproduce.progress) and the
README's profile-time table, on small synthetic inputs."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from reproduce import check  # noqa: E402
from reproduce.benchmarks import end_to_end  # noqa: E402
from reproduce.progress import Reporter, cell_durations, checkpoint_activity  # noqa: E402


def _tables(folder: Path, **tables) -> Path:
    (folder / "tables").mkdir(parents=True)
    for name, frame in tables.items():
        pd.DataFrame(frame).to_csv(folder / "tables" / f"{name}.csv", index=False)
    return folder


def _table1(ours_truth, adain_truth, histmatch_truth, methods=("ours", "adain", "histmatch")):
    rows = {"ours": ("3 decoder seeds", ours_truth, 0.02, 0.40),
            "adain": ("3 decoder seeds", adain_truth, 0.001, 0.50),
            "histmatch": ("240 pairs", histmatch_truth, 0.2, 0.45)}
    return {"method": list(methods), "spread_over": [rows[m][0] for m in methods],
            "lpips_truth_mean": [rows[m][1] for m in methods], "lpips_truth_std": [rows[m][2] for m in methods],
            "style_accuracy": [rows[m][3] for m in methods]}


@pytest.fixture
def folders(tmp_path):
    """A committed reference and a run that differ in known ways."""
    reference = _tables(
        tmp_path / "reference",
        table1_style_transfer=_table1(0.30, 0.40, 0.40),
        table2_segmentation={"key": ["baseline", "ours", "paper_ours"],
                             "Dice target (%)": ["33.32 ± 0.10", "56.20 ± 4.57", "69.81"]},
        gate_a_warm_start={"AdaIN layer": ["relu3_1"], "edge_ssim": [0.61], "gate A passed": [True]},
        gate_b_convergence={"method": ["ours"] * 3, "seed": [0, 1, 2], "lr": [0.001] * 3,
                            "last_fifth": [2.0, 2.1, 2.2], "gate B passed": [True] * 3})
    run = _tables(
        tmp_path / "run",
        # ours +0.03 within 2 x 0.02; adain +0.03 beyond its floor 0.01 (its std is tiny);
        # histmatch +0.05: its std is over test pairs, not seeds, so only the floor counts
        table1_style_transfer=_table1(0.33, 0.43, 0.45, methods=("ours", "adain", "histmatch")),
        table2_segmentation={"key": ["baseline", "ours", "paper_ours"],
                             "Dice target (%)": ["36.00 ± 0.10", "60.00 ± 1.00", "0"]},
        gate_b_convergence={"method": ["ours"] * 2, "seed": [0, 1], "lr": ["1e-3", 0.0003],
                            "last_fifth": [2.15, 2.1], "gate B passed": [True, True]})
    return reference, run


def _status(rows, table, row, metric):
    found = [r["status"] for r in rows if r["table"].startswith(table) and r["row"] == row and r["metric"] == metric]
    assert len(found) == 1, (table, row, metric, found)
    return found[0]


def test_numbers_within_and_outside_the_seed_spread(folders):
    rows = check.compare(*folders)
    assert _status(rows, "Table 1", "ours", "lpips_truth_mean") == "within"
    assert _status(rows, "Table 1", "adain", "lpips_truth_mean") == "OUTSIDE"
    assert _status(rows, "Table 1", "histmatch", "lpips_truth_mean") == "OUTSIDE"
    assert _status(rows, "Table 1", "ours", "style_accuracy") == "within"  # no std column: the floor, diff 0
    ours = next(r for r in rows if r["row"] == "ours" and r["metric"] == "lpips_truth_mean")
    assert ours["seed_std"] == 0.02 and ours["tolerance"] == pytest.approx(0.04)
    assert ours["difference"] == pytest.approx(0.03)
    # Table 2: "m ± s" cells; 3.8 pp within 2 x 4.57, 2.68 pp beyond max(2 x 0.10, 1 pp); the paper's row is not measured
    assert _status(rows, "Table 2", "ours", "Dice target (%)") == "within"
    assert _status(rows, "Table 2", "baseline", "Dice target (%)") == "OUTSIDE"
    assert not [r for r in rows if r["row"] == "paper_ours"]
    # gate B: the spread is the std over the seeds of one method (0.1 here, so 2.15 vs 2.0 is within)
    assert _status(rows, "Gate B", "ours / 0", "last_fifth") == "within"
    assert _status(rows, "Gate B", "ours / 0", "lr") == "same"  # 1e-3 and 0.001 are one lr
    assert _status(rows, "Gate B", "ours / 1", "lr") == "DIFFERS"


def test_missing_tables_and_rows_are_reported_not_crashed(folders):
    rows = check.compare(*folders)
    assert _status(rows, "Gate A", "-", "-").startswith("missing: the run wrote no tables/gate_a_warm_start.csv")
    assert _status(rows, "Gate B", "ours / 2", "-") == "missing: row not in the run"
    assert _status(rows, "Extractor comparison", "-", "-") == "no reference"  # the reference has none either
    failing = check.failed(rows)
    assert {r["status"].split(":")[0] for r in failing} == {"OUTSIDE", "DIFFERS", "missing"}
    assert not [r for r in failing if r["status"] == "no reference"]

    summary = {s["table"].split(" (")[0]: s for s in check.summary_rows(rows)}
    assert summary["Table 1"]["numbers"] == 6 and summary["Table 1"]["OUTSIDE"] == 2
    assert summary["Gate A"]["missing"] == 1

    only_04 = check.compare(*folders, notebooks={"04_segmentation"})
    assert {r["table"] for r in only_04} == {"Table 2 (segmentation)", "Table 2, held-out styles (segmentation)"}
    assert _status(only_04, "Table 2, held-out", "-", "-") == "no reference"  # neither folder has one


def test_each_way_a_run_can_fall_short_has_its_status(tmp_path):
    """Columns, numbers and keys missing from the run fail; a new row is reported and does not;
    a duplicated reference key is compared once; a difference exactly at the tolerance is within."""
    spec = check.Headline(title="T", notebook="03_x", table="t", key=("method",), verdicts=("passed",),
                          default_floor=0.25)
    reference = _tables(tmp_path / "reference", t={
        "method": ["a", "b", "b", "c"], "score": [1.0, 2.0, 9.0, 3.0], "other": [5.0, 5.0, 5.0, 5.0],
        "passed": ["yes", "yes", "yes", "no"]})
    run = _tables(tmp_path / "run", t={
        "method": ["a", "b", "c", "d"], "score": [1.25, float("nan"), 3.0, 4.0], "passed": ["yes", "yes", "no", "no"]})
    rows = check.compare_table(spec, reference, run)
    assert _status(rows, "T", "a", "score") == "within"  # 0.25 off, the floor is 0.25
    assert _status(rows, "T", "b", "score") == "missing: no number in the run"
    assert _status(rows, "T", "a", "other") == "missing: column not in the run"
    assert _status(rows, "T", "c", "passed") == "same"
    assert _status(rows, "T", "d", "-") == "not in the reference (new row)"
    assert len([r for r in rows if r["row"] == "b" and r["metric"] == "score"]) == 1  # the first "b" only
    failing = check.failed(rows)
    assert {(r["row"], r["metric"]) for r in failing} == {("b", "score"), ("a", "other"), ("b", "other"), ("c", "other")}

    no_verdicts = _tables(tmp_path / "run2", t={"method": ["a"], "score": [1.0]})
    rows = check.compare_table(spec, reference, no_verdicts)
    assert _status(rows, "T", "a", "passed") == "missing: column not in the run" and check.failed(rows)
    no_key = _tables(tmp_path / "run3", t={"name": ["a"], "score": [1.0]})
    (row,) = check.compare_table(spec, reference, no_key)
    assert row["status"] == "missing: key column(s) method" and check.failed([row])


def test_write_check_files_and_summary(folders, tmp_path):
    rows, csv_path, md_path = check.write_check(*folders)
    assert csv_path.parent == folders[1] and len(pd.read_csv(csv_path)) == len(rows)
    text = md_path.read_text()
    assert text.startswith("# Reproduction check: FAILED") and "2 × committed seed std" in text
    assert "## Outside, different or missing" in text
    summary = check.console_summary(rows, md_path)
    assert "reproduction check: FAILED" in summary
    assert "OUTSIDE: Table 1 (style transfer) | adain | lpips_truth_mean: committed 0.4, now 0.43" in summary

    same = _tables(tmp_path / "same", table2_segmentation={"key": ["ours"], "Dice target (%)": ["56.20 ± 4.57"]})
    rows, _, md_path = check.write_check(same, same, out_dir=tmp_path / "out")
    assert not check.failed(rows) and md_path.read_text().startswith("# Reproduction check: PASSED")
    assert check.main([str(same), str(same), "--out", str(tmp_path / "out")]) == 0
    assert check.main([str(folders[0]), str(folders[1]), "--out", str(tmp_path / "out")]) == 3


def test_headline_specs_match_the_committed_tables():
    """Every committed headline table compares cleanly with itself (names and columns exist)."""
    reference = REPO / "results" / "cpu"
    if not (reference / "tables").is_dir():
        pytest.skip("no committed results/cpu")
    rows = check.compare(reference, reference)
    present = [h for h in check.HEADLINES if (reference / "tables" / f"{h.table}.csv").is_file()]
    assert present and not check.failed(rows)
    for spec in present:
        numbers = [r for r in rows if r["table"] == spec.title and r["status"] == "within"]
        assert numbers, f"{spec.title}: no number compared"
        assert all(r["difference"] == 0 for r in numbers)


# ----------------------------------------------------------------------------- progress lines
class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _cells():
    return [{"cell_type": "markdown", "source": "## 1 · The warm start"},
            {"cell_type": "code", "source": "seed = 0", "metadata": {"tags": ["parameters"]}},
            {"cell_type": "code", "source": "# train\nwarm = warm_start(recipe)\nprint(1)", "metadata": {}}]


def test_reporter_cells_output_bars_and_heartbeat(capsys):
    clock = Clock()
    cells = _cells()
    rep = Reporter("03", cell_estimates={cells[2]["source"]: 972.0}, notebook_estimate=2155.0, clock=clock,
                   heartbeat_s=60, bar_every_s=15)
    rep.begin(cells)
    for index in range(3):
        rep.cell_start(index)
    out = capsys.readouterr().out.splitlines()
    assert out == ["    03 cell 1/1 · 1 · The warm start · warm = warm_start(recipe) · last run 16 min 12 s · "
                   "notebook 0.0 s so far of ~35 min 55 s last run"]

    rep.message({"msg_type": "stream", "content": {"name": "stderr", "text": "10%\r50%\rdone\n\nnext line\n"}})
    assert capsys.readouterr().out.splitlines() == ["    03 | done", "    03 | next line"]

    def comm(kind, comm_id, **state):
        rep.message({"msg_type": kind, "content": {"comm_id": comm_id, "data": {"state": state}}})

    comm("comm_open", "left", value="")
    comm("comm_open", "right", value="")
    comm("comm_open", "box", children=["IPY_MODEL_left", "IPY_MODEL_bar", "IPY_MODEL_right"])
    comm("comm_msg", "left", value="train\u2007reconstruction:\u2007\u200710%")
    comm("comm_msg", "right", value="100/1000 [00:10&lt;01:30, 9.9it/s]")
    clock.t += 5
    comm("comm_msg", "right", value="150/1000 [00:15&lt;01:25, 9.9it/s]")  # within 15 s: not printed
    clock.t += 5
    comm("comm_msg", "right", value="1000/1000 [01:40&lt;00:00, 9.9it/s]")  # finished: printed
    comm("comm_msg", "right", value="1000/1000 [01:40&lt;00:00, 9.8it/s]")  # tqdm's redraw on close: not again
    assert capsys.readouterr().out.splitlines() == [
        "    03 | train reconstruction:  10% 100/1000 [00:10<01:30, 9.9it/s]",
        "    03 | train reconstruction:  10% 1000/1000 [01:40<00:00, 9.9it/s]"]

    clock.t += 59
    rep.tick()
    assert capsys.readouterr().out == ""
    clock.t += 2
    rep.tick()
    rep.tick()  # a heartbeat counts as output: not repeated at once
    assert capsys.readouterr().out.splitlines() == [
        "    03 cell 1/1 still running: 1 min 11 s (last run 16 min 12 s)"]


def test_checkpoint_activity_names_the_folders_written_since_the_cell_started(tmp_path):
    import os

    for name, mtime in (("warm-vgg19", 100.0), ("ours-1", 200.0), ("ours-2", 300.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        os.utime(tmp_path / name / "config.json", (mtime, mtime))
    assert checkpoint_activity(tmp_path, since_epoch=150.0, now_epoch=340.0) == (
        "checkpoints written in this cell: 2 folders, latest ours-2 40.0 s ago")
    assert checkpoint_activity(tmp_path, since_epoch=400.0) is None
    assert checkpoint_activity(tmp_path / "absent", since_epoch=0.0) is None


def test_cell_durations_from_an_executed_notebook(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "source": ["# t"], "metadata": {"papermill": {"duration": 0.1}}},
                    {"cell_type": "code", "source": ["a = 1\n", "b = 2"], "metadata": {"papermill": {"duration": 3.5}}},
                    {"cell_type": "code", "source": "c = 3", "metadata": {}}]}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    assert cell_durations(path) == {"a = 1\nb = 2": 3.5}
    assert cell_durations(tmp_path / "absent.ipynb") == {}


# ----------------------------------------------------------------------------- README's profile times
def test_readme_profile_times_come_from_the_manifests(tmp_path):
    results = tmp_path / "results"
    (results / "cpu").mkdir(parents=True)
    (results / "cpu" / "runs.json").write_text(json.dumps({
        "updated": "2026-01-01T00:00:00+00:00",
        "notebooks": {"01_a": {"status": "ok", "wall_s": 600.0}, "02_b": {"status": "ok", "wall_s": 1200.0}}}))
    (results / "cpu" / "REPORT.md").write_text("# r\n\n- machine: Test CPU, 2 CPU threads (torch uses 2), GPU: none\n")
    (results / "paper").mkdir()
    big = "Big CPU, 16 CPU threads (torch uses 16), GPU: H200"
    (results / "paper" / "runs.json").write_text(json.dumps({"notebooks": {
        "01_a": {"status": "ok", "wall_s": 60.0, "machine": big},
        "02_b": {"status": "failed", "wall_s": 5.0, "machine": big}}}))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{end_to_end.README_START}\nstale\n{end_to_end.README_END}\noutro\n")
    assert end_to_end.update_readme(readme, results)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "stale" not in text
    assert "| `cpu` | 30.0 min | Test CPU, 2 CPU threads (torch uses 2), GPU: none | 2, all ok |" in text
    assert "| `paper` | 60.0 s | Big CPU, 16 CPU threads (torch uses 16), GPU: H200 | 1 of 2 ok |" in text
    assert not end_to_end.update_readme(readme, results)  # already current


# ----------------------------------------------------------------------------- weights: one line, no download noise
def test_parameter_differences_between_reference_and_run(tmp_path):
    def manifest(folder, params):
        folder.mkdir()
        (folder / "runs.json").write_text(json.dumps({"notebooks": {"03_x": {"parameters": params},
                                                                    "04_y": {"parameters": {"seed": 0}}}}))
        return folder

    ref = manifest(tmp_path / "ref", {"results_dir": "/a", "iterations": 200, "seed": 0})
    run = manifest(tmp_path / "run", {"results_dir": "/b", "iterations": 100, "seed": 0})
    assert check.parameter_differences(ref, run) == ["03_x: iterations 200 -> 100"]
    assert check.parameter_differences(ref, tmp_path / "absent") == []
