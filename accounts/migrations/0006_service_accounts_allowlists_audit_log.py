# Service accounts, model allowlists of projects and keys, and the audit log (issue 15).

import accounts.models
import django.contrib.postgres.fields
import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0005_invitation'),
    ]

    operations = [
        migrations.AddField(
            model_name='apikey',
            name='allowed_models',
            field=django.contrib.postgres.fields.ArrayField(base_field=models.CharField(max_length=200), blank=True, default=list, help_text='Model names this may use, comma-separated; empty = every model.', size=None),
        ),
        migrations.AddField(
            model_name='project',
            name='allowed_models',
            field=django.contrib.postgres.fields.ArrayField(base_field=models.CharField(max_length=200), blank=True, default=list, help_text='Model names this may use, comma-separated; empty = every model.', size=None),
        ),
        migrations.CreateModel(
            name='ServiceAccount',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('public_id', models.CharField(default=accounts.models._service_account_id, editable=False, max_length=40, unique=True)),
                ('name', models.CharField(max_length=200)),
                ('role', models.CharField(default='member', editable=False, max_length=16)),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                ('project', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='service_accounts', to='accounts.project')),
            ],
            options={
                'ordering': ['project', 'id'],
            },
        ),
        migrations.AddField(
            model_name='apikey',
            name='service_account',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='api_keys', to='accounts.serviceaccount'),
        ),
        migrations.CreateModel(
            name='AuditLog',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('public_id', models.CharField(default=accounts.models._audit_log_id, editable=False, max_length=40, unique=True)),
                ('type', models.CharField(max_length=64)),
                ('effective_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('actor', models.JSONField()),
                ('actor_id', models.CharField(blank=True, default='', max_length=200)),
                ('actor_email', models.CharField(blank=True, default='', max_length=254)),
                ('project_public_id', models.CharField(blank=True, default='', max_length=32)),
                ('project_name', models.CharField(blank=True, default='', max_length=200)),
                ('resource_id', models.CharField(blank=True, default='', max_length=200)),
                ('details', models.JSONField(default=dict)),
                ('organization', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='audit_logs', to='accounts.organization')),
            ],
            options={
                'ordering': ['-id'],
                'indexes': [models.Index(fields=['organization', '-id'], name='auditlog_org_id')],
            },
        ),
    ]
