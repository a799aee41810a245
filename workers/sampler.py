"""Per-notebook samples, taken on each host by its worker every few seconds.

For each notebook running on this host: CPU (cores in use, from the runtime's
CPU-seconds counter), memory used and its limit, GPU utilisation and memory of
each assigned GPU (NVML, by UUID), workspace disk use and network bytes where
the runtime can tell them apart from the host's. The editor's log is shipped
to the control plane at the same pace, when it changed. Everything comes through the
runtime contract (`Runtime.stats()`), so the process and docker runtimes are
sampled alike. Samples are written to the database for the JSON metrics API
(the last hour) and served in Prometheus form on the worker's own port.
"""

import hashlib
import logging
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections, connections
from django.utils import timezone

from nbcloud.dispatch import host_queue
from nbcloud.hosts.models import Host
from nbcloud.monitoring import samples
from nbcloud.monitoring.collectors import queue_family, queue_lengths
from nbcloud.monitoring.models import NotebookSample
from nbcloud.notebooks import services
from nbcloud.notebooks.models import EditorLog, Notebook
from nbcloud.notebooks.states import State

from . import workspace
from .lifecycle import runtime_for
from .runtimes import Runtime

log = logging.getLogger(__name__)
# Walking a workspace costs more than the other readings: at most this often.
WORKSPACE_SIZE_EVERY = 60.0


class Gpus:
    """NVML readings by GPU UUID; a host without NVML has no GPUs to read."""

    def __init__(self):
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as exc:  # ImportError, NVMLError: a CPU host
            log.info("GPU sampling off (%s)", exc)

    def read(self, uuids: list[str]) -> list[dict]:
        if self._nvml is None or not uuids:
            return []
        readings = []
        for uuid in uuids:
            try:
                handle = self._nvml.nvmlDeviceGetHandleByUUID(uuid)
                utilization = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except self._nvml.NVMLError as exc:
                log.warning("GPU %s not readable: %s", uuid, exc)
                continue
            readings.append(
                {
                    "uuid": uuid,
                    "utilization_percent": int(utilization.gpu),
                    "memory_used_bytes": int(memory.used),
                    "memory_total_bytes": int(memory.total),
                }
            )
        return readings

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.nvmlShutdown()
            self._nvml = None


@dataclass
class Labelled:
    """The latest sample of a notebook, with the labels it is exported under."""

    notebook: str
    project: str
    host: str
    sample: NotebookSample


class Sampler:
    def __init__(self, host: str, gpus: Gpus | None = None):
        self.host = host
        self.gpus = gpus or Gpus()
        self.latest: dict[str, Labelled] = {}
        self._cpu: dict[str, tuple[float, float]] = {}  # id -> (monotonic, cpu seconds)
        self._workspace: dict[str, tuple[float, int]] = {}  # id -> (monotonic, bytes)
        self._logs: dict[str, tuple] = {}  # id -> (log version, digest) last shipped

    def sample(self) -> list[NotebookSample]:
        """Read every notebook running here, store the readings, and return them."""
        running = Notebook.objects.select_related("project").filter(
            host__name=self.host, state=State.RUNNING
        )
        taken, latest = [], {}
        for notebook in running:
            try:
                runtime = runtime_for(notebook)
                self._ship_logs(notebook, runtime)
                sample = self._read(notebook, runtime)
            except Exception:
                log.exception("notebook %s: sampling failed", notebook.pk)
                continue
            if sample is None:
                continue
            taken.append(sample)
            key = str(notebook.pk)
            latest[key] = Labelled(key, notebook.project.name, self.host, sample)
        for gone in set(self._cpu) - set(latest):
            self._cpu.pop(gone, None)
            self._workspace.pop(gone, None)
            self._logs.pop(gone, None)
        self.latest = latest
        samples.record(taken)
        return taken

    def _ship_logs(self, notebook: Notebook, runtime: Runtime) -> None:
        """Copy the editor's log to the control plane when it changed."""
        key, version = str(notebook.pk), runtime.log_version()
        if version is not None and self._logs.get(key, (None,))[0] == version:
            return
        text = runtime.logs(EditorLog.KEEP_LINES)
        digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if self._logs.get(key, (None, None))[1] != digest:
            services.save_editor_log(notebook, text)
        self._logs[key] = (version, digest)

    def _read(self, notebook: Notebook, runtime: Runtime) -> NotebookSample | None:
        stats = runtime.stats()
        if not stats.get("running"):
            return None
        key, now = str(notebook.pk), time.monotonic()
        cpu_seconds = stats.get("cpu_seconds")
        cpu_cores = None
        if cpu_seconds is not None:
            previous = self._cpu.get(key)
            if previous is not None and now > previous[0]:
                cpu_cores = max(0.0, (cpu_seconds - previous[1]) / (now - previous[0]))
            self._cpu[key] = (now, cpu_seconds)
        return NotebookSample(
            notebook=notebook,
            at=timezone.now(),
            host=self.host,
            cpu_cores=cpu_cores,
            cpu_seconds=cpu_seconds,
            memory_bytes=stats.get("memory_bytes"),
            memory_limit_bytes=stats.get("memory_limit_bytes") or runtime.spec.memory_bytes or None,
            gpus=self.gpus.read(list(notebook.gpu_uuids)),
            workspace_bytes=self._workspace_bytes(notebook, now),
            network_rx_bytes=stats.get("network_rx_bytes"),
            network_tx_bytes=stats.get("network_tx_bytes"),
        )

    def _workspace_bytes(self, notebook: Notebook, now: float) -> int | None:
        key = str(notebook.pk)
        cached = self._workspace.get(key)
        if cached is not None and now - cached[0] < WORKSPACE_SIZE_EVERY:
            return cached[1]
        path = workspace.local_path(notebook)
        if not path.exists():
            return None
        size = workspace.tree_size(path)
        self._workspace[key] = (now, size)
        return size


