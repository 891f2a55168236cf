"""reproduce.watchdog: the idle decision on given CPU samples, then real process trees (an idle one
is killed with its children, a working one is left alone, a failed kill is reported)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from reproduce import watchdog
from reproduce.watchdog import IdleKernelWatchdog, IdleTracker, tree_cpu_seconds, window_from_env

KERNEL, WORKER = (100, 1.0), (101, 5.0)  # (pid, start time) keys of a sample


def _feed(tracker: IdleTracker, samples) -> list[bool]:
    return [tracker.observe(t, cpu) for t, cpu in samples]


def test_idle_only_after_a_whole_window_without_cpu():
    verdicts = _feed(IdleTracker(10.0, min_cpu_s=1.0), [(t, {KERNEL: 3.0}) for t in range(0, 16)])
    assert verdicts == [False] * 10 + [True] * 6  # t = 10: the sample at t = 0 is a window old


def test_a_working_tree_is_never_idle_and_cpu_just_under_the_threshold_is():
    busy = _feed(IdleTracker(10.0, min_cpu_s=1.0), [(t, {KERNEL: 0.15 * t}) for t in range(0, 40)])
    assert not any(busy)  # 1.5 s of CPU per window
    slow = _feed(IdleTracker(10.0, min_cpu_s=1.0), [(t, {KERNEL: 0.09 * t}) for t in range(0, 12)])
    assert slow[-1]  # 0.9 s per window: idle


def test_the_window_slides_busy_then_idle():
    samples = [(t, {KERNEL: min(t, 20) * 1.0}) for t in range(0, 40)]  # works until t = 20, then stops
    verdicts = _feed(IdleTracker(10.0), samples)
    assert not any(verdicts[:30]) and verdicts[30]  # idle once t - 10 >= 20, not before


def test_processes_that_start_or_reuse_a_pid_count_in_full_and_ended_ones_count_nothing():
    tracker = IdleTracker(10.0, min_cpu_s=1.0)
    assert not tracker.observe(0.0, {KERNEL: 50.0, WORKER: 40.0})
    # the worker ended (its key is gone) and a new process got the kernel's pid (new start time):
    assert not tracker.observe(10.0, {(100, 9.0): 2.0})  # 2 s by a process absent from the old sample
    tracker = IdleTracker(10.0, min_cpu_s=1.0)
    assert not tracker.observe(0.0, {KERNEL: 50.0, WORKER: 40.0})
    assert tracker.observe(10.0, {KERNEL: 50.2})  # the worker's end is no negative time, nor any time


def test_an_ended_tree_starts_the_window_again():
    tracker = IdleTracker(10.0)
    assert _feed(tracker, [(0, {KERNEL: 1.0}), (6, {}), (12, {KERNEL: 1.0})]) == [False, False, False]
    assert not tracker.observe(21.0, {KERNEL: 1.0}) and tracker.observe(22.0, {KERNEL: 1.0})


def _started(code: str) -> subprocess.Popen:
    """A python process running ``code``; returns once it printed its first line (it is set up)."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_an_idle_process_tree_is_killed_with_its_children_and_a_working_one_is_not():
    idle = _started("import subprocess, sys, time\n"
                    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                    "print('ready', flush=True)\ntime.sleep(120)")
    busy = _started("import time\nprint('ready', flush=True)\nt = time.time()\nwhile time.time() - t < 120: pass")
    kids = psutil.Process(idle.pid).children()
    try:
        with IdleKernelWatchdog(lambda: idle.pid, 1.0, min_cpu_s=0.1, interval_s=0.1) as dog_idle, \
             IdleKernelWatchdog(lambda: busy.pid, 1.0, min_cpu_s=0.1, interval_s=0.1) as dog_busy:
            idle.wait(timeout=60)  # killed by the watchdog well before its sleep ends
            time.sleep(1.5)  # the busy process is watched for more than a window too
        assert dog_idle.fired and idle.returncode != 0
        assert len(kids) == 1  # the tree, not only its root: no orphaned worker left sleeping
        try:
            assert kids[0].status() == psutil.STATUS_ZOMBIE  # killed, not yet reaped
        except psutil.NoSuchProcess:
            pass  # killed and reaped
        assert not dog_busy.fired and busy.poll() is None
    finally:
        for p in (idle, busy):
            p.kill()
            p.wait()


