#!/bin/bash
# scripts/gpu_check.py on a GPU machine that reaches no package index but has a Python
# with a CUDA build of torch (an air-gapped GPU host, or a GPU VM image with its own
# CUDA stack), in one command from the repository's root, with .device/ from
# scripts/device_bundle.py beside it:
#
#   scripts/device_gpu_check.sh [gpu_check.py's arguments]
#
# It writes what the machine is (facts.txt), unpacks the bundle, puts Debian's
# bubblewrap, iproute2 and nftables on PATH where the machine lacks them, and runs the
# check on the process runtime with the notebook's environment made from the
# machine's own torch (--torch-site, --bundle). Everything it learns lands in $OUT
# (var/device-out when unset): device.log, facts.txt, gpu-check.json and logs.tar.gz
# (the platform's and the notebook's logs). Exit status: gpu_check.py's (0 passed,
# 1 a check failed, 2 it cannot run here), or 3 when the machine lacks what the
# bundle cannot bring.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-var/device-out}
mkdir -p "$out"
exec > >(tee "$out/device.log") 2>&1

python=${NBCLOUD_TORCH_PYTHON:-$(command -v python3)}
tools=/opt/nbcloud-tools
bundle=/var/lib/nbcloud/bundle

echo "== facts"
{
  date -u
  uname -srm
  grep -E '^(PRETTY_NAME|VERSION_ID)=' /etc/os-release
  nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version --format=csv
  ls -l /dev/nvidia* 2>&1
  echo "python: $python ($("$python" -V 2>&1))"
  "$python" -c 'import sys; print("base:", sys._base_executable)'
  "$python" -c 'import torch; print("torch:", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1
  echo "venv module: $("$python" -c 'import venv; print("yes")' 2>&1)"
  for tool in bwrap ip nft setpriv nsenter unshare mount tar xz; do
    echo "$tool: $(command -v "$tool" || echo missing)"
  done
  echo "cgroup: $(stat -fc %T /sys/fs/cgroup) $(cat /sys/fs/cgroup/cgroup.subtree_control 2>&1)"
  echo "libcuda: $(ldconfig -p | grep -m1 'libcuda.so.1' || echo 'not in ld.so.cache')"
  echo "LD_LIBRARY_PATH: ${LD_LIBRARY_PATH:-}"
  df -h /var /tmp | tail -2
} 2>&1 | tee "$out/facts.txt"

torch_site=$("$python" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))') || {
  echo "no torch in $python: set NBCLOUD_TORCH_PYTHON to the Python that holds a CUDA torch"
  exit 3
}
base=$("$python" -c 'import sys; print(sys._base_executable)')

echo "== unpacking the bundle into $bundle"
[ -f .device/site.tar.xz ] || { echo "no .device/site.tar.xz: run scripts/device_bundle.py here first"; exit 3; }
rm -rf "$bundle" && mkdir -p "$bundle"
tar -xJf .device/site.tar.xz -C "$bundle" --strip-components=1 || exit 3
chmod -R a+rX "$bundle"

# The process runtime's tools, from Debian's packages, where the machine has none:
# unpacked aside (never over /), each run with its own libraries (device_tools.sh).
missing=""
for tool in bwrap ip nft; do command -v "$tool" >/dev/null || missing="$missing $tool"; done
if [ -n "$missing" ]; then
  echo "== bringing$missing from .device/debs"
  scripts/device_tools.sh .device/debs "$tools" $missing || exit 3
  export PATH="$tools/bin:$PATH"
fi

# A notebook's sandbox gets no LD_LIBRARY_PATH: CUDA's libcuda must be where the
# dynamic loader looks (a GPU image may name the driver's folder in LD_LIBRARY_PATH
# only), as the NVIDIA driver's own packages put it.
if ! ldconfig -p | grep -q 'libcuda\.so\.1'; then
  found=$(find ${LD_LIBRARY_PATH//:/ } /usr/local/nvidia /usr/lib /usr/local -name 'libcuda.so.1' 2>/dev/null | head -1)
  if [ -n "$found" ]; then
    echo "$(dirname "$found")" > /etc/ld.so.conf.d/nbcloud-nvidia.conf && ldconfig \
      && echo "== registered $(dirname "$found") (libcuda) with ldconfig"
  else
    echo "== no libcuda.so.1 found: notebooks will not see CUDA"
  fi
fi

export PYTHONPATH="$bundle${PYTHONPATH:+:$PYTHONPATH}"
export NBCLOUD_ENV_PYTHON="$base"
export PYTHONUNBUFFERED=1
echo "== gpu_check (torch from $torch_site, environments from $base)"
"$python" scripts/gpu_check.py --runtime process --torch-site "$torch_site" --bundle "$bundle" "$@"
status=$?
cp var/gpu-check.json "$out/" 2>/dev/null
tar -czf "$out/logs.tar.gz" var/gpu-check/*/runplatform.log var/gpu-check/*/logs 2>/dev/null
echo "== gpu_check exited $status"
exit "$status"
