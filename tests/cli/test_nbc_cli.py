"""`nbc`, the command line, against the real platform on loopback.

The CLI runs in-process (typer's CliRunner) and speaks only HTTP to a real
uvicorn serving the API on the test database; notebooks are started by a real
Celery worker and a real JupyterLab. The fast tests at the end need no server.
"""

import json
import os
import stat
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from nbcloud.cli import config, params
from nbcloud.cli.client import ApiClient, ApiError
from nbcloud.cli.notebooks import _overlap

UNREACHABLE = "http://127.0.0.1:9"


# With the platform.


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_notebook_lifecycle_from_the_command_line(
    nbc, as_alice, celery_worker_process, conda_env, this_host, leave_no_editor
):
    env = as_alice
    run = nbc(
        ["notebook", "run", "conda", "jupyterlab", "--cpu", "1", "-l", "team=vision"]
        + ["--name", "cli-demo", "-e", "GREETING=hello=world", "--wait", "-o", "json"],
        env,
    )
    assert run.exit_code == 0, run.output
    nb = json.loads(run.stdout)
    nb_id = nb["id"]
    assert nb["status"]["state"] == "RUNNING"
    assert nb["status"]["url"].endswith(f"/notebooks/{nb_id}/")
    assert nb["spec"]["env_vars"] == [{"name": "GREETING", "value": "hello=world"}]
    assert "RUNNING" in run.stderr  # the progress went to stderr, the JSON alone to stdout

    listed = nbc(["notebook", "list", "--label-selector", "team=vision", "-o", "json"], env)
    assert listed.exit_code == 0, listed.output
    assert [n["id"] for n in json.loads(listed.stdout)] == [nb_id]
    other = nbc(["notebook", "list", "--label-selector", "team=nlp", "-o", "json"], env)
    assert json.loads(other.stdout) == []
    table = nbc(["notebook", "list", "--state", "running"], env)
    assert nb_id in table.stdout and "cli-demo" in table.stdout and "team=vision" in table.stdout

    shown = nbc(["notebook", "get", "cli-demo"], env)  # by name
    assert shown.exit_code == 0, shown.output
    assert "RUNNING" in shown.stdout and nb["status"]["url"] in shown.stdout
    assert nbc(["notebook", "open", nb_id[:8]], env).stdout.strip() == nb["status"]["url"]

    labelled = nbc(["notebook", "label", nb_id, "owner=alice", "-o", "json"], env)
    labelled_now = json.loads(labelled.stdout)
    assert labelled_now == {"team": "vision", "owner": "alice"}
    assert nbc(["notebook", "logs", nb_id, "--tail", "20"], env).exit_code == 0

    stopped = nbc(["notebook", "stop", nb_id, "--wait", "-o", "json"], env)
    assert stopped.exit_code == 0, stopped.output
    assert json.loads(stopped.stdout)["status"]["state"] == "STOPPED"
    backups = nbc(["notebook", "backup", "list", nb_id, "-o", "json"], env)
    [backup] = json.loads(backups.stdout)
    not_running = nbc(["notebook", "sync", nb_id], env)
    assert not_running.exit_code == 1 and "only while it is RUNNING" in not_running.stderr

    # A fork: a new notebook from the backup (named by an id prefix), followed to RUNNING.
    forked = nbc(
        ["notebook", "backup", "fork", "cli-demo", backup["id"][:8], "--name", "cli-fork"]
        + ["--wait", "-o", "json"],
        env,
    )
    assert forked.exit_code == 0, forked.output
    fork = json.loads(forked.stdout)
    assert fork["id"] != nb_id and fork["status"]["state"] == "RUNNING"
    assert fork["spec"]["name"] == "cli-fork" and fork["spec"]["labels"] == labelled_now
    assert nbc(["notebook", "delete", "cli-fork", "--force", "--wait"], env).exit_code == 0
    refused = nbc(["notebook", "open", nb_id], env)
    assert refused.exit_code == 1 and "STOPPED" in refused.stderr

    started = nbc(["notebook", "start", nb_id, "--wait", "-o", "yaml"], env)
    assert started.exit_code == 0, started.output
    assert yaml.safe_load(started.stdout)["status"]["state"] == "RUNNING"

    events = nbc(["notebook", "events", nb_id, "-o", "json"], env)
    assert [e["to_state"] for e in json.loads(events.stdout)][-1] == "RUNNING"

    asked = nbc(["notebook", "delete", nb_id], env, input="n\n")
    assert asked.exit_code == 1 and "Delete notebook cli-demo" in asked.output
    deleted = nbc(["notebook", "delete", nb_id, "--force", "--wait"], env)
    assert deleted.exit_code == 0, deleted.output
    assert json.loads(nbc(["notebook", "list", "-o", "json"], env).stdout) == []


