"""`make serve`'s supervisor ends what outlived the stop, a grandchild whose parent exited included
(config.run._end_leftovers): Ctrl-C stops everything within 10 s even then."""
from __future__ import annotations

import subprocess
import sys
import time

import psutil

from config import run

# A child that starts a grandchild ignoring SIGTERM, prints its pid, and waits to be signalled.
_TREE = """
import signal, subprocess, sys
grandchild = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
print(grandchild.pid, flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exits at once, leaving its child behind
signal.pause()
"""


def test_a_grandchild_left_behind_by_its_exiting_parent_is_ended():
    child = subprocess.Popen([sys.executable, "-c", _TREE], stdout=subprocess.PIPE, text=True)
    grandchild = psutil.Process(int(child.stdout.readline()))
    run._signalled_descendants.clear()
    try:
        assert run._note_descendants(None, None, "before_signal", pid=child.pid) is True
        child.terminate()  # as circus stops a child; the grandchild is re-parented away from us
        child.wait(10)
        assert grandchild.is_running() and grandchild.ppid() != child.pid
        started = time.monotonic()
        run._end_leftovers(grace=1.0)
        assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE
        assert time.monotonic() - started < 5
    finally:
        run._signalled_descendants.clear()
        if grandchild.is_running():
            grandchild.kill()
