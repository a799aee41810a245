#!/usr/bin/env bash
# What `make run` and `make test` set up before they start, each step safe to
# repeat and to resume after an interrupted run:
#
#   scripts/bootstrap.sh sysdeps run|test   Debian packages (as root: installed;
#                                           otherwise: the one command to run)
#   scripts/bootstrap.sh venv PYTHON run|test
#                                           .venv with the project (and the test extras)
#   scripts/bootstrap.sh node DIR           Node.js 20 and npm under DIR (for code-server)
set -euo pipefail

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# What running needs: bubblewrap (the editors' sandbox), python3-venv (the
# environments are virtualenvs of /usr/bin/python3, which the sandbox users can
# run), iproute2 (`ip`: each notebook's own network namespace and veth pair) and
# nftables (what that network may reach), openssh-sftp-server (sftp and scp in
# SSH sessions, run inside each notebook). The tests add a browser, an ssh
# client and server (SSH sessions; git volumes over ssh), git (git daemon), curl,
# prometheus, and Slurm with munge and slurmdbd (the slurm runtime's tests start
# a cluster; its accounting uses the machine's MariaDB when one answers).
RUN_PACKAGES="bubblewrap python3-venv iproute2 nftables openssh-sftp-server"
TEST_PACKAGES="chromium openssh-client openssh-server git curl prometheus slurm-wlm slurmdbd munge"

installed() {
  dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | grep -q '^ii'
}

sysdeps() {
  case "${1:-}" in
    run) wanted=$RUN_PACKAGES ;;
    test) wanted="$RUN_PACKAGES $TEST_PACKAGES" ;;
    *) die "usage: $0 sysdeps run|test" ;;
  esac
  # The process runtime runs each notebook as a uid of its own in a network
  # namespace of its own: only root can. `sudo make ...` also installs what
  # is missing, so it is the one command to give.
  if [ "$(id -u)" != 0 ] && [ "${NBCLOUD_RUNTIME:-process}" = process ]; then
    printf '\nnbcloud runs each notebook as a user of its own, in a network of its own,\n' >&2
    printf 'which needs root. Run:\n\n    sudo make %s\n\n' "$1" >&2
    printf 'It installs the system packages it needs first (%s).\n' "$wanted" >&2
    exit 2
  fi
  if ! command -v dpkg-query >/dev/null; then
    for tool in bwrap ip nft; do
      command -v "$tool" >/dev/null || die "$tool is missing: nbcloud's setup knows Debian only; install bubblewrap, iproute2 and nftables with your system's packages"
    done
    return 0
  fi
  missing=""
  for package in $wanted; do
    installed "$package" || missing="$missing $package"
  done
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" != 0 ]; then
    printf '\nnbcloud needs these system packages first:%s\n\n' "$missing" >&2
    printf '    sudo apt-get install -y%s\n\n' "$missing" >&2
    printf 'Run that command, then run make %s again.\n' "$1" >&2
    exit 2
  fi
  export DEBIAN_FRONTEND=noninteractive
  say "installing system packages:$missing (apt-get)"
  # A machine that never ran apt-get update has no package lists.
  if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e '^lock$' -e '^partial$' -e '^auxfiles$')" ]; then
    apt-get update
  fi
  # shellcheck disable=SC2086
  if ! apt-get install -y $missing; then
    say "apt-get install failed: updating the package lists and trying again"
    apt-get update
    # shellcheck disable=SC2086
    apt-get install -y $missing
  fi
}

venv() {
  python=${1:-}
  what=${2:-}
  case "$what" in
    run) spec="-e ." ;;
    test) spec="-e .[test]" ;;
    *) die "usage: $0 venv PYTHON run|test" ;;
  esac
  [ -n "$python" ] || die "no python3 found: install Debian's python3 (apt-get install -y python3) or set PYTHON"
  "$python" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
    || die "$python is not Python 3.11 ($("$python" --version 2>&1)): set PYTHON to a Python 3.11 interpreter"
  "$python" -c 'import ensurepip, venv' 2>/dev/null \
    || die "$python cannot create virtualenvs: apt-get install -y python3-venv"
  want_base=$("$python" -c 'import sys; print(sys.base_prefix)')
  # A .venv that is not whole (no interpreter, no pip: an interrupted creation)
  # or not of $python is made again.
  if [ -e .venv ]; then
    have_base=$(.venv/bin/python -c 'import sys, pip; print(sys.base_prefix)' 2>/dev/null || true)
    if [ -z "$have_base" ]; then
      say ".venv is incomplete (no working python or pip): creating it again"
      rm -rf .venv
    elif [ "$have_base" != "$want_base" ]; then
      say ".venv was made from $have_base, not $python: creating it again"
      rm -rf .venv
    fi
  fi
  if [ ! -e .venv ]; then
    say "creating .venv from $python ($("$python" --version 2>&1))"
    "$python" -m venv .venv
  fi
  stamp=.venv/.nbcloud-$what
  digest=$(cat pyproject.toml | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" = "$digest" ]; then
    return 0
  fi
  say "installing the project into .venv ($spec; pip, about a minute the first time)"
  log=.venv/pip.log
  # pip's Collecting/Successfully lines as progress; its whole output in $log.
  # shellcheck disable=SC2086
  if ! { .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off \
      --upgrade pip && .venv/bin/python -m pip install --disable-pip-version-check \
      --progress-bar off $spec; } 2>&1 | tee "$log" \
      | { grep -E --line-buffered '^(Collecting|Successfully)' || true; } | sed -u 's/^/    /'; then
    tail -n 30 "$log" >&2
    die "pip install $spec failed (the whole output is in $log); run make again once the cause is fixed"
  fi
  printf '%s\n' "$digest" >"$stamp"
  # The test extras include everything running needs.
  [ "$what" = test ] && printf '%s\n' "$digest" >.venv/.nbcloud-run
  return 0
}

