"""Fail fast, with instructions, when the test suite's Postgres or Redis is unreachable.

Run by ``make test`` before pytest: ``python -m tests.check_services``. Exit 1 names
what is down and how to start it; never skips silently.
"""
from __future__ import annotations

import os
import sys


def main() -> int:
    import environ
    import psycopg
    import redis

    problems = []
    db = environ.Env.db_url_config(os.environ["DATABASE_URL"])
    try:
        psycopg.connect(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"] or "postgres",
                        password=db["PASSWORD"] or None, dbname="postgres", connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        problems.append(
            f"Postgres at {db['HOST']}:{db['PORT']} is not reachable ({exc}).\n"
            "  Start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"
            "  or point DATABASE_URL at one (postgres://USER@HOST:PORT/DB).")
    try:
        redis.Redis.from_url(os.environ["REDIS_URL"], socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        problems.append(
            f"Redis at {os.environ['REDIS_URL']} is not reachable ({exc}).\n"
            '  Start it: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no\n'
            "  or point REDIS_URL at one (redis://HOST:PORT/DB).")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
