"""What a notebook produced, recorded for ``reproduce/report.py``.

Notebooks write tables and figures under ``results_dir`` and describe the run with one
:func:`record_run` call at the end::

    tables = {"dice": save_table(df, results_dir, "dice")}
    figures = [save_figure(fig, results_dir, "examples")]
    record_run(results_dir, "05_segmentation", seeds=[0], weights_provenance=prov.to_dict(),
               data_version="verse19@sha256:...", parameters={"epochs": 3}, tables=tables,
               figures=figures, notes="...",
               paper_comparison=[{"metric": "Dice", "paper": 0.89, "measured": 0.87}])

Layout: ``tables/<name>.csv`` + ``.md``, ``figures/<name>.png``, ``records/<notebook>.json``.
Paths inside a record are relative to ``results_dir`` (posix) when they lie under it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

RECORDS = "records"
TABLES = "tables"
FIGURES = "figures"
#: Where interactive notebook runs write, under the results root (gitignored).
SCRATCH = "scratch"


def results_folder(results_dir: str | Path | None, profile: str, results_root: str | Path = "../results") -> Path:
    """The folder a notebook writes to.

    ``results_dir`` when given (``python -m reproduce`` always passes one). Otherwise the run is
    interactive and writes to ``<results_root>/scratch/<profile>/``, never over the committed
    ``<results_root>/<profile>/``; that scratch folder's ``checkpoints`` is a link to the committed
    folder's trained checkpoints when they exist (a cache: a decoder trained once is reused, as
    ``python -m reproduce --reuse`` does). ``results_root`` is relative to the notebook's folder.
    """
    if results_dir is not None:
        return Path(results_dir).resolve()
    root = Path(results_root).resolve()
    folder = root / SCRATCH / str(profile)
    folder.mkdir(parents=True, exist_ok=True)
    link, cache = folder / "checkpoints", root / str(profile) / "checkpoints"
    if not link.exists() and not link.is_symlink() and cache.is_dir():
        link.symlink_to(cache, target_is_directory=True)
    print(f"interactive run: writing to {folder} (python -m reproduce writes the committed {root / str(profile)})")
    return folder


def save_table(df, results_dir: str | Path, name: str, *, index: bool = False) -> tuple[Path, Path]:
    """Write ``df`` to ``tables/<name>.csv`` and ``tables/<name>.md``; return both paths."""
    folder = Path(results_dir) / TABLES
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = folder / f"{name}.csv", folder / f"{name}.md"
    df.to_csv(csv_path, index=index)
    md_path.write_text(df.to_markdown(index=index, floatfmt=".4g") + "\n", encoding="utf-8")
    return csv_path, md_path


def save_figure(fig, results_dir: str | Path, name: str, *, dpi: int = 120) -> Path:
    """Write a matplotlib figure to ``figures/<name>.png`` (the figure stays open); return the path."""
    folder = Path(results_dir) / FIGURES
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def record_run(
    results_dir: str | Path,
    notebook: str,
    *,
    seeds: Iterable[int] | int | None = None,
    weights_provenance: Any = None,
    data_version: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    tables: Mapping[str, Any] | None = None,
    figures: Iterable[str | Path] | None = None,
    notes: str = "",
    paper_comparison: list[dict] | None = None,
) -> Path:
    """Write ``records/<notebook>.json`` describing one notebook run; return its path.

    ``notebook`` is the notebook's stem (e.g. ``"03_style_transfer"``). ``tables`` maps a name to
    a path or to :func:`save_table`'s pair; ``weights_provenance`` may be a
    ``WeightsProvenance`` (anything with ``to_dict()``), a dict, or a dict of those.
    ``paper_comparison`` rows are dicts such as ``{"metric", "paper", "measured", "note"}``.
    """
    root = Path(results_dir)
    if seeds is not None and not isinstance(seeds, Iterable):
        seeds = [seeds]
    record = {
        "notebook": notebook,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seeds": list(seeds) if seeds is not None else [],
        "weights_provenance": weights_provenance,
        "data_version": data_version,
        "parameters": dict(parameters or {}),
        "tables": {
            name: [_rel(p, root) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
            for name, paths in (tables or {}).items()
        },
        "figures": [_rel(p, root) for p in (figures or [])],
        "notes": notes,
        "paper_comparison": list(paper_comparison or []),
    }
    folder = root / RECORDS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{notebook}.json"
    path.write_text(json.dumps(_jsonable(record), indent=2) + "\n", encoding="utf-8")
    return path


def load_records(results_dir: str | Path) -> dict[str, dict]:
    """All records under ``results_dir/records``, keyed by notebook stem."""
    folder = Path(results_dir) / RECORDS
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))}


def _rel(path: str | Path, root: Path) -> str:
    path = Path(path)
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _jsonable(value: Any) -> Any:
    """Convert provenance objects, numpy/torch scalars, paths and NaN to plain JSON values."""
    if hasattr(value, "to_dict") and not isinstance(value, type):
        return _jsonable(value.to_dict())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy / torch scalar
        return _jsonable(value.item())
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return str(value)
