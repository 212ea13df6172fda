"""One ``make serve`` for the whole session: the README's command, live, for the tests of every
capability that must be shown through it (a real server, a real worker, beat and a real client).

It runs on the suite's PostgreSQL (a fresh database of its own) and the suite's Valkey (a Redis
database index of its own, so its worker never takes the chunks of the suite's own workers and the
suite's cache flushes never touch its counters), with ``VAR_DIR`` in a temporary folder. Tests
share it: each makes its own organization and keys (``LiveServe.key``), so they never meet.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import redis
from django.conf import settings
from psycopg import sql

from tests.platform_process import Platform, user_env
from tests.workers import worker_database_url

# Redis database index of the live platform (the suite's own cache and broker use another).
LIVE_REDIS_DB = 7


def redis_url_with_db(url: str, db: int) -> str:
    """``url`` (``redis://host:port/N`` or ``unix:///path?db=N``) naming database ``db`` instead."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        query["db"] = str(db)
        return f"unix://{parts.path}?{urlencode(query)}"  # urlunsplit drops the empty authority
    return urlunsplit(parts._replace(path=f"/{db}"))


@dataclass
class LiveServe:
    """A running ``make serve`` (``platform``: its process, output, ``manage``, ``base``)."""

    platform: Platform
    env: dict
    _made: set = field(default_factory=set)

    @property
    def base(self) -> str:
        return self.platform.base

    def key(self, *, org: str | None = None, project: str = "Default", admin: bool = False) -> str:
        """A new API key's plaintext (project key, or with ``admin`` an admin key) in ``org``
        (a new organization per call when not given)."""
        org = org or f"live-{uuid.uuid4().hex[:8]}"
        args = ["create_api_key", "--org", org]
        args += ["--admin"] if admin else ["--project", project, "--name", "test"]
        return self.platform.manage(*args)


# Files an earlier version of the platform kept for its model (another stamp: other library versions),
# unused for LEFTOVER_DAYS: the release step of `make serve` removes them (prune_model_exports).
LEFTOVER_STAMP = "0123456789abcdef" * 2
LEFTOVER_DAYS = 8


def leftovers_plant(models: Path) -> list[Path]:
    """Put an older version's export, manifest, lock and tokenizer in ``models`` (``VAR_DIR/models``),
    last used `LEFTOVER_DAYS` days ago."""
    models.mkdir(parents=True, exist_ok=True)
    when = time.time() - LEFTOVER_DAYS * 86400
    files = [models / f"{LEFTOVER_STAMP}{suffix}" for suffix in (".onnx", ".json", ".lock", ".tokenizer.json")]
    for file in files:
        file.write_bytes(b"{}")
        os.utime(file, (when, when))
    return files


@pytest.fixture(scope="session")
def live_serve(django_db_blocker, tmp_path_factory) -> LiveServe:
    """``make serve`` on a fresh database; ready (web, worker and beat up) when yielded; stopped,
    and its database and Redis index dropped, at the end of the session."""
    from tests.config.test_roles import admin_connection

    name = f"live_{uuid.uuid4().hex[:10]}"
    with django_db_blocker.unblock(), admin_connection() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    redis_url = redis_url_with_db(settings.REDIS_URL, LIVE_REDIS_DB)
    redis.Redis.from_url(redis_url).flushdb()
    # Headers may take 60 s (10 s by default), so the security probes' slow-header clients stay
    # held however slow the machine is while they measure.
    var_dir = tmp_path_factory.mktemp("live-var")
    leftovers_plant(var_dir / "models")
    env = user_env(DATABASE_URL=worker_database_url(name), REDIS_URL=redis_url,
                   VAR_DIR=str(var_dir), WEB_HEADER_TIMEOUT="60")
    platform = Platform("serve", env=env)
    try:
        platform.wait_ready(timeout=300)
        platform.wait_log(" ready.", timeout=180)  # the Celery worker consumes
        yield LiveServe(platform=platform, env=env)
    finally:
        platform.terminate()
        platform.kill()
        redis.Redis.from_url(redis_url).flushdb()
        with django_db_blocker.unblock(), admin_connection() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

