"""`UsageRecord` now lives in `metering` (metering.0001 took over its table): remove it from
billing's state only; the table and its rows stay. Its content type follows it (so staff
permissions and admin log entries keep pointing at the model)."""
from django.db import migrations


def move_content_type(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label="metering", model="usagerecord").exists():
        ContentType.objects.filter(app_label="billing", model="usagerecord").update(app_label="metering")


def move_content_type_back(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label="billing", model="usagerecord").exists():
        ContentType.objects.filter(app_label="metering", model="usagerecord").update(app_label="billing")


class Migration(migrations.Migration):

    dependencies = [
        ("billing", "0003_initial_prices_from_registry"),
        ("metering", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[migrations.DeleteModel(name="UsageRecord")],
        ),
        migrations.RunPython(move_content_type, move_content_type_back),
    ]
