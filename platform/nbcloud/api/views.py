"""The shared base of project-scoped API views.

A project's resources live under /api/v1/projects/{project}/. Whoever cannot
see the project (a token of another project, a user who is not a member) gets
404, as if it did not exist; members with the `read` role may only read.
Views that admit notebook guests also let in people with whom one notebook
was shared (a grant), for that notebook only, with the granted role.
"""

from rest_framework import exceptions, permissions, viewsets

from nbcloud.api.access import grant_role, project_role
from nbcloud.projects.models import WRITE_ROLES, ApiToken, Project


def find(queryset, **lookups):
    """The first row of `queryset` matching `lookups` (values from a URL), or None.

    PostgreSQL refuses a NUL byte in text: a value holding one matches no row,
    and is not sent to the database to fail there.
    """
    if any(isinstance(value, str) and "\x00" in value for value in lookups.values()):
        return None
    return queryset.filter(**lookups).first()


GUEST = "guest"  # no role on the project, a grant on some of its notebooks


class ProjectRolePermission(permissions.BasePermission):
    message = "This action needs the operator role; your role on this project is read-only."

    def has_permission(self, request, view) -> bool:
        if request.method in permissions.SAFE_METHODS or view.role in WRITE_ROLES:
            return True
        # A grant on the one notebook may allow it: decided on the object.
        return view.admits_notebook_guests and bool(getattr(view, "detail", False))

    def has_object_permission(self, request, view, obj) -> bool:
        if request.method in permissions.SAFE_METHODS or view.role in WRITE_ROLES:
            return True
        return grant_role(request, obj) in WRITE_ROLES


class ProjectScopedMixin:
    """Resolves `project` from the URL and the caller's role on it."""

    permission_classes = [permissions.IsAuthenticated, ProjectRolePermission]
    admits_notebook_guests = False
    project: Project
    role: str

    def initial(self, request, *args, **kwargs):
        self.format_kwarg = self.get_format_suffix(**kwargs)
        self.perform_authentication(request)
        if not request.user or not request.user.is_authenticated:
            raise exceptions.NotAuthenticated()
        # The same answer whether the project does not exist or is someone
        # else's: a 404 must not tell which.
        name = kwargs["project"]
        project = find(Project.objects, name=name)
        role = project_role(request, project) if project is not None else None
        if role is None and project is not None and self.admits_notebook_guests:
            role = GUEST if _has_grant_in(request, project) else None
        if role is None:
            raise exceptions.NotFound(f"No project named {name!r}.")
        self.project = project
        self.role = role
        super().initial(request, *args, **kwargs)


def _has_grant_in(request, project: Project) -> bool:
    if isinstance(request.auth, ApiToken):
        return False
    return request.user.notebook_grants.filter(notebook__project=project).exists()


class ProjectScopedViewSet(ProjectScopedMixin, viewsets.GenericViewSet):
    pass
