"""`UsageRecord` now lives in `metering` (metering.0001 took over its table): remove it from
billing's state only; the table and its rows stay."""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("billing", "0003_initial_prices_from_registry"),
        ("metering", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[migrations.DeleteModel(name="UsageRecord")],
        ),
    ]
