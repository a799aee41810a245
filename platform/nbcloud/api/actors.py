from nbcloud.projects.models import ApiToken


def actor_of(request) -> str:
    """How events name whoever made a request."""
    if isinstance(request.auth, ApiToken):
        return f"{request.user.username} (token {request.auth.name})"
    return request.user.username
