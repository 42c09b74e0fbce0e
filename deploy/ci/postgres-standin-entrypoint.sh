#!/bin/sh
# Entry point of the smoke test's stand-in for the official `postgres:15` image (built by
# deploy/ci/docker-smoke.sh from Debian bookworm's `postgresql` package, since no container
# registry is reachable there). It does the part of the official image's entry point that the
# compose `gallery` profile relies on:
#   - PGDATA (/var/lib/postgresql/data), owned by the postgres user, initialised on first start
#     with POSTGRES_USER as the superuser and POSTGRES_PASSWORD as its password (scram-sha-256
#     over TCP from anywhere; trust on the Unix socket inside the container only);
#   - POSTGRES_DB created on first start;
#   - `postgres [ARGS]` runs the server in the foreground as the postgres user, listening on
#     every address (port 5432); any other command is run as given.
# Not for production: it exists so that CI can run the real compose file.
set -eu

BIN=/usr/lib/postgresql/15/bin
PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA

if [ "${1:-postgres}" != postgres ]; then
  exec "$@"
fi
[ $# -gt 0 ] && shift

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 0700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" postgres "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  "$BIN/initdb" -D "$PGDATA" -U "$user" --pwfile="$pwfile" --encoding=UTF8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    # Unix socket only while initialising (as the official image does): a TCP health check
    # answers only once the real server below is up.
    "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w -s start
    "$BIN/psql" -v ON_ERROR_STOP=1 -q -U "$user" -d postgres \
      -c "CREATE DATABASE \"$db\" OWNER \"$user\""
    "$BIN/pg_ctl" -D "$PGDATA" -m fast -w -s stop
  fi
  echo "stand-in postgres: initialised $PGDATA (user $user, database $db)"
fi

exec "$BIN/postgres" -D "$PGDATA" -c listen_addresses='*' "$@"
