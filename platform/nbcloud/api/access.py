"""Who may reach which notebook: the one place the API and the gateway ask.

A request reaches a notebook when its caller has a role on the notebook's
project (`project_role`) and, for an app token with a label selector, when
the notebook's labels match that selector. What a token may not reach answers
404, as if it did not exist.

A token may also never create (or renew) a token with more power than itself:
its selector's terms must all be in the new token's selector, and a token that
expires may not give out a value that outlives it.
"""

from datetime import datetime

from django.db.models import QuerySet
from rest_framework import exceptions, serializers

from nbcloud.notebooks import spec
from nbcloud.projects.models import (
    MANAGER_ROLES,
    WRITE_ROLES,
    ApiToken,
    Project,
    Role,
    format_selector,
)


def token_allows(auth, labels: dict) -> bool:
    """Whether `auth` (request.auth) may reach a notebook with these labels.

    True for anything that is not an ApiToken (a session, a member) and for
    tokens without a label selector; the project check is separate.
    """
    if isinstance(auth, ApiToken):
        return auth.allows(labels or {})
    return True


def grant_role(request, notebook) -> str | None:
    """The role a person signed in holds on this one notebook by a grant, if any."""
    if isinstance(request.auth, ApiToken) or not request.user.is_authenticated:
        return None
    grant = notebook.grants.filter(user=request.user).first()
    return grant.role if grant else None


def project_role(request, project: Project) -> str | None:
    """The caller's role on `project` (None: it may not see it)."""
    if isinstance(request.auth, ApiToken):
        return request.auth.role if request.auth.project_id == project.pk else None
    if request.user.is_superuser:
        return Role.OPERATOR
    return project.role_of(request.user)


def granted_notebooks(request, queryset: QuerySet) -> QuerySet:
    """Of `queryset`, the notebooks shared with the person signed in."""
    if isinstance(request.auth, ApiToken) or not request.user.is_authenticated:
        return queryset.none()
    return queryset.filter(grants__user=request.user)


def _terms(auth) -> list[tuple[str, str, str]]:
    return auth.selector_terms if isinstance(auth, ApiToken) else []


def notebook_visible(request, notebook) -> bool:
    """Whether this request may see and act on `notebook` (roles aside)."""
    if project_role(request, notebook.project) is None:
        return False
    return token_allows(request.auth, notebook.labels)


def visible_notebooks(request, queryset: QuerySet) -> QuerySet:
    """`queryset` (of one project's notebooks) narrowed to what the request may reach."""
    return spec.filter_by_labels(queryset, _terms(request.auth))


def labels_for_new_notebook(auth, labels: dict) -> dict:
    """The labels of a notebook created by `auth`: its selector's `=` terms merged in.

    An explicit label that contradicts the selector is a 400 naming it.
    """
    if not isinstance(auth, ApiToken) or not auth.label_selector:
        return labels
    errors: dict[str, str] = {}
    required = auth.selector_labels()
    for key, value in required.items():
        if key in labels and labels[key] != value:
            errors[key] = (
                f"this token is limited to notebooks with {key}={value} "
                f"(label selector {auth.label_selector!r}); the label cannot be {labels[key]!r}"
            )
    merged = {**labels, **required}
    for key, op, value in auth.selector_terms:
        if op == "!=" and merged.get(key) == value and key not in errors:
            errors[key] = (
                f"this token is limited to notebooks with {key}!={value} "
                f"(label selector {auth.label_selector!r})"
            )
    if errors:
        raise serializers.ValidationError({"labels": errors})
    return merged


def check_labels_change(auth, labels: dict) -> None:
    """403 when new labels would take a notebook out of the token's reach."""
    if token_allows(auth, labels):
        return
    unmet = [
        f"{k}{op}{v}"
        for k, op, v in auth.selector_terms
        if not spec.labels_match(labels, [(k, op, v)])
    ]
    raise exceptions.PermissionDenied(
        f"These labels would take the notebook out of this token's reach: the token is limited "
        f"to notebooks matching {auth.label_selector!r}, and the new labels do not satisfy "
        f"{', '.join(unmet)}."
    )


# Tokens managing tokens.


def token_covers(auth, terms: list[tuple[str, str, str]], expires_at: datetime | None) -> str:
    """Why `auth` may not hold a token with these terms and expiry; '' when it may.

    Non-token callers (members, sessions) may give out any selector and expiry.
    """
    if not isinstance(auth, ApiToken):
        return ""
    missing = _missing_terms(auth, terms)
    if missing:
        return (
            f"This token is limited to notebooks matching {auth.label_selector!r}: a token it "
            "creates or renews must be limited at least as much, so its label_selector must "
            f"include {format_selector(missing)}."
        )
    if auth.expires_at is not None and (expires_at is None or expires_at > auth.expires_at):
        return (
            f"This token expires at {auth.expires_at.isoformat()}: a token it creates or renews "
            "must expire no later (set expires_at)."
        )
    return ""


def manageable_tokens(auth, queryset: QuerySet) -> QuerySet:
    """The tokens `auth` may see and manage: those no more powerful than itself."""
    if not isinstance(auth, ApiToken):
        return queryset
    if auth.expires_at is not None:
        queryset = queryset.filter(expires_at__isnull=False, expires_at__lte=auth.expires_at)
    if not auth.label_selector:
        return queryset
    matching = [
        pk
        for pk, selector in queryset.values_list("pk", "label_selector")
        if not _missing_terms(auth, spec.parse_label_selector(selector))
    ]
    return queryset.filter(pk__in=matching)


def _missing_terms(auth: ApiToken, terms: list[tuple[str, str, str]]) -> list:
    """The terms of auth's selector that `terms` lack (a broader selector lacks some)."""
    return [t for t in auth.selector_terms if t not in terms]


# What a role on a project allows: the one table the API and the console ask.


class Ability:
    VIEW = "view"  # see the project's notebooks, usage and quota
    OPERATE = "operate"  # create, change, start, stop, delete notebooks
    MANAGE = "manage"  # the project's members, tokens and datastores


def may(role: str | None, ability: str) -> bool:
    """Whether a caller holding `role` on a project (None: none) may do `ability`."""
    if role is None:
        return False
    if ability == Ability.VIEW:
        return True
    if ability == Ability.OPERATE:
        return role in WRITE_ROLES
    if ability == Ability.MANAGE:
        return role in MANAGER_ROLES
    raise ValueError(f"unknown ability {ability!r}")
