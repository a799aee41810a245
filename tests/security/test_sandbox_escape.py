"""Attacks from inside a real notebook on the process runtime, each of which must fail.

A notebook runs whatever its user types, and its spec is written by that user:
every test here creates notebooks through the API, runs its attack as kernel
code through the gateway (the way a user would), and checks from the host
that nothing got out. The network tests build their "public" and "private"
hosts only inside a network namespace they create (documentation and private
addresses that exist nowhere else), so no test traffic leaves this machine.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
from django.conf import settings

from nbcloud.notebooks.models import Notebook
from support.editors import Kernel
from support.waiting import api_status, wait_for, wait_state

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(os.geteuid() != 0, reason="the process runtime's sandbox needs root"),
]

SPEC = {
    "name": "attacker",
    "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
}


@pytest.fixture
def start_notebook(platform_server, celery_worker_process, conda_env, this_host, alice, alice_api):
    """Start a notebook through the API; yields a function returning (id, kernel)."""
    started = []

    def start(**spec) -> tuple[str, Kernel]:
        created = alice_api.post(
            "/api/v1/projects/alpha/notebooks/", {**SPEC, **spec}, format="json"
        )
        assert created.status_code == 201, created.content
        notebook_id = created.json()["id"]
        started.append(notebook_id)
        url = f"/api/v1/projects/alpha/notebooks/{notebook_id}/"
        wait_state(alice_api, url, "RUNNING")
        status = api_status(alice_api, url)
        return notebook_id, Kernel(status["url"], {"Authorization": f"Bearer {alice[1]}"})

    yield start
    from workers.lifecycle import runtime_for

    for notebook_id in started:
        notebook = Notebook.objects.filter(pk=notebook_id).first()
        if notebook is not None and notebook.runtime_state:
            runtime_for(notebook).stop(5)


def run(kernel: Kernel, code: str) -> dict:
    """Run `code` (which sets `result`) in the kernel; `result` as JSON."""
    out = kernel.execute(code + "\nimport json as _j; print(_j.dumps(result))")
    return json.loads(out.strip().splitlines()[-1])


# The launcher trusts nothing of the user.


@pytest.mark.parametrize(
    "name",
    ["PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONSTARTUP", "BASH_ENV",
     "JUPYTER_CONFIG_DIR", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "NODE_OPTIONS",
     "NBCLOUD_DATA_DIR", "ld_preload", "HOME"],
)  # fmt: skip
def test_variables_that_change_how_programs_load_are_refused_by_name(alice_api, name):
    created = alice_api.post(
        "/api/v1/projects/alpha/notebooks/",
        {**SPEC, "env_vars": [{"name": name, "value": "/workspace/evil"}]},
        format="json",
    )
    assert created.status_code == 400, created.content
    assert name in created.content.decode()
    assert "reserved" in created.content.decode()
    assert not Notebook.objects.exists()  # nothing half-created


def test_user_variables_exist_only_inside_the_sandbox(start_notebook):
    marker = f"value-{uuid.uuid4().hex}"
    notebook_id, kernel = start_notebook(env_vars=[{"name": "MY_SETTING", "value": marker}])
    assert run(kernel, "import os; result = os.environ.get('MY_SETTING')") == marker

    notebook = Notebook.objects.get(pk=notebook_id)
    launcher = psutil.Process(notebook.runtime_state["pid"])
    # The launcher (the cgroup shell, then bwrap) and its command line never carry the
    # user's variables nor the editor's secret: they go to bwrap through a file descriptor.
    for proc in [launcher, *launcher.children(recursive=True)]:
        if proc.uids().real != 0:
            continue  # the notebook's own processes
        assert marker not in "\0".join(proc.cmdline())
        assert notebook.editor_secret not in "\0".join(proc.cmdline())
        environ = proc.environ()
        assert "MY_SETTING" not in environ
        assert environ.get("PATH") == "/usr/sbin:/usr/bin:/sbin:/bin"


def test_a_workspace_binary_named_like_the_launchers_tools_is_never_run_as_root(start_notebook):
    """The attack of record: plant `bwrap` (and friends) in the workspace, put the
    workspace first on PATH and preload a library (as a row written before those
    names were refused would), then restart: the root launcher runs none of it."""
    notebook_id, kernel = start_notebook()
    proof = Path(settings.DATA_DIR) / f"pwned-{uuid.uuid4().hex}"
    planted = run(
        kernel,
        f"""
