"""The notebook page's terminal: a command run in the notebook as `nbc notebook exec`
and the API's exec run it (its uid, /workspace, its environment, through its host's
SSH endpoint), its output shown when it ends. Operators only, as in the API."""

import base64
import json
import shlex

from django.shortcuts import render
from django.views.decorators.http import require_POST

from nbcloud.api.access import Ability
from nbcloud.notebooks.states import State
from nbcloud.ssh import execution, services

from .base import project_page
from .notebooks import actor, get_notebook

TIMEOUT = 120  # seconds a command may run from this page
SHOWN = 256 * 1024  # bytes of output kept for the page


def run(notebook, who: str, peer: str, argv: list[str]) -> dict:
    """The command's output (stdout and stderr as they came, at most SHOWN bytes) and
    its exit code, or the reason it could not run."""
    output, exit_code, error = bytearray(), None, ""
    for line in execution.stream(services.Login(str(notebook.pk), who), peer, argv, TIMEOUT):
        item = json.loads(line)
        if "data" in item:
            if len(output) < SHOWN:
                output += base64.b64decode(item["data"])[: SHOWN - len(output)]
        elif "exit_code" in item:
            exit_code, error = item["exit_code"], item.get("error", "")
    return {
        "output": output.decode(errors="replace"),
        "cut": len(output) >= SHOWN,
        "exit_code": exit_code,
        "error": error,
    }


@require_POST
@project_page(Ability.OPERATE)
def notebook_command(request, project, role, notebook_id):
    notebook = get_notebook(request, project, notebook_id)
    line = request.POST.get("command", "").strip()
    context = {"command": line}
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        argv, context["error"] = [], f"The command line cannot be read: {exc}."
    if not argv and "error" not in context:
        context["error"] = "Type a command, e.g. pip list or nvidia-smi."
    elif notebook.state != State.RUNNING:
        context["error"] = f"The notebook is {notebook.state}: commands run only while it runs."
    elif argv:
        context.update(run(notebook, actor(request), request.META.get("REMOTE_ADDR", "?"), argv))
    return render(request, "console/_command_output.html", context)
