#!/bin/sh
# Build the docker runtime's environment images (every version of every framework, or
# the default version of each FRAMEWORK named, or FRAMEWORK:VERSION), tagged as their
# manifests say, from the one Dockerfile template, with no registry and no network
# inside the builds; each skipped while up to date. Needs docker and the base image
# (base/build-base.sh). See README.md. A shell front to `manage.py buildimages`.
#   environments/build-images.sh [FRAMEWORK[:VERSION] ...]
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
if [ "$#" -eq 0 ]; then
    exec "$python" "$root/manage.py" buildimages --all
fi
exec "$python" "$root/manage.py" buildimages "$@"
