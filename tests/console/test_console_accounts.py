"""Accounts: non-staff people sign in, out and change their password; `createuser` makes
them with a role; an owner's invitation link works once."""

import io
import re
from urllib.parse import urlsplit

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from nbcloud.console.models import Invitation
from nbcloud.projects.models import Membership, Project, Role

from .console_support import PASSWORD, person, signed_in

pytestmark = pytest.mark.django_db


def test_a_person_who_is_not_staff_signs_in_and_lands_on_their_project(django_user_model, alpha):
    dana = person(django_user_model, "dana", alpha, Role.OPERATOR)
    assert not dana.is_staff
    client = Client(enforce_csrf_checks=True)
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())[1]
    reply = client.post(
        "/accounts/login/",
        {"username": "dana", "password": PASSWORD, "csrfmiddlewaretoken": token},
    )
    assert reply.status_code == 302 and reply["Location"] == "/"
    assert client.get("/")["Location"] == "/projects/alpha/"
    page = client.get("/projects/alpha/")
    assert page.status_code == 200 and b"No notebooks yet" in page.content


def test_a_wrong_password_is_refused_on_the_form(django_user_model, alpha):
    person(django_user_model, "dana", alpha, Role.OPERATOR)
    reply = Client().post("/accounts/login/", {"username": "dana", "password": "nope"})
    assert reply.status_code == 200 and b"correct username and password" in reply.content


def test_pages_send_a_stranger_to_sign_in(alpha):
    reply = Client().get("/projects/alpha/")
    assert reply.status_code == 302 and reply["Location"].startswith("/accounts/login/?next=")


def test_sign_out_is_a_post(django_user_model, alpha):
    client = signed_in(person(django_user_model, "dana", alpha, Role.READ))
    assert client.get("/accounts/logout/").status_code == 405
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/projects/alpha/").status_code == 302


def test_password_change_keeps_the_person_signed_in(django_user_model, alpha):
    dana = person(django_user_model, "dana", alpha, Role.READ)
    client = signed_in(dana)
    reply = client.post(
        "/accounts/password/",
        {
            "old_password": PASSWORD,
            "new_password1": "another fine secret",
            "new_password2": "another fine secret",
        },
    )
    assert reply.status_code == 302
    dana.refresh_from_db()
    assert dana.check_password("another fine secret")
    assert client.get("/projects/alpha/").status_code == 200


def test_createuser_reads_the_password_from_stdin(monkeypatch, db):
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
    out = io.StringIO()
    call_command("createuser", "erin", "--project", "gamma", "--role", "owner", stdout=out)
    membership = Membership.objects.get(user__username="erin", project__name="gamma")
    assert membership.role == Role.OWNER
    assert membership.user.check_password("correct horse battery")
    assert not membership.user.is_staff
    assert "erin is owner of gamma" in out.getvalue()


def test_createuser_reads_the_password_from_a_named_variable(monkeypatch, alpha):
    monkeypatch.setenv("ERIN_PASSWORD", "correct horse battery")
    call_command(
        "createuser",
        "erin",
        "--project",
        "alpha",
        "--role",
        "read",
        "--password-env",
        "ERIN_PASSWORD",
        stdout=io.StringIO(),
    )
    assert (
        Project.objects.get(name="alpha").role_of(
            Membership.objects.get(user__username="erin").user
        )
        == Role.READ
    )


def test_createuser_refuses_a_short_password_and_an_empty_variable(monkeypatch, db):
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    with pytest.raises(CommandError, match="too short"):
        call_command("createuser", "erin", "--project", "gamma", stdout=io.StringIO())
    with pytest.raises(CommandError, match="NOPE: the variable is unset"):
        call_command("createuser", "erin", "--project", "gamma", "--password-env", "NOPE")
    assert not Project.objects.filter(name="gamma").exists()


def test_an_invitation_link_makes_a_new_member_once(django_user_model, alpha):
    owner = signed_in(person(django_user_model, "olga", alpha, Role.OWNER))
    page = owner.post("/projects/alpha/members/", {"role": "read", "note": "for frank"})
    link = re.search(r'id="invitation-link">([^<]+)<', page.content.decode())[1]
    path = urlsplit(link).path
    assert Invitation.objects.get().code_hash not in link
    # The link is shown once: the members page does not show it again.
    assert link.encode() not in owner.get("/projects/alpha/members/").content

    guest = Client()
    assert guest.get(path).status_code == 200
    reply = guest.post(
        path,
        {"username": "frank", "password1": "frank's own secret", "password2": "frank's own secret"},
    )
    assert reply.status_code == 302 and reply["Location"] == "/projects/alpha/"
    assert alpha.role_of(django_user_model.objects.get(username="frank")) == Role.READ
    assert guest.get("/projects/alpha/").status_code == 200
    # Used: the link no longer works, for anyone.
    assert Client().get(path).status_code == 404


def test_an_owner_cannot_remove_the_last_owner(django_user_model, alpha):
    olga = person(django_user_model, "olga", alpha, Role.OWNER)
    client = signed_in(olga)
    client.post(f"/projects/alpha/members/{olga.pk}/", {"role": "read"})
    assert alpha.role_of(olga) == Role.OWNER
    dana = person(django_user_model, "dana", alpha, Role.READ)
    client.post(f"/projects/alpha/members/{dana.pk}/", {"role": "operator"})
    assert alpha.role_of(dana) == Role.OPERATOR
    client.post(f"/projects/alpha/members/{dana.pk}/", {"remove": "1"})
    assert alpha.role_of(dana) is None
