"""``manage.py create_console_user --username NAME --org ORG [--role owner] [--email E] [--staff]``.

The first-run path to the web console: creates the user (or reuses it), the
organization when missing, and the membership, then prints where to sign in. The
password comes from ``--password``, else the ``CONSOLE_PASSWORD`` environment
variable, else a prompt when stdin is a terminal, else a random one that is printed.
"""
import getpass
import os
import sys

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import Membership, random_token
from accounts.services import membership_add, membership_set_role, organization_get_or_create


class Command(BaseCommand):
    help = "Create a console user who is a member (default: owner) of an organization; prints how to sign in."

    def add_arguments(self, parser):
        parser.add_argument("--username", required=True)
        parser.add_argument("--org", required=True, help="Organization name (created when missing).")
        parser.add_argument("--role", default=Membership.Role.OWNER, choices=Membership.Role.values)
        parser.add_argument("--email", default="")
        parser.add_argument("--password", default=None, help="Default: $CONSOLE_PASSWORD, a prompt, or random.")
        parser.add_argument("--staff", action="store_true", help="Also a superuser (Django admin at /admin/).")

    def handle(self, *args, username, org, role, email, password, staff, **options):
        User = get_user_model()
        password = password or os.environ.get("CONSOLE_PASSWORD")
        generated = False
        user = User.objects.filter(username=username).first()
        if user is None or password:
            if not password and sys.stdin.isatty():
                password = getpass.getpass(f"Password for {username}: ")
            if not password:
                password, generated = random_token(20), True
            try:
                validate_password(password, user)
            except ValidationError as exc:
                raise CommandError(" ".join(exc.messages)) from None
        try:
            with transaction.atomic():
                if user is None:
                    user = User.objects.create_user(username=username, email=email, password=password)
                elif password:
                    user.set_password(password)
                if staff:
                    user.is_staff = user.is_superuser = True
                user.save()
                organization = organization_get_or_create(name=org)
                membership = Membership.objects.filter(user=user, organization=organization).first()
                if membership is None:
                    membership_add(organization=organization, user=user, role=role)
                elif membership.role != role:
                    membership_set_role(membership=membership, role=role)
        except ValidationError as exc:  # e.g. demoting the last owner
            raise CommandError(" ".join(exc.messages)) from None
        host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "8000")
        self.stdout.write(f"{username} is {role} of {organization.name} ({organization.public_id}).")
        self.stdout.write(f"Sign in at http://{host}:{port}/console/login/ as {username}"
                          + (f" with password {password}" if generated else "") + ".")
        if staff:
            self.stdout.write(f"Django admin: http://{host}:{port}/admin/")
