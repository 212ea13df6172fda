"""The database's migration state, read by the launcher (wait for a migrated database) and by
``/readyz`` (ready only when migrated)."""
from __future__ import annotations


def pending_migrations() -> list[str] | None:
    """Unapplied migrations as ``app.name`` (empty: fully migrated), or None when the database
    cannot be reached."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor
    from django.db.utils import OperationalError

    try:
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except OperationalError:
        connection.close()
        return None
    return [f"{migration.app_label}.{migration.name}" for migration, _ in plan]
