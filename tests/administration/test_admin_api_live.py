"""The official ``openai`` client's Admin API (``client.admin.organization...``) against the live
``make serve``: an admin key provisions a project, a service account, model permissions and a
per-model RPM, the new key is held to the RPM, and the audit log (read through the client) has
every change, with its actor (the admin key; a management command for the admin key's own creation)."""
from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.runtime

MODEL = "all-MiniLM-L6-v2"


def test_the_openai_client_administers_a_project_through_make_serve(live_serve):
    admin_key = live_serve.key(admin=True)
    base = f"{live_serve.base}/v1"
    with openai.OpenAI(base_url=base, api_key="unused", admin_api_key=admin_key, max_retries=0) as client:
        org = client.admin.organization
        project = org.projects.create(name="Provisioned")
        assert project.status == "active" and project.id.startswith("proj_")
        account = org.projects.service_accounts.create(project.id, name="indexer")
        assert account.api_key is not None and account.api_key.value.startswith("sk-proj-")
        permissions = org.projects.model_permissions.update(project.id, mode="allow_list", model_ids=[MODEL])
        assert permissions.mode == "allow_list" and permissions.api_model_ids == [MODEL]
        limit = org.projects.rate_limits.update_rate_limit(f"rl-{MODEL}", project_id=project.id,
                                                           max_requests_per_1_minute=1)
        assert limit.max_requests_per_1_minute == 1 and limit.model == MODEL

        assert [p.id for p in org.projects.list() if p.id == project.id] == [project.id]
        keys = list(org.projects.api_keys.list(project.id))
        assert [k.id for k in keys] == [account.api_key.id] and keys[0].owner.type == "service_account"
        assert org.projects.service_accounts.retrieve(account.id, project_id=project.id).name == "indexer"
        assert [r.model for r in org.projects.rate_limits.list_rate_limits(project.id)] == [MODEL]

        with openai.OpenAI(base_url=base, api_key=account.api_key.value, max_retries=0) as user:
            assert [m.id for m in user.models.list()] == [MODEL, f"sentence-transformers/{MODEL}"]
            user.embeddings.create(model=MODEL, input="hello")
            with pytest.raises(openai.RateLimitError) as limited:
                user.embeddings.create(model=MODEL, input="hello")
        assert limited.value.code == "rate_limit_exceeded" and f"for model {MODEL}" in limited.value.message

        org.projects.archive(project.id)
        entries = list(org.audit_logs.list(project_ids=[project.id]))
        # The admin key itself was made by `manage.py create_api_key` (live_serve.key): in the same log.
        made_by_command = [e for e in org.audit_logs.list(event_types=["api_key.created"]) if e.project is None]
    assert [e.type for e in reversed(entries)] == ["project.created", "service_account.created", "api_key.created",
                                                   "project.updated", "rate_limit.updated", "project.archived"]
    assert {e.actor.type for e in entries} == {"api_key"}
    assert {e.actor.api_key.id for e in entries} == {made_by_command[0].api_key_created.id}
    assert entries[-1].project_created.data.name == "Provisioned"
    assert entries[1].rate_limit_updated.changes_requested.max_requests_per_1_minute == 1
    assert len(made_by_command) == 1 and made_by_command[0].actor.type == "command"
    assert made_by_command[0].actor.model_extra["command"]["name"] == "create_api_key"

