"""Editors in Docker containers, one per notebook, through the Docker Engine API.

Each notebook's container is named `nbcloud-<notebook id>`, so a repeated or
redelivered start finds the container a previous start made and adopts it instead
of making a second one (DockerSpawner does the same). It runs the environment's
image (its manifest's `image`, built by `manage.py buildimages`) as the notebook's
own unprivileged uid with no capabilities, with the workspace bound at /workspace
(and the volumes below it), the flavor's CPU and memory limits, the assigned GPUs
requested by UUID, and labels naming the notebook, its project and this host.

Networking (NBCLOUD_DOCKER_NETWORK): `isolated` (the default) gives the container a
network namespace of its own with nothing in it (Docker's `none`), which the worker
joins to the host as the process runtime does (network.py): an address of its own,
where the gateway reaches the editor, and the public Internet only. Any other value names a network (`bridge`, or a user-defined
one) on which the editor listens on port 8888, published on NBCLOUD_DOCKER_PUBLISH_IP;
what such a network may reach is then the operator's to restrict. The host's own
network (`host`) is refused: notebooks would reach every service on the host.

A stop asks the editor to end (SIGTERM through tini), kills it after the timeout,
appends the container's output to the notebook's log file on this host (as the
process runtime writes it) and removes the container: `logs` reads the container
while there is one, that file after.
"""

import math
import os
from dataclasses import replace
from pathlib import Path

import docker
from django.conf import settings
from docker.models.containers import Container
from docker.types import DeviceRequest, LogConfig
from docker.types import Mount as DockerMount

from . import network
from .base import Endpoint, LaunchSpec, Runtime, StartError, log_file, tail_file
from .editors import editor_command, editor_environment
from .process import free_port, identity_files

ENV_DIR = Path("/opt/env")  # where environments/Dockerfile puts the environment
CONTAINER_PORT = 8888
API_TIMEOUT = 30  # seconds, for every Engine API call (a stop adds its own timeout)
LABEL_NOTEBOOK = "io.nbcloud.notebook"
LABEL_PROJECT = "io.nbcloud.project"
LABEL_HOST = "io.nbcloud.host"
LABEL_PORT = "io.nbcloud.port"
RUNNING = {"created", "running", "restarting", "paused"}

_clients: dict[int, docker.DockerClient] = {}


def client() -> docker.DockerClient:
    """This process's Engine API client (one per process: a forked pool gets its own)."""
    pid = os.getpid()
    if pid not in _clients:
        _clients.clear()
        _clients[pid] = docker.from_env(timeout=API_TIMEOUT)
    return _clients[pid]


def container_name(notebook_id: str) -> str:
    return f"nbcloud-{notebook_id}"


def isolated() -> bool:
    return settings.NBCLOUD_DOCKER_NETWORK == "isolated"


