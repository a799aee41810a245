#!/bin/sh
# Build nbcloud/ci-services (./Dockerfile): Debian's PostgreSQL, Redis, Caddy and
# Prometheus, and moto_server, on the locally made Debian root. Skipped while the
# image holds what this script would build (label io.nbcloud.ci-key).
#   compose/ci/build.sh PYTHON     # a Python with pip (the project's venv)
set -eu
python=$1
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
IMAGE=${IMAGE:-nbcloud/ci-services:latest}
ROOTFS=${ROOTFS:-nbcloud/rootfs:bookworm}
moto=$("$python" -c 'from importlib.metadata import version; print(version("moto"))' 2>/dev/null || echo 5.1.4)
rootfs_id=$(docker image inspect -f '{{.Id}}' "$ROOTFS")
key=$( (cat "$here/Dockerfile" "$here/postgres.sh"; echo "$moto $rootfs_id") | sha256sum | cut -c1-16)
built=$(docker image inspect -f '{{ index .Config.Labels "io.nbcloud.ci-key" }}' "$IMAGE" 2>/dev/null || true)
if [ -z "${FORCE:-}" ] && [ "$built" = "$key" ]; then
    echo "$IMAGE is up to date ($key)"
    exit 0
fi
context=$root/var/ci-services
rm -rf "$context" && mkdir -p "$context/wheels"
echo "moto[server]==$moto" >"$context/wheels/requirements.txt"
"$python" -m pip wheel -q --wheel-dir "$context/wheels" -r "$context/wheels/requirements.txt"
cp "$here/Dockerfile" "$here/postgres.sh" "$context/"
# Debian's mirror is reached through the host's network (no default bridge in CI).
DOCKER_BUILDKIT=0 docker build -q --network host --label "io.nbcloud.ci-key=$key" \
    --build-arg ROOTFS="$ROOTFS" -t "$IMAGE" "$context"
echo "built $IMAGE ($key)"
