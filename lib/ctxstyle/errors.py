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

    def __reduce__(self):  # picklable, so that it crosses from a worker process unchanged (notes too)
        return type(self), (self.source, self.problem), self.__dict__


class NonFiniteError(InputError):
    """A tensor holds NaN or infinite values (in training: the decoder's output overflowed)."""


class NotCTError(InputError):
    """A volume whose values are not CT in Hounsfield units (a label map, MR, a normalised image)."""


class TrainingDiverged(CtxStyleError, RuntimeError):
    """A training run blew up (its loss, its generated image's features or its gradient NaN or
    infinite): it stops before that step changes the weights, so its last checkpoint, if any, holds
    finite ones; names the run folder, the step, what was not finite and the lr."""

    def __init__(self, folder: str | Path, step: int, what: str, lr: float, note: str = ""):
        self.folder, self.step, self.what, self.lr, self.note = str(folder), step, what, lr, note
        super().__init__(f"{folder}: {what} at step {step} (lr {lr:g}): the run diverged and was stopped; "
                         f"train it with a lower lr{note}")

    def __reduce__(self):  # picklable, so that it crosses from a worker process unchanged (notes too)
        return type(self), (self.folder, self.step, self.what, self.lr, self.note), self.__dict__


class WeightsNotFoundError(CtxStyleError, RuntimeError):
    """No pretrained weights could be resolved; the message says how to provide them."""


class ChecksumError(CtxStyleError, RuntimeError):
    """A data or weights file does not match its recorded sha256."""
