"""Signing in and out, changing one's password, and joining a project by invitation."""

from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.db import transaction
from django.http import HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone

from nbcloud.console.models import Invitation, hash_code
from nbcloud.projects.models import Membership

from .base import projects_of


@login_required
def home(request):
    """The first of one's projects, or a page saying there is none yet."""
    projects = projects_of(request.user)
    if projects:
        return redirect("console:notebooks", project=projects[0][0])
    return render(request, "console/no_project.html")


@login_required
def switch_project(request):
    name = request.GET.get("project", "")
    if name not in {p for p, _ in projects_of(request.user)}:
        return redirect("console:home")
    return redirect("console:notebooks", project=name)


class SignUpForm(UserCreationForm):
    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username",)


def _invitation(code: str) -> Invitation | None:
    return (
        Invitation.objects.select_related("project")
        .filter(code_hash=hash_code(code), expires_at__gt=timezone.now())
        .first()
    )


def accept_invitation(request, code: str):
    """A signed-in person joins at once; someone new chooses a name and password first."""
    invitation = _invitation(code)
    if invitation is None:
        return render(request, "console/invitation_invalid.html", status=404)
    form = None
    if request.method == "POST":
        if request.user.is_authenticated:
            user = request.user
        else:
            form = SignUpForm(request.POST)
            user = form.save(commit=False) if form.is_valid() else None
        if user is not None:
            with transaction.atomic():
                # Deleting is the claim: of two uses of one link, one wins.
                if Invitation.objects.filter(pk=invitation.pk).delete()[0] != 1:
                    return render(request, "console/invitation_invalid.html", status=404)
                if user.pk is None:
                    user.save()
                membership, created = Membership.objects.get_or_create(
                    project=invitation.project, user=user, defaults={"role": invitation.role}
                )
            if not request.user.is_authenticated:
                login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            if created:
                messages.success(
                    request, f"You joined {invitation.project.name} as {invitation.role}."
                )
            else:
                messages.info(
                    request,
                    f"You were already {membership.role} of {invitation.project.name}; "
                    "your role is unchanged.",
                )
            return HttpResponseRedirect(
                reverse("console:notebooks", kwargs={"project": invitation.project.name})
            )
    elif not request.user.is_authenticated:
        form = SignUpForm()
    return render(request, "console/invitation.html", {"invitation": invitation, "form": form})
