"""A guard against a notebook run that waits forever on a kernel that has stopped working.

Headless runs sometimes hang in papermill/nbclient with every process idle: the kernel waits for
requests while the client still waits for the reply to a cell it sent, which the kernel never ran
(no execution count, no output). Seen here in two full cpu-profile runs in a row (2026-12-07), both
times at notebook 06's explorer cell, not in the four full runs after them, never when 06 ran alone,
in cached or in smoke runs; it matches reports
of ipykernel 7 kernels that stop running execute requests (vscode-jupyter 17228/17410) and older
papermill hangs (705, 711). Nothing returns, so a reproduction or a CI job would wait until it is
killed from outside.

:class:`IdleKernelWatchdog` watches the kernel's process tree (the kernel and every process it
started, e.g. training workers) while a notebook executes. When the whole tree has used less than
``min_cpu_s`` seconds of CPU over ``window_s`` seconds, it kills the kernel: nbclient then raises
``DeadKernelError`` at once, and the runner reports a stuck kernel and runs the notebook once more
(its trained runs are cached, so a retry redoes little). Every notebook here computes all the time
(training, evaluation, figures): a tree that idle for minutes is not working.
``CTXSTYLE_IDLE_KERNEL_S`` sets the window (default 600 s; 0 turns the guard off).

Before it kills, the guard opens a new connection to the kernel and asks for ``kernel_info``
(:func:`kernel_info_answered`): ipykernel issue 1554 describes a request stranded on the kernel's
shell socket until a new connection wakes it. It then watches a shorter grace window: a kernel
that works again is left alone (the run goes on), one that stays idle is killed. Either way it
says on stderr what happened, so the next hang also tells which kind it was.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

#: seconds of an idle kernel tree before the kernel is killed (``CTXSTYLE_IDLE_KERNEL_S`` overrides)
DEFAULT_WINDOW_S = 600.0


def window_from_env(default: float = DEFAULT_WINDOW_S) -> float:
    """The idle window from ``CTXSTYLE_IDLE_KERNEL_S`` (0 or negative: off); a one-line error naming
    the variable when it is not a number."""
    raw = os.environ.get("CTXSTYLE_IDLE_KERNEL_S")
    if raw is None or not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"CTXSTYLE_IDLE_KERNEL_S={raw!r}: not a number of seconds (0 turns the guard off)") from None


class StuckKernelError(RuntimeError):
    """The kernel was killed because its process tree stayed idle while a cell was running."""


def tree_cpu_seconds(pid: int) -> dict[tuple[int, float], float]:
    """CPU seconds used so far by ``pid`` and each of its descendants, keyed by (pid, start time) so
    that a reused pid is another process: user + system, plus what the children it has already
    reaped used (a worker that ended between two looks still counts)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid, p.create_time()] = t.user + t.system + getattr(t, "children_user", 0.0) + getattr(
                t, "children_system", 0.0)
        except psutil.Error:
            continue
    return out


class IdleTracker:
    """Decides, from CPU samples of a process tree, when the tree has been idle for a whole window.

    Each sample is ``{(pid, start time): CPU seconds so far}`` (:func:`tree_cpu_seconds`). Idle
    means: the CPU the tree used since the sample ``window_s`` ago is below ``min_cpu_s``, where a
    process absent from that old sample counts in full (it started meanwhile, or its pid was
    reused), and a process that has ended counts through the one that reaped it. An empty sample
    (the tree has ended) starts the window again.
    """

    def __init__(self, window_s: float, min_cpu_s: float = 1.0):
        self.window_s, self.min_cpu_s = float(window_s), float(min_cpu_s)
        self._samples: list[tuple[float, dict]] = []  # (time, cpu by (pid, start time)), oldest first

    def observe(self, clock: float, cpu: dict) -> bool:
        """Add the sample taken at ``clock`` (seconds); True when the tree has been idle for the window."""
        if not cpu:
            self._samples.clear()
            return False
        samples = self._samples
        samples.append((clock, cpu))
        while len(samples) > 1 and samples[1][0] <= clock - self.window_s:
            samples.pop(0)
        then_t, then = samples[0]
        if clock - then_t < self.window_s:
            return False
        used = sum(max(0.0, seconds - then.get(key, 0.0)) for key, seconds in cpu.items())
        return used < self.min_cpu_s

    @property
    def covered(self) -> bool:
        """True when the samples span a whole window (so a False from :meth:`observe` meant work)."""
        return bool(self._samples) and self._samples[-1][0] - self._samples[0][0] >= self.window_s


