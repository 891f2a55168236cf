"""reproduce.watchdog: an idle process tree is killed after the window; a working one is left alone."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from reproduce.watchdog import IdleKernelWatchdog, tree_cpu_seconds, window_from_env


def _child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def test_an_idle_process_tree_is_killed_after_the_window_and_a_working_one_is_not():
    idle = _child("import subprocess, sys, time\n"
                  "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                  "time.sleep(120)")
    busy = _child("import time\nt = time.time()\nwhile time.time() - t < 120: pass")
    try:
        with IdleKernelWatchdog(lambda: idle.pid, 1.0, min_cpu_s=0.2, interval_s=0.1) as dog_idle, \
             IdleKernelWatchdog(lambda: busy.pid, 1.0, min_cpu_s=0.2, interval_s=0.1) as dog_busy:
            for _ in range(100):  # the idle parent's child has started (it is killed with it)
                kids = psutil.Process(idle.pid).children()
                if kids:
                    break
                time.sleep(0.05)
            idle.wait(timeout=30)  # killed by the watchdog well before its sleep ends
            time.sleep(1.5)  # the busy process is watched for more than a window too
        assert dog_idle.fired and idle.returncode is not None and idle.returncode != 0
        assert kids  # the tree, not only its root: no orphaned worker left sleeping
        try:
            assert kids[0].status() == psutil.STATUS_ZOMBIE  # killed, not yet reaped
        except psutil.NoSuchProcess:
            pass  # killed and reaped
        assert not dog_busy.fired and busy.poll() is None
    finally:
        for p in (idle, busy):
            p.kill()
            p.wait()


def test_the_tree_counts_children_and_the_window_comes_from_the_environment(monkeypatch):
    parent = _child("import subprocess, sys, time\n"
                    "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                    "time.sleep(60)")
    try:
        for _ in range(100):
            if len(tree_cpu_seconds(parent.pid)) == 2:
                break
            time.sleep(0.05)
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
