from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from nbcloud.projects.models import TOKEN_ROLES, ApiToken, Membership, Project, Role


class Command(BaseCommand):
    help = (
        "Create USERNAME and PROJECT if missing, make the user a member, and print a new API "
        "token for that project (and nothing else) on stdout."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--project", required=True)
        parser.add_argument(
            "--role", choices=[value for value, _ in TOKEN_ROLES], default=Role.OPERATOR
        )
        parser.add_argument("--name", default="", help="The token's name (default: cli-<role>).")

    def handle(self, username, project, role, name, **options):
        with transaction.atomic():
            user, _ = get_user_model().objects.get_or_create(username=username)
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
            membership, created = Membership.objects.get_or_create(
                project=proj, user=user, defaults={"role": role}
            )
            # A read member asking for an operator token becomes an operator; an
            # owner stays one.
            if not created and role == Role.OPERATOR and membership.role == Role.READ:
                membership.role = role
                membership.save(update_fields=["role"])
            _, value = ApiToken.issue(
                project=proj, user=user, role=role, name=name or f"cli-{role}"
            )
        self.stdout.write(value)