# Node.js 20 (code-server needs 20 exactly) from the npm registry, the one
# registry a host reaches anyway for code-server: node-linux-<arch> holds the
# official build; npm comes from its own package. Both checked against their
# registry checksums, pinned here.
NODE_VERSION=20.20.2
NODE_SHA512_x64=PeHQM8wAdmHtZA1mBocygZxs5LiUWtsJezQTkBd0iY987KpGrD1O2tVEydvMZiuXceRanxt7rjTnDEBwOPujoQ==
NODE_SHA512_arm64=LCXJnNTFiyGuYBw2gZSI5OBFMbkjAPt8sqD/NKrWoE2QmDgSubTqFng6GaNJ9EJ8HpxBMGcWWpbbcs4Vo+CnGg==
NPM_VERSION=11.19.1
NPM_SHA512=ztsxKxt/kkIaAs+2i0GU6I+DRmUdrNasxTZKJe9TCdSjKxlhah/4r/hl5ygMD6XAg1qZ9c2TNomR4qgOydp10g==
REGISTRY=${NPM_CONFIG_REGISTRY:-https://registry.npmjs.org}

fetch_checked() {  # URL SHA512(base64) FILE
  curl -fsSL --retry 3 -o "$3" "$1" || die "could not download $1"
  got=$(openssl dgst -sha512 -binary "$3" 2>/dev/null | base64 -w0 2>/dev/null) \
    || got=$(python3 -c 'import base64, hashlib, sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$3")
  [ "$got" = "$2" ] || die "$1: checksum mismatch (expected sha512-$2, got sha512-$got)"
}

install_node() {
  dir=${1:-}
  [ -n "$dir" ] || die "usage: $0 node DIR"
  if [ "$("$dir/bin/node" --version 2>/dev/null)" = "v$NODE_VERSION" ] \
    && [ "$(PATH="$dir/bin:$PATH" "$dir/bin/npm" --version 2>/dev/null)" = "$NPM_VERSION" ]; then
    return 0
  fi
  case "$(uname -m)" in
    x86_64) arch=x64; sha=$NODE_SHA512_x64 ;;
    aarch64) arch=arm64; sha=$NODE_SHA512_arm64 ;;
    *) die "no Node.js $NODE_VERSION build for $(uname -m): install Node.js 20 yourself" ;;
  esac
  command -v curl >/dev/null || die "curl is needed to download Node.js: apt-get install -y curl"
  say "installing Node.js $NODE_VERSION and npm $NPM_VERSION into $dir (npm registry)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  fetch_checked "$REGISTRY/node-linux-$arch/-/node-linux-$arch-$NODE_VERSION.tgz" "$sha" "$tmp/node.tgz"
  fetch_checked "$REGISTRY/npm/-/npm-$NPM_VERSION.tgz" "$NPM_SHA512" "$tmp/npm.tgz"
  mkdir -p "$tmp/node/lib/node_modules/npm"
  tar -xzf "$tmp/node.tgz" -C "$tmp/node" --strip-components=1 --no-same-owner
  tar -xzf "$tmp/npm.tgz" -C "$tmp/node/lib/node_modules/npm" --strip-components=1 --no-same-owner
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$tmp/node/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$tmp/node/bin/npx"
  chmod -R a+rX "$tmp/node"
  "$tmp/node/bin/node" --version >/dev/null || die "the downloaded Node.js does not run here"
  mkdir -p "$(dirname "$dir")"
  rm -rf "$dir.old"
  [ -e "$dir" ] && mv "$dir" "$dir.old"
  mv "$tmp/node" "$dir"
  rm -rf "$dir.old"
  say "Node.js $("$dir/bin/node" --version), npm $(PATH="$dir/bin:$PATH" "$dir/bin/npm" --version) in $dir"
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  sysdeps) sysdeps "$@" ;;
  venv) venv "$@" ;;
  node) install_node "$@" ;;
  *) die "usage: $0 sysdeps|venv|node ..." ;;
esac