def container_config(spec: LaunchSpec, port: int, host_cpus: int) -> dict:
    """The keyword arguments of `containers.create` for this notebook's editor.

    Isolated, the editor listens at `port` in the container's own namespace, where
    the gateway reaches it at the notebook's address; on another network on all of
    the container's addresses at CONTAINER_PORT, published.
    """
    in_image = replace(spec, env_dir=ENV_DIR)
    if settings.NBCLOUD_DOCKER_NETWORK == "host":
        raise StartError(
            "This host is configured to run notebooks on its own network, which would "
            "expose its services to them; no notebook starts there.",
            "NBCLOUD_DOCKER_NETWORK=host is refused: use isolated (the default)",
        )
    if isolated():
        argv, secret_env = editor_command(in_image, port, "0.0.0.0")
        network = {"network_mode": "none"}
    else:
        argv, secret_env = editor_command(in_image, CONTAINER_PORT, "0.0.0.0")
        network = {
            "network": settings.NBCLOUD_DOCKER_NETWORK,
            "ports": {f"{CONTAINER_PORT}/tcp": (settings.NBCLOUD_DOCKER_PUBLISH_IP, None)},
        }
    config = {
        "image": spec.image,
        "name": container_name(spec.notebook_id),
        "command": argv,
        "user": f"{spec.uid}:{spec.uid}",
        "working_dir": "/workspace",
        "environment": editor_environment(in_image, secret_env),
        "labels": {
            LABEL_NOTEBOOK: spec.notebook_id,
            LABEL_PROJECT: spec.project,
            LABEL_HOST: settings.NBCLOUD_HOST_NAME,
            LABEL_PORT: str(port),
        },
        "mounts": [
            DockerMount(target="/workspace", source=str(spec.workspace), type="bind"),
            *(
                DockerMount(m.target, m.source, type="bind", read_only=m.read_only)
                for m in spec.mounts
            ),
            # The notebook's user by name (sftp-server, whoami), as on the process runtime.
            *(
                DockerMount(f"/etc/{name}", str(path), type="bind", read_only=True)
                for name, path in identity_files(spec.uid).items()
            ),
        ],
        # The scheduler never gives a notebook more CPUs than its host has; a
        # smaller test host still runs a big flavor, on all of its CPUs.
        "nano_cpus": int(min(spec.cpus, host_cpus) * 1e9),
        "cap_drop": ["ALL"],
        # The image (system and environment) is read-only; the workspace and volumes
        # are binds, /tmp and /var/tmp private tmpfs, /dev/shm Docker's own per container.
        "read_only": True,
        "tmpfs": {"/tmp": "mode=1777", "/var/tmp": "mode=1777"},
        "pids_limit": settings.NBCLOUD_NOTEBOOK_PIDS_MAX,
        # Read by `logs` and kept in the notebook's log at stop; bounded meanwhile.
        "log_config": LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"}),
        "security_opt": ["no-new-privileges"],
        "detach": True,
        **network,
    }
    if spec.memory_bytes:
        config["mem_limit"] = spec.memory_bytes
        config["memswap_limit"] = spec.memory_bytes  # no swap beyond the limit
        # PyTorch's DataLoader workers share batches through /dev/shm (64 MiB by
        # default); what is used there counts against the memory limit anyway.
        config["shm_size"] = spec.memory_bytes // 2
    if spec.gpu_uuids:
        config["device_requests"] = [
            DeviceRequest(device_ids=list(spec.gpu_uuids), capabilities=[["gpu"]])
        ]
    return config


def _engine() -> docker.DockerClient:
    try:
        return client()
    except docker.errors.DockerException as exc:
        raise StartError(
            "This host cannot run containers right now.",
            f"the Docker Engine is unreachable ({exc}); is dockerd running?",
        ) from exc