import os, stat
os.makedirs('/workspace/bin', exist_ok=True)
for tool in ('bwrap', 'setpriv', 'nsenter', 'sh', 'ip', 'nft'):
    path = '/workspace/bin/' + tool
    with open(path, 'w') as f:
        f.write('#!/bin/sh\\nid > {proof}\\nexec /usr/bin/' + tool + ' "$@"\\n')
    os.chmod(path, 0o755)
result = sorted(os.listdir('/workspace/bin'))
""",
    )
    assert "bwrap" in planted
    kernel.close()
    from workers.lifecycle import runtime_for

    # RESTARTING, as for a restart in place: the host's periodic check of its editors
    # (at each heartbeat) leaves the editor this test stops and starts alone.
    Notebook.objects.filter(pk=notebook_id).update(
        state="RESTARTING",
        env_vars=[
            {"name": "PATH", "value": "/workspace/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
            {"name": "LD_PRELOAD", "value": "/workspace/evil.so"},
            {"name": "MY_SETTING", "value": "kept"},
        ],
    )
    notebook = Notebook.objects.get(pk=notebook_id)
    runtime = runtime_for(notebook)
    runtime.stop(5)
    runtime.start()
    try:
        from workers.lifecycle import wait_ready

        wait_ready(runtime, 60)
        assert not proof.exists()
        editor = psutil.Process(runtime.state["pid"]).children(recursive=True)[-1]
        environ = editor.environ()
        assert environ["MY_SETTING"] == "kept"
        assert "LD_PRELOAD" not in environ
        assert not environ["PATH"].startswith("/workspace/bin")
    finally:
        runtime.stop(5)


# A filesystem of its own.

FILESYSTEM_PROBE = """
import os, errno
def can_write(path):
    try:
        with open(os.path.join(path, '.probe'), 'w') as f:
            f.write('x')
        return True
    except OSError as e:
        return errno.errorcode[e.errno]
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return line.split()[1]
result = {
    'uid': os.getuid(), 'gid': os.getgid(), 'groups': os.getgroups(),
    'cap_eff': status('CapEff'), 'cap_bnd': status('CapBnd'), 'no_new_privs': status('NoNewPrivs'),
    'root': sorted(os.listdir('/')),
    'usr': can_write('/usr/lib'), 'etc': can_write('/etc'), 'env': can_write(%(env)r),
    'workspace': can_write('/workspace'),
    'tmp': sorted(os.listdir('/tmp')), 'var_tmp': sorted(os.listdir('/var/tmp')),
    'shm': sorted(os.listdir('/dev/shm')),
    'dev': sorted(os.listdir('/dev')),
    'pids': sorted(int(p) for p in os.listdir('/proc') if p.isdigit()),
    'exists': {p: os.path.exists(p) for p in %(secret_paths)r},
}
"""


def test_a_notebook_sees_its_own_filesystem_and_nothing_of_the_hosts(start_notebook, tmp_path):
    marker = f"host-{uuid.uuid4().hex}"
    for shared in ("/tmp", "/var/tmp", "/dev/shm"):
        Path(shared, marker).write_text("the host's")
    secret_paths = [
        str(settings.DATA_DIR),
        str(settings.DATA_DIR / "secret_key"),
        str(settings.NBCLOUD_WORKSPACES_DIR),
        "/root",
        "/home",
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/var/lib/postgresql",
        "/run/netns",
        str(Path(__file__).resolve().parent.parent.parent),  # the platform's code
    ]
    try:
        notebook_id, kernel = start_notebook()
        env_dir = "/var/lib/nbcloud/envs/conda-py311"
        seen = run(kernel, FILESYSTEM_PROBE % {"env": env_dir, "secret_paths": secret_paths})
    finally:
        for shared in ("/tmp", "/var/tmp", "/dev/shm"):
            Path(shared, marker).unlink()
    notebook = Notebook.objects.get(pk=notebook_id)

    assert seen["uid"] == seen["gid"] == notebook.sandbox_uid
    assert seen["groups"] == []
    assert int(seen["cap_eff"], 16) == 0 and int(seen["cap_bnd"], 16) == 0
    assert seen["no_new_privs"] == "1"
    assert seen["exists"] == {path: False for path in secret_paths}
    assert "root" not in seen["root"] and "home" not in seen["root"]
    assert seen["usr"] == seen["etc"] == seen["env"] == "EROFS"
    assert seen["workspace"] is True
    assert marker not in seen["tmp"] + seen["var_tmp"] + seen["shm"]
    assert not [d for d in seen["dev"] if d.startswith("nvidia")]
    # Its own processes only: the sandbox's init, the editor, the kernel.
    assert len(seen["pids"]) < 10 and max(seen["pids"]) < 100

    # What it writes in its /tmp stays there.
    run(kernel, f"open('/tmp/{marker}-inside', 'w').write('x'); result = 1")
    assert not Path("/tmp", f"{marker}-inside").exists()


def test_notebooks_run_as_distinct_uids_that_cannot_read_each_others_workspace(start_notebook):
    first_id, first = start_notebook(name="first")
    second_id, second = start_notebook(name="second")
    uids = Notebook.objects.filter(pk__in=[first_id, second_id]).values_list(
        "sandbox_uid", flat=True
    )
    assert len(set(uids)) == 2
    run(first, "open('/workspace/private.txt', 'w').write('mine'); result = 1")
    workspaces = str(settings.NBCLOUD_WORKSPACES_DIR)
    result = run(
        second,
        f"import os; result = [os.path.exists({workspaces!r}), "
        f"os.path.exists('/workspace/private.txt')]",
    )
    assert result == [False, False]


# A network namespace per notebook.

NETWORK_PROBE = """
import socket, urllib.request
def connect(host, port):
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        try:
            s.connect((host, port))
            return 'open'
        except OSError as e:
            return type(e).__name__
