#!/bin/bash
# The process runtime's tools, from the Debian packages scripts/device_bundle.py
# downloads (its debs/), for a machine that lacks them: unpacked into TOOLS (never
# over /), each named TOOL behind a wrapper in TOOLS/bin that runs it with the
# unpacked libraries. scripts/device_gpu_check.sh puts TOOLS/bin on PATH.
#
#   scripts/device_tools.sh DEBS TOOLS TOOL...
set -euo pipefail
debs=$1 tools=$2
shift 2
rm -rf "$tools" && mkdir -p "$tools/bin"
for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$tools/root"; done
libs="$tools/root/usr/lib/x86_64-linux-gnu:$tools/root/lib/x86_64-linux-gnu"
for tool in "$@"; do
  real=""
  for dir in usr/bin usr/sbin bin sbin; do
    [ -x "$tools/root/$dir/$tool" ] && { real=$tools/root/$dir/$tool; break; }
  done
  [ -n "$real" ] || { echo "no $tool in $debs" >&2; exit 1; }
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$libs" "$real" > "$tools/bin/$tool"
  chmod 755 "$tools/bin/$tool"
done
chmod -R a+rX "$tools"
