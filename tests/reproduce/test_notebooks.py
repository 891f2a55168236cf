"""CI smoke execution: every real ``notebooks/NN_*.ipynb`` with ``python -m reproduce --profile smoke``.

Marked ``notebooks`` (run alone with ``pytest -m notebooks``); results go to a temporary folder.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.notebooks
@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks/NN_*.ipynb exist yet")
def test_smoke_profile_runs_every_notebook(tmp_path):
    results = tmp_path / "smoke"
    proc = subprocess.run(
        [sys.executable, "-m", "reproduce", "--profile", "smoke", "--results-dir", str(results),
         "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=3600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-8000:]
    manifest = json.loads((results / "runs.json").read_text())
    for nb in NOTEBOOKS:
        assert manifest["notebooks"][nb.stem]["status"] == "ok", log[-4000:]
        assert (results / "records" / f"{nb.stem}.json").is_file(), f"{nb.name} did not call record_run"
    assert (results / "REPORT.md").is_file()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameter_defaults_are_the_profile_they_name(notebook):
    """A notebook opened by hand runs the profile its ``profile`` default names: every other default
    the profile sets is that profile's value, so an interactive run reuses the profile's trained
    decoders (same recipe, same config hash) and its records mean what they say."""
    import ast

    import papermill

    from reproduce import runner

    declared = {name: ast.literal_eval(p["default"])
                for name, p in papermill.inspect_notebook(str(notebook)).items()}
    profile = declared["profile"]
    config = runner.load_profiles(runner.PROFILES_PATH)[profile]
    offered, _ = runner.notebook_parameters(config, notebook.stem, set(declared), profile, Path("unused"))
    offered.pop("results_dir")
    differ = {k: (declared[k], v) for k, v in offered.items() if declared[k] != v}
    assert not differ, f"{notebook.name}: defaults (notebook, profile {profile!r}) differ: {differ}"
