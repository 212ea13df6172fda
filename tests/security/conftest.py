"""The live platform for the probes: the session's ``make serve`` (tests/live.py), whose web role
is the server they probe, with a project key."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.platform_process import Platform


@dataclass
class LiveWeb:
    """A running web role: ``platform`` (the ``make`` process and its captured output), ``key`` (a
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
def web_env(live_serve):
    """The environment of a user's ``make web`` on the session's platform (tests/live.py: its
    database, migrated, models registered, and its Redis): another web instance of it."""
    return live_serve.env


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
def live_web(live_serve) -> LiveWeb:
    """The session's ``make serve`` (tests/live.py), its web role probed, with a project key."""
    return LiveWeb(platform=live_serve.platform, key=live_serve.key(org="probe", project="probe"), env=live_serve.env)