class DockerRuntime(Runtime):
    name = "docker"

    @property
    def endpoint(self) -> Endpoint | None:
        if "port" not in self.state:
            return None
        host = self.state["address"] if isolated() else settings.NBCLOUD_DOCKER_PUBLISH_IP
        return Endpoint(host, self.state["port"], self.spec.base_url)

    def _container(self, by_name: bool = False) -> Container | None:
        """The container of the state; by its name when there is no state (or by_name).

        Only a start looks past the state: a runtime rebuilt from an older run's
        state must never reach the container of the notebook's current run.
        """
        ref = self.state.get("container_id")
        if by_name or not ref:
            ref = container_name(self.spec.notebook_id)
        try:
            return client().containers.get(ref)
        except docker.errors.NotFound:
            return None

    def check_environment(self, framework_id: str, version: str) -> None:
        missing = StartError(
            f"Environment {framework_id} {version} is not installed on host "
            f"{settings.NBCLOUD_HOST_NAME}.",
            f"image {self.spec.image or '(none in the manifest)'} is missing; run: "
            f"manage.py buildimages {framework_id}:{version}",
        )
        if not self.spec.image:
            raise missing
        try:
            _engine().images.get(self.spec.image)
        except docker.errors.ImageNotFound:
            raise missing from None

    def start(self) -> Endpoint:
        if self.spec.editor_id == "vscode":
            raise StartError(
                "VS Code (code-server) is not available on this host's container runtime; "
                "choose the jupyterlab editor.",
                "the docker runtime runs jupyterlab only",
            )
        api = _engine()
        for _ in range(3):
            container = self._container(by_name=True)
            if container is not None and container.status in RUNNING:
                return self._adopt(container)
            if container is not None:  # ended: keep what it said, then start afresh
                self._remove(container)
            port = free_port() if isolated() else CONTAINER_PORT
            config = container_config(self.spec, port, api.info()["NCPU"])
            try:
                container = api.containers.create(**config)
            except docker.errors.ImageNotFound as exc:
                raise StartError(
                    "This notebook's environment is not installed on this host.",
                    f"{exc}; run: manage.py buildimages",
                ) from exc
            except docker.errors.APIError as exc:
                if exc.status_code == 409:  # another start made it just now: adopt it
                    continue
                raise StartError("The editor's container could not be created.", str(exc)) from exc
            return self._adopt(container)
        raise StartError("The editor's container could not be created.", "name conflict persists")

    def _adopt(self, container: Container) -> Endpoint:
        if container.status == "created":
            try:
                container.start()
            except docker.errors.APIError as exc:
                raise StartError("The editor's container did not start.", str(exc)) from exc
            container.reload()
        if isolated():
            port = int(container.labels[LABEL_PORT])
            joined = {k: self.state[k] for k in ("iface", "address") if k in self.state}
            pid = container.attrs["State"]["Pid"]
            if not pid:  # it has ended already: poll says how
                joined = {"address": network.address_of(self.spec.uid)}
            elif not network.attached(joined):
                try:
                    joined = network.connect(self.spec.notebook_id, str(pid), self.spec.uid)
                except StartError:
                    container.reload()
                    if container.status in RUNNING:
                        raise
                    joined = {"address": network.address_of(self.spec.uid)}  # ended meanwhile
            self.state = {"container_id": container.id, "port": port, **joined}
            return self.endpoint
        bindings = container.attrs["NetworkSettings"]["Ports"] or {}
        published = bindings.get(f"{CONTAINER_PORT}/tcp") or []
        if not published:
            raise StartError(
                "The editor's container has no published port.",
                f"{container.name} on network {settings.NBCLOUD_DOCKER_NETWORK}",
            )
        port = int(published[0]["HostPort"])
        self.state = {"container_id": container.id, "port": port}
        return self.endpoint

    def poll(self) -> int | None:
        container = self._container()
        if container is None:
            return 1 if self.state else 0
        if container.status in RUNNING:
            return None
        return container.attrs["State"]["ExitCode"]

    def stop(self, timeout: float) -> None:
        container = self._container()
        try:
            if container is not None:
                container.stop(timeout=math.ceil(timeout))
        except docker.errors.NotFound:
            container = None
        finally:
            network.destroy(self.state)
        if container is not None:
            self._remove(container)

    def _remove(self, container: Container) -> None:
        """Append the ended container's output to the log file, then remove it."""
        path = log_file(self.spec.notebook_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            output = container.logs(stdout=True, stderr=True)
            with open(path, "ab") as log:
                log.write(output)
            container.remove(force=True)
        except docker.errors.NotFound:
            return  # removed by a concurrent stop
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: that stop is removing it now
                raise

    def stats(self) -> dict:
        container = self._container()
        if container is None or container.status != "running":
            return {"running": False}
        raw = container.stats(stream=False, one_shot=True)
        memory = raw.get("memory_stats") or {}
        # As `docker stats` counts it: without the page cache that can be reclaimed
        # (total_inactive_file on cgroup v1, inactive_file on v2).
        detail = memory.get("stats") or {}
        cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
        # No per-container counters on the host's network.
        networks = (raw.get("networks") or {}).values()
        return {
            "running": True,
            "processes": (raw.get("pids_stats") or {}).get("current", 0),
            "memory_bytes": max(0, memory.get("usage", 0) - cache),
            "memory_limit_bytes": memory.get("limit", 0),
            "cpu_seconds": raw["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9,
            "network_rx_bytes": sum(n.get("rx_bytes", 0) for n in networks),
            "network_tx_bytes": sum(n.get("tx_bytes", 0) for n in networks),
        }

    def logs(self, tail: int = 100) -> str:
        container = self._container()
        if container is None:
            return tail_file(log_file(self.spec.notebook_id), tail)
        return container.logs(stdout=True, stderr=True, tail=tail).decode(errors="replace")
