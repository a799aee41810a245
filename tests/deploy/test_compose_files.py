"""compose/'s files keep what bringing the stack up taught (docker-compose resolves
them: `config` with the example env files), without an engine."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
PLATFORM_IMAGE = "nbcloud/platform:latest"
pytestmark = pytest.mark.skipif(
    not shutil.which("docker-compose"), reason="docker-compose is missing (make compose-tools)"
)


def resolved(env_file: str, *files: str) -> dict:
    done = subprocess.run(
        ["docker-compose", "--env-file", str(COMPOSE / env_file)]
        + [arg for f in files for arg in ("-f", str(COMPOSE / f))]
        + ["--profile", "gpu", "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin"},  # the env file alone speaks
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["services"]


@pytest.fixture(scope="module")
def stack() -> dict:
    return resolved(".env.example", "docker-compose.yml")


@pytest.fixture(scope="module")
def host() -> dict:
    return resolved("host.env.example", "host.yml")


def host_workers(services: dict) -> dict:
    return {n: s for n, s in services.items() if "NBCLOUD_HOST_NAME" in s.get("environment", {})}


def test_everything_runs_on_the_hosts_network_and_publishes_nothing(stack, host):
    for name, service in {**stack, **host}.items():
        assert service.get("network_mode") == "host", name
        assert not service.get("ports"), name


def test_only_caddy_and_ssh_listen_beyond_loopback(stack):
    web = " ".join(stack["web"]["command"])
    assert "--host 127.0.0.1" in web and "--proxy-headers" in web
    assert "listen_addresses=127.0.0.1" in " ".join(stack["postgres"]["command"])
    assert "--bind 127.0.0.1" in " ".join(stack["redis"]["command"])
    assert "--address 127.0.0.1:" in " ".join(stack["minio"]["command"])
    assert "--web.listen-address=127.0.0.1:" in " ".join(stack["prometheus"]["command"])
    assert stack["grafana"]["environment"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    for name, service in host_workers(stack).items():
        assert service["environment"]["NBCLOUD_WORKER_METRICS_ADDR"] == "127.0.0.1", name


def test_the_broker_asks_for_a_password_the_platform_gives(stack):
    password = stack["redis"]["environment"]["REDIS_PASSWORD"]
    assert f"--requirepass {password}" in " ".join(stack["redis"]["command"])
    assert stack["web"]["environment"]["CELERY_BROKER_URL"].startswith(f"redis://:{password}@")


def test_the_platform_is_served_over_https_on_its_domains(stack):
    env = stack["web"]["environment"]
    assert env["NBCLOUD_PUBLIC_URL"] == "https://nbcloud.example.com"
    assert env["NBCLOUD_NOTEBOOK_DOMAIN"] == "nb.example.com"
    assert ".nb.example.com" in env["ALLOWED_HOSTS"].split(",")
    assert "./caddy/Caddyfile" in " ".join(stack["caddy"]["volumes"]) or any(
        str(v).endswith("/etc/caddy/Caddyfile:ro") for v in stack["caddy"]["volumes"]
    )


def test_host_workers_bind_what_notebooks_mount_at_the_same_path(stack, host):
    # The engine resolves a notebook's bind mounts on the host: the workspaces and the
    # worker's data directory (users' passwd, volumes) must be the same paths inside.
    for name, service in {**host_workers(stack), **host_workers(host)}.items():
        env = service["environment"]
        mounts = {}
        for volume in service["volumes"]:
            source, target = (
                (volume["source"], volume["target"])
                if isinstance(volume, dict)
                else volume.split(":")[:2]
            )
            mounts[target] = source
        for path in (env["NBCLOUD_WORKSPACES_DIR"], env["NBCLOUD_DATA_DIR"]):
            assert mounts.get(path) == path, (name, path, mounts)
        assert mounts["/var/run/docker.sock"] == "/var/run/docker.sock", name
        assert service["pid"] == "host" and not service.get("privileged"), name
        assert set(service["cap_add"]) == {"NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}, name


def test_a_joining_host_speaks_to_the_control_plane_only_through_its_settings(host):
    worker = host["worker"]
    env = worker["environment"]
    assert env["NBCLOUD_HOST_NAME"] == "gpu-2"
    assert f"-Q host.{env['NBCLOUD_HOST_NAME']} " in " ".join(worker["command"]) + " "
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "NBCLOUD_S3_ENDPOINT_URL", "SECRET_KEY"):
        assert "<control>" in env[name] or name == "SECRET_KEY", name
    gpu = host["worker-gpu"]
    assert gpu["runtime"] == "nvidia" and gpu["profiles"] == ["gpu"]


def test_the_ci_override_swaps_third_party_images_only(stack):
    ci = resolved("ci.env", "docker-compose.yml", "ci.override.yml")
    for name, service in ci.items():
        if name == "grafana":
            continue  # no Debian package: off in CI (below)
        if stack[name]["image"] == PLATFORM_IMAGE:
            assert service["image"] == PLATFORM_IMAGE, name  # the real platform image
        else:
            assert service["image"] == "nbcloud/ci-services:latest", name
    assert ci["grafana"]["profiles"] == ["grafana"]  # no Debian package: off in CI
