"""`Limit` moves here from `accounts` with its table (``accounts_limit``) and rows: state only,
no SQL (accounts.0004 removed it from accounts' state first). Its content type follows it."""

import django.db.models.deletion
from django.db import migrations, models


def move_content_type(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label="limits", model="limit").exists():
        ContentType.objects.filter(app_label="accounts", model="limit").update(app_label="limits")


def move_content_type_back(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label="accounts", model="limit").exists():
        ContentType.objects.filter(app_label="limits", model="limit").update(app_label="accounts")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('accounts', '0004_delete_limit'),
        ('contenttypes', '0002_remove_content_type_name'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name='Limit',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('monthly_tokens', models.PositiveBigIntegerField(blank=True, help_text='Tokens per calendar month (UTC); empty = unlimited.', null=True)),
                        ('rpm', models.PositiveIntegerField(blank=True, help_text='Requests per minute; empty = unlimited.', null=True)),
                        ('tpm', models.PositiveBigIntegerField(blank=True, help_text='Tokens per minute; empty = unlimited.', null=True)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                        ('api_key', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='limits', to='accounts.apikey')),
                        ('organization', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='limits', to='accounts.organization')),
                        ('project', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='limits', to='accounts.project')),
                    ],
                    options={
                        'db_table': 'accounts_limit',
                        'constraints': [models.UniqueConstraint(condition=models.Q(('api_key', None), ('project', None)), fields=('organization',), name='limit_one_per_organization'), models.UniqueConstraint(condition=models.Q(('api_key', None)), fields=('project',), name='limit_one_per_project'), models.UniqueConstraint(fields=('api_key',), name='limit_one_per_api_key'), models.CheckConstraint(condition=models.Q(('api_key', None), ('project__isnull', False), _connector='OR'), name='limit_key_scope_has_project'), models.CheckConstraint(condition=models.Q(('api_key', None), ('monthly_tokens', None), _connector='OR'), name='limit_key_scope_no_monthly_quota')],
                    },
                ),
            ],
        ),
        migrations.RunPython(move_content_type, move_content_type_back),
    ]
