#!/bin/sh
# CI's stack on this machine: compose/docker-compose.yml with compose/ci.override.yml
# (project nbcloud-ci), and a second host, cpu-2, joined with compose/host.yml as
# docs/deployment.md says (project nbcloud-ci-cpu-2).
#   compose/ci/stack.sh up|down|main ARGS...|host ARGS...
# `up` returns once web answers through Caddy; `down` removes everything, volumes,
# workspaces and the notebooks' containers included. NBCLOUD_IMAGE picks the
# platform's image (nbcloud/platform:latest).
set -eu
cd "$(dirname "$0")/../.."
# Only the env files speak: the caller's DATABASE_URL, CELERY_BROKER_URL, ... (the
# test suite's own) would take precedence over them.
compose() {
    env -i PATH="$PATH" HOME="${HOME:-/root}" ${DOCKER_HOST:+DOCKER_HOST="$DOCKER_HOST"} \
        ${NBCLOUD_IMAGE:+NBCLOUD_IMAGE="$NBCLOUD_IMAGE"} docker-compose "$@"
}
main() { compose -p nbcloud-ci --env-file compose/ci.env \
    -f compose/docker-compose.yml -f compose/ci.override.yml "$@"; }
host() { compose -p nbcloud-ci-cpu-2 --env-file compose/ci-host.env -f compose/host.yml "$@"; }
value() { sed -n "s/^$1=//p" compose/ci.env; }

notebooks() {  # the notebook containers the stack's workers started
    docker ps -aq --filter label=io.nbcloud.host=cpu-1
    docker ps -aq --filter label=io.nbcloud.host=cpu-2
}

case "${1:-}" in
up)
    mkdir -p "$(value NBCLOUD_WORKSPACES_DIR)" /var/lib/nbcloud-ci/host-data/cpu-1 \
        /var/lib/nbcloud-ci/host-data/cpu-2
    main up -d --quiet-pull
    host up -d
    url="https://localhost:$(value CADDY_HTTPS_PORT)/api/v1/schema/"
    i=0
    until curl -fsSk -o /dev/null "$url"; do
        i=$((i + 1))
        if [ "$i" -ge 120 ]; then
            echo "the stack did not answer at $url in 120 s" >&2
            main ps >&2
            main logs --tail 30 web caddy >&2
            exit 1
        fi
        sleep 1
    done
    echo "the stack answers at https://localhost:$(value CADDY_HTTPS_PORT)/"
    ;;
down)
    host down -v --remove-orphans
    main --profile grafana down -v --remove-orphans
    ids=$(notebooks)
    # shellcheck disable=SC2086
    [ -z "$ids" ] || docker rm -f $ids >/dev/null
    rm -rf /var/lib/nbcloud-ci
    ;;
main) shift; main "$@" ;;
host) shift; host "$@" ;;
*) echo "usage: $0 up|down|main ARGS...|host ARGS..." >&2; exit 2 ;;
esac
