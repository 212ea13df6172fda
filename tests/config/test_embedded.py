"""The embedded PostgreSQL and Valkey (`config.embedded`) and the launcher's startup: odd paths,
a failed ``initdb``, and a stop while starting."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import environ
import psutil
import psycopg
import pytest
import redis
from kombu import Connection

from config.embedded import EmbeddedPostgres, EmbeddedServers, database_url, redis_url
from config.settings import celery_redis_url
from tests.platform_process import ROOT, VENV, processes_under, user_env

pytestmark = pytest.mark.runtime


def test_a_var_dir_with_spaces_and_url_characters_works_end_to_end(tmp_path):
    var = tmp_path / "my var+dir#1"
    servers = EmbeddedServers(var, environ={})
    try:
        urls = servers.start()
        assert urls == {"DATABASE_URL": database_url(var), "REDIS_URL": redis_url(var)}
        db = environ.Env.db_url_config(urls["DATABASE_URL"])
        with psycopg.connect(dbname=db["NAME"], user=db["USER"], **db["OPTIONS"]) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("embeddings",)
        assert redis.Redis.from_url(urls["REDIS_URL"]).eval("return 2", 0) == 2  # admission's EVAL
        with Connection(celery_redis_url(urls["REDIS_URL"])) as broker:  # Celery's spelling of it
            broker.ensure_connection(max_retries=1)
        # the sockets are private to us
        socket_dir = db["OPTIONS"]["host"]
        assert os.stat(socket_dir).st_mode & 0o777 == 0o700
    finally:
        servers.stop()
    assert processes_under(var) == []
    # data kept: started again, the same database is there
    servers = EmbeddedServers(var, environ={})
    try:
        servers.start()
        redis.Redis.from_url(redis_url(var)).set("kept", "1")
    finally:
        servers.stop()
    servers = EmbeddedServers(var, environ={})
    try:
        servers.start()
        assert redis.Redis.from_url(redis_url(var)).get("kept") == b"1"  # append-only file
    finally:
        servers.stop()


def test_a_failed_initdb_is_a_clear_error_not_a_traceback(tmp_path):
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "stray-file").write_text("not a cluster")  # initdb refuses a non-empty dir
    result = subprocess.run([str(VENV / "bin" / "python"), "-m", "config.run", "serve"], cwd=ROOT,
                            env=user_env(VAR_DIR=str(tmp_path)), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "the embedded PostgreSQL did not start" in result.stderr
    assert "DATABASE_URL=postgres://" in result.stderr and "Traceback" not in result.stderr
    assert processes_under(tmp_path) == []


def test_sigterm_while_starting_leaves_nothing_behind(tmp_path):
    log = tmp_path / "serve.log"
    var = tmp_path / "var"
    with open(log, "wb") as out:
        serve = subprocess.Popen([str(VENV / "bin" / "python"), "-m", "config.run", "serve"], cwd=ROOT,
                                 env=user_env(VAR_DIR=str(var), PYTHONUNBUFFERED="1"), stdout=out,
                                 stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        # servers up, migrations running (the migrate child's lines, JSON or LOG_FORMAT=text)
        while not any(m in log.read_text(errors="replace") for m in ('"process":"migrate"', "migrate | ")):
            assert time.monotonic() < deadline and serve.poll() is None, log.read_text()
            time.sleep(0.1)
        assert processes_under(var)
        serve.send_signal(signal.SIGTERM)
        started = time.monotonic()
        serve.wait(15)
        while processes_under(var) and time.monotonic() - started < 10:
            time.sleep(0.1)
    assert processes_under(var) == [], log.read_text()[-3000:]
    assert time.monotonic() - started < 10
    assert "migrate" not in " ".join(" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True))


def test_a_postmaster_pid_left_by_a_kill_whose_pid_was_reused_does_not_stop_the_next_start(tmp_path):
    """A postmaster killed outright leaves ``postmaster.pid``; when its PID then belongs to another
    process (PIDs are reused within a minute on a busy host: the runtime test failed so in CI),
    PostgreSQL refused to start ("lock file already exists"), and a stop SIGKILLed whatever process
    had the PID. A running server's file stays."""
    var = tmp_path / "var"
    servers = EmbeddedServers(var, environ={})
    try:
        servers.start()
        pidfile = servers.postgres.pgdata / "postmaster.pid"
        postmaster = psutil.Process(int(pidfile.read_text().split()[0]))
        servers.postgres._stale_lock_remove()
        assert pidfile.exists()  # its own server, running: left alone
        children = postmaster.children(recursive=True)
        for proc in [postmaster, *children]:
            proc.kill()
        psutil.wait_procs([postmaster, *children], timeout=10)
    finally:
        servers.stop()  # finds no postmaster under the file's PID: kills nothing
    # the process that now has the PID: the server's user's (PostgreSQL takes a PID it may not
    # signal for a stale one; the killed postmaster itself, a zombie not yet reaped, is its user's)
    owner = pidfile.stat().st_uid
    other = subprocess.Popen(["sleep", "120"], user=owner if owner != os.getuid() else None)
    lines = pidfile.read_text().splitlines()
    pidfile.write_text("\n".join([str(other.pid), *lines[1:]]) + "\n")
    # the socket's lock file names it too (a kill leaves it; PostgreSQL checks it as well)
    from config.embedded import socket_dir

    socket_lock = socket_dir(var) / ".s.PGSQL.5432.lock"
    socket_lock.write_text(f"{other.pid}\n{servers.postgres.pgdata}\n")
    servers = EmbeddedServers(var, environ={})
    try:
        EmbeddedPostgres(var).stop()  # no postmaster under that PID: nothing is killed
        assert other.poll() is None
        urls = servers.start()
        db = environ.Env.db_url_config(urls["DATABASE_URL"])
        with psycopg.connect(dbname=db["NAME"], user=db["USER"], **db["OPTIONS"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        servers.stop()
        other.kill()
    assert processes_under(var) == []


def test_a_stalled_valkey_is_given_time_then_replaced_never_run_twice(tmp_path):
    """A Valkey that lives but does not answer (SIGSTOP: a long fsync, an overloaded host) is waited
    for, then killed before another starts on its socket and data. One missed PING used to start a
    second server beside it: the platform's processes split between two stores (quota counters
    and Celery's queues in each)."""
    import threading

    var = tmp_path / "var"
    servers = EmbeddedServers(var, environ={"DATABASE_URL": "postgres:///unused"})  # Valkey only
    stop = threading.Event()
    try:
        servers.start()
        client = redis.Redis.from_url(redis_url(var), socket_timeout=1)
        client.set("kept", "1")
        time.sleep(1.5)  # appendfsync everysec
        first = servers.valkey.server_pid()
        assert first is not None
        os.kill(first, signal.SIGSTOP)
        threading.Thread(target=servers.watch, args=(stop,), kwargs={"interval": 0.2, "stall_seconds": 3},
                         daemon=True).start()
        time.sleep(1.5)  # a stall shorter than stall_seconds: no second server, the first kept
        assert servers.valkey.server_pid() == first and len(processes_under(var)) == 1
        deadline = time.monotonic() + 20
        while not servers.valkey.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert servers.valkey.running()
        second = servers.valkey.server_pid()
        assert second not in (None, first) and not psutil.pid_exists(first)
        assert [p.pid for p in processes_under(var)] == [second]
        assert redis.Redis.from_url(redis_url(var)).get("kept") == b"1"  # its data kept
        stop.set()
        os.kill(second, signal.SIGSTOP)  # a stop of a stalled server leaves nothing behind
    finally:
        stop.set()
        servers.stop()
    assert processes_under(var) == []