class SamplerThread(threading.Thread):
    """Samples every NBCLOUD_SAMPLE_INTERVAL seconds until stopped."""

    def __init__(self, sampler: Sampler, interval: float):
        super().__init__(name="nbcloud-sampler", daemon=True)
        self.sampler = sampler
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            began = time.monotonic()
            close_old_connections()
            try:
                self.sampler.sample()
            except Exception:
                log.exception("sampling notebooks failed")
            finally:
                # Not kept between rounds: a pool process forked meanwhile must not
                # inherit (and at its exit close) this thread's connection.
                connections.close_all()
            self.stopping.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def stop(self) -> None:
        self.stopping.set()


def start_host_sampler(host: str) -> SamplerThread:
    """Sample the notebooks of `host` and serve them on the worker's metrics port."""
    sampler = Sampler(host)
    thread = SamplerThread(sampler, settings.NBCLOUD_SAMPLE_INTERVAL)
    thread.start()
    serve(sampler)
    return thread


# Prometheus exposition on the worker's own port.

GAUGES = (
    ("nbcloud_notebook_cpu_usage_cores", "CPU in use, in cores.", "cpu_cores"),
    ("nbcloud_notebook_memory_usage_bytes", "Memory in use.", "memory_bytes"),
    ("nbcloud_notebook_memory_limit_bytes", "Memory the notebook may use.", "memory_limit_bytes"),
    ("nbcloud_notebook_workspace_bytes", "Bytes of files in the workspace.", "workspace_bytes"),
)
COUNTERS = (
    ("nbcloud_notebook_cpu_seconds", "CPU time used by the editor and its kernels.", "cpu_seconds"),
    ("nbcloud_notebook_network_receive_bytes", "Bytes received.", "network_rx_bytes"),
    ("nbcloud_notebook_network_transmit_bytes", "Bytes sent.", "network_tx_bytes"),
)
GPU_GAUGES = (
    ("nbcloud_notebook_gpu_utilization_percent", "GPU busy time, percent.", "utilization_percent"),
    ("nbcloud_notebook_gpu_memory_used_bytes", "GPU memory in use.", "memory_used_bytes"),
    ("nbcloud_notebook_gpu_memory_total_bytes", "GPU memory.", "memory_total_bytes"),
)
LABELS = ["notebook", "project", "host"]


