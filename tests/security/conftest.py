"""A live web role for the probes: ``make web`` (the server `make serve` runs) on a fresh,
migrated database of the suite's PostgreSQL, with a project key, shared by the session."""
from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass

import pytest
from django.conf import settings
from psycopg import sql

from tests.config.test_roles import admin_connection
from tests.platform_process import VENV, Platform, user_env
from tests.workers import worker_database_url


@dataclass
class LiveWeb:
    """A running ``make web``: ``platform`` (its process and captured output), ``key`` (a
    project key's plaintext), ``host`` / ``port``."""

    platform: Platform
    key: str
    env: dict
    host: str = "127.0.0.1"

    @property
    def port(self) -> int:
        return self.platform.port

    @property
    def base(self) -> str:
        return self.platform.base


@pytest.fixture(scope="session")
def web_env(django_db_blocker):
    """The environment of a user's ``make web`` on a fresh database (migrated, models registered);
    the database is dropped at the end."""
    name = f"security_{uuid.uuid4().hex[:10]}"
    with django_db_blocker.unblock(), admin_connection() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    # Headers may take 60 s here (10 s by default), so slow-header probes stay held however slow
    # the machine is while the test measures.
    env = user_env(DATABASE_URL=worker_database_url(name), REDIS_URL=settings.REDIS_URL, WEB_HEADER_TIMEOUT="60")
    subprocess.run([str(VENV / "bin" / "python"), "-m", "config.run", "migrate"], env=env, check=True,
                   capture_output=True, timeout=600)
    yield env
    with django_db_blocker.unblock(), admin_connection() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def start_web(env: dict) -> Platform:
    """``make web`` with ``env``, once ``/readyz`` answers 200 (raises with its log otherwise)."""
    web = Platform("web", env=env)
    try:
        web.wait_ready(timeout=300)
    except BaseException:
        web.kill()
        raise
    return web


@pytest.fixture(scope="session")
def live_web(web_env) -> LiveWeb:
    """One ``make web`` for the session's probes, with a project key."""
    web = start_web(web_env)
    key = web.manage("create_api_key", "--org", "probe", "--project", "probe")
    yield LiveWeb(platform=web, key=key, env=web_env)
    web.terminate()
    web.kill()
