#!/bin/sh
# Make nbcloud/base:latest without any container registry: debootstrap a minimal
# Debian into a folder, import it as an image, and finish it with ./Dockerfile.
# Needs root, debootstrap and docker, and a reachable Debian mirror (MIRROR).
#   sudo environments/base/build-base.sh
set -eu
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOTFS_IMAGE=${ROOTFS_IMAGE:-nbcloud/rootfs:$SUITE}
IMAGE=${IMAGE:-nbcloud/base:latest}

here=$(cd "$(dirname "$0")" && pwd)
rootfs=$(mktemp -d)
cleanup() {
    umount "$rootfs/proc" "$rootfs/sys" 2>/dev/null || true
    rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT INT TERM

debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar --numeric-owner -C "$rootfs" -c . | docker import - "$ROOTFS_IMAGE"
docker build --build-arg ROOTFS="$ROOTFS_IMAGE" -t "$IMAGE" "$here"
echo "built $IMAGE"
