"""The conda environment and the pip dependencies describe the same packages."""

import re
import tomllib
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
