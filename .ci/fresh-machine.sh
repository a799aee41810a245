#!/usr/bin/env bash
# The README's two commands on a fresh Debian 12, as a newcomer runs them.
#
#   .ci/fresh-machine.sh [COMMIT]        (root; COMMIT defaults to HEAD)
#
# Builds a `debootstrap --variant=minbase bookworm` root (cached in
# $NBCLOUD_CI_CACHE, /var/cache/nbcloud-ci, with apt's and pip's download
# caches), copies it, and in a mount namespace of its own chroots into the copy
# to: install ONLY the prerequisites the README lists (its marked block, run as
# is), check that `make run` as a user prints the one command (`sudo make
# run`) and does nothing else, clone COMMIT, run
# `make run`, run the README's marked "try it" blocks (a token and a notebook
# through the API with curl; `nbc` to stop and start it), run cells through the
# gateway (.ci/run_cell.py, on the platform's own venv), find the cell's file
# and its `pip install`ed package after the restart, press Ctrl-C, start again
# over a broken .venv (it must be made again, the notebook taken over), stop
# the notebook and the platform. Any step that differs from the README fails.
# Every mount and process it makes is gone when it ends (trap).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${NBCLOUD_CI_CACHE:-/var/cache/nbcloud-ci}
MIRROR=${NBCLOUD_CI_MIRROR:-http://deb.debian.org/debian}
PORT=${NBCLOUD_CI_PORT:-8000}
started=$SECONDS

log() { printf '[fresh-machine %4ds] %s\n' "$((SECONDS - started))" "$*"; }
fail() { printf '[fresh-machine] FAILED: %s\n' "$*" >&2; exit 1; }

# The fenced block that follows "<!-- fresh-machine:NAME -->" in the README.
readme_block() {
  awk -v mark="<!-- fresh-machine:$1 -->" '
    $0 == mark { armed = 1; next }
    armed && /^```/ { if (inside) exit; inside = 1; next }
    inside { print }' "$2"
}

# Kill every process whose root is $1 (what the platform left running there).
kill_inside() {
  local root=$1 pid found=0
  for _ in 1 2 3 4 5; do
    found=0
    for link in /proc/[0-9]*/root; do
      pid=${link#/proc/}
      pid=${pid%/root}
      # Its root is the copy, or (in a sandbox of its own) its program is in it.
      if [ "$(readlink "$link" 2>/dev/null)" = "$root" ] \
        || [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$root/"* ]]; then
        kill -9 "$pid" 2>/dev/null && found=1
      fi
    done
    [ "$found" = 0 ] && return 0
    sleep 1
  done
}

if [ "${1:-}" = "--block" ]; then  # print the README's block NAME (for the tests)
  readme_block "$2" "$REPO/README.md"
  exit 0
fi

if [ "${1:-}" = "__inside" ]; then
  ######## In the mount namespace: mount, chroot, run the scenario, unmount.
  SECONDS=${FRESH_ELAPSED:-0}
  ROOT=$2
  COMMIT=$3
  mounts=()
  cleanup_inside() {
    status=$?
    kill_inside "$ROOT"
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
      umount -R -l "${mounts[$i]}" 2>/dev/null || true
    done
    exit $status
  }
  trap cleanup_inside EXIT INT TERM
  mount --make-rprivate /
  domount() {  # mount ARGS... TARGET, remembered for the trap
    mount "$@"
    mounts+=("${!#}")
  }
  # bwrap's `--bind / /` needs the root to be a mount point of its own.
  domount --bind "$ROOT" "$ROOT"
  domount -t proc proc "$ROOT/proc"
  domount --rbind /sys "$ROOT/sys"
  domount --rbind /dev "$ROOT/dev"
  domount -t tmpfs tmpfs "$ROOT/run"
  mkdir -p "$CACHE/apt-archives/partial" "$CACHE/pip" "$ROOT/root/.cache/pip"
  # Download caches only: what is installed is decided inside.
  domount --bind "$CACHE/apt-archives" "$ROOT/var/cache/apt/archives"
  domount --bind "$CACHE/pip" "$ROOT/root/.cache/pip"
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf"

  # This machine's certificate authorities (an intercepting proxy's, where
  # there is one) go where Debian's ca-certificates picks them up when the
  # README's prerequisites install it; the variables naming the bundle too.
  if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  fi
  cert_env=()
  for var in SSL_CERT_FILE PIP_CERT REQUESTS_CA_BUNDLE CURL_CA_BUNDLE GIT_SSL_CAINFO NODE_EXTRA_CA_CERTS; do
    [ -n "${!var:-}" ] && cert_env+=("$var=${!var}")
  done
  for conf in /etc/apt/apt.conf.d/99artifact-registry; do
    [ -f "$conf" ] && cp "$conf" "$ROOT/etc/apt/apt.conf.d/"
  done

  # The root shares this machine's kernel, where another platform (a test run)
  # may give its notebooks the same uids and addresses: this one takes a uid
  # range and an address pool of its own.
  platform_env=(NBCLOUD_SANDBOX_UID_BASE=2100000000 NBCLOUD_SANDBOX_UID_COUNT=60000
    NBCLOUD_NOTEBOOK_ADDRESSES=100.127.0.0/16)

  in_root() {  # run a bash script in the root as root, with a clean environment
    chroot "$ROOT" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      DEBIAN_FRONTEND=noninteractive "${cert_env[@]}" "${platform_env[@]}" "$@"
  }

  # 1. The README's prerequisites, its own command (sudo is not in minbase: root runs it).
  prereq=$(readme_block prerequisites "$ROOT/root/README.md")
  [ -n "$prereq" ] || fail "README.md has no <!-- fresh-machine:prerequisites --> block"
  log "prerequisites, as the README says: $prereq"
  in_root bash -euxc "${prereq//sudo /}" >"$ROOT/root/prerequisites.log" 2>&1 \
    || { tail -30 "$ROOT/root/prerequisites.log"; fail "the README's prerequisites did not install"; }
  log "prerequisites installed"

  # 2. As a user: the one command (sudo make run), nothing done.
  in_root bash -ec 'useradd -m newcomer && cp -a /root/nbcloud /home/newcomer/nbcloud \
    && chown -R newcomer: /home/newcomer/nbcloud'
  set +e
  in_root setpriv --reuid=newcomer --regid=newcomer --init-groups \
    env HOME=/home/newcomer bash -c 'cd /home/newcomer/nbcloud && make run' \
    >"$ROOT/root/newcomer.log" 2>&1
  newcomer_status=$?
  set -e
  cat "$ROOT/root/newcomer.log"
  [ "$newcomer_status" != 0 ] || fail "make run as a user without the system packages succeeded"
  grep -q '^    sudo make run$' "$ROOT/root/newcomer.log" \
    || fail "make run as a user did not print the one command (sudo make run)"
  [ ! -e "$ROOT/home/newcomer/nbcloud/.venv" ] || fail "make run as a user created .venv before the system packages"
  log "as a user: the one command printed, nothing else done"

  # 3. make run, as root (it installs the system packages itself).
  start_platform() {  # $1: log file
    rm -f "$ROOT/run/make-run.pid"
    in_root setsid bash -c "echo \$\$ >/run/make-run.pid; cd /root/nbcloud && exec env PORT=$PORT make run" \
      >"$1" 2>&1 &
    platform_pid=$!
    local waited=0
    until in_root curl -sf -o /dev/null "http://127.0.0.1:$PORT/api/v1/schema/"; do
      kill -0 "$platform_pid" 2>/dev/null || { tail -40 "$1"; fail "make run ended before serving"; }
      [ "$waited" -lt 1800 ] || { tail -40 "$1"; fail "make run did not serve within 30 min"; }
      sleep 2
      waited=$((waited + 2))
    done
  }
  stop_platform() {  # Ctrl-C, as in the terminal: SIGINT to make's process group
    local leader
    leader=$(cat "$ROOT/run/make-run.pid")  # make, leading its own session and group
    kill -INT -- "-$leader"
    for _ in $(seq 1 60); do
      kill -0 "$leader" 2>/dev/null || break
      sleep 1
    done
    ! kill -0 "$leader" 2>/dev/null || fail "make run did not stop within 60 s of Ctrl-C"
    wait "$platform_pid" || true
  }
  run_started=$SECONDS
  start_platform "$ROOT/root/make-run-1.log"
  log "make run serves on port $PORT after $((SECONDS - run_started)) s"
  for step in "installing system packages" "creating .venv" "installing the project" \
    "building the conda environment" "migrating the database"; do
    grep -q "==> $step" "$ROOT/root/make-run-1.log" || fail "make run did not say '==> $step'"
  done
  if grep -q "Traceback" "$ROOT/root/make-run-1.log"; then
    grep -n -B2 -A20 Traceback "$ROOT/root/make-run-1.log" | head -60
    fail "make run printed a traceback"
  fi

  # 4. The README's first try: a token and a notebook, with curl.
  try=$(readme_block try "$ROOT/root/nbcloud/README.md")
  [ -n "$try" ] || fail "README.md has no <!-- fresh-machine:try --> block"
  cat >"$ROOT/root/try.sh" <<EOF
set -euo pipefail
cd /root/nbcloud
export PORT=$PORT
$try
printf '%s\n' "\$TOKEN" >/root/token
EOF
  in_root bash /root/try.sh >"$ROOT/root/try.out" 2>"$ROOT/root/try.err" \
    || { cat "$ROOT/root/try.out" "$ROOT/root/try.err"; fail "the README's try block failed"; }
  notebook=$(in_root python3 -c 'import json, sys; d = json.load(open("/root/try.out")); print(d["id"])') \
    || { cat "$ROOT/root/try.out" "$ROOT/root/try.err"; fail "the notebook creation did not answer a notebook"; }
  token=$(cat "$ROOT/root/token")
  api="http://127.0.0.1:$PORT/api/v1/projects/demo/notebooks/$notebook/"
  log "notebook $notebook created"

  wait_state() {  # STATE: the notebook's status.url once there
    local waited=0 state
    while :; do
      state=$(in_root curl -sf -H "Authorization: Bearer $token" "$api" \
        | in_root python3 -c 'import json, sys; s = json.load(sys.stdin)["status"]; i = s.get("info") or {}; print(s["state"], s["url"] or "-", i.get("code", ""), i.get("message", ""))') \
        || state="?"
      case "$state" in
        "$1 "*) echo "${state#* }" | cut -d' ' -f1; return 0 ;;
        FAILED*)
          grep -v '^[0-9:]* \(web\|flower\|beat\) ' "$ROOT"/root/make-run-*.log | tail -60
          fail "the notebook failed: $state" ;;
      esac
      [ "$waited" -lt 600 ] || fail "the notebook did not get to $1 (last: $state)"
      sleep 1
      waited=$((waited + 1))
    done
  }
  url=$(wait_state RUNNING)
  log "notebook RUNNING at $url"

  cell() {  # CODE: what the cell printed (on failure, the platform's and the editor's logs)
    if ! in_root /root/nbcloud/.venv/bin/python /root/nbcloud/.ci/run_cell.py "$url" "$token" "$1"; then
      tail -n 80 "$(ls -t "$ROOT"/root/make-run-*.log | head -1)" >&2
      find "$ROOT/root/nbcloud/var/logs" -name "*$notebook*" -exec tail -n 30 {} + >&2 2>/dev/null || true
      return 1
    fi
  }
  # A wheel made in the notebook, installed with a plain `pip install` (to
  # /workspace/.local); no index, so the check does not hang on the network.
  first=$(cell '
import pathlib, subprocess, sys, zipfile
pathlib.Path("/workspace/hello.txt").write_text("kept\n")
path = "/tmp/freshpkg-1.0-py3-none-any.whl"
with zipfile.ZipFile(path, "w") as whl:
    whl.writestr("freshpkg.py", "ANSWER = 42\n")
    whl.writestr("freshpkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: freshpkg\nVersion: 1.0\n")
    whl.writestr("freshpkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: ci\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    whl.writestr("freshpkg-1.0.dist-info/RECORD", "")
done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", path], capture_output=True, text=True)
print("pip", done.returncode, done.stderr[-500:].replace("\n", " "))
print("sum", sum(range(10)))
') || fail "the first cell did not run"
  printf '%s\n' "$first"
  grep -q '^sum 45$' <<<"$first" || fail "the first cell did not print its result"
  grep -q '^pip 0 ' <<<"$first" || fail "pip install in the notebook failed"
  log "a cell ran; it wrote a file and pip installed a package"

  # 5. The README's stop and start (nbc), then the file and the package are there.
  again=$(readme_block restart "$ROOT/root/nbcloud/README.md")
  [ -n "$again" ] || fail "README.md has no <!-- fresh-machine:restart --> block"
  in_root bash -euc "cd /root/nbcloud; export PORT=$PORT TOKEN=$token; $again" \
    || fail "the README's stop and start failed"
  url=$(wait_state RUNNING)
  second=$(cell '
import freshpkg, pathlib
print("file", pathlib.Path("/workspace/hello.txt").read_text().strip())
print("package", freshpkg.ANSWER, freshpkg.__file__)
') || fail "the cell after the restart did not run"
  printf '%s\n' "$second"
  grep -q '^file kept$' <<<"$second" || fail "the file did not survive stop and start"
  grep -q '^package 42 /workspace/' <<<"$second" || fail "the pip installed package did not survive stop and start"
  log "after stop and start: the file and the package are there"

  # 6. Ctrl-C, then make run over a broken .venv: made again, the notebook taken over.
  stop_platform
  grep -q "stopping the embedded broker" "$ROOT/root/make-run-1.log" || fail "Ctrl-C did not stop the broker"
  log "Ctrl-C stopped the platform"
  rm -rf "$ROOT/root/nbcloud/.venv"
  in_root python3 -m venv --without-pip /root/nbcloud/.venv
  run_started=$SECONDS
  start_platform "$ROOT/root/make-run-2.log"
  grep -q "==> .venv is incomplete" "$ROOT/root/make-run-2.log" || fail "make run did not say it remakes the broken .venv"
  log "make run over a .venv without pip serves after $((SECONDS - run_started)) s"
  url=$(wait_state RUNNING)
  third=$(cell 'import freshpkg; print("still", freshpkg.ANSWER)') || fail "the adopted notebook did not run a cell"
  grep -q '^still 42$' <<<"$third" || fail "the adopted notebook lost its package"
  log "the notebook kept running across Ctrl-C and was taken over"

  # 7. Stop the notebook (its workspace saved), then the platform.
  in_root curl -sf -X POST -H "Authorization: Bearer $token" "${api}stop/" >/dev/null || fail "stop refused"
  wait_state STOPPED >/dev/null
  stop_platform
  log "notebook stopped, platform stopped"
  exit 0
fi

######## On the machine: the cached base, a copy of it, the clone, the namespace.
[ "$(id -u)" = 0 ] || fail "run as root (debootstrap, chroot and mounts)"
COMMIT=${1:-$(git -C "$REPO" rev-parse HEAD)}
export CACHE
if ! command -v debootstrap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap \
    || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap)
fi
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock 9  # one run at a time on this machine (the port and the cache)
BASE=$CACHE/bookworm-minbase
if [ ! -f "$BASE/.complete" ] || [ -n "${NBCLOUD_CI_REFRESH:-}" ]; then
  log "building the Debian 12 base (debootstrap --variant=minbase bookworm, cached in $BASE)"
  rm -rf "$BASE" "$BASE.tmp"
  debootstrap --variant=minbase bookworm "$BASE.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -30 "$CACHE/debootstrap.log"; fail "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  rm -f "$BASE.tmp"/var/cache/apt/archives/*.deb
  touch "$BASE.tmp/.complete"
  mv "$BASE.tmp" "$BASE"
  log "base built"
else
  log "Debian 12 base from the cache ($BASE)"
fi

ROOT=$(mktemp -d "$CACHE/root.XXXXXX")
cleanup() {
  status=$?
  kill_inside "$ROOT"
  # The namespace's mounts went with it; a lazy unmount of anything left.
  grep -F " $ROOT" /proc/self/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  if grep -qF " $ROOT" /proc/self/mounts; then
    echo "[fresh-machine] mounts left under $ROOT, not removed" >&2
  else
    rm -rf --one-file-system "$ROOT"
  fi
  [ "$status" = 0 ] && log "PASSED in $((SECONDS - started)) s" || log "FAILED after $((SECONDS - started)) s"
  exit $status
}
trap cleanup EXIT INT TERM
cp -a "$BASE/." "$ROOT/"
rm -f "$ROOT/.complete"
git clone -q --no-local "$REPO" "$ROOT/root/nbcloud"
git -C "$ROOT/root/nbcloud" checkout -q "$COMMIT"
cp "$ROOT/root/nbcloud/README.md" "$ROOT/root/README.md"
log "commit $(git -C "$ROOT/root/nbcloud" rev-parse --short HEAD) cloned into a copy of the base"

unshare --mount --propagation private env ROOT="$ROOT" CACHE="$CACHE" PORT="$PORT" FRESH_ELAPSED=$SECONDS \
  bash "$0" __inside "$ROOT" "$COMMIT"
