"""Production settings (issue 11, item 7): the development SECRET_KEY is refused with DEBUG off,
a missing key is generated once and kept private, and `manage.py check --deploy` is clean with
the production environment that platform/README.md documents."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.secret_key import DEVELOPMENT_SECRET_KEY, secret_key

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_NAMES = ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "SECURE_SSL_REDIRECT",
                  "SECURE_PROXY_SSL_HEADER", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS",
                  "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD",
                  "TRUSTED_PROXIES", "DJANGO_ALLOW_ASYNC_UNSAFE")  # set by tests/conftest.py for Playwright only


def documented_production_env() -> dict[str, str]:
    """The ``NAME=value`` lines of the first sh block under "## Production settings" in
    platform/README.md; the placeholder key becomes a random one."""
    text = (ROOT / "platform" / "README.md").read_text()
    section = text.split("## Production settings", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    env = dict(line.split("=", 1) for line in block.splitlines() if line and not line.startswith("#"))
    assert env["SECRET_KEY"].startswith("<")
    env["SECRET_KEY"] = "7hQ2-vLx9Rk4mWz8pT3nB6yF1cJ5sD0gA_uE2iO7rK4wQ9zX3vC8bN5mL1kP6sY0d"
    return env


def manage_check(env: dict[str, str], var_dir: Path) -> subprocess.CompletedProcess:
    """``manage.py check --deploy --fail-level WARNING`` in a fresh process with ``env`` over a
    copy of this environment from which every setting it names was removed."""
    base = {k: v for k, v in os.environ.items() if k not in SETTINGS_NAMES}
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                          cwd=ROOT, env={**base, "VAR_DIR": str(var_dir), **env}, capture_output=True, text=True,
                          timeout=120)


def test_check_deploy_is_clean_in_the_documented_production_configuration(tmp_path):
    result = manage_check(documented_production_env(), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_a_trusted_proxies_typo_stops_the_start(tmp_path):
    result = manage_check({**documented_production_env(), "TRUSTED_PROXIES": "10.0.0.0/8,10.0.0.300"}, tmp_path)
    assert result.returncode != 0 and "TRUSTED_PROXIES: '10.0.0.300'" in result.stderr


def test_the_development_key_is_refused_when_debug_is_off(tmp_path):
    result = manage_check({**documented_production_env(), "SECRET_KEY": DEVELOPMENT_SECRET_KEY}, tmp_path)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "publicly documented development key" in result.stderr
    assert "Set SECRET_KEY" in result.stderr
    with pytest.raises(ImproperlyConfigured):
        secret_key(configured=DEVELOPMENT_SECRET_KEY, debug=False, var_dir=tmp_path)
    # Development keeps working: DEBUG on accepts it, and uses it when none is set.
    assert secret_key(configured=DEVELOPMENT_SECRET_KEY, debug=True, var_dir=tmp_path) == DEVELOPMENT_SECRET_KEY
    assert secret_key(configured="", debug=True, var_dir=tmp_path) == DEVELOPMENT_SECRET_KEY
    assert not (tmp_path / "secret_key").exists()


def test_without_a_key_and_debug_off_one_is_generated_once_and_kept_private(tmp_path):
    first = secret_key(configured="", debug=False, var_dir=tmp_path / "var")
    path = tmp_path / "var" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 50 and len(set(first)) >= 5 and first != DEVELOPMENT_SECRET_KEY
    assert secret_key(configured="", debug=False, var_dir=tmp_path / "var") == first  # kept across restarts
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    assert secret_key(configured="from-the-env" * 5, debug=False, var_dir=tmp_path / "var") == "from-the-env" * 5
    # The whole documented production configuration minus SECRET_KEY: the generated key passes too.
    env = documented_production_env()
    env.pop("SECRET_KEY")
    result = manage_check(env, tmp_path / "var")
    assert result.returncode == 0, result.stdout + result.stderr
    assert path.read_text().strip() == first