class NotebookCollector:
    """The sampler's latest readings: a notebook that stops disappears at once."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        latest = list(self.sampler.latest.values())
        for kind, table in ((GaugeMetricFamily, GAUGES), (CounterMetricFamily, COUNTERS)):
            for name, documentation, attribute in table:
                family = kind(name, documentation, labels=LABELS)
                for item in latest:
                    value = getattr(item.sample, attribute)
                    if value is not None:
                        family.add_metric([item.notebook, item.project, item.host], value)
                yield family
        for name, documentation, key in GPU_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=[*LABELS, "gpu"])
            for item in latest:
                for gpu in item.sample.gpus:
                    family.add_metric(
                        [item.notebook, item.project, item.host, gpu["uuid"]], gpu[key]
                    )
            yield family


class DiskCollector:
    """Size and free bytes of the filesystems holding the host's workspaces and data."""

    def __init__(self, host: str):
        self.host = host

    def collect(self):
        import shutil

        from prometheus_client.core import GaugeMetricFamily

        size = GaugeMetricFamily(
            "nbcloud_host_filesystem_size_bytes",
            "Size of the filesystem holding each of the host's directories.",
            labels=["host", "path"],
        )
        free = GaugeMetricFamily(
            "nbcloud_host_filesystem_free_bytes",
            "Bytes left on the filesystem holding each of the host's directories.",
            labels=["host", "path"],
        )
        for path in (settings.NBCLOUD_WORKSPACES_DIR, settings.DATA_DIR):
            try:
                usage = shutil.disk_usage(path)
            except OSError as exc:  # not made yet: nothing to fill
                log.debug("disk usage of %s not readable: %s", path, exc)
                continue
            size.add_metric([self.host, str(path)], usage.total)
            free.add_metric([self.host, str(path)], usage.free)
        yield size
        yield free


class HostCollector:
    """This host's GPUs (used by its notebooks, or free) and the messages waiting in
    its queue: each host tells its own, so the platform's scrape does not grow with
    the fleet."""

    def __init__(self, host: str):
        self.host = host

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        gpus = GaugeMetricFamily(
            "nbcloud_host_gpus", "GPUs of this host, free or used.", labels=["host", "state"]
        )
        try:  # in the metrics server's thread of this request: its connection closes after
            total = Host.objects.filter(name=self.host).values_list("gpus", flat=True).first()
            held = Notebook.objects.filter(host__name=self.host).values_list("gpu_uuids", flat=True)
            used = sum(len(uuids) for uuids in held)
        except Exception as exc:  # the database is down: the scrape answers without them
            log.warning("GPUs of host %s not readable: %s", self.host, exc)
        else:
            if total is not None:
                gpus.add_metric([self.host, "used"], used)
                gpus.add_metric([self.host, "free"], max(0, len(total) - used))
        finally:
            connections.close_all()
        yield gpus
        lengths = queue_lengths([host_queue(self.host)])
        if lengths is not None:
            yield queue_family(lengths)


def registry(sampler: Sampler):
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(NotebookCollector(sampler))
    reg.register(DiskCollector(sampler.host))
    reg.register(HostCollector(sampler.host))
    return reg


def _scrape_token_required(app):
    """The WSGI app `app`, answering only a bearer NBCLOUD_METRICS_TOKEN (from loopback too)."""
    import json
    from http import HTTPStatus

    from nbcloud.monitoring import scrape

    def guarded(environ, start_response):
        refused = scrape.refusal(environ.get("HTTP_AUTHORIZATION", ""))
        if refused is None:
            return app(environ, start_response)
        status, message = refused
        body = json.dumps({"code": scrape.code_of(status), "message": message}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        if status == 401:
            headers.append(("WWW-Authenticate", "Bearer"))
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [body]

    return guarded


def serve(sampler: Sampler):
    """Serve the samples on NBCLOUD_WORKER_METRICS_ADDR:PORT, for a scrape token only.

    A busy port is logged, not fatal. Returns the server (None when not serving).
    """
    import socket
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    port = settings.NBCLOUD_WORKER_METRICS_PORT
    addr = settings.NBCLOUD_WORKER_METRICS_ADDR
    if not port:
        return None

    class Server(ThreadingWSGIServer):
        address_family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format, *args):  # noqa: A002  (the base class's name)
            pass

    app = _scrape_token_required(make_wsgi_app(registry(sampler)))
    try:
        server = make_server(addr, port, app, Server, handler_class=QuietHandler)
    except OSError as exc:
        log.warning(
            "notebook metrics not served on %s:%s (%s): set NBCLOUD_WORKER_METRICS_PORT",
            addr,
            port,
            exc,
        )
        return None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    if not settings.NBCLOUD_METRICS_TOKEN:
        log.warning(
            "notebook metrics on http://%s:%s/metrics refuse every scrape: "
            "set NBCLOUD_METRICS_TOKEN",
            addr,
            port,
        )
    log.info("notebook metrics on http://%s:%s/metrics", addr, port)
    return server