class IdleKernelWatchdog:
    """Kill the process ``pid()`` names, and its tree, when :class:`IdleTracker` finds the tree idle
    for ``window_s`` seconds (and, with ``nudge``, still idle a grace window after it).

    ``pid`` is asked at every check (None until the kernel has started). ``nudge`` (e.g.
    :func:`kernel_info_answered` on the kernel's connection) is called once per idle episode before
    any kill; whether it was answered is kept in :attr:`nudge_answered`, and a tree that works
    again within ``grace_s`` (default: half the window, at most 60 s) is watched afresh. Use as a
    context manager around the execution; :attr:`fired` tells afterwards whether it killed the
    kernel. A kill that fails is reported on stderr and leaves :attr:`fired` false.
    """

    def __init__(self, pid: Callable[[], int | None], window_s: float = DEFAULT_WINDOW_S, *,
                 min_cpu_s: float = 1.0, interval_s: float | None = None,
                 nudge: Callable[[], bool] | None = None, grace_s: float | None = None):
        self.pid, self.window_s, self.min_cpu_s = pid, float(window_s), float(min_cpu_s)
        self.interval_s = interval_s if interval_s is not None else max(0.05, min(30.0, self.window_s / 10))
        self.nudge = nudge
        self.grace_s = float(grace_s) if grace_s is not None else min(60.0, self.window_s / 2)
        self.nudge_answered: bool | None = None
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idle-kernel-watchdog", daemon=True)

    def __enter__(self) -> IdleKernelWatchdog:
        if self.window_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _say(self, text: str) -> None:
        print(f"watchdog: {text}", file=sys.stderr, flush=True)

    def _run(self) -> None:
        tracker, nudged = IdleTracker(self.window_s, self.min_cpu_s), False
        while not self._stop.wait(self.interval_s):
            clock = time.monotonic()
            pid = self.pid()
            if pid is None:
                continue
            idle = tracker.observe(clock, tree_cpu_seconds(pid))
            if nudged and not idle and tracker.covered:  # it works again: watch it afresh
                self._say(f"the kernel works again after the new connection (kernel_info "
                          f"{'answered' if self.nudge_answered else 'not answered'}); it is left to run")
                tracker, nudged = IdleTracker(self.window_s, self.min_cpu_s), False
                continue
            if not idle:
                continue
            if self.nudge is not None and not nudged:
                nudged = True
                try:
                    self.nudge_answered = bool(self.nudge())
                except Exception:
                    self.nudge_answered = False
                self._say(f"the kernel's processes used no CPU for {self.window_s:g} s with a cell running; a new "
                          f"connection's kernel_info request was {'answered' if self.nudge_answered else 'not answered'}; "
                          f"watching {self.grace_s:g} s more before stopping it")
                tracker = IdleTracker(self.grace_s, self.min_cpu_s)
                continue
            self.fired = True
            try:
                kill_tree(pid)
            except Exception as exc:  # could not kill it: say so, and keep the run as it is
                self.fired = False
                self._say(f"could not stop the idle kernel {pid}: {exc}")
            return


def kernel_info_answered(connection_info: dict, timeout_s: float = 10.0) -> bool:
    """Open a new shell connection to the kernel of ``connection_info`` (jupyter_client's dict),
    send ``kernel_info_request`` and say whether the reply came within ``timeout_s``."""
    from jupyter_client import BlockingKernelClient

    kc = BlockingKernelClient()
    kc.load_connection_info(connection_info)
    kc.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
    try:
        msg_id = kc.kernel_info()
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            reply = kc.get_shell_msg(timeout=left)
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                return True
        return False
    except Exception:  # queue.Empty on a timeout, or a connection that failed
        return False
    finally:
        kc.stop_channels()


def kill_tree(pid: int) -> None:
    """Kill ``pid`` and every process it started (training workers would otherwise wait forever on a
    parent that is gone), the children first."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
