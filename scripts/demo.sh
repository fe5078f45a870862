#!/usr/bin/env bash
# Starts the project's own PostgreSQL and redis-server (module loaded), walks through what
# pg_redis does, and leaves both running. Run through `make demo`; stop with `make stop`.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m# %s\033[0m\n' "$*"; }
sql() { printf '\033[36mpsql>\033[0m %s\n' "$1"; psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d demo -c "$1"; }
rcli() { printf '\033[35mredis>\033[0m %s\n' "$*"; redis-cli -p "$REDIS_PORT" "$@"; }

say "Starting PostgreSQL ${PG:-15} (pg_redis preloaded) and redis-server (libredis_pg.so loaded)"
eval "$(target/release/pg_redis_dev up demo)"
psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -c "CREATE DATABASE demo" >/dev/null
psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -c "ALTER SYSTEM SET pg_redis.url = 'redis://127.0.0.1:$REDIS_PORT/0'" -c "SELECT pg_reload_conf()" >/dev/null
redis-cli -p "$REDIS_PORT" CONFIG SET redis_pg.pg_url "postgresql://postgres@127.0.0.1:$PGPORT/demo" >/dev/null

say "PostgreSQL talks to Redis"
sql "CREATE EXTENSION pg_redis"
sql "SELECT redis.ping()"

say "Redis talks to PostgreSQL"
rcli PG.PING

for f in sql/examples/demo_*.sh; do
  [ -e "$f" ] && source "$f"
done

cat <<MSG

Both servers keep running. Try:
  psql -h 127.0.0.1 -p $PGPORT -U postgres demo
  redis-cli -p $REDIS_PORT
Logs: $PG_LOG
      $REDIS_LOG
Stop them with: make stop
MSG
