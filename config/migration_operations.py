"""Migration operations the ORM has no field option for (Django 5.2).

`ForeignKeySetNullInDatabase`: make a nullable foreign key's constraint ``ON DELETE SET NULL`` in
PostgreSQL itself. Django's ``on_delete=SET_NULL`` runs in Python: deleting the referenced row first
sends ``UPDATE ... SET fk = NULL`` for the rows that exist then, and then the ``DELETE``. A
referencing row committed by another connection between the two (a usage record written while its
request encodes, as the key is deleted) is still pointing at the row when the delete commits, and
the deferred foreign key check fails the whole delete with an ``IntegrityError``. With the action
in the database, the ``DELETE`` statement itself nulls every row referencing it that is committed
by then, and a row whose insert is still in flight waits for the delete on the referenced row's
lock and then fails its own check, which its writer handles (`metering.services.usage_record_create`
records it without the key). Django's own ``UPDATE`` still runs first; it is harmless.

(Django 6.1's ``db_on_delete=DB_SET_NULL`` says the same in the model; this project pins 5.2.)
"""
from __future__ import annotations

from django.db import migrations


class ForeignKeySetNullInDatabase(migrations.RunPython):
    """``ON DELETE SET NULL`` on the constraint of ``model_name.field_name`` (in ``app_label``),
    keeping its name and ``DEFERRABLE INITIALLY DEFERRED``; reversed, back to ``NO ACTION``.
    PostgreSQL only (other databases: nothing is done). Raises `LookupError` when the field has no
    foreign key constraint.

    Without holding a long lock on a live table (the old release keeps serving while the new one
    migrates): the new constraint is added ``NOT VALID`` beside the old one, which is then dropped
    (two short ``ALTER``s, no scan), and validated in its own statement, which scans the table under
    a lock that lets inserts, updates and reads go on; then it takes the old name (Django's, when a
    stopped run had dropped the old one already). Each step is its own transaction (the migration
    must be ``atomic = False``) and each is skipped when already done, so a migration stopped
    halfway is completed by running it again. ``lock_timeout``: a step that waits that long for its
    lock fails instead of queueing every writer behind it."""

    lock_timeout = "10s"

    def __init__(self, app_label: str, model_name: str, field_name: str):
        self.target = (app_label, model_name, field_name)
        super().__init__(self._set_null, self._no_action, atomic=False, hints={"model_name": model_name})

    def describe(self) -> str:
        return "ON DELETE SET NULL in the database for %s.%s.%s" % self.target

    def _set_null(self, apps, schema_editor) -> None:
        self._alter(apps, schema_editor, "ON DELETE SET NULL")

    def _no_action(self, apps, schema_editor) -> None:
        self._alter(apps, schema_editor, "")

    def _alter(self, apps, schema_editor, action: str) -> None:
        connection = schema_editor.connection
        if connection.vendor != "postgresql":
            return
        app_label, model_name, field_name = self.target
        model = apps.get_model(app_label, model_name)
        field = model._meta.get_field(field_name)
        table, column = model._meta.db_table, field.column
        target = field.remote_field.model._meta
        quote = schema_editor.quote_name

        def foreign_keys() -> dict[str, dict]:
            with connection.cursor() as cursor:
                constraints = connection.introspection.get_constraints(cursor, table)
            return {name: info for name, info in constraints.items()
                    if info["foreign_key"] and info["columns"] == [column]}

        found = foreign_keys()
        if not found:
            raise LookupError(f"no foreign key constraint on {table}.{column}")
        staged = f"{table}_{column}_on_delete"[:63]
        # The name it had; a run stopped after dropping it left only the staged one: Django's name
        # then (BaseDatabaseSchemaEditor._fk_constraint_name's), as a run that never stopped leaves.
        name = next((n for n in sorted(found) if n != staged), None) or schema_editor._create_index_name(
            table, [column], suffix=f"_fk_{target.db_table}_{target.pk.column}")
        with connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = '{self.lock_timeout}'")
            try:
                if staged not in found:
                    cursor.execute(
                        f"ALTER TABLE {quote(table)} ADD CONSTRAINT {quote(staged)} FOREIGN KEY ({quote(column)}) "
                        f"REFERENCES {quote(target.db_table)} ({quote(target.pk.column)}) {action} "
                        f"DEFERRABLE INITIALLY DEFERRED NOT VALID")
                for old in sorted(set(found) - {staged}):
                    cursor.execute(f"ALTER TABLE {quote(table)} DROP CONSTRAINT {quote(old)}")
                cursor.execute(f"ALTER TABLE {quote(table)} VALIDATE CONSTRAINT {quote(staged)}")
                if name != staged:
                    cursor.execute(f"ALTER TABLE {quote(table)} RENAME CONSTRAINT {quote(staged)} TO {quote(name)}")
            finally:
                cursor.execute("RESET lock_timeout")
