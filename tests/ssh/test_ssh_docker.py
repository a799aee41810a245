"""Sessions in a notebook on the docker runtime: the Engine's own `docker exec`, as
the notebook's uid in /workspace, with the environment's PATH and the exit status."""

import os
import subprocess

import pytest

from workers.runtimes import sessions

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the host's endpoint)")


def test_a_session_in_a_container_runs_as_the_notebook_in_its_workspace(
    make_spec, docker_image, docker_api
):
    from workers.lifecycle import wait_ready
    from workers.runtimes.docker import DockerRuntime

    runtime = DockerRuntime(make_spec(image=docker_image))
    runtime.start()
    try:
        wait_ready(runtime, 60)
        what = sessions.program(
            "id -u; pwd; command -v python; echo $GREETING; whoami; exit 4", None
        )
        with sessions.enter(runtime) as sandbox:
            spec_fd = sessions.spec_file(sandbox, what, {})
            try:
                argv = sessions.session_argv(sandbox, spec_fd, False, what)
                done = subprocess.run(
                    argv,
                    env=sessions.launch_env(sandbox),
                    pass_fds=sessions.launch_fds(sandbox, spec_fd),
                    capture_output=True,
                    stdin=subprocess.DEVNULL,
                    timeout=60,
                )
            finally:
                os.close(spec_fd)
            # A forward's socket is the container's: its own loopback.
            sock = sessions.netns_socket(sandbox)
            try:
                assert sock.connect_ex(("127.0.0.1", runtime.state["port"])) == 0
            finally:
                sock.close()
    finally:
        runtime.stop(5)
    assert done.returncode == 4, done.stderr
    uid, cwd, python, greeting, name = done.stdout.decode().split()
    assert int(uid) == runtime.spec.uid and cwd == "/workspace"
    assert python == "/opt/env/bin/python" and greeting == "hi" and name == "nbuser"
    # Nothing of the user's on the launcher's command line.
    assert not any("GREETING=" in arg for arg in argv) and "hi" not in argv
