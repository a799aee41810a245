"""`/api/v1/ssh-keys/`: the SSH keys on the signed-in person's own account.

A key here opens every notebook its owner may operate, in every project, so
only the person signed in (the console's session) manages them: an API token,
which may be limited to one project, a role or some labels, may not add one.
"""

from rest_framework import exceptions, mixins, permissions, viewsets

from nbcloud.projects.models import ApiToken
from nbcloud.ssh.models import SshKey

from .serializers import SshKeySerializer


class SignedInPerson(permissions.BasePermission):
    message = (
        "SSH keys open every notebook you may operate, so only you, signed in to the "
        "console, manage them: an API token may not."
    )

    def has_permission(self, request, view) -> bool:
        if isinstance(request.auth, ApiToken):
            raise exceptions.PermissionDenied(self.message)
        return bool(request.user and request.user.is_authenticated)


class SshKeyViewSet(
    mixins.ListModelMixin,
    mixins.CreateModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = SshKeySerializer
    permission_classes = [permissions.IsAuthenticated, SignedInPerson]

    def get_queryset(self):
        return SshKey.objects.filter(user=self.request.user)
