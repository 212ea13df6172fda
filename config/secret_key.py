"""Django's ``SECRET_KEY``: never the well-known development key in production.

Rules (`secret_key`):

* ``SECRET_KEY`` set: used as given, except the documented development key
  (`DEVELOPMENT_SECRET_KEY`) with ``DEBUG`` off, which is refused (``ImproperlyConfigured``);
* unset, ``DEBUG`` on: the development key (sessions survive restarts, nothing to set up);
* unset, ``DEBUG`` off (``make serve`` on one machine): a random key generated once and kept in
  ``VAR_DIR/secret_key`` (mode 0600), as self-hosted products such as Gitea or Sentry's
  installer do; every process reading the same ``VAR_DIR`` uses the same key. Several machines
  (the roles) set ``SECRET_KEY`` instead: each would otherwise generate its own.
"""
from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

# The key README.md documents for development; publicly known, so never valid with DEBUG off.
DEVELOPMENT_SECRET_KEY = "dev-insecure-change-me-in-production-0123456789abcdef"
SECRET_KEY_FILE = "secret_key"


def secret_key(*, configured: str, debug: bool, var_dir: Path) -> str:
    """The ``SECRET_KEY`` to use (see the module's rules).

    ``configured``: the ``SECRET_KEY`` environment variable ("" when unset); ``var_dir``: where
    a generated key is kept. Raises ``ImproperlyConfigured`` for the development key with
    ``debug`` off, and ``OSError`` when ``var_dir`` cannot hold the generated key.
    """
    if configured:
        if configured == DEVELOPMENT_SECRET_KEY and not debug:
            raise ImproperlyConfigured(
                "SECRET_KEY is the publicly documented development key and DEBUG is off. Set SECRET_KEY "
                "to a long random value (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(50))'`), "
                f"or unset it to use a key generated once in {var_dir / SECRET_KEY_FILE}.")
        return configured
    if debug:
        return DEVELOPMENT_SECRET_KEY
    return persisted_secret_key(var_dir / SECRET_KEY_FILE)


def persisted_secret_key(path: Path) -> str:
    """The key stored in ``path``, generated first when the file is missing: 67 URL-safe
    characters (50 random bytes, `secrets.token_urlsafe`), written to a 0600 temporary file and
    linked into place, so processes starting together all read the one key that won."""
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # fails when another process linked its key first
        except FileExistsError:
            pass
    finally:
        os.unlink(temporary)
    return _read_key(path)


def _read_key(path: Path) -> str:
    key = path.read_text().strip()
    if not key:
        raise ImproperlyConfigured(f"{path} is empty: delete it to generate a new key, or set SECRET_KEY.")
    return key
