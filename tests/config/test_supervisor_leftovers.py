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


def test_a_child_circus_drops_before_reaping_it_is_reaped_and_its_exit_logged(caplog):
    """Circus's watcher drops a child it finds dead before the arbiter has reaped it (killed between
    the two checks) and starts another with no ``after_reap`` hook: the spawn's ``before_spawn``
    hook reaps the zombie and logs its exit as ``after_reap`` does; a child circus is still
    stopping, and one ``after_reap`` logged, are left alone."""
    import logging
    import time
    from types import SimpleNamespace

    from config import run

    killed, stopping = (subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2))
    try:
        watcher = SimpleNamespace(name="worker", processes={killed.pid: None, stopping.pid: None})
        arbiter = SimpleNamespace(_stopping=False)
        for child in (killed, stopping):
            assert run._note_spawned(watcher, arbiter, "after_spawn", pid=child.pid) is True
        killed.kill()
        deadline = time.monotonic() + 10
        while psutil.Process(killed.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        watcher.processes.clear()  # what circus's manage_processes does to a dead child, and kill_process
        with caplog.at_level(logging.INFO, logger="config.run"):
            assert run._log_unreaped_exits(watcher, arbiter, "before_spawn") is True
        assert caplog.text.count("exited with") == 1, caplog.text
        assert f"worker (pid {killed.pid}) exited with signal 9; restarting" in caplog.text
        assert not psutil.pid_exists(killed.pid)  # reaped, no zombie left
        stopping.terminate()
        stopping.wait(10)  # circus reaps it: its after_reap hook logs the exit, once
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="config.run"):
            run._log_exit(watcher, arbiter, "after_reap", process_pid=stopping.pid, exit_code=-15)
            run._log_unreaped_exits(watcher, arbiter, "before_spawn")
        assert caplog.text.count("exited with") == 1 and f"(pid {stopping.pid}) exited with signal 15" in caplog.text
    finally:
        for child in (killed, stopping):
            child.kill()
