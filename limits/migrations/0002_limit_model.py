# Per-model RPM/TPM of a project (OpenAI's project rate limits): Limit.model.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('limits', '0001_initial'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='limit',
            name='limit_one_per_project',
        ),
        migrations.AddField(
            model_name='limit',
            name='model',
            field=models.CharField(blank=True, default='', help_text="A model name: these RPM/TPM apply to the project's requests to it (empty: to every request of the scope).", max_length=200),
        ),
        migrations.AddConstraint(
            model_name='limit',
            constraint=models.UniqueConstraint(condition=models.Q(('api_key', None)), fields=('project', 'model'), name='limit_one_per_project_model'),
        ),
        migrations.AddConstraint(
            model_name='limit',
            constraint=models.CheckConstraint(condition=models.Q(('model', ''), models.Q(('api_key', None), ('monthly_tokens', None), ('project__isnull', False)), _connector='OR'), name='limit_model_scope_is_project_rates'),
        ),
    ]
