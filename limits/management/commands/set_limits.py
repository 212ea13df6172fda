"""``manage.py set_limits --org ORG [--project PROJECT] [--key KEY_ID] [--monthly-tokens N] [--rpm N] [--tpm N]``
and ``manage.py set_limits --org ORG --model MODEL --batch-1-day-max-input-tokens N``.

Sets the limits of an organization, one of its projects, or one key (``--key``: RPM/TPM
only). ``none`` clears a limit (unlimited); options left out keep their value. Takes
effect at once. Prints the scope's limits after the change. With ``--model``: the
organization's limit on input tokens enqueued in batches of that model (OpenAI's
``batch_1_day_max_input_tokens``).
"""
from django.core.management.base import BaseCommand, CommandError

from accounts.models import APIKey
from accounts.selectors import organization_find, project_find
from limits.services import UNSET, batch_queue_limit_set, limit_set


def limit_value(text: str):
    """``"none"`` -> ``None``; a non-negative integer (``_`` allowed: ``1_000_000``) -> int."""
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise CommandError(f"Invalid limit {text!r}: give a non-negative integer or 'none'.") from None
    if value < 0:  # the upper bounds are checked by `limit_set`
        raise CommandError(f"Invalid limit {text!r}: give a non-negative integer or 'none'.")
    return value


class Command(BaseCommand):
    help = "Set the monthly token quota / RPM / TPM of an organization, project or key ('none' clears)."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="Organization name or public id (org_...).")
        parser.add_argument("--project", help="Project name or public id (proj_...) in the organization.")
        parser.add_argument("--key", help="API key public id (key_...) in the organization.")
        parser.add_argument("--monthly-tokens", dest="monthly_tokens", type=limit_value, default=UNSET,
                            help="Tokens per calendar month (UTC), hard; 'none' = unlimited.")
        parser.add_argument("--rpm", type=limit_value, default=UNSET, help="Requests per minute; 'none' = unlimited.")
        parser.add_argument("--tpm", type=limit_value, default=UNSET, help="Tokens per minute; 'none' = unlimited.")
        parser.add_argument("--model", help="A model's registry name, for --batch-1-day-max-input-tokens.")
        parser.add_argument("--batch-1-day-max-input-tokens", dest="batch_tokens", type=limit_value, default=UNSET,
                            help="Input tokens the organization's batches of --model may hold enqueued at once; "
                                 "'none' = unlimited.")

    def handle(self, *args, org, project, key, monthly_tokens, rpm, tpm, model=None, batch_tokens=UNSET,
               **options):
        organization = organization_find(name_or_id=org)
        if organization is None:
            raise CommandError(f"No organization named {org!r}.")
        if (model is None) != (batch_tokens is UNSET) or (model and (project or key)):
            raise CommandError("--model and --batch-1-day-max-input-tokens go together, for an organization.")
        if model:
            try:
                limit = batch_queue_limit_set(organization=organization, model=model, max_input_tokens=batch_tokens)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            shown = limit.batch_1_day_max_input_tokens
            self.stdout.write(f"organization {organization.public_id} model {model}: batch_1_day_max_input_tokens="
                              + ("unlimited" if shown is None else f"{shown:,}"))
            return
        proj = None
        if project:
            proj = project_find(organization=organization, name_or_id=project)
            if proj is None:
                raise CommandError(f"No project {project!r} in organization {organization.name!r}.")
        api_key = None
        if key:
            api_key = APIKey.objects.select_related("project").filter(
                public_id=key, project__organization=organization).first()
            if api_key is None:
                raise CommandError(f"No key {key!r} in organization {organization.name!r}.")
        if monthly_tokens is UNSET and rpm is UNSET and tpm is UNSET:
            raise CommandError("Nothing to set: give --monthly-tokens, --rpm and/or --tpm.")
        try:
            limit = limit_set(organization=organization, project=proj, api_key=api_key,
                              monthly_tokens=monthly_tokens, rpm=rpm, tpm=tpm)
        except ValueError as exc:
            raise CommandError(str(exc)) from None

        def show(value):
            return "unlimited" if value is None else f"{value:,}"

        target = {"organization": organization.public_id, "project": getattr(limit.project, "public_id", ""),
                  "key": getattr(api_key, "public_id", "")}[limit.scope]
        parts = [f"monthly_tokens={show(limit.monthly_tokens)}"] if limit.scope != "key" else []
        parts += [f"rpm={show(limit.rpm)}", f"tpm={show(limit.tpm)}"]
        self.stdout.write(f"{limit.scope} {target}: " + " ".join(parts))
