"""A usage record's key is nulled by the database when the key is deleted, so a record committed
while its key is being deleted cannot fail the delete (`config.migration_operations`)."""
from django.db import migrations

from config.migration_operations import ForeignKeySetNullInDatabase


class Migration(migrations.Migration):

    atomic = False  # each step its own short transaction (ForeignKeySetNullInDatabase)

    dependencies = [
        ("metering", "0001_initial"),
        ("accounts", "0006_service_accounts_allowlists_audit_log"),
    ]

    operations = [ForeignKeySetNullInDatabase("metering", "UsageRecord", "api_key")]
