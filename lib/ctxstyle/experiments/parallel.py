"""Independent decoder training runs side by side in worker processes: an opt-in speed path.

On a small CPU one training run does not keep its cores busy (small convolutions: 64 px crops,
batch 8), while the recipe trains many runs that do not depend on each other: the warm starts
of several backbones and AdaIN layers, every method at every candidate learning rate and seed.
Running them in ``workers`` processes of ``threads`` intra-op threads each uses the machine
better than one run on all its threads (no benchmark times this side by side yet; the notebooks'
training times in ``results/<profile>/REPORT.md`` show the whole effect).

A worker runs exactly :func:`ctxstyle.train.train` on the run's config with ``threads`` threads
and saves where :func:`ctxstyle.experiments.presets.train_or_load` looks, so the plain code that follows
loads the checkpoint instead of training it. The checkpoint is the one a plain in-process run with
the same thread count writes, bit for bit on one machine (``tests/experiments/test_parallel.py``); another
thread count gives slightly different numbers, like any other machine change.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from ctxstyle.errors import InputError
from ctxstyle.experiments import presets
from ctxstyle.experiments.presets import run_dir
from ctxstyle.train import TrainConfig


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` worker processes started with "spawn" (a fresh interpreter each: no forked copy of
    this process's threads, pools or caches): the one way experiments run jobs side by side."""
    return ProcessPoolExecutor(int(workers), mp_context=multiprocessing.get_context("spawn"))


def call_recording_warnings(fn: Callable, /, *args, **kwargs) -> tuple[Any, list[tuple[str, str, str]]]:
    """``fn(*args, **kwargs)`` and the warnings it raised, for a worker process: its own stderr is
    not the notebook's, so the parent shows them with :func:`show_warnings` (TrainingPool and
    :func:`ctxstyle.experiments.segmentation.train_jobs` do). Categories travel by name (any
    class pickles); when ``fn`` fails, its exception carries the warnings as notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # as a plain run shows them: once per place and text
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            if hasattr(exc, "add_note"):  # Python >= 3.11
                for w in caught:
                    exc.add_note(f"warning before it: {w.category.__name__}: {w.message}")
            raise
    return result, [(w.category.__module__, w.category.__qualname__, str(w.message)) for w in caught]


def show_warnings(caught: list[tuple[str, str, str]]) -> None:
    """Warn, in this process, what :func:`call_recording_warnings` recorded in a worker (a
    category this process cannot import becomes UserWarning)."""
    for module, name, message in caught:
        category = getattr(sys.modules.get(module), name, None)
        if not (isinstance(category, type) and issubclass(category, Warning)):
            category = UserWarning
        warnings.warn(message, category, stacklevel=2)


def _train_job(config: dict, fast: bool) -> str:
    from ctxstyle.train import train

    return str(train(TrainConfig.from_dict(config), resume=True, progress=False, fast=fast))


def _relay(job: Future, result: Future) -> None:
    """Settle ``result`` (the future :meth:`TrainingPool.train` handed out) from the worker's ``job``:
    its checkpoint path, after showing here the warnings the worker raised; a warning that this
    process's filters turn into an error becomes ``result``'s exception (raised where it is awaited)."""
    if job.cancelled():
        result.cancel()
        result.set_running_or_notify_cancel()  # counted as done by concurrent.futures.wait / as_completed
        return
    if not result.set_running_or_notify_cancel():
        return  # its holder cancelled it while the run was under way
    try:
        path, caught = job.result()
        show_warnings(caught)
    except BaseException as exc:
        result.set_exception(exc)
    else:
        result.set_result(path)


class TrainingPool:
    """Train decoder runs in ``workers`` processes of ``threads`` threads each.

    >>> with TrainingPool(workers=2) as pool:                     # doctest: +SKIP
    ...     done = [pool.train(cfg, "results/cpu/checkpoints", "ours") for cfg in configs]
    ...     paths = [f.result() for f in done]

    :meth:`train` queues a run once per checkpoint folder (asking twice gives the same future) and
    returns a future of its checkpoint path; a finished run is only loaded. Leaving the ``with``
    block waits for every queued run; an error in a run is raised by its future's ``result()``,
    and on an error in the block the runs not yet started are cancelled. Warnings a run raises in its
    worker (e.g. a ``CTXSTYLE_WEIGHTS`` file that does not fit) are shown in this process when it ends.
    """

    def __init__(self, workers: int = 2, threads: int = 1):
        if int(workers) < 1 or int(threads) < 1:
            raise InputError("TrainingPool", f"workers and threads must be >= 1, got {workers} and {threads}")
        self.workers, self.threads = int(workers), int(threads)
        self._pool = spawn_pool(self.workers)
        self._runs: dict[str, Future] = {}
        self._lock = threading.Lock()

    def train(self, cfg: TrainConfig, checkpoints_dir: str | Path, name: str) -> Future:
        """Queue the run ``cfg`` into ``checkpoints_dir/<name>-<config hash>/``; a future of its checkpoint."""
        out = str(run_dir(cfg, checkpoints_dir, name))
        with self._lock:
            if out not in self._runs:
                job = replace(cfg, output_dir=out, threads=self.threads)
                result: Future = Future()
                work = self._pool.submit(call_recording_warnings, _train_job, job.to_dict(), presets.FAST)
                result.add_done_callback(lambda r, work=work: r.cancelled() and work.cancel())  # not yet started: dropped
                work.add_done_callback(lambda done, result=result: _relay(done, result))
                self._runs[out] = result
            return self._runs[out]

    def __len__(self) -> int:
        return len(self._runs)

    def close(self, cancel: bool = False) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> TrainingPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)
