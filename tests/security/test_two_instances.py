"""Two ``make web`` on one host (other ports) do not interfere (issue 11, item 15): gunicorn
shared one control socket per user (``~/.gunicorn/gunicorn.ctl``), which a second instance took
over and deleted on exit. The server now keeps nothing per host: both serve, stopping one leaves
the other serving, and nothing is written under ``$HOME``."""
from __future__ import annotations

import pytest

from tests.security.conftest import start_web

pytestmark = pytest.mark.runtime


def test_two_web_instances_on_one_host_share_nothing(web_env, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**web_env, "HOME": str(home)}
    first = start_web(env)
    second = None
    try:
        second = start_web(env)
        assert first.get("/healthz")[0] == 200 and second.get("/healthz")[0] == 200
        elapsed, left = second.terminate(timeout=40)
        assert not left, left
        assert first.get("/healthz")[0] == 200 and first.readyz()[0] == 200
        assert list(home.rglob("*")) == []  # no control socket, pid file or cache per user
        elapsed, left = first.terminate(timeout=40)
        assert not left, left
    finally:
        first.kill()
        if second is not None:
            second.kill()
