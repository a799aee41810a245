"""What every console page shares: the project from the URL, the caller's role on it, and
the one set of access rules the API asks (nbcloud.api.access.may).

Whoever has no role on a project gets 404 for every page of it, as the API answers; a
role that lacks an action's ability gets 403.
"""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404

from nbcloud.api.access import Ability, may
from nbcloud.api.views import project_role
from nbcloud.projects.models import Membership, Project

ABILITY_WORDS = {
    Ability.OPERATE: "the operator or owner role",
    Ability.MANAGE: "the owner role",
}


def resolve_project(request, name: str) -> tuple[Project, str]:
    """The project named in the URL and the caller's role on it; 404 without a role."""
    request.auth = None  # a console session is a person, never an app token
    project = Project.objects.filter(name=name).first() if "\x00" not in name else None
    role = project_role(request, project) if project is not None else None
    if role is None:
        raise Http404(f"No project named {name!r}.")
    return project, role


def project_page(ability: str = Ability.VIEW):
    """A view of one project's pages: `view(request, project, role, ...)`.

    404 for someone without a role on it, 403 for a role without `ability`.
    """

    def decorate(view):
        @login_required
        @wraps(view)
        def wrapper(request, project: str, *args, **kwargs):
            found, role = resolve_project(request, project)
            if not may(role, ability):
                raise PermissionDenied(
                    f"This needs {ABILITY_WORDS[ability]} on {found.name}; your role is {role}."
                )
            request.project, request.role = found, role
            return view(request, found, role, *args, **kwargs)

        return wrapper

    return decorate


def projects_of(user) -> list[tuple[str, str]]:
    """(project name, role) for each project the user is a member of."""
    return list(
        Membership.objects.filter(user=user)
        .order_by("project__name")
        .values_list("project__name", "role")
    )


def console_context(request) -> dict:
    """Template context for every page: the project switcher and what the role allows."""
    project = getattr(request, "project", None)
    role = getattr(request, "role", None)
    if not request.user.is_authenticated:
        return {}
    return {
        "my_projects": projects_of(request.user),
        "project": project,
        "role": role,
        "can_operate": may(role, Ability.OPERATE),
        "can_manage": may(role, Ability.MANAGE),
    }
