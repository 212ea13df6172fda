"""The roles of a scaled deployment (``make migrate``, ``make web``, ``make worker``) on a fresh
database of the suite's PostgreSQL: five releases migrating at the same instant never fail, and
web and worker started before them wait, then serve."""
from __future__ import annotations

import subprocess
import time
import uuid

import psycopg
import pytest
from django.conf import settings
from psycopg import sql

from tests.platform_process import VENV, Platform, user_env
from tests.workers import worker_database_url

pytestmark = pytest.mark.runtime


def admin_connection() -> psycopg.Connection:
    """Autocommit connection to the suite's server's ``postgres`` database."""
    db = settings.DATABASES["default"]
    host = (db.get("OPTIONS") or {}).get("host") or db.get("HOST") or "127.0.0.1"
    return psycopg.connect(host=host, port=db.get("PORT") or 5432, user=db.get("USER") or "postgres",
                           password=db.get("PASSWORD") or None, dbname="postgres", autocommit=True)


@pytest.fixture
def fresh_database():
    name = f"fresh_{uuid.uuid4().hex[:10]}"
    with admin_connection() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield worker_database_url(name)
    with admin_connection() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_five_concurrent_migrates_never_fail_and_web_and_worker_wait_for_them(fresh_database):
    env = user_env(DATABASE_URL=fresh_database, REDIS_URL=settings.REDIS_URL)
    web = Platform("web", env=env)
    worker = Platform("worker", env={**env, "QUEUES": "billing", "WORKER_NAME": f"roles-{uuid.uuid4().hex[:6]}@%h"})
    try:
        web.wait_log("web waits: ", timeout=60)
        worker.wait_log("worker waits: ", timeout=60)
        assert "not applied yet" in web.log() and "not applied yet" in worker.log()
        assert web.get("/healthz")[0] == 0  # nothing listens while it waits

        migrations = [subprocess.Popen(["make", "--no-print-directory", "migrate", f"VENV={VENV}"], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                      for _ in range(5)]
        outputs = [m.communicate(timeout=300)[0] for m in migrations]
        assert [m.returncode for m in migrations] == [0] * 5, "\n----\n".join(outputs)
        assert not any("Traceback" in out or "Error" in out for out in outputs), "\n----\n".join(outputs)
        assert sum("Applying accounts.0001_initial... OK" in out for out in outputs) == 1  # one did the work

        web.wait_ready(timeout=180)
        worker.wait_log(" ready.", timeout=120)
        assert "database migrated, starting" in web.log() and "database migrated, starting" in worker.log()
        for role in (web, worker):
            elapsed, left = role.terminate()
            assert not left, left
    finally:
        web.kill()
        worker.kill()
        time.sleep(0.5)
