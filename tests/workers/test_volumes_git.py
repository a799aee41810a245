"""Git volumes against real git servers on loopback.

`git daemon` serves anonymous clones; a small WSGI app around
`git http-backend` (the smart HTTP protocol) behind basic auth serves private
ones, reached through the project's git datastore.
"""

import base64
import subprocess
import threading
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import git
import pytest

from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.spec import parse_volume
from nbcloud.projects.models import Datastore, Project
from support.factories import make_notebook
from workers import volumes

USER, PASSWORD = "bot", "s3cret-pass"


def http_backend_app(root: Path):
    """WSGI: basic auth, then the CGI `git http-backend` with the request piped through."""

    def app(environ, start_response):
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if environ.get("HTTP_AUTHORIZATION") != expected:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"')])
            return [b"authentication required\n"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        env = {
            "GIT_PROJECT_ROOT": str(root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": environ.get("PATH_INFO", ""),
            "REQUEST_METHOD": environ["REQUEST_METHOD"],
            "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": USER,
            "REMOTE_ADDR": "127.0.0.1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "PATH": "/usr/bin:/bin",
        }
        if environ.get("HTTP_GIT_PROTOCOL"):
            env["GIT_PROTOCOL"] = environ["HTTP_GIT_PROTOCOL"]
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = "200 OK", []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = value.strip()
            elif name:
                headers.append((name, value.strip()))
        start_response(status, headers)
        return [payload]

    return app


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def git_http(repos):
    server = make_server("127.0.0.1", 0, http_backend_app(repos), handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(autouse=True)
def _trust_clones(monkeypatch):
    """Clones belong to the notebook's user: let the test (root) read them."""
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "safe.directory")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "*")


@pytest.fixture
def project(db):
    return Project.objects.create(name="code")


def _clone(project, workspace: Path, spec: str) -> Notebook:
    notebook = make_notebook(project, volumes=[parse_volume(spec).to_dict()])
    workspace.mkdir(exist_ok=True)
    volumes.prepare(notebook, workspace)
    return notebook


def _datastore(project, host: str, password: str = PASSWORD) -> Datastore:
    store = Datastore(project=project, alias="forge", type="git", host=host, username=USER)
    store.set_secrets({"password": password})
    store.save()
    return store


def test_anonymous_clone_is_shallow_on_the_default_branch(project, git_daemon, tmp_path):
    notebook = _clone(project, tmp_path / "ws", f"{git_daemon}/demo.git:/workspace/demo:RW")
    clone = git.Repo(tmp_path / "ws" / "demo")
    assert clone.active_branch.name == "main"
    assert (tmp_path / "ws" / "demo" / "README.md").read_text() == "version 2\n"
    assert len(list(clone.iter_commits())) == 1  # depth 1
    [entry] = Notebook.objects.get(pk=notebook.pk).data_sync
    assert entry["state"] == "DONE" and entry["files_done"] > 0


def test_branch_and_full_depth(project, git_daemon, tmp_path, settings):
    settings.NBCLOUD_GIT_CLONE_DEPTH = 0
    _clone(project, tmp_path / "ws", f"{git_daemon}/demo.git@dev:/workspace/demo")
    clone = git.Repo(tmp_path / "ws" / "demo")
    assert clone.active_branch.name == "dev"
    assert (tmp_path / "ws" / "demo" / "dev.txt").exists()
    assert len(list(clone.iter_commits())) == 4


def test_a_later_start_keeps_the_clone_and_the_users_work(project, git_daemon, tmp_path):
    spec = f"{git_daemon}/demo.git:/workspace/demo:RW"
    notebook = _clone(project, tmp_path / "ws", spec)
    (tmp_path / "ws" / "demo" / "mine.py").write_text("work in progress\n")
    volumes.prepare(notebook, tmp_path / "ws")  # as the next start does
    assert (tmp_path / "ws" / "demo" / "mine.py").read_text() == "work in progress\n"
    assert Notebook.objects.get(pk=notebook.pk).data_sync[0]["message"] == "already cloned"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/missing.git", "repository not found"),
        ("/demo.git@nope", "branch 'nope' does not exist"),
    ],
)
def test_bad_urls_and_branches_are_named(project, git_daemon, tmp_path, path, expected):
    spec = f"{git_daemon}{path}:/workspace/demo"
    with pytest.raises(volumes.VolumeError, match=expected) as failed:
        _clone(project, tmp_path / "ws", spec)
    assert spec in str(failed.value)
    assert not (tmp_path / "ws" / "demo").exists()
    assert not list((tmp_path / "ws").glob(".demo*"))  # no half clone left


def test_unreachable_server_is_named(project, tmp_path):
    with pytest.raises(volumes.VolumeError, match="cannot reach the git server 127.0.0.1:9"):
        _clone(project, tmp_path / "ws", "http://127.0.0.1:9/demo.git:/workspace/demo")


def test_private_clone_through_a_git_datastore(project, git_http, tmp_path):
    host = git_http.split("://", 1)[1]
    _datastore(project, host)
    _clone(project, tmp_path / "ws", f"{git_http}/demo.git@dev:/workspace/private")
    assert (tmp_path / "ws" / "private" / "dev.txt").read_text() == "on dev\n"
    # The credentials are not left in the clone for the notebook to find.
    config = (tmp_path / "ws" / "private" / ".git" / "config").read_text()
    assert PASSWORD not in config and USER not in config


def test_private_clone_without_or_with_bad_credentials(project, git_http, tmp_path):
    spec = f"{git_http}/demo.git:/workspace/private"
    with pytest.raises(volumes.VolumeError, match="needs a git datastore for host") as anonymous:
        _clone(project, tmp_path / "ws", spec)
    assert "127.0.0.1" in str(anonymous.value)

    _datastore(project, git_http.split("://", 1)[1], password="wrong-password")
    with pytest.raises(
        volumes.VolumeError, match="refused the credentials of datastore 'forge'"
    ) as refused:
        _clone(project, tmp_path / "ws", spec)
    assert "wrong-password" not in str(refused.value)


def test_files_in_the_way_are_not_overwritten(project, git_daemon, tmp_path):
    (tmp_path / "ws" / "demo").mkdir(parents=True)
    (tmp_path / "ws" / "demo" / "precious.txt").write_text("mine")
    with pytest.raises(volumes.VolumeError, match="already holds files"):
        _clone(project, tmp_path / "ws", f"{git_daemon}/demo.git:/workspace/demo")
    assert (tmp_path / "ws" / "demo" / "precious.txt").read_text() == "mine"


def test_private_clone_over_ssh_with_a_key(project, git_sshd, tmp_path):
    url, key = git_sshd
    store = Datastore(project=project, alias="keyed", type="git", host="127.0.0.1")
    store.set_secrets({"ssh_private_key": key})
    store.save()
    _clone(project, tmp_path / "ws", f"{url}@dev:/workspace/viassh")
    assert (tmp_path / "ws" / "viassh" / "dev.txt").read_text() == "on dev\n"
    assert "PRIVATE KEY" not in "".join(
        p.read_text(errors="replace")
        for p in (tmp_path / "ws" / "viassh" / ".git").glob("*")
        if p.is_file()
    )


def test_ssh_without_a_key_is_refused_with_the_fix(project, git_sshd, tmp_path):
    url, _ = git_sshd
    with pytest.raises(volumes.VolumeError, match="needs a git datastore for host 127.0.0.1"):
        _clone(project, tmp_path / "ws", f"{url}:/workspace/viassh")