@pytest.mark.django_db(transaction=True)
def test_a_long_list_is_read_whole_following_the_cursors(nbc, as_alice, alpha, monkeypatch):
    from nbcloud.cli import client
    from support.factories import make_notebook

    made = [str(make_notebook(alpha, name=f"n{i}").pk) for i in range(5)]
    monkeypatch.setattr(client, "PAGE_SIZE", 2)
    asked = []
    get = ApiClient.get
    monkeypatch.setattr(
        ApiClient, "get", lambda self, path, **kw: asked.append(kw) or get(self, path, **kw)
    )
    listed = nbc(["notebook", "list", "-o", "json"], as_alice)
    assert listed.exit_code == 0, listed.output
    assert [n["id"] for n in json.loads(listed.stdout)] == made
    pages = [kw for kw in asked if kw.get("size") == 2]
    assert len(pages) == 3
    assert pages[0].get("page") == 1 and all("after" in kw for kw in pages[1:])


@pytest.mark.django_db(transaction=True)
def test_api_refusals_print_the_api_message_and_exit_1(nbc, as_bob):
    result = nbc(["notebook", "run", "conda", "jupyterlab", "--cpu", "1"], as_bob)
    assert result.exit_code == 1
    assert "This action needs the operator role; your role on this project is read-only." in (
        result.stderr
    )
    assert "Traceback" not in result.output and result.stdout == ""

    invalid = nbc(["notebook", "run", "nope", "jupyterlab"], {**as_bob, "NBC_TOKEN": "nbc_bad"})
    assert invalid.exit_code == 1 and "Unknown API token." in invalid.stderr
    missing = nbc(["notebook", "get", "no-such-notebook"], as_bob)
    assert missing.exit_code == 1 and "no-such-notebook" in missing.stderr


@pytest.mark.django_db(transaction=True)
def test_capabilities_usage_project_and_tokens(nbc, as_alice):
    env = as_alice
    frameworks = nbc(["capabilities", "framework", "-o", "json"], env)
    assert frameworks.exit_code == 0, frameworks.output
    assert "conda" in [f["id"] for f in json.loads(frameworks.stdout)]
    for kind in ("framework", "editor", "flavor", "region"):
        shown = nbc(["capabilities", kind], env)
        assert shown.exit_code == 0 and "ID" in shown.stdout, shown.output
    assert "ai1-1-cpu" in nbc(["capabilities", "flavor"], env).stdout

    csv = nbc(["usage", "--csv"], env)
    assert csv.exit_code == 0, csv.output
    assert csv.stdout.splitlines()[0] == "notebook_id,notebook_name,minutes,units,cost,currency"
    by_day = nbc(["usage", "--group-by", "day", "--from", "2026-01-01", "-o", "yaml"], env)
    assert yaml.safe_load(by_day.stdout)["group_by"] == "day"
    bad = nbc(["usage", "--from", "yesterday"], env)
    assert bad.exit_code == 1 and "is not a date" in bad.stderr

    project = json.loads(nbc(["project", "-o", "json"], env).stdout)
    assert project["name"] == "alpha" and project["role"] == "operator"
    quota = nbc(["quota"], env)
    assert quota.exit_code == 0 and "0 of 4" in quota.stdout
    elsewhere = nbc(["--project", "bravo", "quota"], env)  # the flag wins over NBC_PROJECT
    assert elsewhere.exit_code == 1 and "No project named 'bravo'." in elsewhere.stderr

    value = nbc(["token", "create", "ci", "--role", "read", "-q"], env).stdout.strip()
    assert value.startswith("nbc_")
    tokens = json.loads(nbc(["token", "list", "-o", "json"], env).stdout)
    ci = next(t for t in tokens if t["name"] == "ci")
    assert value.startswith(ci["key_prefix"]) and "value" not in ci
    assert nbc(["notebook", "list"], {**env, "NBC_TOKEN": value}).exit_code == 0
    renewed = nbc(["token", "renew", str(ci["id"]), "-o", "json"], env)
    assert json.loads(renewed.stdout)["value"] not in ("", value)
    assert nbc(["token", "delete", str(ci["id"]), "--force"], env).exit_code == 0
    gone = nbc(["notebook", "list"], {**env, "NBC_TOKEN": value})
    assert gone.exit_code == 1 and "Unknown API token." in gone.stderr


