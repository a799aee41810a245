"""Project roles from single sign-on: a claim's values such as `nbcloud:<project>:<role>`
become memberships, and the memberships single sign-on made follow the claim at every
sign-in. Memberships granted by hand (invitations, the Members page, `createuser`) are
never changed or removed here.
"""

import logging

from django.db import transaction

from nbcloud.projects.models import Membership, Project, Role

logger = logging.getLogger(__name__)

# When a claim names one project twice, the stronger role wins.
ROLE_STRENGTH = {Role.READ: 0, Role.OPERATOR: 1, Role.OWNER: 2}


def roles_from_claim(value: object, prefix: str) -> dict[str, str]:
    """{project name: role} from a claim's value (a list of strings, or one string).

    Values without `prefix` belong to something else and are skipped quietly; values
    with it that are not `<prefix><project>:<role>` are logged and skipped.
    """
    if value is None:
        return {}
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        logger.warning(
            "single sign-on: the roles claim is a %s, not a list of strings; no roles taken "
            "from it",
            type(value).__name__,
        )
        return {}
    roles: dict[str, str] = {}
    for item in value:
        if not isinstance(item, str) or not item.startswith(prefix):
            continue
        parts = item[len(prefix) :].split(":")
        if len(parts) != 2 or not parts[0] or parts[1] not in Role.values:
            logger.warning(
                "single sign-on: ignoring %r: expected %s<project>:<role> with a role of %s",
                item,
                prefix,
                ", ".join(Role.values),
            )
            continue
        project, role = parts
        if ROLE_STRENGTH[role] >= ROLE_STRENGTH.get(roles.get(project), -1):
            roles[project] = role
    return roles


def sync_memberships(user, roles: dict[str, str]) -> None:
    """Bring the user's single sign-on memberships in line with `roles`.

    Adds those missing, changes roles that differ, removes those no longer claimed.
    Projects that do not exist are logged and ignored (single sign-on never makes
    projects); a membership granted by hand stays as it is.
    """
    with transaction.atomic():
        projects = {p.name: p for p in Project.objects.filter(name__in=roles)}
        for name in sorted(set(roles) - set(projects)):
            logger.warning(
                "single sign-on: %s is given %s on %r, which is not a project; ignored",
                user.username,
                roles[name],
                name,
            )
        current = {
            m.project_id: m
            for m in Membership.objects.select_for_update(of=("self",))
            .select_related("project")
            .filter(user=user)
        }
        for name, project in projects.items():
            role = roles[name]
            membership = current.get(project.pk)
            if membership is None:
                Membership.objects.create(project=project, user=user, role=role, from_sso=True)
                logger.info("single sign-on: %s joins %s as %s", user.username, name, role)
            elif membership.from_sso and membership.role != role:
                membership.role = role
                membership.save(update_fields=["role"])
                logger.info("single sign-on: %s is now %s of %s", user.username, role, name)
        claimed = {p.pk for p in projects.values()}
        stale = [m for m in current.values() if m.from_sso and m.project_id not in claimed]
        if stale:
            Membership.objects.filter(pk__in=[m.pk for m in stale]).delete()
            logger.info(
                "single sign-on: %s leaves %s",
                user.username,
                ", ".join(sorted(m.project.name for m in stale)),
            )
