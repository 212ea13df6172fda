"""`Limit` moves to the `limits` app (limits.0001 takes over its table): state only; the table
``accounts_limit`` and its rows stay."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0003_merge_0002_admin_api_key_0002_limits'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[migrations.DeleteModel(name="Limit")],
        ),
    ]
