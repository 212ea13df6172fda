"""Models that change apps keep their tables and rows: a database migrated to the old layout,
with rows in it, is migrated forward and the rows are there under the new app."""
from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE_MOVE = [("billing", "0003_initial_prices_from_registry"), ("metering", None)]


def migrate(targets):
    """Migrate the test database to ``targets``; returns the historical apps of what is then
    applied (other apps stay where the targets leave them)."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    applied = [key for key in executor.loader.applied_migrations if key in executor.loader.graph.nodes]
    return executor.loader.project_state(applied).apps


def test_usage_records_move_from_billing_to_metering_with_their_rows():
    leaves = MigrationExecutor(connection).loader.graph.leaf_nodes()
    old = migrate(BEFORE_MOVE)
    assert ("metering", "usagerecord") not in {(m._meta.app_label, m._meta.model_name) for m in old.get_models()}
    Organization, Project = old.get_model("accounts", "Organization"), old.get_model("accounts", "Project")
    EmbeddingModel = old.get_model("embeddings", "EmbeddingModel")
    organization = Organization.objects.create(name="Old Layout", public_id="org_oldlayout")
    project = Project.objects.create(organization=organization, name="P", public_id="proj_oldlayout")
    model = EmbeddingModel.objects.create(name="old-layout", local_path="/none", dimensions=8, max_input_tokens=8)
    OldContentType = old.get_model("contenttypes", "ContentType")
    old_type = OldContentType.objects.get_or_create(app_label="billing", model="usagerecord")[0]
    OldUsageRecord = old.get_model("billing", "UsageRecord")
    OldUsageRecord.objects.bulk_create([
        OldUsageRecord(request_id=f"req_old_{i}", organization=organization, project=project, model=model,
                       input_count=1, prompt_tokens=10 + i, total_tokens=10 + i, latency_ms=3)
        for i in range(5)])

    new = migrate(leaves)
    NewUsageRecord = new.get_model("metering", "UsageRecord")
    assert NewUsageRecord._meta.db_table == "billing_usagerecord"
    rows = list(NewUsageRecord.objects.filter(request_id__startswith="req_old_").order_by("request_id")
                .values_list("request_id", "total_tokens"))
    assert rows == [(f"req_old_{i}", 10 + i) for i in range(5)]
    # its content type (and so permissions, admin log entries) follows it
    NewContentType = new.get_model("contenttypes", "ContentType")
    assert NewContentType.objects.get(app_label="metering", model="usagerecord").pk == old_type.pk
    assert not NewContentType.objects.filter(app_label="billing", model="usagerecord").exists()
    from metering.models import UsageRecord  # and the current model reads them too

    assert UsageRecord.objects.filter(request_id__startswith="req_old_", project__name="P").count() == 5


def test_limits_move_from_accounts_to_limits_with_their_rows():
    leaves = MigrationExecutor(connection).loader.graph.leaf_nodes()
    old = migrate([("accounts", "0003_merge_0002_admin_api_key_0002_limits"), ("limits", None)])
    Organization, Project = old.get_model("accounts", "Organization"), old.get_model("accounts", "Project")
    organization = Organization.objects.create(name="Old Limits", public_id="org_oldlimits")
    project = Project.objects.create(organization=organization, name="P", public_id="proj_oldlimits")
    OldContentType = old.get_model("contenttypes", "ContentType")
    old_type = OldContentType.objects.get_or_create(app_label="accounts", model="limit")[0]
    OldLimit = old.get_model("accounts", "Limit")
    OldLimit.objects.create(organization=organization, monthly_tokens=1000)
    OldLimit.objects.create(organization=organization, project=project, rpm=7)

    new = migrate(leaves)
    NewLimit = new.get_model("limits", "Limit")
    assert NewLimit._meta.db_table == "accounts_limit"
    assert sorted(NewLimit.objects.filter(organization__name="Old Limits").values_list("monthly_tokens", "rpm"),
                  key=str) == sorted([(1000, None), (None, 7)], key=str)
    NewContentType = new.get_model("contenttypes", "ContentType")
    assert NewContentType.objects.get(app_label="limits", model="limit").pk == old_type.pk
    from limits.models import Limit  # the current model, its constraints still enforced by the table

    assert Limit.objects.filter(organization__name="Old Limits").count() == 2


def test_prices_move_from_the_registry_field_to_price_rows():
    leaves = MigrationExecutor(connection).loader.graph.leaf_nodes()
    old = migrate([("embeddings", "0002_model_token_ids"), ("billing", "0004_usagerecord_to_metering")])
    EmbeddingModel, Price = old.get_model("embeddings", "EmbeddingModel"), old.get_model("billing", "Price")
    unpriced = EmbeddingModel.objects.create(name="registry-priced", local_path="/none", dimensions=8,
                                             max_input_tokens=8, price_per_million_tokens="0.030000")
    priced = EmbeddingModel.objects.create(name="already-priced", local_path="/none", dimensions=8,
                                           max_input_tokens=8, price_per_million_tokens="9")
    Price.objects.create(model=priced, effective_from="2026-01-01", price_per_million_tokens="0.5", currency="usd")

    new = migrate(leaves)
    assert "price_per_million_tokens" not in {f.name for f in new.get_model("embeddings", "EmbeddingModel")._meta.fields}
    NewPrice = new.get_model("billing", "Price")
    rows = sorted(NewPrice.objects.filter(model__name__in=["registry-priced", "already-priced"])
                  .values_list("model__name", "effective_from", "price_per_million_tokens"), key=str)
    assert [(name, str(day), str(price)) for name, day, price in rows] == [
        ("already-priced", "2026-01-01", "0.500000"), ("registry-priced", "1970-01-01", "0.030000")]
    assert unpriced.pk


@pytest.mark.django_db
@pytest.mark.parametrize("target", [("metering", "usagerecord", "api_key"), ("batches", "batch", "api_key")])
def test_a_set_null_migration_stopped_after_its_drop_gives_the_constraint_djangos_name_back(target):
    """`ForeignKeySetNullInDatabase` run again after it stopped between dropping the old constraint
    and renaming its staged one (the table then holds only ``<table>_<column>_on_delete``) ends with
    the constraint under Django's own name, ``ON DELETE SET NULL`` and validated, as a run that never
    stopped. (In the test's transaction: PostgreSQL's DDL is rolled back with it.)"""
    from django.apps import apps
    from django.db import connection

    from config.migration_operations import ForeignKeySetNullInDatabase

    model = apps.get_model(*target[:2])
    field = model._meta.get_field(target[2])
    table = model._meta.db_table

    def foreign_keys() -> list[tuple]:
        with connection.cursor() as cursor:
            cursor.execute("""SELECT conname, confdeltype, condeferred, convalidated FROM pg_constraint
                              JOIN pg_attribute ON attrelid = conrelid AND attnum = ANY (conkey)
                              WHERE contype = 'f' AND conrelid = %s::regclass AND attname = %s""",
                           [table, field.column])
            return cursor.fetchall()

    with connection.schema_editor() as editor:  # Django's name for it (BaseDatabaseSchemaEditor._fk_constraint_name)
        django_name = editor._create_index_name(table, [field.column], suffix="_fk_accounts_apikey_id")
    assert foreign_keys() == [(django_name, "n", True, True)]
    staged = f"{table}_{field.column}_on_delete"[:63]
    with connection.cursor() as cursor:  # where the stopped run left it: only the staged constraint, not valid
        cursor.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "{django_name}"')
        cursor.execute(f'ALTER TABLE "{table}" ADD CONSTRAINT "{staged}" FOREIGN KEY ("{field.column}") '
                       f'REFERENCES accounts_apikey (id) ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED NOT VALID')
    with connection.schema_editor() as editor:
        ForeignKeySetNullInDatabase(*target)._set_null(apps, editor)
    assert foreign_keys() == [(django_name, "n", True, True)]