def test_a_kill_that_fails_is_reported_and_not_counted_as_fired(monkeypatch, capsys):
    sleeper = _started("import time\nprint('ready', flush=True)\ntime.sleep(60)")

    def refuse(pid):
        raise PermissionError(f"not allowed to kill {pid}")

    monkeypatch.setattr(watchdog, "kill_tree", refuse)
    said = f"watchdog: could not stop the idle kernel {sleeper.pid}: not allowed to kill {sleeper.pid}"
    err = ""
    try:
        with IdleKernelWatchdog(lambda: sleeper.pid, 0.5, min_cpu_s=0.1, interval_s=0.05) as dog:
            for _ in range(400):  # until the guard has tried and given up
                err += capsys.readouterr().err
                if said in err:
                    break
                time.sleep(0.05)
        assert said in err and not dog.fired and sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_tree_counts_children_and_the_window_comes_from_the_environment(monkeypatch):
    parent = _started("import subprocess, sys, time\n"
                      "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                      "print('ready', flush=True)\ntime.sleep(60)")
    try:
        assert len(tree_cpu_seconds(parent.pid)) == 2  # the kernel and the process it started
    finally:
        for p in psutil.Process(parent.pid).children(recursive=True):
            p.kill()
        parent.kill()
        parent.wait()
    assert tree_cpu_seconds(parent.pid) == {}
    monkeypatch.setenv("CTXSTYLE_IDLE_KERNEL_S", "0")
    assert window_from_env() == 0.0  # off
    asked = []
    with IdleKernelWatchdog(lambda: asked.append(1), window_from_env(), interval_s=0.01) as dog:
        time.sleep(0.2)  # a started guard would have asked for the pid many times meanwhile
    assert not dog.fired and not asked
    monkeypatch.setenv("CTXSTYLE_IDLE_KERNEL_S", "ten")
    with pytest.raises(SystemExit, match="CTXSTYLE_IDLE_KERNEL_S='ten': not a number"):
        window_from_env()


def test_a_tree_that_works_again_after_the_nudge_is_left_alone_and_one_that_does_not_is_killed(tmp_path, capsys):
    """Before a kill the guard calls ``nudge`` once (the runner: a new connection's kernel_info,
    what wakes a request stranded on the kernel's socket) and watches a grace window."""
    flag = tmp_path / "woken"
    waker = _started("import os, sys, time\nprint('ready', flush=True)\n"
                     f"while not os.path.exists({str(flag)!r}): time.sleep(0.02)\n"
                     "t = time.time()\nwhile time.time() - t < 120: pass")
    sleeper = _started("import time\nprint('ready', flush=True)\ntime.sleep(120)")
    calls = []

    def wake():
        calls.append("waker")
        flag.touch()
        return True

    try:
        with IdleKernelWatchdog(lambda: waker.pid, 1.0, min_cpu_s=0.1, interval_s=0.05, nudge=wake,
                                grace_s=1.0) as dog_woken, \
             IdleKernelWatchdog(lambda: sleeper.pid, 1.0, min_cpu_s=0.1, interval_s=0.05,
                                nudge=lambda: calls.append("sleeper") or False, grace_s=1.0) as dog_asleep:
            sleeper.wait(timeout=60)  # nudged, still idle through the grace window: killed
            time.sleep(2.5)  # the woken one is watched well past its grace window
        err = capsys.readouterr().err
        assert sorted(calls) == ["sleeper", "waker"]  # one nudge each
        assert dog_asleep.fired and dog_asleep.nudge_answered is False and sleeper.returncode != 0
        assert not dog_woken.fired and dog_woken.nudge_answered is True and waker.poll() is None
        assert "kernel_info request was answered; watching 1 s more" in err
        assert "the kernel works again after the new connection (kernel_info answered)" in err
    finally:
        for p in (waker, sleeper):
            p.kill()
            p.wait()


def test_kernel_info_answered_by_a_live_kernel_only():
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name="python3")
    km.start_kernel(extra_arguments=["--IPKernelApp.log_level=ERROR"])
    try:
        info = km.get_connection_info()
        assert watchdog.kernel_info_answered(info, timeout_s=60.0)
    finally:
        km.shutdown_kernel(now=True)
    assert not watchdog.kernel_info_answered(info, timeout_s=1.0)
