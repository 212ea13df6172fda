"""A batch's key is nulled by the database when the key is deleted, so a batch created while its key
is being deleted cannot fail the delete (`config.migration_operations`)."""
from django.db import migrations

from config.migration_operations import ForeignKeySetNullInDatabase


class Migration(migrations.Migration):

    atomic = False  # each step its own short transaction (ForeignKeySetNullInDatabase)

    dependencies = [
        ("batches", "0001_initial"),
    ]

    operations = [ForeignKeySetNullInDatabase("batches", "Batch", "api_key")]
