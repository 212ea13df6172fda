"""``manage.py revoke_api_key KEY_ID [KEY_ID ...]``: revoke project or admin keys by public id.

Goes through `accounts.services.api_key_revoke_by_public_id`, so the auth cache is dropped too:
the next request with a revoked key is refused (401). Idempotent; an unknown id is an error.
"""
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from accounts.services import api_key_revoke_by_public_id


class Command(BaseCommand):
    help = "Revoke project API keys or admin keys by their public id (key_...), effective at once."

    def add_arguments(self, parser):
        parser.add_argument("key_ids", nargs="+", metavar="KEY_ID", help="A key's public id (key_...).")

    def handle(self, *args, key_ids, **options):
        for public_id in key_ids:
            try:
                key = api_key_revoke_by_public_id(public_id)
            except ValidationError as exc:
                raise CommandError(" ".join(exc.messages)) from None
            self.stdout.write(f"Revoked {key.public_id} ({key.masked}) at {key.revoked_at:%Y-%m-%d %H:%M:%S} UTC.")
