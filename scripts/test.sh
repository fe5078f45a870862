#!/usr/bin/env bash
# Every test tier, in order; stops at the first failing tier and exits non-zero.
# Run through `make test`, which first runs scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
t_all=$SECONDS

step "Unit and property tests: shared vocabulary (keys, encoding, events)"
cargo test --release --quiet -p pg_redis_shared

step "Unit tests: Redis module logic"
cargo test --release --quiet -p redis_pg

step "PostgreSQL tests (#[pg_test] inside a throwaway cluster)"
rundir=$(target/release/pg_redis_dev rundir)
pgrx_data="$rundir/pgrx-test"
mkdir -p "$pgrx_data"
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$pgrx_data"
  cargo pgrx test pg15 --package pg_redis --runas postgres --pgdata "$pgrx_data"
else
  cargo pgrx test pg15 --package pg_redis --pgdata "$pgrx_data"
fi

step "Reinstalling the release build of the extension (the test build replaced it)"
cargo pgrx install --release --package pg_redis --pg-config "$PG_CONFIG" $( [ "$(id -u)" = 0 ] || echo --sudo ) >/dev/null

step "End-to-end tests against real PostgreSQL and redis-server"
cargo test --release --no-fail-fast -p pg_redis_tests -- --test-threads=2

printf '\n\033[1mAll test tiers passed in %ss.\033[0m\n' $((SECONDS - t_all))
