"""Micro-benchmarks (``python -m reproduce.benchmarks.<name>``); results go to ``results/benchmarks``."""

import csv
import json
from collections.abc import Sequence
from pathlib import Path

#: Where the benchmarks write unless told otherwise (``--out``).
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "results" / "benchmarks"


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV a benchmark wrote, or [] when there is none yet."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []



def read_record(path: Path, what: str, keys: Sequence[str]) -> dict:
    """The JSON record a benchmark wrote at ``path``, holding ``keys`` (for ``--render``); a
    one-line SystemExit naming the file and saying it is not ``what`` otherwise."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{path}: not {what} record ({type(exc).__name__}: {exc})") from None
    missing = [k for k in keys if not isinstance(record, dict) or k not in record]
    if missing:
        raise SystemExit(f"{path}: not {what} record (missing {', '.join(missing)})")
    return record