@pytest.mark.django_db(transaction=True)
def test_login_stores_a_private_profile_and_config_show_masks_the_token(
    nbc, env, tmp_path, platform_server, alice
):
    token = alice[1]
    wrong = nbc(
        ["login", "--url", platform_server, "--token", "nbc_wrong", "--project", "alpha"], env
    )
    assert wrong.exit_code == 1 and "Unknown API token." in wrong.stderr
    path = tmp_path / "nbcloud" / "config.toml"
    assert not path.exists()  # nothing saved that does not work

    login = nbc(
        ["login", "--url", platform_server + "/", "--token", token]
        + ["--project", "alpha", "--profile", "work"],
        env,
    )
    assert login.exit_code == 0, login.output
    assert "operator of project alpha" in login.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = config.ConfigFile.load(path)
    assert stored.current == "work"
    assert stored.profiles["work"] == {"url": platform_server, "token": token, "project": "alpha"}

    shown = nbc(["config", "show"], env)
    assert shown.exit_code == 0, shown.output
    assert token not in shown.output
    assert config.mask(token) in shown.stdout and token[:8] in shown.stdout
    assert "work" in shown.stdout and platform_server in shown.stdout
    # The profile is used; an environment variable wins over it, and says so.
    assert nbc(["quota"], env).exit_code == 0
    overridden = nbc(["config", "show", "-o", "json"], {**env, "NBC_PROJECT": "bravo"})
    data = json.loads(overridden.stdout)
    assert data["project"] == "bravo" and data["sources"]["project"] == "NBC_PROJECT"
    assert data["token"] == config.mask(token)
    unknown = nbc(["--profile", "nope", "quota"], env)
    assert unknown.exit_code == 2 and "no profile named 'nope'" in unknown.stderr

    offline = ["login", "--url", UNREACHABLE, "--token", "nbc_x", "--no-verify"]
    assert nbc([*offline, "--profile", "other"], env).exit_code == 0
    assert config.ConfigFile.load(path).current == "other"
    assert nbc(["config", "use", "nope"], env).exit_code == 2
    assert nbc(["config", "use", "work"], env).exit_code == 0
    assert json.loads(nbc(["config", "show", "-o", "json"], env).stdout)["profiles"] == [
        "other",
        "work",
    ]
    assert nbc(["quota"], env).exit_code == 0
    assert nbc(["--profile", "other", "quota"], env).exit_code == 2  # it names no project
    assert nbc(["--profile", "other", "--project", "alpha", "quota"], env).exit_code == 3


# Without the platform.


def test_an_unreachable_platform_exits_3_quickly_naming_the_url(nbc, env):
    started = time.monotonic()
    unreachable = {**env, "NBC_URL": UNREACHABLE, "NBC_TOKEN": "t", "NBC_PROJECT": "alpha"}
    result = nbc(["notebook", "list"], unreachable)
    assert result.exit_code == 3
    assert time.monotonic() - started < 5
    assert f"cannot reach the platform at {UNREACHABLE}" in result.stderr
    assert "Traceback" not in result.output
    assert nbc(["notebook", "list"], env).exit_code == 2  # not configured: a usage error


