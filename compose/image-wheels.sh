#!/bin/sh
# Collect the wheels of the project's dependencies into DIR for the root Dockerfile,
# whose build has no network. pip resolves on this machine, whose Python may differ
# from the base image's in ways markers see (`python_full_version < "3.11.3"`), so
# the image's own pip then says what it still misses, and those are added.
#   compose/image-wheels.sh PYTHON DIR BASE_IMAGE
set -eu
python=$1 dir=$2 base=$3
rm -rf "$dir" && mkdir -p "$dir"
"$python" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
    >"$dir/requirements.txt"
"$python" -m pip wheel -q --wheel-dir "$dir" -r "$dir/requirements.txt"
for _ in 1 2 3 4 5; do
    missing=$(docker run --rm --network none -v "$(cd "$dir" && pwd):/wheels:ro" "$base" \
        python3 -m pip download -q --no-index --find-links /wheels -d /tmp/check \
        -r /wheels/requirements.txt 2>&1 |
        sed -n 's/.*No matching distribution found for \([^;]*\).*/\1/p' | tr -d ' ')
    [ -z "$missing" ] && exit 0
    echo "wheels for the image's Python: $missing"
    # shellcheck disable=SC2086
    "$python" -m pip wheel -q --wheel-dir "$dir" $missing
done
echo "image-wheels: still missing $missing" >&2
exit 1
