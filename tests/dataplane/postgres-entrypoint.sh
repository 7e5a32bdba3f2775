#!/bin/sh
# The postgres image's entrypoint, as far as our stacks use it: on an empty $PGDATA, create the
# cluster with $POSTGRES_USER / $POSTGRES_PASSWORD (or $POSTGRES_PASSWORD_FILE) (password auth
# from the network, trust on the local socket) and the $POSTGRES_DB database; then run `postgres`
# listening on every address of the pod, with the container's args (`-c name=value` settings).
set -eu
# The image's file_env: the password may come as a file (a mounted Secret).
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    POSTGRES_PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
fi
if [ "${1#-}" != "$1" ]; then
    set -- postgres "$@"
fi
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C --no-sync
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/tmp" -w start
    if [ "${POSTGRES_DB:-$POSTGRES_USER}" != postgres ]; then
        psql -v ON_ERROR_STOP=1 -h /tmp -U "$POSTGRES_USER" -d postgres \
            -c "CREATE DATABASE \"${POSTGRES_DB:-$POSTGRES_USER}\""
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop
fi
if [ "$1" = postgres ]; then
    shift
    exec postgres -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql \
        -c fsync=off -c synchronous_commit=off "$@"
fi
exec "$@"