@pytest.mark.parametrize(
    "args",
    [
        ["-l", "team"],
        ["-l", "=vision"],
        ["-e", "NOVALUE"],
        ["-e", "1BAD=x"],
        ["--gpu", "1", "--cpu", "2"],
        ["--cpu", "0"],
        ["--ssh-public-keys", "/nonexistent/key.pub"],
    ],
)
def test_bad_arguments_are_usage_errors(nbc, env, args):
    """Exit 2 before any request: the URL points nowhere, which would exit 3."""
    env = {**env, "NBC_URL": UNREACHABLE, "NBC_TOKEN": "t", "NBC_PROJECT": "alpha"}
    result = nbc(["notebook", "run", "conda", "jupyterlab", *args], env)
    assert result.exit_code == 2, result.output


def test_other_usage_errors(nbc, env):
    env = {**env, "NBC_URL": UNREACHABLE, "NBC_TOKEN": "t", "NBC_PROJECT": "alpha"}
    assert nbc(["notebook", "list", "--state", "SLEEPING"], env).exit_code == 2
    assert nbc(["notebook", "list", "-o", "xml"], env).exit_code == 2
    assert nbc(["token", "create", "x", "--role", "admin"], env).exit_code == 2
    assert nbc(["notebook", "label", "abc"], env).exit_code == 2
    assert nbc(["login", "--url", "ftp://x", "--token", "t", "--no-verify"], env).exit_code == 2
    assert (
        nbc(["login", "--url", "http://x", "--token", "t", "--profile", "a b"], env).exit_code == 2
    )


def test_help_mentions_completion_and_exit_codes(nbc, env):
    result = nbc(["--help"], env)
    assert result.exit_code == 0
    assert "--install-completion" in result.stdout and "Exit codes" in result.stdout
    assert nbc([], env).exit_code in (0, 2)  # no_args_is_help


def test_pairs_and_log_overlap():
    assert params.pairs(["a=1", "b=x=y", "c="], "KEY") == {"a": "1", "b": "x=y", "c": ""}
    assert params.expiry("never") is None and params.expiry("2030-01-01") == "2030-01-01"
    assert _overlap(["a", "b", "c"], ["b", "c", "d"]) == 2
    assert _overlap(["a", "b"], ["a", "b"]) == 2
    assert _overlap([], ["a"]) == 0
    assert _overlap(["x"], ["y", "z"]) == 0


def test_config_file_round_trips_odd_values(tmp_path):
    path = tmp_path / "c.toml"
    odd = 'quote " backslash \\ tab \t newline \n é'
    file = config.ConfigFile(path, "p1", {"p1": {"url": "http://h", "token": odd, "project": ""}})
    file.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = config.ConfigFile.load(path)
    assert loaded.current == "p1" and loaded.profiles["p1"] == {"url": "http://h", "token": odd}
    assert config.mask("nbc_abcdefghijklmnopqrstuvwxyz") == "nbc_abcd…********"
    assert "short" not in config.mask("short")


def test_client_errors_without_the_api_shape():
    def handler(request):
        if request.url.path.endswith("/quota/"):
            return httpx.Response(404, text="<html>nope</html>")
        if request.url.path.endswith("/regions/"):
            return httpx.Response(302, headers={"location": "https://elsewhere/"})
        return httpx.Response(409, json={"code": "invalid_state", "message": "is STOPPED"})

    client = ApiClient("http://x", "t", "p", transport=httpx.MockTransport(handler))
    with pytest.raises(ApiError, match="is STOPPED"):
        client.post(client.notebook_path("n", "stop/"))
    with pytest.raises(ApiError, match="an nbcloud platform"):
        client.get(client.project_path("quota/"))
    with pytest.raises(ApiError, match="redirects to https://elsewhere/"):
        client.get("capabilities/regions/")


