"""``manage.py set_allowed_models --org ORG --project PROJECT [--key KEY_ID] (--models NAME,... | --all)``.

Sets which models a project's keys (or, with ``--key``, one key of it, within the project's) may
use; ``--all`` (an empty list) allows every model. Names or aliases of registered models; they are
stored as names. Applies to the next request; other models get 403 ``model_not_allowed`` and
``GET /v1/models`` lists only the allowed ones. Recorded in the organization's audit log.
"""
from django.core.management.base import BaseCommand, CommandError

from accounts.selectors import organization_find, project_find
from accounts.services import api_key_allowed_models_set, project_allowed_models_set
from config.exceptions import InvalidInput
from embeddings.services import allowed_models_normalize


class Command(BaseCommand):
    help = "Set the models a project's keys, or one key, may use (--all: every model)."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="Organization name or public id (org_...).")
        parser.add_argument("--project", required=True, help="Project name or public id (proj_...).")
        parser.add_argument("--key", help="An API key's public id (key_...) in the project.")
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--models", help="Comma-separated model names or aliases.")
        group.add_argument("--all", action="store_true", help="Allow every model (clear the list).")

    def handle(self, *args, org, project, key, models, all, **options):
        organization = organization_find(name_or_id=org)
        proj = organization and project_find(organization=organization, name_or_id=project)
        if proj is None:
            raise CommandError(f"No project {project!r} in an organization {org!r}.")
        api_key = proj.api_keys.filter(public_id=key).first() if key else None
        if key and api_key is None:
            raise CommandError(f"No key {key!r} in project {proj.public_id}.")
        names = [] if all else [name.strip() for name in models.split(",") if name.strip()]
        if not all and not names:
            raise CommandError("--models needs at least one name (or use --all).")
        try:
            allowed = allowed_models_normalize(names)
        except InvalidInput as exc:
            raise CommandError(exc.message) from None
        if api_key is None:
            project_allowed_models_set(project=proj, models=allowed)
        else:
            api_key_allowed_models_set(api_key=api_key, models=allowed)
        target = f"key {api_key.public_id}" if api_key else f"project {proj.public_id}"
        self.stdout.write(f"{target}: {', '.join(allowed) if allowed else 'every model'}")
