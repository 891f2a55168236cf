"""Paths and environment variables, read in one place.

| variable | meaning | default |
|---|---|---|
| ``CTXSTYLE_CACHE`` | cache folder (converted weights, preprocessed slices, fetched data) | ``~/.cache/ctxstyle`` |
| ``CTXSTYLE_DATA`` | the spine CT data folder | see :func:`ctxstyle.data.data_dir` |
| ``CTXSTYLE_WEIGHTS`` | a weights file or a folder of weights files to use first | unset |
| ``CTXSTYLE_OFFLINE`` | ``1`` skips every network download attempt (torchvision, fetch) | unset |
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of ctxstyle's caches (created on demand)."""
    path = Path(os.environ.get("CTXSTYLE_CACHE", Path.home() / ".cache" / "ctxstyle")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_setting() -> Path | None:
    """The spine CT data folder set by ``CTXSTYLE_DATA``, if set."""
    value = os.environ.get("CTXSTYLE_DATA")
    return Path(value).expanduser() if value else None


def weights_setting() -> Path | None:
    """The explicit weights file/folder (``CTXSTYLE_WEIGHTS``), if set."""
    value = os.environ.get("CTXSTYLE_WEIGHTS")
    return Path(value).expanduser() if value else None


def offline() -> bool:
    """True when network downloads must not be attempted (``CTXSTYLE_OFFLINE=1``)."""
    return os.environ.get("CTXSTYLE_OFFLINE", "").strip().lower() in {"1", "true", "yes"}


def repo_root() -> Path | None:
    """The source checkout holding this package (``lib/ctxstyle``), or None when installed."""
    here = Path(__file__).resolve().parent
    root = here.parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None
