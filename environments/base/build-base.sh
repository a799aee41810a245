#!/bin/sh
# Make the base image of every environment image (nbcloud/base:latest, settings'
# NBCLOUD_DOCKER_BASE_IMAGE) without any container registry and without network inside
# a build: debootstrap a minimal Debian with its packages into a folder on this host,
# import it as an image, and finish it with ./Dockerfile (a user and /workspace only).
# Needs root, debootstrap, docker and a reachable Debian mirror (MIRROR).
#   sudo environments/base/build-base.sh
# Skipped when IMAGE already holds what this script would build (its label
# io.nbcloud.base-key); FORCE=1 rebuilds.
set -eu
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOTFS_IMAGE=${ROOTFS_IMAGE:-nbcloud/rootfs:$SUITE}
IMAGE=${IMAGE:-nbcloud/base:latest}
# Debian's Python 3.11 with venv and pip, build tools for pip packages without wheels,
# git, curl and tini (the containers' init); iproute2 and nftables for the
# platform's host workers, which give each notebook container its own network.
PACKAGES=${PACKAGES:-python3,python3-venv,python3-pip,python3-dev,build-essential,ca-certificates,curl,git,tini,iproute2,nftables,openssh-sftp-server}

here=$(cd "$(dirname "$0")" && pwd)
die() { echo "build-base.sh: $*" >&2; exit 1; }
docker info >/dev/null 2>&1 \
    || die "no Docker Engine answers: install docker.io and start dockerd (as root: dockerd --iptables=false --bridge=none &)"
if ! command -v debootstrap >/dev/null; then
    # A fresh Debian has none; as root the script installs it as make's other steps do.
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
        || die "debootstrap is missing: sudo apt-get install -y debootstrap"
    echo "installing debootstrap (apt-get)"
    apt-get install -y -q debootstrap >/dev/null \
        || { apt-get update -q && apt-get install -y -q debootstrap >/dev/null; } \
        || die "could not install debootstrap: sudo apt-get install -y debootstrap"
fi
key=$( (cat "$here/build-base.sh" "$here/Dockerfile" "$here"/code-server*.deb 2>/dev/null
        echo "$SUITE $MIRROR $PACKAGES") | sha256sum | cut -c1-16)
built=$(docker image inspect -f '{{ index .Config.Labels "io.nbcloud.base-key" }}' "$IMAGE" 2>/dev/null || true)
if [ -z "${FORCE:-}" ] && [ "$built" = "$key" ]; then
    echo "$IMAGE is up to date ($key)"
    exit 0
fi

rootfs=$(mktemp -d)
cleanup() {
    umount "$rootfs/proc" "$rootfs/sys" 2>/dev/null || true
    rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT INT TERM

debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar --numeric-owner -C "$rootfs" -c . | docker import - "$ROOTFS_IMAGE"
DOCKER_BUILDKIT=0 docker build --network none --label "io.nbcloud.base-key=$key" \
    --build-arg ROOTFS="$ROOTFS_IMAGE" -t "$IMAGE" "$here"
echo "built $IMAGE ($key)"
