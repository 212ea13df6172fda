"""Seed N usage rows (default 10 million) into a dedicated Postgres database, build the rollups,
and time the usage API for a 30-day, daily-bucket query against the raw SQL aggregate.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/emb_bench6 REDIS_URL=redis://127.0.0.1:6379/6 \
        .venv/bin/python bench/billing_usage_api.py [--rows 10000000] [--reseed] [--repeat 20]
    .venv/bin/python bench/billing_usage_api.py --drop     # remove the bench database (~3.4 GB at 10M rows)

The database (default ``emb_bench6``) is created when missing and migrated; the rows are
reused on later runs when the count matches (``--reseed`` truncates and seeds again).
Seeding is one ``INSERT ... SELECT generate_series`` with the secondary indexes dropped
and foreign-key triggers off, then the indexes are rebuilt. Rows are spread evenly over
30 days (2026-09-01 .. 2026-10-01 UTC) in insert order, across 10 organizations x 3
projects x 2 keys and 2 models. Prints figures; asserts nothing about speed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/emb_bench6")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

START = datetime(2026, 9, 1, tzinfo=UTC)
END = datetime(2026, 10, 1, tzinfo=UTC)
ORGS, PROJECTS, KEYS = 10, 3, 2


def ensure_database(url: str) -> None:
    import psycopg
    from urllib.parse import urlparse

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin_url = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")


def drop_database(url: str) -> None:
    import psycopg
    from urllib.parse import urlparse

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    if not name.startswith("emb_bench"):
        raise SystemExit(f"refusing to drop {name!r}: not a bench database (emb_bench*)")
    with psycopg.connect(parsed._replace(path="/postgres").geturl(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    print(f"dropped database {name}")


def timed(label: str, fn, *args, **kwargs):
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    print(f"{label}: {time.perf_counter() - t:.2f} s")
    return result


def seed(rows: int) -> None:
    from django.db import connection, transaction

    from accounts.services import api_key_create, organization_get_or_create, project_get_or_create
    from billing.services import price_initial_set
    from embeddings.models import EmbeddingModel

    with connection.cursor() as cur:
        cur.execute("TRUNCATE billing_usagerecord, billing_hourlyusage, billing_dailyusage, "
                    "billing_statementline, billing_statement")
    models = [EmbeddingModel.objects.get_or_create(name=f"bench-model-{i}", defaults={
        "local_path": "/none", "dimensions": 384, "max_input_tokens": 256})[0] for i in range(2)]
    for model, price in zip(models, ["0.010000", "0.020000"]):
        price_initial_set(model=model, price_per_million_tokens=Decimal(price))
    keys = []
    for o in range(ORGS):
        org = organization_get_or_create(name=f"Bench Org {o}")
        for p in range(PROJECTS):
            project = project_get_or_create(organization=org, name=f"P{p}")
            existing = list(project.api_keys.all()[:KEYS])
            keys += existing + [api_key_create(project=project, name="bench").api_key
                                for _ in range(KEYS - len(existing))]
    key_ids = [k.pk for k in keys]
    project_ids = [k.project_id for k in keys]
    org_ids = [k.project.organization_id for k in keys]
    model_ids = [m.pk for m in models]
    span = (END - START).total_seconds()
    # One transaction: a failure rolls the dropped indexes back too (DDL is transactional in Postgres).
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("""SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'billing_usagerecord'
                       AND indexname <> 'billing_usagerecord_pkey'""")
        indexes = cur.fetchall()
        cur.execute("""SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
                       WHERE conrelid = 'billing_usagerecord'::regclass AND contype = 'u'""")
        uniques = cur.fetchall()
        for name, _ in uniques:
            cur.execute(f'ALTER TABLE billing_usagerecord DROP CONSTRAINT "{name}"')
        for name, _ in indexes:
            cur.execute(f'DROP INDEX IF EXISTS "{name}"')
        cur.execute("SET LOCAL synchronous_commit = off")
        cur.execute("SET LOCAL maintenance_work_mem = '512MB'")
        cur.execute("SET LOCAL session_replication_role = replica")  # no FK triggers while loading
        t = time.perf_counter()
        cur.execute("""
            INSERT INTO billing_usagerecord (request_id, organization_id, project_id, api_key_id, model_id,
                input_count, prompt_tokens, total_tokens, "user", service_tier, latency_ms, created_at)
            SELECT 'req_bench_' || g, (%(orgs)s::bigint[])[1 + k], (%(projects)s::bigint[])[1 + k],
                   (%(keys)s::bigint[])[1 + k], (%(models)s::bigint[])[1 + (g / 7) %% 2],
                   1 + g %% 8, t, t, '', 'default', 5 + g %% 50,
                   %(start)s::timestamptz + make_interval(secs => (g - 1) * %(step)s)
            FROM generate_series(1::bigint, %(rows)s) AS g,
                 LATERAL (SELECT (g * 2654435761) %% %(nkeys)s AS k,
                                 1 + (g * 40503) %% 2000 AS t) AS x
        """, {"orgs": org_ids, "projects": project_ids, "keys": key_ids, "models": model_ids, "start": START,
              "step": span / rows, "rows": rows, "nkeys": len(key_ids)})
        print(f"seed: inserted {rows:,} rows in {time.perf_counter() - t:.1f} s")
        cur.execute("SET LOCAL session_replication_role = DEFAULT")
        t = time.perf_counter()
        for name, definition in uniques:
            cur.execute(f'ALTER TABLE billing_usagerecord ADD CONSTRAINT "{name}" {definition}')
        for name, definition in indexes:
            if name not in {n for n, _ in uniques}:
                cur.execute(definition.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1))
        print(f"seed: rebuilt {len(indexes)} indexes and analyzed in {time.perf_counter() - t:.1f} s")


def measure(label: str, fn, repeat: int) -> None:
    fn()  # warm-up (connection, caches, plans)
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
    print(f"{label}: median {statistics.median(samples):.1f} ms, p95 {p95:.1f} ms, min {samples[0]:.1f} ms "
          f"({repeat} runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--drop", action="store_true", help="drop the bench database and exit")
    args = parser.parse_args()
    if args.drop:
        drop_database(os.environ["DATABASE_URL"])
        return

    ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from rest_framework.test import APIClient

    from accounts.models import Organization
    from accounts.services import admin_api_key_create
    from billing.models import DailyUsage, HourlyUsage
    from metering.models import UsageRecord
    from billing.services import statement_build, usage_rollup_build, usage_rollup_recent

    call_command("migrate", verbosity=0)
    present = UsageRecord.objects.filter(request_id__startswith="req_bench_").count() \
        if not args.reseed else -1
    if present == args.rows and UsageRecord.objects.count() == args.rows:
        print(f"seed: reusing {present:,} rows in {connection.settings_dict['NAME']}")
    else:
        seed(args.rows)
        with connection.cursor() as cur:
            cur.execute("ANALYZE billing_usagerecord")
    with connection.cursor() as cur:
        cur.execute("SELECT pg_size_pretty(pg_total_relation_size('billing_usagerecord'))")
        print(f"usage table: {UsageRecord.objects.count():,} rows, {cur.fetchone()[0]} with indexes")

    result = timed("rollup: 30 days from raw (hourly, then daily)", usage_rollup_build, start=START, end=END)
    print(f"rollup: {result.hourly_rows:,} hourly rows, {result.daily_rows:,} daily rows")
    timed("rollup: re-run (idempotent)", usage_rollup_build, start=START, end=END)
    timed("rollup: one beat run (trailing 3 h)", usage_rollup_recent, now=END)
    print(f"rollup tables: {HourlyUsage.objects.count():,} hourly, {DailyUsage.objects.count():,} daily rows")

    org = Organization.objects.get(name="Bench Org 0")
    org_rows = UsageRecord.objects.filter(organization=org).count()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_api_key_create(organization=org, name='bench').plaintext}")
    t0, t1 = int(START.timestamp()), int(END.timestamp())
    params = {"start_time": t0, "end_time": t1, "bucket_width": "1d", "limit": 30}

    def usage(**extra):
        response = api.get("/v1/organization/usage/embeddings", {**params, **extra})
        assert response.status_code == 200, response.content
        return response.json()

    body = usage()
    api_tokens = sum(r["input_tokens"] for b in body["data"] for r in b["results"])
    with connection.cursor() as cur:
        sql = """SELECT date_trunc('day', created_at AT TIME ZONE 'UTC'), sum(prompt_tokens), count(*)
                 FROM billing_usagerecord WHERE organization_id = %s AND created_at >= %s AND created_at < %s
                 GROUP BY 1 ORDER BY 1"""
        cur.execute(sql, [org.pk, START, END])
        sql_tokens = sum(int(r[1]) for r in cur.fetchall())
    print(f"usage API, org with {org_rows:,} of the rows: {len(body['data'])} daily buckets, "
          f"{api_tokens:,} tokens; raw SQL says {sql_tokens:,} "
          f"({'equal' if api_tokens == sql_tokens else 'DIFFERENT'})")

    def raw_sql():
        with connection.cursor() as cur:
            cur.execute(sql, [org.pk, START, END])
            cur.fetchall()

    def raw_sql_all_orgs():
        with connection.cursor() as cur:
            cur.execute("""SELECT date_trunc('day', created_at AT TIME ZONE 'UTC'), organization_id,
                                  sum(prompt_tokens), count(*) FROM billing_usagerecord
                           WHERE created_at >= %s AND created_at < %s GROUP BY 1, 2""", [START, END])
            cur.fetchall()

    measure("usage API 30 x 1d, ungrouped (HTTP through Django, rollups)", usage, args.repeat)
    measure("usage API 30 x 1d, group_by project_id,api_key_id,model", lambda: usage(
        group_by="project_id,api_key_id,model"), args.repeat)
    measure("costs API 30 x 1d, group_by project_id,line_item", lambda: api.get("/v1/organization/costs", {
        **params, "group_by": "project_id,line_item"}), args.repeat)
    measure("usage API 168 x 1h, group_by model", lambda: usage(bucket_width="1h", limit=168, group_by="model"),
            args.repeat)
    measure("raw SQL aggregate, same org, 30 x 1d (for comparison)", raw_sql, max(3, args.repeat // 4))
    measure(f"raw SQL aggregate, all orgs, 30 x 1d ({args.rows:,} rows)", raw_sql_all_orgs, 3)
    timed("statement_build for one org, one month", statement_build, organization=org,
          period_start=START.date())


if __name__ == "__main__":
    main()
