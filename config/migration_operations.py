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
    foreign key constraint."""

    def __init__(self, app_label: str, model_name: str, field_name: str):
        self.target = (app_label, model_name, field_name)
        super().__init__(self._set_null, self._no_action, hints={"model_name": model_name})

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
        with connection.cursor() as cursor:
            constraints = connection.introspection.get_constraints(cursor, table)
        names = [name for name, info in constraints.items() if info["foreign_key"] and info["columns"] == [column]]
        if not names:
            raise LookupError(f"no foreign key constraint on {table}.{column}")
        quote = schema_editor.quote_name
        for name in names:
            schema_editor.execute(
                f"ALTER TABLE {quote(table)} DROP CONSTRAINT {quote(name)}, "
                f"ADD CONSTRAINT {quote(name)} FOREIGN KEY ({quote(column)}) "
                f"REFERENCES {quote(target.db_table)} ({quote(target.pk.column)}) {action} "
                f"DEFERRABLE INITIALLY DEFERRED")
