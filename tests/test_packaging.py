"""Packaging: the conda environment and the pip dependencies describe the same packages, the
package configuration ships every module, and the console script runs."""

import re
import tomllib
import warnings
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].strip().lower()


def test_environment_yml_lists_every_pip_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = set(), set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip |= {_name(d) for d in dep["pip"]}
        else:
            conda.add(_name(dep))
    wanted = [_name(d) for d in project["dependencies"] + project["optional-dependencies"]["test"]]
    missing = [d for d in wanted if CONDA_NAMES.get(d, d) not in conda | pip]
    assert not missing, f"environment.yml lacks {missing}"


def test_every_console_script_resolves_to_a_working_command():
    """Each ``[project.scripts]`` entry imports and answers ``--help`` with exit status 0."""
    import importlib

    import pytest

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts, "no console script declared"
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        main = getattr(importlib.import_module(module), attr)
        with pytest.raises(SystemExit) as exit_info:
            main(["--help"])
        assert exit_info.value.code == 0, f"{name} --help exited {exit_info.value.code}"


def test_package_configuration_ships_every_module(monkeypatch):
    """setuptools, reading pyproject.toml as a build would, packages every folder of lib/ctxstyle
    that holds modules (a new subpackage cannot be left out of the wheel)."""
    import pytest

    pytest.importorskip("setuptools")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)  # setuptools resolves the find configuration against the project folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setuptools' deprecation notices about unrelated fields
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    src = ROOT / (dist.package_dir or {}).get("", "")
    folders = {".".join(p.parent.relative_to(src).parts) for p in (src / "ctxstyle").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert "ctxstyle.data" in folders and "ctxstyle" in folders
    missing = sorted(folders - set(dist.packages or ()))
    assert not missing, f"not packaged: {missing}"