def get(url):
    try:
        return urllib.request.urlopen(url, timeout=5).read().decode().strip()
    except Exception as e:
        return type(e).__name__
def listening():
    ports = set()
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == '0A':
                ports.add(int(fields[1].rsplit(':', 1)[1], 16))
    return sorted(ports)
result = {
    'targets': {f'{h}:{p}': connect(h, p) for h, p in %(targets)r},
    'urls': {u: get(u) for u in %(urls)r},
    'listening': listening(),
}
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def outside_world(tmp_path):
    """A namespace this test makes, joined to the host by a veth pair, with a
    "public" web server at 198.51.100.2 (a documentation address) and a "private"
    one at 10.99.0.2; the host's end of the pair is 198.51.100.1 / 10.99.0.1."""
    if not shutil.which("ip"):
        pytest.skip("iproute2 is missing")
    tag = uuid.uuid4().hex[:6]
    ns, outer, inner = f"nbt-{tag}", f"nbth{tag}", f"nbtn{tag}"
    _ip("netns", "add", ns)
    servers = []
    try:
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
        for address in ("198.51.100.1/24", "10.99.0.1/24"):
            _ip("addr", "add", address, "dev", outer)
        for address in ("198.51.100.2/24", "10.99.0.2/24"):
            _ip("-n", ns, "addr", "add", address, "dev", inner)
        _ip("link", "set", outer, "up")
        _ip("-n", ns, "link", "set", inner, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        (tmp_path / "hello.txt").write_text("hello from outside")
        serve = [sys.executable, "-m", "http.server", "-d", str(tmp_path)]
        servers.append(
            subprocess.Popen(
                ["ip", "netns", "exec", ns, *serve, "8080", "--bind", "0.0.0.0"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        # And one on the host itself, on its end of the pair.
        servers.append(
            subprocess.Popen(
                [*serve, "8081", "--bind", "198.51.100.1"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for(
            lambda: "hello" in subprocess.run(
                ["ip", "netns", "exec", ns, "python3", "-c",
                 "import urllib.request as u; print(u.urlopen('http://10.99.0.2:8080/hello.txt').read())"],
                capture_output=True, text=True).stdout,
            timeout=20, what="the test's web server",
        )  # fmt: skip
        yield ns
    finally:
        for server in servers:
            server.kill()
            server.wait()
        _ip("netns", "delete", ns, check=False)
        _ip("link", "delete", outer, check=False)


def test_a_notebook_reaches_a_public_host_and_nothing_private(
    start_notebook, outside_world, platform_server
):
    from urllib.parse import urlsplit

    platform_port = urlsplit(platform_server).port
    broker = urlsplit(settings.CELERY_BROKER_URL)
    targets = [
        ("127.0.0.1", platform_port),  # the API and gateway (on the host's loopback)
        ("198.51.100.1", 8081),  # the host, on an address of its own
        ("10.99.0.2", 8080),  # a private host
    ]
    if broker.port:
        targets.append(("127.0.0.1", broker.port))
    urls = [
        "http://198.51.100.2:8080/hello.txt",  # public
        "http://10.99.0.2:8080/hello.txt",  # private
        "http://198.51.100.1:8081/hello.txt",  # the host itself
    ]
    _, kernel = start_notebook()
    seen = run(kernel, NETWORK_PROBE % {"targets": targets, "urls": urls})

    assert seen["urls"]["http://198.51.100.2:8080/hello.txt"] == "hello from outside"
    assert seen["urls"]["http://10.99.0.2:8080/hello.txt"] != "hello from outside"
    assert seen["urls"]["http://198.51.100.1:8081/hello.txt"] != "hello from outside"
    assert all(outcome != "open" for outcome in seen["targets"].values()), seen["targets"]
    # What listens in its namespace is its own editor and kernel, not the host's services.
    host_ports = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == "LISTEN"}
    assert platform_port in host_ports
    assert platform_port not in seen["listening"]


def test_a_notebook_cannot_reach_another_notebooks_editor_or_kernels(start_notebook):
    victim_id, victim = start_notebook(name="victim")
    # The victim's kernel is running: its ZMQ ports listen in its own namespace.
    victim_ports = run(victim, NETWORK_PROBE % {"targets": [], "urls": []})["listening"]
    assert len(victim_ports) >= 5  # the editor and the kernel's five channels
    victim = Notebook.objects.get(pk=victim_id).runtime_state

    _, attacker = start_notebook(name="attacker")
    targets = [("127.0.0.1", p) for p in victim_ports] + [
        (victim["address"], p) for p in [victim["port"], *victim_ports]
    ]
    seen = run(attacker, NETWORK_PROBE % {"targets": targets, "urls": []})
    # Its own loopback is its own: a port of its own kernels that happens to have
    # the victim's number is no way in.
    own = {f"127.0.0.1:{p}" for p in seen["listening"]}
    reached = {t: o for t, o in seen["targets"].items() if o == "open" and t not in own}
    assert not reached, seen["targets"]


def test_the_editor_is_on_an_address_of_its_own_that_only_the_host_opens(start_notebook):
    notebook_id, _ = start_notebook()
    state = Notebook.objects.get(pk=notebook_id).runtime_state
    assert Notebook.objects.get(pk=notebook_id).editor_url == (
        f"http://{state['address']}:{state['port']}"
    )
    # Nothing of the notebook listens on the host's own namespace.
    host_ports = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == "LISTEN"}
    assert state["port"] not in host_ports or state["port"] in _listening_in(state["netns"])
    route = subprocess.run(
        ["ip", "route", "get", state["address"]], capture_output=True, text=True, check=True
    )
    assert f"dev {state['iface']}" in route.stdout


def _listening_in(netns: str) -> set[int]:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "ss", "-Htln"], capture_output=True, text=True
    ).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


def test_stop_removes_the_namespace_and_its_link(start_notebook, alice_api):
    notebook_id, kernel = start_notebook()
    state = Notebook.objects.get(pk=notebook_id).runtime_state
    kernel.close()
    url = f"/api/v1/projects/alpha/notebooks/{notebook_id}/"
    assert alice_api.post(url + "stop/").status_code == 202
    wait_state(alice_api, url, "STOPPED")
    assert not Path("/run/netns", state["netns"]).exists()
    assert not Path("/sys/class/net", state["iface"]).exists()


# The docker runtime: the same promises for a notebook in a container.


def test_a_container_notebook_reaches_a_public_host_and_nothing_private(
    make_spec, docker_image, docker_api, outside_world, platform_server
):
    from urllib.parse import urlsplit

    from workers.lifecycle import wait_ready
    from workers.runtimes.docker import DockerRuntime

    runtime = DockerRuntime(make_spec(image=docker_image))
    runtime.start()
    try:
        wait_ready(runtime, 60)
        container = docker_api.containers.get(runtime.state["container_id"])
        targets = [
            ("127.0.0.1", urlsplit(platform_server).port),
            ("198.51.100.1", 8081),
            ("10.99.0.2", 8080),
        ]
        urls = ["http://198.51.100.2:8080/hello.txt", "http://10.99.0.2:8080/hello.txt"]
        probe = NETWORK_PROBE % {"targets": targets, "urls": urls}
        probe += "\nimport json; print(json.dumps(result))"
        code, out = container.exec_run(["/opt/env/bin/python", "-c", probe])
        assert code == 0, out
        seen = json.loads(out.decode().strip().splitlines()[-1])
        whoami = container.exec_run(["id", "-u"]).output.decode().strip()
    finally:
        runtime.stop(5)
    assert whoami == str(runtime.spec.uid)
    assert seen["urls"]["http://198.51.100.2:8080/hello.txt"] == "hello from outside"
    assert seen["urls"]["http://10.99.0.2:8080/hello.txt"] != "hello from outside"
    assert all(outcome != "open" for outcome in seen["targets"].values()), seen["targets"]
    assert not Path("/sys/class/net", runtime.state.get("iface", "none")).exists()
