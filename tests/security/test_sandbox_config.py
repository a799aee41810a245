"""What a host refuses before it runs any notebook: uids that are not the
sandbox's own, a host network for containers, reserved variables."""

import shutil
import subprocess
from pathlib import Path

import pytest

from workers.runtimes import network
from workers.runtimes.base import LaunchSpec, StartError
from workers.runtimes.docker import container_config


def test_a_uid_range_overlapping_subordinate_ids_is_refused(settings, monkeypatch, tmp_path):
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536\n")
    real_path = Path

    def tables(name, *args):
        return subuid if str(name) == "/etc/subuid" else real_path(name, *args)

    monkeypatch.setattr(network, "Path", tables)
    settings.NBCLOUD_SANDBOX_UID_BASE = 150000
    with pytest.raises(StartError) as refused:
        network.check_uid_range()
    assert "alice:100000:65536" in str(refused.value)
    assert "NBCLOUD_SANDBOX_UID_BASE=150000" in str(refused.value)
    settings.NBCLOUD_SANDBOX_UID_BASE = 2_000_000_000
    network.check_uid_range()  # clear of it


def test_a_uid_outside_the_range_gets_no_network(settings):
    with pytest.raises(StartError, match="outside the sandbox range"):
        network.connect("00000000-0000-0000-0000-000000000000", "nbcloud-none", 1000)


def test_the_hosts_network_is_refused_for_containers(settings):
    settings.NBCLOUD_DOCKER_NETWORK = "host"
    spec = LaunchSpec(
        notebook_id="n", editor_id="jupyterlab", env_dir=Path("/opt/env"),
        workspace=Path("/nonexistent"), uid=2_000_000_001, secret="s", base_url="/n/",
        image="nbcloud/conda:py311",
    )  # fmt: skip
    with pytest.raises(StartError, match="NBCLOUD_DOCKER_NETWORK=host"):
        container_config(spec, 8888, host_cpus=2)


def test_the_rules_keep_notebooks_from_private_ranges_and_the_host():
    rules = network.ruleset()
    for private in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "127.0.0.0/8",
        "224.0.0.0/3",
    ):
        assert private in rules
    assert 'iifname "nbv*" counter reject' in rules  # the host itself
    assert "meta nfproto ipv6 counter reject" in rules
    assert "fib saddr . iif oif missing counter drop" in rules  # no other source address


def test_notebook_addresses_follow_their_unique_uids(settings):
    base = settings.NBCLOUD_SANDBOX_UID_BASE
    addresses = {network.address_of(base + i) for i in range(1000)}
    assert len(addresses) == 1000
    assert all(a.startswith("100.") for a in addresses)


def test_a_worker_that_is_not_root_refuses_to_start_notebooks(monkeypatch, make_spec):
    """Never as the platform's own user, which could read its secrets and database."""
    from workers.runtimes import process

    monkeypatch.setattr(process.os, "geteuid", lambda: 1000)
    runtime = process.ProcessRuntime(make_spec())
    with pytest.raises(StartError) as refused:
        runtime.start()
    assert "does not run as root" in refused.value.user_message
    assert runtime.poll() == 0 and not runtime.state  # nothing started


@pytest.mark.skipif(not shutil.which("nft"), reason="nftables is missing")
def test_flushed_rules_come_back_with_the_next_heartbeat(tmp_path, settings):
    """Someone flushes the host's ruleset while notebooks run: the host's heartbeat
    (which reloads when this host holds editors) puts the rules back."""
    from workers import host_agent, ledger

    network.ensure_firewall(force=True)
    subprocess.run(["nft", "delete", "table", "inet", "nbcloud"], check=True)
    assert subprocess.run(["nft", "list", "table", "inet", "nbcloud"]).returncode != 0
    settings.DATA_DIR = tmp_path  # an editor record of this host's (as a start writes it)
    record = ledger.folder(settings.NBCLOUD_HOST_NAME) / "0000.run.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"runtime_state": {}, "last_event_id": 0}')
    host_agent.keep_notebook_rules(settings.NBCLOUD_HOST_NAME)
    listed = subprocess.run(
        ["nft", "list", "table", "inet", "nbcloud"], capture_output=True, text=True
    )
    assert listed.returncode == 0 and "from_notebook" in listed.stdout
