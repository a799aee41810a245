"""The runtime contract, run against every runtime: process, docker (on a real
Docker Engine) and slurm (on a real one-node Slurm cluster); see
tests/support/fixtures.py for when they are skipped."""

import os
import subprocess
import time

import pytest
import requests

from support.waiting import wait_for
from workers.lifecycle import wait_ready
from workers.runtimes import RUNTIMES, StartError
from workers.runtimes.process import sandbox_argv

pytestmark = pytest.mark.e2e


@pytest.fixture(params=sorted(RUNTIMES))
def runtime_cls(request):
    if request.param == "docker":
        request.getfixturevalue("docker_image")
    if request.param == "slurm":
        request.getfixturevalue("slurm_idle")
    return RUNTIMES[request.param]


@pytest.fixture
def started(runtime_cls, make_spec):
    runtime = runtime_cls(make_spec())
    runtime.start()
    yield runtime
    runtime.stop(5)


def test_start_serves_the_editor_behind_its_secret(started):
    wait_ready(started, 60)
    assert started.poll() is None
    status = started.endpoint.url + "api/status"
    assert requests.get(status, timeout=5).status_code == 403
    authorised = {"Authorization": f"token {started.spec.secret}"}
    assert requests.get(status, headers=authorised, timeout=5).status_code == 200


def test_start_twice_returns_the_same_endpoint(started):
    first = started.endpoint
    assert started.start() == first


def test_fresh_runtime_takes_over_from_state_and_stops(started, runtime_cls):
    wait_ready(started, 60)
    successor = runtime_cls(started.spec, started.get_state())
    assert successor.poll() is None
    assert successor.stats()["running"] is True
    assert successor.stats()["memory_bytes"] > 0
    successor.stop(5)
    assert successor.poll() is not None
    # The first object may answer from what it saw a moment ago (the slurm runtime
    # asks its scheduler at most once a second), never for longer.
    wait_for(lambda: started.poll() is not None, timeout=3, what="the first object to see it")
    assert "Jupyter" in successor.logs(50)


def test_stop_insists_when_asked_politely_is_not_enough(runtime_cls, make_spec):
    spec = make_spec()
    runtime = runtime_cls(spec)
    runtime.start()
    wait_ready(runtime, 60)
    started = time.monotonic()
    runtime.stop(0.1)
    assert runtime.poll() is not None
    assert time.monotonic() - started < 10


def test_editor_that_dies_at_start_is_reported(runtime_cls, make_spec, base_dir, settings):
    # No environment where the editor is looked for: a missing venv, or an image
    # without one (the base image).
    broken = {
        "process": {"env_dir": base_dir / "no-such-env"},
        "slurm": {"env_dir": base_dir / "no-such-env"},
        "docker": {"image": settings.NBCLOUD_DOCKER_BASE_IMAGE},
    }
    runtime = runtime_cls(make_spec(**broken[runtime_cls.name]))
    runtime.start()
    with pytest.raises(StartError, match="exited during start-up"):
        wait_ready(runtime, 30)
    runtime.stop(1)


def test_missing_code_server_is_a_clear_start_error(runtime_cls, make_spec, settings):
    settings.NBCLOUD_CODE_SERVER = "/nonexistent/code-server"
    with pytest.raises(StartError) as failure:
        runtime_cls(make_spec(editor_id="vscode")).start()
    assert "code-server" in failure.value.user_message


def test_sandbox_keeps_notebooks_out_of_each_others_workspace(make_spec):
    mine, theirs = make_spec(), make_spec()
    secret = theirs.workspace / "private.txt"
    secret.write_text("theirs")
    os.chown(secret, theirs.uid, theirs.uid)

    def run(spec, command: str):
        return subprocess.run(
            sandbox_argv(spec, ["sh", "-c", command]), capture_output=True, text=True, timeout=30
        )

    peek = run(mine, f"cat {secret}")
    # Denied, or not even visible (when the data directory lies under /tmp,
    # which the sandbox replaces with its own).
    assert peek.returncode != 0 and "theirs" not in peek.stdout
    assert "Permission denied" in peek.stderr or "No such file" in peek.stderr
    own = run(mine, "echo mine > /workspace/own.txt && id -u && cat /workspace/own.txt")
    assert own.stdout.split() == [str(mine.uid), "mine"]
    assert (mine.workspace / "own.txt").stat().st_uid == mine.uid
    private_tmp = run(mine, "touch /tmp/x && ls /tmp")
    assert private_tmp.stdout.split() == ["x"]


def test_processes_left_behind_die_with_the_sandbox(runtime_cls, make_spec):
    runtime = runtime_cls(make_spec())
    runtime.start()
    wait_ready(runtime, 60)
    runtime.stop(5)
    wait_for(lambda: runtime.poll() is not None, timeout=10, what="the editor to end")
    leftovers = subprocess.run(
        ["pgrep", "-f", runtime.spec.notebook_id], capture_output=True, text=True
    )
    assert leftovers.stdout.strip() == "", subprocess.run(
        ["ps", "-o", "pid,ppid,stat,cmd", "-p", ",".join(leftovers.stdout.split())],
        capture_output=True,
        text=True,
    ).stdout


def test_the_flavors_memory_limit_is_enforced_and_reported(runtime_cls, make_spec):
    from workers.runtimes import cgroups

    if runtime_cls.name == "process" and cgroups.version() is None:
        pytest.skip("cgroups are not writable here: the process runtime cannot limit")
    runtime = runtime_cls(make_spec(cpus=1, memory_bytes=1024**3))
    runtime.start()
    try:
        wait_ready(runtime, 60)
        assert runtime.stats()["memory_limit_bytes"] == 1024**3
        if runtime_cls.name == "process":
            pid = runtime.state["pid"]
            with open(f"/proc/{pid}/cgroup") as groups:
                assert f"/nbcloud/{runtime.spec.notebook_id}" in groups.read()
    finally:
        runtime.stop(5)
    if runtime_cls.name == "process":
        assert cgroups.limits(runtime.spec.notebook_id) == {}
