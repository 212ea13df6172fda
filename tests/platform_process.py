"""Run the platform as a user does: ``make <target>`` in a subprocess, and read it from outside.

`Platform` starts a Makefile target (``serve``, ``web``, ``worker``, ``migrate``) in its own
process session with its output in a log file, and knows every process it spawned (the
process tree, plus the embedded servers, which run in sessions of their own).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from tests.workers import wait_for_text

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
# Variables of the test process that must not leak into a platform started "as a user would".
_PRIVATE = ("DATABASE_URL", "REDIS_URL", "VAR_DIR", "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER",
            "DJANGO_ALLOW_ASYNC_UNSAFE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_tree(destination: Path) -> Path:
    """The repository's files (tracked and untracked-not-ignored, as a fresh clone has them),
    copied with their times kept (so ``make`` sees the shared virtualenv as up to date)."""
    import shutil

    names = subprocess.run(["git", "ls-files", "-z", "-c", "-o", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def user_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would have: ours minus the test suite's own settings."""
    env = {k: v for k, v in os.environ.items() if k not in _PRIVATE}
    env.update({"PYTHONUNBUFFERED": "1", **extra})
    return env


class Platform:
    """``make TARGET`` in ``cwd`` with the shared virtualenv; its output in ``log_path``."""

    def __init__(self, target: str, *, cwd: Path = ROOT, env: dict[str, str] | None = None,
                 port: int | None = None, args: tuple[str, ...] = ()):
        self.cwd = Path(cwd)
        self.target = target
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix=f"emb-{target}-", suffix=".log")[1])
        self._log = open(self.log_path, "wb")
        self.env = env if env is not None else user_env()
        self.process = subprocess.Popen(
            ["make", "--no-print-directory", target, f"VENV={VENV}", f"PORT={self.port}", *args],
            cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self, start: int = 0) -> list[dict]:
        """The output after offset ``start`` as JSON log lines (config.logs: one object per line,
        ``process`` naming the role that wrote it); raises ``ValueError`` on a line that is not one."""
        return [json.loads(line) for line in self.log()[start:].splitlines() if line.strip()]

    def get(self, path: str, timeout: float = 5.0, headers: dict | None = None) -> tuple[int, bytes]:
        """``GET base+path`` → (status, body); (0, b"") when nothing answers."""
        request = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def readyz(self) -> tuple[int, dict]:
        status, body = self.get("/readyz")
        return status, (json.loads(body) if status else {})

    def wait_ready(self, timeout: float = 240.0) -> float:
        """Block until ``/readyz`` answers 200; returns the seconds waited. Raises with the log."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.readyz()[0] == 200:
                return time.monotonic() - started
            if self.process.poll() is not None:
                break
            time.sleep(0.25)
        raise AssertionError(f"not ready after {time.monotonic() - started:.0f} s:\n{self.log()[-6000:]}")

    def wait_log(self, needle: str, timeout: float = 120.0, start: int = 0) -> None:
        """Block until ``needle`` appears in the output after offset ``start``."""
        wait_for_text(self.log, needle, timeout=timeout, start=start, poll=0.2)

    def manage(self, *args: str, check: bool = True) -> str:
        """``python manage.py ARGS`` in this platform's directory and environment; its stdout."""
        result = subprocess.run([str(VENV / "bin" / "python"), "manage.py", *args], cwd=self.cwd, env=self.env,
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout.strip()

    def processes(self) -> list[psutil.Process]:
        """Every live process of this platform: make's tree, and for ``serve`` the embedded
        servers of its ``var/`` (they run in sessions of their own)."""
        found: dict[int, psutil.Process] = {}
        try:
            root = psutil.Process(self.process.pid)
            for proc in [root, *root.children(recursive=True)]:
                found[proc.pid] = proc
        except psutil.NoSuchProcess:
            pass
        if self.target != "serve":
            return [p for p in found.values() if _alive(p)]
        var = str(self.cwd / "var") + "/"
        for proc in processes_under(var):
            if f"{var}test/" not in " ".join(_cmdline(proc)):
                found[proc.pid] = proc
        pidfile = self.cwd / "var" / "postgres" / "postmaster.pid"
        if pidfile.exists():
            try:
                postmaster = psutil.Process(int(pidfile.read_text().split()[0]))
                for proc in [postmaster, *postmaster.children(recursive=True)]:
                    found[proc.pid] = proc
            except (psutil.NoSuchProcess, ValueError, IndexError):
                pass
        return [p for p in found.values() if _alive(p)]

    def children_named(self, *words: str) -> list[psutil.Process]:
        """Live processes of this platform whose command line contains all ``words``."""
        return [p for p in self.processes() if all(w in " ".join(_cmdline(p)) for w in words)]

    def terminate(self, timeout: float = 10.0, *, ctrl_c: bool = False) -> tuple[float, list[str]]:
        """SIGTERM to ``make`` alone (as a process manager would send it), or with ``ctrl_c`` SIGINT
        to the whole process group (as a terminal's Ctrl-C does); returns the seconds until every
        process of the platform was gone, and those still alive after ``timeout``."""
        tracked = self.processes()
        started = time.monotonic()
        if ctrl_c:
            os.killpg(self.process.pid, signal.SIGINT)
        else:
            self.process.send_signal(signal.SIGTERM)
        while time.monotonic() - started < timeout:
            left = [p for p in tracked if _alive(p)]
            if not left:
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        left = [f"{p.pid} {' '.join(_cmdline(p))[:120]}" for p in tracked if _alive(p)]
        return elapsed, left

    def kill(self) -> None:
        """SIGKILL everything left (cleanup after a failed test); closes the log."""
        for proc in self.processes():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


def processes_under(path) -> list[psutil.Process]:
    """Live processes whose command line names ``path`` (the embedded servers of a VAR_DIR run in
    sessions of their own, so only their command lines tie them to it)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if str(path) in " ".join(proc.info["cmdline"] or []) and _alive(proc):
            found.append(proc)
    return found


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return []


def _alive(proc: psutil.Process) -> bool:
    """Running (a zombie has exited: only its parent has not collected its status)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