def test_the_cli_itself_imports_no_django():
    """It runs on laptops: only HTTP. (The `nbcloud` package's own __init__ loads the
    Celery app, which imports bits of Django; the CLI's modules must not add any.)"""
    code = (
        "import sys, types, pathlib, nbcloud.cli; "
        "pkg = pathlib.Path(nbcloud.cli.__file__).parent.parent; "
        "[sys.modules.pop(m) for m in list(sys.modules) if m.split('.')[0] in "
        "('nbcloud', 'django', 'celery', 'kombu', 'rest_framework')]; "
        "stub = types.ModuleType('nbcloud'); stub.__path__ = [str(pkg)]; "
        "sys.modules['nbcloud'] = stub; "
        "import nbcloud.cli.main; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('django', 'celery', 'rest_framework')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _notebook(state: str, code: str = "", message: str = "") -> dict:
    return {
        "id": "n1",
        "spec": {"name": "demo"},
        "status": {"state": state, "info": {"code": code, "message": message}},
    }


@pytest.mark.parametrize("terminal", [False, True])
def test_wait_shows_progress_and_fails_on_failed(monkeypatch, terminal):
    import io

    from rich.console import Console

    from nbcloud.cli import output, waiting

    stream = io.StringIO()
    monkeypatch.setattr(
        output, "err_console", lambda: Console(file=stream, force_terminal=terminal, width=100)
    )

    def client_for(states):
        answers = iter(states)
        transport = httpx.MockTransport(lambda request: httpx.Response(200, json=next(answers)))
        return ApiClient("http://x", "t", "p", transport=transport)

    client = client_for(
        [
            _notebook("QUEUED", "WAITING_FOR_CAPACITY", "position 1 in region GRA for 1 CPU"),
            _notebook("STARTING", "PLACED", "Placed on host a."),
            _notebook("RUNNING", "RUNNING", "The editor is up."),
        ]
    )
    nb = waiting.wait_for_state(client, "n1", "RUNNING", interval=0.01)
    assert nb["status"]["state"] == "RUNNING"
    text = stream.getvalue()
    assert "position 1 in region GRA" in text and "PLACED: Placed on host a." in text
    assert "RUNNING: The editor" not in text  # a code that repeats the state is left out

    client = client_for(
        [_notebook("STARTING"), _notebook("FAILED", "ENVIRONMENT_MISSING", "conda is not built")]
    )
    with pytest.raises(waiting.WaitFailed, match="FAILED: ENVIRONMENT_MISSING: conda is not built"):
        waiting.wait_for_state(client, "n1", "RUNNING", interval=0.01)
    client = client_for([_notebook("STOPPED")])
    with pytest.raises(waiting.WaitFailed, match="is STOPPED, not RUNNING"):
        waiting.wait_for_state(client, "n1", "RUNNING", interval=0.01)
    client = client_for([_notebook("STARTING")] * 10)
    with pytest.raises(waiting.WaitFailed, match="still STARTING after"):
        waiting.wait_for_state(client, "n1", "RUNNING", timeout=0.01, interval=0.02)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_and_what_the_shell_gets_back(nbc, env, shell):
    """The script each shell sources, and the answer `nbc` gives when the shell asks
    (run as the shell runs it: the installed `nbc` with the completion variables)."""
    script = nbc(["completion", shell], env)
    assert script.exit_code == 0, script.output
    assert f"_NBC_COMPLETE=complete_{shell}" in script.stdout

    asks = {
        "bash": {"COMP_WORDS": "nbc da", "COMP_CWORD": "1"},
        "zsh": {"_TYPER_COMPLETE_ARGS": "nbc da"},
        "fish": {"_TYPER_COMPLETE_ARGS": "nbc da", "_TYPER_COMPLETE_FISH_ACTION": "get-args"},
    }[shell]
    nbc_bin = os.path.join(os.path.dirname(sys.executable), "nbc")
    answer = subprocess.run(
        [nbc_bin],
        env={**os.environ, "_NBC_COMPLETE": f"complete_{shell}", **asks},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert answer.returncode == 0, answer.stderr
    assert "datastore" in answer.stdout and "data" in answer.stdout
    assert "notebook" not in answer.stdout  # only what starts with "da"
