"""sha256 of files, shared by the data and weights modules."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ctxstyle.errors import InputError

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


_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *]?(.+)$")


def read_sha256sums(path: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` from a ``sha256sum`` file (``<64 hex>  [*][./]name`` per line);
    an InputError naming the file and line for anything else."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the checksum list ({type(exc).__name__}: {exc})") from None
    sums = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _SUMS_LINE.match(line.strip())
        if not match:
            raise InputError(f"{path}:{number}", f"malformed line {line.strip()[:60]!r}; expected "
                                                 "'<64 hex digits of sha256>  <file name>'")
        sums[match.group(2).strip().removeprefix("./")] = match.group(1).lower()
    return sums
