from django.http import StreamingHttpResponse

from nbcloud.api.actors import actor_of
from nbcloud.ssh import execution, services

from .serializers import ExecSerializer


def exec_response(notebook, request) -> StreamingHttpResponse:
    """Run the request's command in the notebook; its output streams back as JSON lines."""
    body = ExecSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    login = services.Login(str(notebook.pk), actor_of(request))
    peer = request.META.get("REMOTE_ADDR", "?")
    response = StreamingHttpResponse(
        execution.astream(
            login, peer, body.validated_data["command"], body.validated_data["timeout"]
        ),
        content_type="application/x-ndjson",
    )
    response["X-Accel-Buffering"] = "no"
    return response
