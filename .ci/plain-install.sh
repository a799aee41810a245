#!/usr/bin/env bash
# The project installed on its own, without the test extras, imports whole: a
# virtualenv of Debian's /usr/bin/python3 gets `pip install -e .` (from the
# package registry, through pip's cache), then scripts/check_imports.py imports
# every module of nbcloud and workers with Django set up. A runtime import that
# pyproject.toml does not declare (one that only the test extras, or a
# dependency's dependency, brought in) fails it, naming the module.
#
#   .ci/plain-install.sh [PYTHON]      (default /usr/bin/python3)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-/usr/bin/python3}
started=$SECONDS

venv=$(mktemp -d "${TMPDIR:-/tmp}/nbcloud-plain.XXXXXX")
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check --progress-bar off -e . \
    >"$venv/pip.log" 2>&1; then
  tail -n 30 "$venv/pip.log" >&2
  echo "plain install: pip install -e . failed" >&2
  exit 1
fi
# Outside the checkout's source folders: only what the install put on sys.path.
"$venv/bin/python" scripts/check_imports.py
echo "plain install: checked in $((SECONDS - started)) s"
