"""compose/: the full stack's file, Prometheus' targets and Grafana's dashboards agree
with one another and with the series the code exports."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nbcloud.monitoring import collectors
from nbcloud.monitoring.samples import DASHBOARD_UID
from support.metrics import samples
from workers import sampler

COMPOSE = Path(__file__).resolve().parents[2] / "compose"


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())["services"]


def command(service) -> str:
    return " ".join(service.get("command") or [])


def dashboards() -> dict[str, dict]:
    return {
        p.stem: json.loads(p.read_text()) for p in (COMPOSE / "grafana/dashboards").glob("*.json")
    }


def test_the_stack_has_every_part(services):
    assert {"postgres", "redis", "minio", "web", "beat", "flower", "prometheus", "grafana"} <= set(
        services
    )
    assert "uvicorn nbcloud.asgi:application" in command(services["web"])
    assert "manage.py runsshgateway" in command(services["ssh"])
    assert "runserver" not in json.dumps(services)


def test_exactly_one_beat(services):
    beats = [name for name, s in services.items() if re.search(r"\bcelery .* beat\b", command(s))]
    assert beats == ["beat"]
    assert "deploy" not in services["beat"] or services["beat"]["deploy"].get("replicas", 1) == 1


def host_workers(services) -> dict[str, dict]:
    return {
        name: s for name, s in services.items() if "worker" in command(s) and "host." in command(s)
    }


def test_each_host_worker_consumes_its_own_queue(services):
    workers = host_workers(services)
    assert len(workers) >= 2
    for name, service in workers.items():
        host = service["environment"]["NBCLOUD_HOST_NAME"]
        assert f"-Q host.{host} " in command(service) + " ", name
    control = [s for s in services.values() if "-Q control,billing" in command(s)]
    assert len(control) == 1


def test_the_gpu_host_asks_for_nvidia_gpus(services):
    gpu = services["worker-gpu-1"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["runtime"] == "nvidia"


def test_prometheus_scrapes_web_and_every_host_worker(services):
    config = yaml.safe_load((COMPOSE / "prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    web = jobs["nbcloud-web"]
    assert web["metrics_path"] == "/metrics" and web["authorization"]["type"] == "Bearer"
    # Both ask for the scrape token (NBCLOUD_METRICS_TOKEN), written where prometheus reads it.
    for job in (web, jobs["nbcloud-hosts"]):
        assert job["authorization"] == {
            "type": "Bearer",
            "credentials_file": "/prometheus/metrics-token",
        }, job["job_name"]
    assert "/prometheus/metrics-token" in " ".join(services["prometheus"]["command"])
    for name, service in host_workers(services).items():
        assert "NBCLOUD_METRICS_TOKEN" in service["environment"], name
    hosts = {t for c in jobs["nbcloud-hosts"]["static_configs"] for t in c["targets"]}
    ports = {
        int(s["environment"]["NBCLOUD_WORKER_METRICS_PORT"])
        for s in host_workers(services).values()
    }
    assert {int(t.rsplit(":", 1)[1]) for t in hosts} == ports
    assert len(ports) == len(host_workers(services))  # one port per worker on a machine


def exported_names(db) -> set[str]:
    text = generate_latest(collectors.registry()).decode()
    names = {name for name, _ in samples(text)}
    names |= {family.name for family in text_string_to_metric_families(text)}
    for family in (*collectors.fleet.METRICS,):
        names |= {family.name + s for s in ("_total", "_bucket", "_sum", "_count")}
    names |= {family.name for family in sampler.HostCollector("dashboard").collect()}
    names |= {name for name, _, _ in (*sampler.GAUGES, *sampler.GPU_GAUGES)}
    names |= {name + "_total" for name, _, _ in sampler.COUNTERS}
    return names


@pytest.mark.django_db
def test_dashboards_use_only_series_that_exist(db, broker_url):
    names = exported_names(db)
    for board_name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel["targets"]:
                used = set(re.findall(r"\bnbcloud_[a-z_]+", target["expr"]))
                assert used and used <= names, (board_name, panel["title"], used - names)


def test_the_notebook_dashboard_is_the_one_monitoring_url_opens():
    board = dashboards()["notebook"]
    assert board["uid"] == DASHBOARD_UID
    (variable,) = board["templating"]["list"]
    assert variable["name"] == "notebook"
    assert all('notebook="$notebook"' in t["expr"] for p in board["panels"] for t in p["targets"])


def test_grafana_provisions_the_datasource_the_dashboards_name():
    source = yaml.safe_load(
        (COMPOSE / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uid = source["datasources"][0]["uid"]
    for board in dashboards().values():
        assert {p["datasource"]["uid"] for p in board["panels"]} == {uid}


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is not installed")
def test_docker_compose_accepts_the_file():
    done = subprocess.run(
        [
            "docker-compose",
            "--env-file",
            str(COMPOSE / ".env.example"),
            "-f",
            str(COMPOSE / "docker-compose.yml"),
            "--profile",
            "gpu",
            "config",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
