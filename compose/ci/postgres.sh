#!/bin/sh
# PostgreSQL as the official image runs it: a cluster made at the first start with
# POSTGRES_USER (its superuser, POSTGRES_PASSWORD) and POSTGRES_DB, then the server,
# here on 127.0.0.1:PGPORT (the host's network).
set -eu
bin=/usr/lib/postgresql/15/bin
data=/var/lib/postgresql/data
if [ ! -s "$data/PG_VERSION" ]; then
    mkdir -p "$data" && chown postgres:postgres "$data" && chmod 0700 "$data"
    printf %s "$POSTGRES_PASSWORD" >/tmp/pw && chown postgres /tmp/pw
    runuser -u postgres -- "$bin/initdb" -D "$data" -U "$POSTGRES_USER" --pwfile=/tmp/pw \
        --auth-host=scram-sha-256 --auth-local=trust >/dev/null
    rm -f /tmp/pw
    echo "CREATE DATABASE \"$POSTGRES_DB\";" |
        runuser -u postgres -- "$bin/postgres" --single -D "$data" postgres >/dev/null
fi
exec runuser -u postgres -- "$bin/postgres" -D "$data" -c listen_addresses=127.0.0.1 \
    -c port="${PGPORT:-5432}" -c unix_socket_directories=/tmp
