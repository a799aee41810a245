"""GPU device nodes: a notebook sees its own GPUs' nodes (and the driver's shared
ones), never another notebook's. The nodes are made by the test (mknod, with
/dev/null's numbers so that they work without a GPU) in a directory it owns,
which stands for /dev through NBCLOUD_DEVICE_ROOT."""

import json
import os
import stat

import pytest

from support.editors import Kernel
from workers.lifecycle import wait_ready
from workers.runtimes.process import ProcessRuntime

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="mknod and the sandbox need root"),
]

NODES = ("nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")


@pytest.fixture
def device_root(base_dir, settings):
    root = base_dir / "dev"
    root.mkdir()
    null = os.stat("/dev/null").st_rdev
    for name in NODES:
        os.mknod(root / name, 0o666 | stat.S_IFCHR, null)
        os.chmod(root / name, 0o666)  # as the driver makes them, whatever the umask
    settings.NBCLOUD_DEVICE_ROOT = root
    return root


def test_a_notebook_sees_exactly_its_own_gpus_device_nodes(make_spec, device_root):
    runtime = ProcessRuntime(make_spec(gpu_devices=("nvidia1",), gpu_uuids=("GPU-1",)))
    runtime.start()
    try:
        wait_ready(runtime, 60)
        kernel = Kernel(runtime.endpoint.url, {"Authorization": f"token {runtime.spec.secret}"})
        out = kernel.execute(
            "import os, json\n"
            "nodes = sorted(d for d in os.listdir('/dev') if d.startswith('nvidia'))\n"
            "open('/dev/nvidia1', 'wb').write(b'usable')\n"
            "print(json.dumps([nodes, os.environ['CUDA_VISIBLE_DEVICES']]))"
        )
        kernel.close()
    finally:
        runtime.stop(5)
    nodes, visible = json.loads(out.strip().splitlines()[-1])
    assert nodes == ["nvidia-uvm", "nvidia-uvm-tools", "nvidia1", "nvidiactl"]
    assert visible == "GPU-1"


def test_a_cpu_notebook_sees_no_gpu_device_node(make_spec, device_root):
    runtime = ProcessRuntime(make_spec())
    runtime.start()
    try:
        wait_ready(runtime, 60)
        kernel = Kernel(runtime.endpoint.url, {"Authorization": f"token {runtime.spec.secret}"})
        out = kernel.execute("import os; print([d for d in os.listdir('/dev') if 'nvidia' in d])")
        kernel.close()
    finally:
        runtime.stop(5)
    assert out.strip() == "[]"
