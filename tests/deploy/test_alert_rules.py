"""compose/prometheus/alerts.yml: Prometheus' own checker accepts the rules, their
unit tests (alerts.test.yml) pass under `promtool test rules`, every series they read
is one the platform exports, and the stack's Prometheus loads them.

promtool comes with Debian's `prometheus` package (`make sysdeps-test` installs it).
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nbcloud.monitoring import collectors, fleet
from support.metrics import samples
from workers import sampler

PROMETHEUS = Path(__file__).resolve().parents[2] / "compose" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is missing: it comes with Debian's prometheus package "
            "(make sysdeps-test, or apt-get install -y prometheus)"
        )
    return found


def run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
    )


def rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def test_promtool_accepts_the_rules(promtool):
    done = run(promtool, "check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_the_rules_unit_tests_pass(promtool):
    done = run(promtool, "test", "rules", "alerts.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_the_issue_asks_for_is_there_and_unit_tested():
    names = {rule["alert"] for rule in rules()}
    wanted = {
        "NbcloudHostLost",
        "NbcloudNotebookStuckStarting",
        "NbcloudQueueWaiting",
        "NbcloudBillingTickLate",
        "NbcloudBrokerDown",
        "NbcloudDatabaseDown",
        "NbcloudDiskFilling",
    }
    assert wanted <= names
    tested = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())
    fired = {
        case["alertname"]
        for test in tested["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == names, "each alert has a case where it fires"
    for rule in rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def exported_names() -> set[str]:
    text = generate_latest(collectors.registry()).decode()
    names = {name for name, _ in samples(text)}
    names |= {family.name for family in text_string_to_metric_families(text)}
    for family in fleet.METRICS:
        names |= {family.name + s for s in ("_total", "_bucket", "_sum", "_count")}
    host = generate_latest(sampler.registry(sampler.Sampler("alerts", gpus=sampler.Gpus())))
    names |= {name for name, _ in samples(host.decode())}
    return names


@pytest.mark.django_db
def test_the_rules_read_only_series_the_platform_exports(broker_url):
    from nbcloud.hosts.models import Host

    Host.objects.create(name="alerts", region="GRA", cpus=1, memory_bytes=1, disk_bytes=1)
    names = exported_names()
    for rule in rules():
        used = set(re.findall(r"\bnbcloud_[a-z_]+", rule["expr"]))
        assert used <= names, (rule["alert"], used - names)
        assert used or rule["expr"].startswith("up{"), rule["alert"]


def test_the_stacks_prometheus_loads_the_rules():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    compose = yaml.safe_load((PROMETHEUS.parent / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
