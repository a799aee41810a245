"""How each editor is started inside a notebook's environment."""

import shutil
from pathlib import Path

from django.conf import settings

from .base import LaunchSpec, StartError


def editor_command(spec: LaunchSpec, port: int) -> tuple[list[str], dict[str, str]]:
    """The editor's argv and the environment variables that carry its secret."""
    python = str(spec.env_dir / "bin" / "python")
    if spec.editor_id == "jupyterlab":
        argv = [
            python,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            "--ServerApp.root_dir=/workspace",
            f"--ServerApp.base_url={spec.base_url}",
        ]
        return argv, {"JUPYTER_TOKEN": spec.secret}
    if spec.editor_id == "vscode":
        code_server = getattr(settings, "NBCLOUD_CODE_SERVER", "") or shutil.which("code-server")
        if not code_server or not Path(code_server).exists():
            raise StartError(
                "VS Code (code-server) is not installed on this host; choose the jupyterlab "
                "editor or ask an administrator to install code-server."
            )
        argv = [
            code_server,
            "--bind-addr",
            f"127.0.0.1:{port}",
            "--auth",
            "password",
            "--disable-telemetry",
            "--disable-update-check",
            "/workspace",
        ]
        return argv, {"PASSWORD": spec.secret}
    raise StartError(f"Unknown editor {spec.editor_id!r}.")


def readiness_path(editor_id: str) -> str:
    return {"jupyterlab": "api/status", "vscode": "healthz"}.get(editor_id, "")


def readiness_headers(spec: LaunchSpec) -> dict[str, str]:
    return {"Authorization": f"token {spec.secret}"} if spec.editor_id == "jupyterlab" else {}
