"""`manage.py createuser NAME --project P --role owner|operator|read`: a person who signs in
to the console, with a role on one project.

The password comes from standard input (one line; typed twice on a terminal) or from the
environment variable named by --password-env, never from the command line, where other
users of the machine could read it.
"""

import getpass
import os
import sys

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from nbcloud.projects.models import Membership, Project, Role


class Command(BaseCommand):
    help = (
        "Create a user who signs in to the console (or set their password) and give them a "
        "role on PROJECT (created if missing). The password is read from standard input or "
        "from the variable named by --password-env."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--project", required=True)
        parser.add_argument("--role", choices=Role.values, default=Role.OPERATOR)
        parser.add_argument("--email", default="")
        parser.add_argument(
            "--password-env",
            metavar="VAR",
            default="",
            help="Read the password from this environment variable instead of standard input.",
        )

    def handle(self, username, project, role, email, password_env, **options):
        password = self._password(password_env)
        user_model = get_user_model()
        user = user_model.objects.filter(username=username).first() or user_model(
            username=username, email=email
        )
        try:
            user_model.username_validator(username)
            validate_password(password, user)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        with transaction.atomic():
            proj = Project.objects.filter(name=project).first()
            if proj is None:
                proj = Project(name=project)
                try:
                    proj.full_clean()
                except ValidationError as exc:
                    raise CommandError(
                        f"project name {project!r}: {'; '.join(exc.messages)}"
                    ) from None
                proj.save()
            user.set_password(password)
            user.save()
            # A role given here is by hand: single sign-on never changes it.
            Membership.objects.update_or_create(
                project=proj, user=user, defaults={"role": role, "from_sso": False}
            )
        self.stdout.write(f"{username} is {role} of {proj.name}; sign in at /accounts/login/")

    def _password(self, variable: str) -> str:
        if variable:
            password = os.environ.get(variable, "")
            if not password:
                raise CommandError(f"--password-env {variable}: the variable is unset or empty")
            return password
        if sys.stdin.isatty():
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("the two passwords differ")
            return password
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CommandError(
                "no password on standard input: pipe one (one line) or use --password-env VAR"
            )
        return password
