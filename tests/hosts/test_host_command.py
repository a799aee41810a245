"""`manage.py host`: drain, undrain and remove a host from a shell on the control plane."""

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from nbcloud.hosts.models import Host
from support.factories import make_notebook

pytestmark = pytest.mark.django_db


def host(name="cpu-9", **fields) -> Host:
    return Host.objects.create(
        name=name, region="GRA", cpus=4, memory_bytes=1, disk_bytes=1, **fields
    )


def run(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("host", *args, stdout=out)
    return out.getvalue()


def test_drain_and_undrain():
    host()
    assert "DRAINING" in run("drain", "cpu-9")
    assert Host.objects.get(name="cpu-9").state == "DRAINING"
    with pytest.raises(CommandError, match="DRAINING, not READY"):
        run("drain", "cpu-9")
    run("undrain", "cpu-9")
    assert Host.objects.get(name="cpu-9").state == "READY"
    assert "cpu-9\tGRA\tREADY\t0 notebooks" in run("list")


def test_an_unknown_host_is_named_with_the_known_ones():
    host()
    with pytest.raises(CommandError, match=r"no host 'cpu-8' \(hosts: cpu-9\)"):
        run("drain", "cpu-8")


def test_a_host_is_removed_only_once_its_worker_is_stopped_and_it_holds_nothing(alpha):
    h = host()
    with pytest.raises(CommandError, match="stop it first"):
        run("remove", "cpu-9")
    Host.objects.filter(pk=h.pk).update(
        last_heartbeat_at=timezone.now() - timezone.timedelta(hours=1)
    )
    notebook = make_notebook(alpha, state="RUNNING", host=h, name="busy")
    with pytest.raises(CommandError, match=r"still holds notebooks \(busy\)"):
        run("remove", "cpu-9")
    notebook.delete()
    assert "removed" in run("remove", "cpu-9")
    assert not Host.objects.filter(name="cpu-9").exists()
