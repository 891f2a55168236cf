"""Micro-benchmarks (``python -m reproduce.benchmarks.<name>``); results go to ``results/benchmarks``."""

import csv
from pathlib import Path


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV a benchmark wrote, or [] when there is none yet."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []

