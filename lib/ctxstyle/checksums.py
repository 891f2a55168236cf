"""sha256 of files, shared by the data and weights modules."""

from __future__ import annotations

import hashlib
from pathlib import Path

_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file (memoised per process by path, size and mtime)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _MEMO[key] = h.hexdigest()
    return _MEMO[key]
