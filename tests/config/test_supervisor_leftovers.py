"""`make serve`'s supervisor ends what outlived the stop, a grandchild whose parent exited included
(config.run._end_leftovers): Ctrl-C stops everything within 10 s even then.

The supervisor's sweep ends every descendant of the process that runs it, so it runs here in a
process of its own (in the test process it would end the session's ``make serve`` too)."""
from __future__ import annotations

import json
import subprocess
import sys

import psutil

from tests.platform_process import ROOT, user_env

# The supervisor's part: a child that starts a grandchild ignoring SIGTERM and exits at once on
# SIGTERM, leaving it behind (re-parented away); the sweep must still end the grandchild.
_SUPERVISOR = r'''
import json, signal, subprocess, sys, time
from config import run
child = subprocess.Popen([sys.executable, "-c", """
import signal, subprocess, sys
grandchild = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
print(grandchild.pid, flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
signal.pause()
"""], stdout=subprocess.PIPE, text=True)
grandchild = int(child.stdout.readline())
assert run._note_descendants(None, None, "before_signal", pid=child.pid) is True
child.terminate()
child.wait(10)
started = time.monotonic()
run._end_leftovers(grace=1.0)
print(json.dumps({"grandchild": grandchild, "seconds": time.monotonic() - started}))
'''


def test_a_grandchild_left_behind_by_its_exiting_parent_is_ended():
    result = subprocess.run([sys.executable, "-c", _SUPERVISOR], cwd=ROOT, env=user_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["seconds"] < 5
    try:
        grandchild = psutil.Process(report["grandchild"])
        assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass
    assert "still running after the stop, ending it" in result.stderr  # and it says so
