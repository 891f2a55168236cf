"""Exceptions that name the offending file or tensor and the problem."""

from __future__ import annotations

from pathlib import Path


class CtxStyleError(Exception):
    """Base class of all ctxstyle errors."""


class InputError(CtxStyleError, ValueError):
    """Bad input: wrong shape, NaN values, unreadable or inconsistent file.

    ``source`` names the file (or argument) and the message says what is wrong with it.
    """

    def __init__(self, source: str | Path | None, problem: str):
        self.source = str(source) if source is not None else None
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)

    def __reduce__(self):  # picklable, so that it crosses from a worker process unchanged
        return type(self), (self.source, self.problem)


class WeightsNotFoundError(CtxStyleError, RuntimeError):
    """No pretrained weights could be resolved; the message says how to provide them."""


class ChecksumError(CtxStyleError, RuntimeError):
    """A data or weights file does not match its recorded sha256."""
