"""How each editor is started inside a notebook's environment."""

import hashlib
import logging
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError

from nbcloud.notebooks.spec import check_env_name

from .base import LaunchSpec, StartError

log = logging.getLogger(__name__)
CODE_SERVER_DATA = "/workspace/.local/share/code-server"


def editor_command(
    spec: LaunchSpec, port: int, ip: str = "127.0.0.1"
) -> tuple[list[str], dict[str, str]]:
    """The editor's argv (listening on ip:port) and the variables that carry its secret."""
    python = str(spec.env_dir / "bin" / "python")
    if spec.editor_id == "jupyterlab":
        argv = [
            python,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            f"--ServerApp.ip={ip}",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            "--ServerApp.root_dir=/workspace",
            f"--ServerApp.base_url={spec.base_url}",
        ]
        return argv, {"JUPYTER_TOKEN": spec.secret}
    if spec.editor_id == "vscode":
        return _code_server_command(spec, port, ip)
    raise StartError(f"Unknown editor {spec.editor_id!r}.")


def editor_environment(spec: LaunchSpec, secret_env: dict[str, str]) -> dict:
    """The editor's environment variables, the same on every runtime: a plain `pip
    install` lands in the workspace (user site) and survives stop/start. The owner's
    variables come first and never replace the platform's; reserved names (which the
    API refuses) are dropped here too, for rows written before they were refused."""
    user = {}
    for name, value in spec.env_vars.items():
        try:
            user[check_env_name(name)] = value
        except ValidationError:
            log.warning("notebook %s: reserved variable %s not set", spec.notebook_id, name)
    return {
        **user,
        "PATH": f"/workspace/.local/bin:{spec.env_dir / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/workspace",
        "USER": "nbuser",
        "LANG": "C.UTF-8",
        "SHELL": "/bin/bash",
        "PYTHONUSERBASE": "/workspace/.local",
        "PIP_USER": "1",
        "VIRTUAL_ENV": str(spec.env_dir),
        "NBCLOUD_NOTEBOOK_ID": spec.notebook_id,
        **secret_env,
    }


def readiness_path(editor_id: str) -> str:
    return {"jupyterlab": "api/status", "vscode": "healthz"}.get(editor_id, "")


def readiness_headers(spec: LaunchSpec) -> dict[str, str]:
    return {"Authorization": f"token {spec.secret}"} if spec.editor_id == "jupyterlab" else {}


def code_server_session(secret: str) -> str:
    """The `code-server-session` cookie value that code-server accepts for this secret.

    code-server started with HASHED_PASSWORD=H that is not an argon2 hash uses
    its legacy SHA-256 method: the session cookie must equal H (safe-compare,
    out/node/util.js isCookieValid), and its login form accepts a password
    whose sha256 hex is H, i.e. the secret. The gateway sends this cookie.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def _code_server_command(spec: LaunchSpec, port: int, ip: str) -> tuple[list[str], dict[str, str]]:
    from workers import code_server

    env = {"HASHED_PASSWORD": code_server_session(spec.secret), "NBCLOUD_BASE_PATH": spec.base_url}
    explicit = settings.NBCLOUD_CODE_SERVER
    if explicit:  # an operator's own code-server
        if not Path(explicit).exists():
            raise StartError(
                "VS Code (code-server) is not installed on this host; choose the jupyterlab "
                "editor or ask an administrator to install code-server.",
                f"NBCLOUD_CODE_SERVER={explicit} does not exist",
            )
        prefix = [explicit]
        env["NODE_OPTIONS"] = f"--require={code_server.write_preload()}"
    else:
        # Installing is a host's provisioning step, never a user's start.
        if not code_server.is_installed():
            raise StartError(
                "VS Code (code-server) is not installed on this host; choose the jupyterlab "
                "editor or ask an administrator to run `manage.py installcodeserver`.",
                f"code-server {code_server.CODE_SERVER_VERSION} is not installed in "
                f"{code_server.install_dir()}: run `manage.py installcodeserver` "
                "(`make code-server`) on this host",
            )
        node = code_server.installed_node()
        # --require: code-server forks its server process with the same node options.
        prefix = [
            node,
            "--require",
            str(code_server.write_preload()),
            str(code_server.entry_script()),
        ]
    argv = [
        *prefix,
        "--bind-addr",
        f"{ip}:{port}",
        "--auth",
        "password",
        "--disable-telemetry",
        "--disable-update-check",
        "--disable-workspace-trust",
        "--disable-getting-started-override",
        "--user-data-dir",
        CODE_SERVER_DATA,
        "--extensions-dir",
        f"{CODE_SERVER_DATA}/extensions",
        "--config",
        f"{CODE_SERVER_DATA}/config.yaml",
        "/workspace",
    ]
    return argv, env
