"""How ctxstyle writes files and names what it writes: one atomic write, one content hash, one
checkpoint writer and reader.

* :func:`atomic_write`: every file ctxstyle produces (checkpoints, caches, stylized images,
  downloads) is written to a hidden sibling with the same suffix and renamed over the target, so an
  interrupted run never leaves half a file; ``overwrite=False`` refuses a target that appeared
  meanwhile.
* :func:`content_hash`: the short sha256 of a JSON payload that names cached runs (decoder and
  U-Net config hashes, slice caches).
* :func:`write_checkpoint` / :func:`read_checkpoint`: PyTorch files of plain data with a ``format``
  tag (decoders ``ctxstyle-decoder-v1``, U-Nets ``ctxstyle-unet-v1``), read with
  ``weights_only=True`` (:func:`load_torch_data`): a checkpoint never runs code.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ctxstyle.errors import InputError

__all__ = ["atomic_write", "marked_block", "replace_marked_block", "content_hash", "write_checkpoint",
           "read_checkpoint", "load_torch_data"]


def atomic_write(path: str | Path, write: Callable[[Path], object], *, overwrite: bool = True) -> Path:
    """``write(tmp)`` into a hidden file beside ``path`` (same suffix, so writers that go by the
    suffix pick the right format), then rename it to ``path``. With ``overwrite=False`` a ``path``
    that appeared meanwhile is kept and an InputError raised. Errors name ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{os.getpid()}.ctxstyle-tmp.{path.name}")
    try:
        write(tmp)
        if not overwrite and path.exists():
            raise InputError(path, "appeared while this run was working; not replaced")
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(path, f"cannot be written ({exc.strerror or exc})") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def marked_block(path: str | Path, start: str, end: str) -> tuple[str, str, str]:
    """(text before ``start``, text between the markers, text after ``end``) of the text file
    ``path``; InputError naming the file when it cannot be read or has no such block."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise InputError(path, f"has no {start} ... {end} block to regenerate")
    return text[:i], text[i + len(start): j], text[j + len(end):]


def replace_marked_block(path: str | Path, start: str, end: str, body: str) -> bool:
    """Put ``body`` between the markers ``start`` and ``end`` of the text file ``path`` (a generated
    block of a document; the rest of the file is kept), written atomically and only when it
    changes; True if it changed."""
    head, old, tail = marked_block(path, start, end)
    if body == old:
        return False
    atomic_write(path, lambda tmp: tmp.write_text(f"{head}{start}{body}{end}{tail}", encoding="utf-8"))
    return True


def content_hash(payload, length: int = 12) -> str:
    """The first ``length`` hex digits of sha256 over ``payload`` as sorted-key JSON."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:length]


#: What torch's weights-only unpickler names when a file holds more than tensors and plain data.
_REFUSED_OBJECT = re.compile(r"GLOBAL (\S+)|unrecognized function (\S+)|`add_safe_globals` but got (\S+)")


def load_torch_data(path: str | Path, map_location: str | torch.device = "cpu"):
    """``torch.load(path, weights_only=True)``: tensors and plain data (dicts, lists, numbers,
    strings), never code. Raises :class:`InputError` naming the file, in one line, when it is
    not a readable PyTorch file or holds other Python objects (those are refused, not run)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip, or a pickle
        raise InputError(path, "is not a PyTorch file (neither torch.save's zip archive nor a pickle)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _REFUSED_OBJECT.search(str(exc))
        if found:
            what = next(g for g in found.groups() if g).rstrip(".")
            raise InputError(path, f"holds a Python object ({what}), not only tensors and plain data; "
                                   "refused: ctxstyle reads these files as data, never as code") from None
        problem = "corrupt or truncated"
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError) as exc:  # zip/stream errors of a broken file, unpickler errors of a damaged one
        problem = f"corrupt or truncated ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    raise InputError(path, f"is not a readable PyTorch file: {problem}")


#: Checkpoint formats: tag -> what it holds (for messages).
FORMATS = {"ctxstyle-decoder-v1": "decoder", "ctxstyle-unet-v1": "U-Net"}


def write_checkpoint(path: str | Path, state: dict) -> Path:
    """Save ``state`` (plain data and tensors with a known ``format`` tag) atomically."""
    if state.get("format") not in FORMATS:
        raise ValueError(f"checkpoint format {state.get('format')!r} is not one of {sorted(FORMATS)}")
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: str | Path, fmt: str, required: Iterable[str] = (), *,
                    mappings: Iterable[str] = (), device: torch.device | str = "cpu") -> dict:
    """The checkpoint at ``path`` as data, checked to carry the format tag ``fmt`` and the keys
    ``required`` (those in ``mappings`` must be dicts); an InputError naming the file otherwise."""
    path = Path(path)
    what = FORMATS[fmt]
    if path.is_dir():
        raise InputError(path, "is a folder, not a checkpoint file")
    if not path.is_file():
        raise InputError(path, "checkpoint file does not exist")
    state = load_torch_data(path, map_location=device)
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise InputError(path, f"not a ctxstyle {what} checkpoint (missing format {fmt!r})")
    mappings = set(mappings)
    bad = [k for k in required if k not in state or (k in mappings and not isinstance(state[k], dict))]
    if bad:
        raise InputError(path, f"incomplete {what} checkpoint (missing or malformed: {', '.join(bad)})")
    return state
